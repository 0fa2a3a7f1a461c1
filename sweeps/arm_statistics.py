"""The final comparison's numbers: each arm's figures over its seeds, and the reference arm against
every other arm with paired bootstrap intervals (``sweeps.statistics``) over the seeds both finished.

Inputs are ``SeedResult``s (one retrained model on test); outputs are plain values and
``Interval``s. Rendering them is ``sweeps.report``'s job, logging them ``sweeps.tracking``'s.
"""

from __future__ import annotations

import math
import statistics as stats
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import numpy as np

from sweeps import statistics as bs
from sweeps.timing import TIMED_TARGET, ModelTiming
from trainers.errors import ConfigError
from trainers.results import WeightsSummary

if TYPE_CHECKING:
    from sweeps.records import TrialRecord

TARGETS = (1.5, 2.0, 3.0)  # speed-ups at which each model's validation-chosen setting is reported on test


@dataclass
class SeedResult:
    """One retrained model on test, reduced to what the comparison needs."""

    seed: int
    trial_id: str
    num_layers: int
    metric: str
    reference_metric: float
    axis: str
    labels: np.ndarray                       # [N]
    ids: np.ndarray                          # [N] test example ids (the pairing needs the same examples)
    last_correct: np.ndarray                 # [N] 0/1
    front_exits: np.ndarray                  # [S, N] exit layer of every validation-frontier setting
    front_correct: np.ndarray                # [S, N]
    at: dict[float, tuple[np.ndarray, np.ndarray]]  # target -> (exit layers [N], correct [N])
    wallclock: dict[float, float] = field(default_factory=dict)  # target -> median speed-up (timing phase)
    timing: ModelTiming | None = None        # its timing-phase record (ratios, range), if it was timed
    weights: WeightsSummary | None = None    # the learned weights and their trajectory
    train_seconds: float = 0.0

    def accuracy_at(self, target: float) -> float | None:
        return float(self.at[target][1].mean()) if target in self.at else None

    def speedup_at(self, target: float) -> float | None:
        return float(self.num_layers / self.at[target][0].mean()) if target in self.at else None

    def hypervolume(self) -> float:
        return float(bs.point_values_hypervolume([self.front_exits], [self.front_correct], self.num_layers,
                                                 self.reference_metric, self.axis)[0])

    def curve(self) -> list[tuple[float, float]]:
        """(test speed-up, test metric) of every validation-frontier setting."""
        return [(self.num_layers / e.mean(), c.mean()) for e, c in zip(self.front_exits, self.front_correct)]



@dataclass
class ArmValues:
    """One arm's figures, one value per finished seed (None where a seed has none)."""

    arm: str
    seeds: list[int]                              # the seeds that finished, in order
    failed_seeds: list[int]
    runs: int                                     # trainings started (seeds asked for)
    last_exit: list[float]                        # last-exit test metric
    accuracy: dict[float, list[float | None]]     # target -> test metric at the validation-chosen setting
    speedup: dict[float, list[float | None]]      # target -> test speed-up of that setting
    hypervolume: list[float]
    wallclock: list[float | None]                 # median wall-clock speed-up at TIMED_TARGET (None: not timed)
    wallclock_range: tuple[float | None, float | None]  # the smallest and largest ratio any timed seed measured
    train_seconds: list[float]

    def row(self) -> dict:
        """The CSV row: means and standard deviations over seeds (fractions, not %)."""
        row = {"arm": self.arm, "seeds": ",".join(map(str, self.seeds)),
               "failed_seeds": ",".join(map(str, self.failed_seeds))}
        row["last_exit_mean"], row["last_exit_std"] = mean_and_std(self.last_exit)
        for t in TARGETS:
            row[f"at_{t:g}x_mean"], row[f"at_{t:g}x_std"] = mean_and_std(self.accuracy[t])
            row[f"speedup_{t:g}x_mean"], _ = mean_and_std(self.speedup[t])
        row["hypervolume_mean"], row["hypervolume_std"] = mean_and_std(self.hypervolume)
        row["wallclock_2x_median_mean"], _ = mean_and_std(self.wallclock)
        row["wallclock_2x_min"], row["wallclock_2x_max"] = self.wallclock_range
        row["train_seconds_mean"], _ = mean_and_std(self.train_seconds)
        return row


def arm_values(arm: str, results: list[SeedResult], records: list[TrialRecord]) -> ArmValues:
    """``arm``'s figures from its finished seeds' ``results`` and all its trainings' ``records``."""
    timings = [r.timing for r in results if r.timing is not None]
    return ArmValues(
        arm=arm, seeds=[r.seed for r in results],
        failed_seeds=[r.train["seed"] for r in records if r.status != "completed"], runs=len(records),
        last_exit=[r.last_correct.mean() for r in results],
        accuracy={t: [r.accuracy_at(t) for r in results] for t in TARGETS},
        speedup={t: [r.speedup_at(t) for r in results] for t in TARGETS},
        hypervolume=[r.hypervolume() for r in results],
        wallclock=[r.wallclock.get(TIMED_TARGET) for r in results],
        wallclock_range=(min((t.min for t in timings), default=None), max((t.max for t in timings), default=None)),
        train_seconds=[r.train_seconds for r in results])


def mean_and_std(values: list) -> tuple[float | None, float | None]:
    """(mean, sample std) of the values that are numbers; std 0 for one value; (None, None) for none."""
    values = [float(v) for v in values if v is not None and not math.isnan(v)]
    if not values:
        return None, None
    return stats.mean(values), (stats.stdev(values) if len(values) > 1 else 0.0)


# ---------------------------------------------------------------------------- paired differences
def paired_seeds(a: list[SeedResult], b: list[SeedResult]) -> tuple[list[SeedResult], list[SeedResult]]:
    """The seeds both arms finished, in the same order (pairing is by seed)."""
    common = [r.seed for r in a if r.seed in {s.seed for s in b}]
    return [next(r for r in a if r.seed == s) for s in common], [next(r for r in b if r.seed == s) for s in common]


def compare_pair(a: list[SeedResult], b: list[SeedResult], n_boot: int, seed: int = 0) -> dict[str, bs.Interval]:
    """Paired differences a − b of every reported metric, over the seeds both arms finished."""
    a, b = paired_seeds(a, b)
    if not a:
        return {}
    if any(not np.array_equal(x.ids, a[0].ids) for x in a + b):
        raise ConfigError("final models were tested on different test examples (final_train.eval_subset with "
                          "different seeds?); set final_train.eval_subset: null so every model sees the same test set")
    plan = bs.resample_plan(len(a), len(a[0].labels), n_boot=n_boot, seed=seed)

    def accuracy(results, pick):
        correct = np.stack([pick(r) for r in results])
        return bs.point_values_accuracy(correct), bs.accuracy_replicates(correct, plan)

    out = {}
    out["last_exit"] = bs.paired_difference(*_pairs(accuracy(a, lambda r: r.last_correct),
                                                    accuracy(b, lambda r: r.last_correct)), plan)
    for target in TARGETS:
        if all(target in r.at for r in a + b):
            out[f"at_{target:g}x"] = bs.paired_difference(*_pairs(accuracy(a, lambda r: r.at[target][1]),
                                                                  accuracy(b, lambda r: r.at[target][1])), plan)

    def hv(results):
        exits, correct = [r.front_exits for r in results], [r.front_correct for r in results]
        ref, layers, axis = results[0].reference_metric, results[0].num_layers, results[0].axis
        return (bs.point_values_hypervolume(exits, correct, layers, ref, axis),
                bs.hypervolume_replicates(exits, correct, layers, ref, plan, axis))

    out["hypervolume"] = bs.paired_difference(*_pairs(hv(a), hv(b)), plan)
    return out


def _pairs(a: tuple, b: tuple) -> tuple:
    return a[0], b[0], a[1], b[1]


def reference_differences(results: dict[str, list[SeedResult]], reference: str, arms: list[str],
                          n_boot: int) -> dict[str, dict[str, bs.Interval]]:
    """``reference`` minus each other arm of ``arms`` (in that order) that has finished seeds in
    common with it: arm -> metric -> interval. Empty when the reference arm finished no seed."""
    if not results.get(reference):
        return {}
    out = {}
    for arm in arms:
        if arm == reference or not results.get(arm):
            continue
        intervals = compare_pair(results[reference], results[arm], n_boot)
        if intervals:
            out[arm] = intervals
    return out


def add_differences(rows: list[dict], differences: dict[str, dict[str, bs.Interval]]) -> None:
    """Each arm's CSV row gets its difference to the reference arm: estimate, bounds and verdict per metric."""
    for arm, intervals in differences.items():
        for key, interval in intervals.items():
            for row in rows:
                if row["arm"] == arm:
                    row[f"diff_{key}"], row[f"diff_{key}_low"], row[f"diff_{key}_high"] = (
                        interval.estimate, interval.low, interval.high)
                    row[f"verdict_{key}"] = bs.verdict(interval)
