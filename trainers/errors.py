"""The exceptions users see, and the exit codes entry points turn them into.

- ``ConfigError``: a bad input, with what to fix. Entry points print a single ``error: ...`` line
  and exit with code 2, the usual argparse convention for "you called me wrong".
- ``TrainingDiverged``: training produced a non-finite loss, hypergradient, weight or logit.
  Entry points print ``error: diverged at step N (...)`` and exit with code 3; no summary is
  written, because a diverged model's "results" (NaN logits all argmax to class 0) mean nothing.

No torch here: the sweep driver and every CLI import these before any work (``trainers.divergence``
holds the on-device check that raises ``TrainingDiverged``).
"""


class ConfigError(ValueError):
    """A user-facing error in a config, a flag, a path or the data. The message says how to fix it."""


class TrainingDiverged(RuntimeError):
    """Training diverged at (1-based) ``step``; ``reason`` says what was not finite."""

    def __init__(self, step: int, reason: str):
        super().__init__(f"diverged at step {step} ({reason})")
        self.step, self.reason = step, reason

    def __reduce__(self):  # pickles with its fields (Ray sends a trial's exception to the driver)
        return type(self), (self.step, self.reason)


EXIT_BAD_INPUT = 2
EXIT_DIVERGED = 3
