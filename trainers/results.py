"""What one training produces, typed: ``RunResult(model, summary, test_logits)``.

``trainers.train.run`` returns a ``RunResult``; its ``Summary`` is also written as
``summary.json`` (``Summary.to_dict``: the layout the JSON always had) and read back with
``Summary.from_dict`` (sweep trials, registration), so every reader, in process or from a file,
uses the same fields. No torch here: the sweep driver and the registry read summaries without it.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True)
class CurvePoint:
    """One exit-policy setting on a split's speed-accuracy curve."""

    policy: str                        # policy kind
    setting: float                     # t, S or gamma
    speedup: float
    metric: float                      # a fraction, e.g. 0.823
    exit_histogram: tuple[int, ...]    # N_m for m = 1..L
    delta: float | None = None         # regression patience tolerance, needed to rebuild that policy


@dataclass
class FrontierSetting:
    """A setting of the validation Pareto front, with what it gives on validation and on test."""

    policy: str
    setting: float
    delta: float | None
    validation_speedup: float
    validation_metric: float
    test_speedup: float
    test_metric: float


@dataclass
class OperatingPoint(FrontierSetting):
    """The setting validation chose for a target speed-up, with its test values."""

    target_speedup: float
    wallclock_speedup: float | None = None  # measured by the run itself (wallclock_eval), median of its passes


@dataclass(frozen=True)
class SplitSummary:
    last_exit: float                     # the full model's primary metric
    hypervolume: float                   # of the split's frontier (test: at the settings validation chose)
    per_exit: list[dict[str, float]]     # every metric of the task, per exit
    reference_metric: float              # the majority-class baseline


@dataclass(frozen=True)
class WeightsSummary:
    names: list[str]                     # the loss terms, e.g. ce/1, kd/1<-3
    final: list[float]                   # the weights at the end of training
    trajectory: list[dict] = field(default_factory=list)  # {"step", "weights"} every weight_log_every steps


@dataclass
class Summary:
    """The trainer's report of one run: settings chosen on validation, reported on test."""

    task: str
    method: str
    scheme: str | None
    model: str
    num_exits: int
    steps: int
    train_examples: int
    wall_time_s: float
    hypervolume_axis: str
    metric: str                          # the task's primary metric
    validation: SplitSummary
    test: SplitSummary
    frontier: list[FrontierSetting]
    operating_points: list[OperatingPoint]
    validation_curve: list[CurvePoint] | None  # None: a summary written before the curve was kept
    weights: WeightsSummary
    epochs: list[dict]                   # one record per epoch, as ``run``'s on_epoch receives them
    config: dict
    label_names: list[str] | None = None  # class names in label-id order (id2label); None: regression, or an older summary

    def operating_point(self, target: float) -> OperatingPoint | None:
        return next((op for op in self.operating_points if float(op.target_speedup) == float(target)), None)

    def train_seconds(self) -> float:
        return float(sum(e.get("train_seconds") or 0.0 for e in self.epochs))

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> "Summary":
        curve = values.get("validation_curve")
        return cls(
            **{f.name: values.get(f.name) for f in dataclasses.fields(cls) if f.name in _PLAIN},
            hypervolume_axis=values.get("hypervolume_axis", "linear"),
            validation=SplitSummary(**values["validation"]), test=SplitSummary(**values["test"]),
            frontier=[FrontierSetting(**p) for p in values.get("frontier", [])],
            operating_points=[OperatingPoint(**op) for op in values.get("operating_points", [])],
            validation_curve=None if curve is None else [
                CurvePoint(**{**p, "exit_histogram": tuple(p["exit_histogram"])}) for p in curve],
            weights=WeightsSummary(**values["weights"]), epochs=list(values.get("epochs", [])),
            config=dict(values.get("config", {})), label_names=values.get("label_names"),
        )


_PLAIN = ("task", "method", "scheme", "model", "num_exits", "steps", "train_examples", "wall_time_s", "metric")


@dataclass
class RunResult:
    """``trainers.train.run``'s result: the trained model (in this process only), its summary, and
    every exit's test logits [L, N, C] (also in ``test_exit_logits.npz`` next to summary.json)."""

    model: Any                           # trainers.model.MultiExitEncoder; None for a stand-in trainer
    summary: Summary
    test_logits: Any = None              # torch.Tensor
    task: Any = None                     # trainers.tasks.TaskSpec the model was trained on (its label names, columns)
