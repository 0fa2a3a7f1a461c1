"""The exceptions users see, and the exit codes entry points turn them into.

- ``ConfigError``: a bad input, with what to fix. Entry points print a single ``error: ...`` line
  and exit with code 2, the usual argparse convention for "you called me wrong".
- ``TrainingDiverged``: training produced a non-finite loss, hypergradient, weight or logit.
  Entry points print ``error: diverged at step N (...)`` and exit with code 3; no summary is
  written, because a diverged model's "results" (NaN logits all argmax to class 0) mean nothing.
"""

import torch


class ConfigError(ValueError):
    """A user-facing error in a config, a flag, a path or the data. The message says how to fix it."""


class TrainingDiverged(RuntimeError):
    """Training diverged at (1-based) ``step``; ``reason`` says what was not finite."""

    def __init__(self, step: int, reason: str):
        super().__init__(f"diverged at step {step} ({reason})")
        self.step, self.reason = step, reason

    def __reduce__(self):  # pickles with its fields (Ray sends a trial's exception to the driver)
        return type(self), (self.step, self.reason)


def check_finite(tensor, step: int, reason: str) -> None:
    """Raise TrainingDiverged unless every entry of ``tensor`` is finite. This reads the tensor (a
    host sync): for checks outside the training step. Inside it, ``DivergenceMonitor`` records."""
    if not bool(tensor.isfinite().all()):
        raise TrainingDiverged(step, reason)


class DivergenceMonitor:
    """The first non-finite step of a run, recorded on the device and read only at check points.

    Reading a value on every step (``loss.item()``) makes the host wait for the GPU each time.
    Instead each step folds its finite flags into two device scalars (the first bad step and why),
    and ``check()`` reads them, every ``log_every`` steps and at the end of each epoch; the guard
    (``trainers.engine.skip_update_unless`` and the φ step) keeps θ and φ unchanged on a bad step,
    so nothing non-finite is ever applied between two checks. Cost: the error comes up to
    ``log_every`` steps after the bad step, naming the bad step.
    """

    REASONS = ("", "loss is nan", "loss is inf", "hypergradient is not finite", "loss weights are not finite")

    def __init__(self, device: torch.device | str):
        self.first_step = torch.zeros((), dtype=torch.long, device=device)  # 0: none yet (steps are 1-based)
        self.reason = torch.zeros((), dtype=torch.long, device=device)

    def record(self, step: int, ok: torch.Tensor, reason) -> torch.Tensor:
        """Fold in (0-based) ``step``'s flag ``ok``; ``reason`` indexes REASONS (an int or a device
        scalar). Returns ``ok``. No host sync: everything stays on the device."""
        new = ~ok & (self.first_step == 0)
        self.first_step = torch.where(new, step + 1, self.first_step)
        self.reason = torch.where(new, reason, self.reason)
        return ok

    def record_loss(self, step: int, loss: torch.Tensor) -> torch.Tensor:
        """Fold in a loss value; True on the device when it is finite."""
        ok = torch.isfinite(loss)
        return self.record(step, ok, torch.where(torch.isnan(loss), 1, 2))

    def check(self, *values: torch.Tensor) -> list[float]:
        """Raise TrainingDiverged if any recorded step was bad. One host sync, which also reads
        ``values`` (tensors to log, e.g. the loss), returned flattened as floats."""
        parts = [self.first_step, self.reason, *(v.detach() for v in values)]
        read = torch.cat([t.reshape(-1).double() for t in parts])
        step, reason, *rest = read.tolist()
        if step:
            raise TrainingDiverged(int(step), self.REASONS[int(reason)])
        return rest


EXIT_BAD_INPUT = 2
EXIT_DIVERGED = 3
