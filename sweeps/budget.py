"""Per-arm budgets: in trials, in training compute, or both; and how many trials TPE needs.

Compute is counted in *fixed-epochs*: one epoch of fixed-weight training. A learned arm pays for
its loss-weight updates too, so one of its epochs costs

    1 + outer_step_cost / outer_every

where ``outer_step_cost`` is the price of one update in θ-steps (bilevel: one hypergradient, 4
passes over a batch of the θ-batch's size; clo: two on half-size batches). It is measured, per arm
and per device and precision, by ``benchmarks/step_cost.py`` (CPU) and ``benchmarks/gpu_check.py``
(GPU), and kept in ``MEASURED_OUTER_STEP_COST``; ``outer_step_cost: auto`` (the default) charges
each arm the figure of the device its trials train on and the sweep's ``train.precision``. So a
search that samples ``outer_every`` pays for what it samples, and an arm cannot buy accuracy with
compute the others did not get.

A trial is only started when its whole cost (all epochs, at its sampled ``outer_every``) fits in
what is left of the budget, counting running trials at their whole cost too; a trial ASHA stops
early gives back the epochs it did not run. So the budget is never exceeded, and no trial is cut
short by it. When a drawn trial does not fit and nothing runs that could give budget back, its
cheapest variant that fits (a larger ``outer_every``) runs instead (``sweeps.searchers.Refit``):
an arm's search ends only when not even its cheapest trial fits, so no arm leaves a trial's cost
unspent.

A device or precision without a measured figure is refused (``ConfigError``, exit 2), with or
without a compute budget: the figure also orders the arms' turns, and a guess would hand one arm
compute the others did not get.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

EPSILON = 1e-9

# One outer update in fixed θ-steps, per (device, precision) and learned arm: the figures the compute
# budget charges with ``outer_step_cost: auto``.
MEASURED_OUTER_STEP_COST: dict[tuple[str, str], dict[str, float]] = {
    # `python benchmarks/step_cost.py`, 2026-12-02, MiniLM on MR, batch 32, idle 2-core x86_64: per step
    # bilevel 2.37 / 2.39, clo 2.43 / 2.49 fixed steps with 1 / 2 threads; the larger, rounded up
    ("cpu", "fp32"): {"bilevel": 2.4, "clo": 2.5},
    # `python benchmarks/step_cost.py --precision fp32 bf16 --threads 2`, 2026-12-04, same setting, avx512_bf16:
    # bilevel 3.03, clo 3.35 fixed steps (bf16 speeds a θ-step up 1.36x but an outer step only 1.07-1.09x:
    # its ℓ± sides stay fp32), rounded up
    ("cpu", "bf16"): {"bilevel": 3.1, "clo": 3.4},
    # ESTIMATES from the pass count (4 passes, against a θ-step's forward + backward) until
    # `python benchmarks/gpu_check.py` measures them on a GPU
    ("cuda", "fp32"): {"bilevel": 2.7, "clo": 2.7},
    ("cuda", "bf16"): {"bilevel": 2.7, "clo": 2.7},
}
LEARNED_ARMS = ("bilevel", "clo")
RANDOM_SEARCH_BELOW = 8  # fewer trials than this: TPE would model from fewer than 4 trials; random search
TPE_MAX_STARTUP = 10     # Optuna's default n_startup_trials


@dataclass(frozen=True)
class TrialCost:
    """What one trial of an arm costs, in fixed-epochs."""

    epochs: int
    learned: bool
    outer_step_cost: float
    default_outer_every: int

    def per_epoch(self, config: dict[str, Any]) -> float:
        if not self.learned:
            return 1.0
        return 1.0 + self.outer_step_cost / int(config.get("outer_every", self.default_outer_every))

    def whole(self, config: dict[str, Any]) -> float:
        return self.epochs * self.per_epoch(config)

    def dearest(self, space: dict) -> float:
        """The cost of the dearest trial the space can draw (the smallest outer_every)."""
        every = getattr(space.get("outer_every"), "low", self.default_outer_every)
        return self.whole({"outer_every": every})

    def cheapest(self, space: dict) -> float:
        """The cost of the cheapest trial the space can draw (the largest outer_every)."""
        every = getattr(space.get("outer_every"), "high", self.default_outer_every)
        return self.whole({"outer_every": every})


@dataclass
class BudgetLedger:
    """The driver's account of one arm's budget: what each started trial has committed."""

    limit: float
    cost: TrialCost
    per_epoch: dict[str, float] = field(default_factory=dict)
    epochs_done: dict[str, int] = field(default_factory=dict)
    finished: set[str] = field(default_factory=set)

    def committed(self) -> float:
        """Finished trials at the epochs they ran; running ones at all their epochs."""
        return sum(rate * (self.epochs_done.get(t, 0) if t in self.finished else self.cost.epochs)
                   for t, rate in self.per_epoch.items())

    @property
    def running(self) -> int:
        return sum(t not in self.finished for t in self.per_epoch)

    def fits(self, config: dict[str, Any]) -> bool:
        return self.committed() + self.cost.whole(config) <= self.limit + EPSILON

    def start(self, trial_id: str, config: dict[str, Any]) -> None:
        self.per_epoch[trial_id] = self.cost.per_epoch(config)

    def result(self, trial_id: str, epoch: Any) -> None:
        if isinstance(epoch, (int, float)) and not (isinstance(epoch, float) and math.isnan(epoch)):
            self.epochs_done[trial_id] = max(self.epochs_done.get(trial_id, 0), int(epoch))

    def finish(self, trial_id: str) -> None:
        self.finished.add(trial_id)


def resolve_outer_step_cost(setting: Any, method: str, device: str, precision: str) -> float:
    """The cost of one outer update of trials of the loss-weight ``method`` (train.method: fixed,
    bilevel, clo; a learned arm is named after its method): ``setting`` as a number (every learned
    arm), a mapping per arm ({bilevel: 3.1, clo: 2.8}: an arm it does not name gets the measured
    figure), or "auto": the measured figure for ``device`` ("cpu" or "cuda") and ``precision``.
    Fixed-weight arms never pay for outer steps (0).

    ``precision`` auto is resolved here, on the driver, as the trials will resolve it
    (``trainers.config.resolve_precision``): for CPU trials from this machine's CPU flags, which
    assumes the trials' nodes have the same CPUs as the driver's; for CUDA trials from the driver's
    own GPU, and refused when the driver has none (it cannot tell whether the trials' GPUs have bf16).
    """
    from trainers.config import BF16_CPU_FLAGS, cpu_bf16_flag, resolve_precision
    from trainers.errors import ConfigError

    if method not in LEARNED_ARMS:
        return 0.0
    if isinstance(setting, (int, float)) and not isinstance(setting, bool):
        return float(setting)
    if isinstance(setting, dict) and method in setting:
        return float(setting[method])
    how = ""
    if precision == "auto":
        if device == "cuda":
            import torch

            if not torch.cuda.is_available():
                raise ConfigError("train.precision auto: this driver has no GPU, so it cannot tell whether the trials' "
                                  "GPUs have bf16, which sets the outer_step_cost they are charged; set train.precision "
                                  "to bf16 or fp32, or outer_step_cost to a number")
            why = f"the driver's {torch.cuda.get_device_name()}, taken for the trials' GPUs"
        else:
            flag = cpu_bf16_flag()
            why = (f"the driver's CPU has {flag}" if flag else f"the driver's CPU has neither {' nor '.join(BF16_CPU_FLAGS)}"
                   ) + "; this assumes every node has the same CPUs"
        precision = resolve_precision("auto", device)
        how = f" (train.precision auto: {precision}, as {why})"
    measured = MEASURED_OUTER_STEP_COST.get((device, precision))
    if measured is None:  # never a guess: another precision's figure would give one arm more compute
        known = ", ".join(f"{d}/{p}" for d, p in MEASURED_OUTER_STEP_COST)
        raise ConfigError(f"outer_step_cost: auto has no measured figure for {device}/{precision}{how} (sweeps/budget.py "
                          f"MEASURED_OUTER_STEP_COST has {known}); measure it with `{measure_command(device, precision)}` "
                          f"and add the entry ({device!r}, {precision!r}) there, or set outer_step_cost to a number "
                          f"(--set outer_step_cost=2.5, or one per learned arm: --set 'outer_step_cost={{bilevel: 2.4, clo: 2.5}}')")
    return float(measured[method])


def measure_command(device: str, precision: str) -> str:
    """The command that measures one outer update's cost on ``device`` in ``precision``."""
    if device == "cuda":
        return f"python benchmarks/gpu_check.py --precision {precision}"
    return f"python benchmarks/step_cost.py --device {device} --precision {precision}"


def used_compute(epochs_run: int, config: dict[str, Any], cost: TrialCost) -> float:
    """Fixed-epochs a trial actually used."""
    return epochs_run * cost.per_epoch(config)


def expected_trials(trials: int | None, budget: float | None, cost: TrialCost, space: dict) -> int:
    """Trials the arm will get if none is stopped early: the cap, or what the budget buys at the
    cost of a typical trial (outer_every at the geometric middle of its range)."""
    if budget is None:
        return int(trials)
    every = space.get("outer_every")
    typical = round(math.sqrt(every.low * every.high)) if every is not None else cost.default_outer_every
    by_budget = int(budget // cost.whole({"outer_every": typical}))
    return by_budget if trials is None else min(int(trials), by_budget)


def search_algorithm(expected: int, startup: int | None) -> tuple[str, int]:
    """("tpe", startup trials) or ("random", 0).

    ``startup`` None (auto): half the expected trials, at least 4 and at most Optuna's 10; below
    RANDOM_SEARCH_BELOW trials, or when the startup trials would use up the budget, TPE never
    models anything, so the sweep runs (and says it runs) random search.
    """
    if startup is None:
        if expected < RANDOM_SEARCH_BELOW:
            return "random", 0
        startup = min(TPE_MAX_STARTUP, max(4, expected // 2))
    if startup >= expected:
        return "random", 0
    return "tpe", startup


def budget_text(cfg) -> str:
    """'at most 4 trials and 6 fixed-epochs of compute' (a SweepConfig's budget, for people)."""
    parts = ([f"at most {cfg.trials} trials"] if cfg.trials else []) + (
        [f"{cfg.budget_epochs:g} fixed-epochs of compute"] if cfg.budget_epochs else [])
    return " and ".join(parts)
