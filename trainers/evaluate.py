"""Early-exit evaluation (method §5): per-exit metrics, the speed–accuracy curve, its frontier.

Every exit's logits are computed once per split; each exit-policy setting is then simulated on
those cached logits with the same streaming policy code that real incremental inference runs, so
a grid of ~60 settings costs one forward pass. Settings are chosen on validation; the test split
is only reported, at the settings validation chose.
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass, field

import torch

from trainers import frontier as fr
from trainers.data import Split, TaskSpec, eval_batches
from trainers.metrics import compute_metrics, majority_baseline, predictions_from_logits
from trainers.policies import default_grid, make_policy
from trainers.results import OperatingPoint  # re-exported here

POLICY_KINDS = ("none", "patience", "entropy", "confidence")  # "none": the full model, speed-up 1
OPERATING_SPEEDUPS = (1.5, 2.0, 3.0)


@torch.no_grad()
def collect_logits(model, split: Split, batch_size: int, pad_token_id: int) -> torch.Tensor:
    """All exits' logits on a split, ``[L, N, C]`` in split order."""
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    out = None
    for positions, batch in eval_batches(split, batch_size, pad_token_id):
        logits = model(**{key: value.to(device) for key, value in batch.items()}).float().cpu()
        if out is None:
            out = logits.new_zeros((logits.shape[0], len(split), logits.shape[-1]))
        out[:, positions] = logits
    model.train(was_training)
    return out


def policy_grid(task: TaskSpec, num_layers: int) -> list:
    kinds = ("none", "patience") if task.is_regression else POLICY_KINDS  # entropy/confidence need classes
    return [p for kind in kinds for p in default_grid(kind, num_layers, task.num_labels, task.is_regression)]


@dataclass
class SplitReport:
    """What one split says about a model: every exit on its own, and the early-exit curve."""

    per_exit: list[dict[str, float]]
    curve: list[fr.CurvePoint]
    front: list[fr.CurvePoint]
    hypervolume: float
    reference_metric: float
    primary: str

    @property
    def last_exit(self) -> float:
        return self.per_exit[-1][self.primary]

    def point(self, key: tuple) -> fr.CurvePoint:
        return next(p for p in self.curve if point_key(p) == key)


def point_key(p: fr.CurvePoint) -> tuple:
    """What identifies an exit-policy setting (regression patience also has a tolerance δ)."""
    return (p.policy, p.setting, p.delta)


def report_split(logits: torch.Tensor, labels: torch.Tensor, task: TaskSpec, policies: list,
                 settings: list[tuple] | None = None, axis: str = "log") -> SplitReport:
    """Per-exit metrics and the curve. With ``settings`` (chosen elsewhere, i.e. on validation),
    the frontier and hypervolume use only those settings, so the test split selects nothing."""
    primary = task.metrics[0]
    per_exit = [compute_metrics(task.metrics, predictions_from_logits(z, task.is_regression), labels) for z in logits]
    curve = fr.speed_accuracy_curve(logits, labels, primary, task.is_regression, policies)
    candidates = curve if settings is None else [p for p in curve if point_key(p) in set(settings)]
    front = fr.pareto_front(candidates)
    reference = majority_baseline(primary, labels, task.is_regression)
    hv = fr.hypervolume(front, logits.shape[0], reference, axis=axis)
    return SplitReport(per_exit, curve, front, hv, reference, primary)


@dataclass
class FinalReport:
    validation: SplitReport
    test: SplitReport
    operating_points: list[OperatingPoint] = field(default_factory=list)

    def summary(self) -> dict:
        val, test = self.validation, self.test
        return {
            "metric": val.primary,
            "validation": {"last_exit": val.last_exit, "hypervolume": val.hypervolume,
                           "per_exit": val.per_exit, "reference_metric": val.reference_metric},
            "test": {"last_exit": test.last_exit, "hypervolume": test.hypervolume,
                     "per_exit": test.per_exit, "reference_metric": test.reference_metric},
            "frontier": [
                {"policy": v.policy, "setting": v.setting, "delta": v.delta,
                 "validation_speedup": v.speedup, "validation_metric": v.metric,
                 "test_speedup": test.point(point_key(v)).speedup,
                 "test_metric": test.point(point_key(v)).metric}
                for v in val.front
            ],
            "operating_points": [asdict(op) for op in self.operating_points],
            "validation_curve": [asdict(p) for p in val.curve],
        }


def final_report(val_logits, val_labels, test_logits, test_labels, task: TaskSpec, axis: str = "log") -> FinalReport:
    policies = policy_grid(task, val_logits.shape[0])
    validation = report_split(val_logits, val_labels, task, policies, axis=axis)
    chosen = [point_key(p) for p in validation.front]
    test = report_split(test_logits, test_labels, task, policies, settings=chosen, axis=axis)
    points = []
    for target in OPERATING_SPEEDUPS:
        v = fr.operating_point(validation.curve, target)
        if v is None:
            continue
        t = test.point(point_key(v))
        points.append(OperatingPoint(policy=v.policy, setting=v.setting, delta=v.delta, validation_speedup=v.speedup,
                                     validation_metric=v.metric, test_speedup=t.speedup, test_metric=t.metric,
                                     target_speedup=target))
    return FinalReport(validation, test, points)


def exit_policy(op, is_regression: bool):
    """The streaming exit policy of an operating point (or of any setting with policy/setting/delta)."""
    return make_policy(op.policy, op.setting, is_regression=is_regression, delta=op.delta)


@dataclass(frozen=True)
class TimedPass:
    """One timed pass over a split: how long it took (``perf_counter``, what speed-ups divide) and
    when it ran (``time.time()`` stamps, comparable across processes and with other windows)."""

    seconds: float
    start: float
    end: float


class ExitTimer:
    """Times whole passes of one model (in eval mode) over one split: the full forward, or real
    early-exit inference. The batches are built and moved to the model's device once, so a pass
    times the model alone; on CUDA the clocks are read only after the device has synchronized."""

    def __init__(self, model, split: Split, batch_size: int, pad_token_id: int):
        self.model = model
        self.device = next(model.parameters()).device
        self.batches = [{key: value.to(self.device) for key, value in batch.items()}
                        for _, batch in eval_batches(split, batch_size, pad_token_id)]

    @torch.no_grad()
    def warm_up(self, policies: list) -> None:
        """First calls pay for allocation and kernel selection: one full and one early-exit call
        per policy on the first batch, untimed."""
        self.model(**self.batches[0])
        for policy in policies:
            self.model.early_exit(policy, **self.batches[0])
        self._synchronize()

    def full(self) -> TimedPass:
        return self._timed(lambda batch: self.model(**batch))

    def early_exit(self, policy) -> TimedPass:
        return self._timed(lambda batch: self.model.early_exit(policy, **batch))

    @torch.no_grad()
    def _timed(self, step) -> TimedPass:
        self._synchronize()  # work queued before this pass is not its time
        stamp, start = time.time(), time.perf_counter()
        for batch in self.batches:
            step(batch)
        self._synchronize()
        seconds = time.perf_counter() - start
        return TimedPass(seconds=seconds, start=stamp, end=time.time())

    def _synchronize(self) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)


@torch.no_grad()
def wallclock_speedups(model, split: Split, ops: list[OperatingPoint], task: TaskSpec,
                       batch_size: int, pad_token_id: int, repeats: int = 1) -> list[list[float]]:
    """Measured time of the full forward over time of real early-exit inference, on one split.

    Each repeat times one full pass, then one early-exit pass per operating point, so every ratio
    compares passes made moments apart (machine load drifts between repeats, not within one).
    Returns, per operating point, the ratio of every repeat; report their median.
    """
    policies = [exit_policy(op, task.is_regression) for op in ops]
    was_training = model.training
    model.eval()
    timer = ExitTimer(model, split, batch_size, pad_token_id)
    timer.warm_up(policies)
    ratios: list[list[float]] = [[] for _ in ops]
    for _ in range(repeats):
        full = timer.full().seconds
        for i, policy in enumerate(policies):
            ratios[i].append(full / timer.early_exit(policy).seconds)
    model.train(was_training)
    return ratios
