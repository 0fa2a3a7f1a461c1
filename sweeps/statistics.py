"""Is CLO really better? Paired bootstrap intervals for the final comparison of the arms.

Each arm is trained with the same K seeds and every trained model is evaluated
on the same N test examples. A difference between two arms is uncertain for two reasons: the test
set is a sample of examples, and a training run is a sample of seeds. So one bootstrap replicate
resamples both: examples (as multinomial weights, the same for every seed) and seed positions.

The two arms of a comparison share one ResamplePlan: same resampled examples, same resampled seed
positions. That pairing cancels what the arms have in common (hard examples stay hard for both),
so the interval measures the difference itself, not the noise of each arm, and is much narrower
than two independent resamples would give.

Usage (CLO against another arm, accuracy):

    plan = resample_plan(n_seeds=K, n_examples=N)
    ci = paired_difference(point_values_accuracy(clo), point_values_accuracy(other),
                           accuracy_replicates(clo, plan), accuracy_replicates(other, plan), plan)
    print(describe(ci), verdict(ci))   # "+1.23 points [+0.40, +2.05] better"
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from trainers.errors import ConfigError
from trainers.pareto import HYPERVOLUME_AXES, CurvePoint, hypervolume

MIN_BOOT = 100  # fewer replicates make the 2.5 % / 97.5 % percentiles rest on a handful of values


@dataclass(frozen=True)
class Interval:
    estimate: float   # statistic(arm a) - statistic(arm b) on the real data
    low: float        # (1 - level) / 2 bootstrap percentile
    high: float       # 1 - (1 - level) / 2 bootstrap percentile
    level: float = 0.95


@dataclass(frozen=True)
class ResamplePlan:
    """The bootstrap draws, made once and shared by both arms of a comparison (that is the pairing).

    example_weights[b, i]: how often example i appears in replicate b (multinomial counts, sum N).
    seed_draws[b, j]: the seed position (0..K-1) drawn for slot j of replicate b.
    """
    example_weights: np.ndarray   # int [n_boot, n_examples]
    seed_draws: np.ndarray        # int [n_boot, n_seeds]

    @property
    def n_boot(self) -> int:
        return self.example_weights.shape[0]

    @property
    def n_examples(self) -> int:
        return self.example_weights.shape[1]

    @property
    def n_seeds(self) -> int:
        return self.seed_draws.shape[1]


def resample_plan(n_seeds: int, n_examples: int, n_boot: int = 2000, seed: int = 0) -> ResamplePlan:
    """Draw n_boot example resamples (as weights) and seed resamples; deterministic for a given seed."""
    if n_boot < MIN_BOOT:
        raise ConfigError(f"n_boot={n_boot} is too few bootstrap replicates for 95 % percentiles; "
                          f"use at least {MIN_BOOT} (2000 is the default)")
    if n_seeds < 1 or n_examples < 1:
        raise ConfigError(f"a resample plan needs at least 1 seed and 1 test example, got "
                          f"n_seeds={n_seeds}, n_examples={n_examples}")
    rng = np.random.default_rng(seed)
    weights = rng.multinomial(n_examples, np.full(n_examples, 1.0 / n_examples), size=n_boot)
    return ResamplePlan(example_weights=weights, seed_draws=rng.integers(0, n_seeds, size=(n_boot, n_seeds)))


# --- input checks -----------------------------------------------------------------------------

def _check_correct(correct, what: str) -> np.ndarray:
    c = np.asarray(correct)
    if c.ndim != 2:
        raise ConfigError(f"{what} must be a 2-d 0/1 array, got shape {c.shape}")
    if c.size == 0:
        raise ConfigError(f"{what} is empty (shape {c.shape}); evaluate on at least one test example")
    if not np.isin(c, (0, 1)).all():
        raise ConfigError(f"{what} must hold only 0/1 (or booleans): 1 where the prediction is correct")
    return c.astype(np.float64)


def _check_plan_examples(n: int, plan: ResamplePlan, what: str) -> None:
    if n != plan.n_examples:
        raise ConfigError(f"{what} covers {n} test examples but the resample plan was made for "
                          f"{plan.n_examples}; evaluate every arm on the same test examples and make the plan "
                          f"with resample_plan(n_seeds, n_examples={n})")


def _check_plan_seeds(k: int, plan: ResamplePlan, what: str) -> None:
    if k != plan.n_seeds:
        raise ConfigError(f"{what} has {k} seeds but the resample plan was made for {plan.n_seeds}; "
                          f"make the plan with resample_plan(n_seeds={k}, ...)")


def _weighted_means(weights: np.ndarray, values: np.ndarray) -> np.ndarray:
    """[B, N] weights and [M, N] values -> [B, M] weighted means (one matmul)."""
    w = weights.astype(np.float64)
    return (w @ values.T) / w.sum(axis=1, keepdims=True)


# --- accuracy ---------------------------------------------------------------------------------

def point_values_accuracy(correct: np.ndarray) -> np.ndarray:
    """[K] per-seed accuracies on the real test set."""
    return _check_correct(correct, "correct").mean(axis=1)


def accuracy_replicates(correct: np.ndarray, plan: ResamplePlan) -> np.ndarray:
    """[n_boot, K]: each seed's accuracy under each example resample of the plan."""
    c = _check_correct(correct, "correct")
    _check_plan_seeds(c.shape[0], plan, "correct")
    _check_plan_examples(c.shape[1], plan, "correct")
    return _weighted_means(plan.example_weights, c)


# --- hypervolume ------------------------------------------------------------------------------

def _check_curves(exit_layers, correct, num_layers: int, axis: str) -> tuple[list, list]:
    """Per seed: [S_k, N] exit layers (1..num_layers) and 0/1 correctness, the same N for all."""
    if axis not in HYPERVOLUME_AXES:
        raise ConfigError(f"unknown hypervolume axis '{axis}'; choose one of {', '.join(HYPERVOLUME_AXES)}")
    if len(exit_layers) != len(correct) or len(exit_layers) == 0:
        raise ConfigError(f"need one exit-layer array and one correctness array per seed, got "
                          f"{len(exit_layers)} and {len(correct)}")
    ex, co = [], []
    for k, (e, c) in enumerate(zip(exit_layers, correct)):
        e, c = np.asarray(e), _check_correct(c, f"correct[{k}]")
        if e.shape != c.shape:
            raise ConfigError(f"seed {k}: exit_layers has shape {e.shape} but correct has {c.shape}; both must be "
                              "[settings, test examples] from the same evaluation")
        if e.min() < 1 or e.max() > num_layers or not np.array_equal(e, np.round(e)):
            raise ConfigError(f"seed {k}: exit layers must be whole numbers in 1..{num_layers} (1-based), got "
                              f"{e.min()}..{e.max()}; convert 0-based exit indices with +1")
        if co and c.shape[1] != co[0].shape[1]:
            raise ConfigError(f"seed {k} covers {c.shape[1]} test examples but seed 0 covers {co[0].shape[1]}; "
                              "evaluate every seed on the same test examples")
        ex.append(e.astype(np.float64))
        co.append(c)
    return ex, co


def _hypervolumes(mean_exit: np.ndarray, metric: np.ndarray, sizes: list[int], num_layers: int,
                  ref_metric: float, axis: str) -> np.ndarray:
    """[B, sum S_k] mean exit layers and metrics -> [B, K] hypervolumes, one per seed's settings."""
    bounds = np.cumsum([0] + sizes)
    out = np.empty((mean_exit.shape[0], len(sizes)))
    for b in range(mean_exit.shape[0]):
        for k in range(len(sizes)):
            cols = slice(bounds[k], bounds[k + 1])
            points = [CurvePoint(policy="", setting=float(s), speedup=num_layers / e, metric=m, exit_histogram=())
                      for s, (e, m) in enumerate(zip(mean_exit[b, cols], metric[b, cols]))]
            out[b, k] = hypervolume(points, num_layers, ref_metric, axis=axis)
    return out


def point_values_hypervolume(exit_layers: list[np.ndarray], correct: list[np.ndarray], num_layers: int,
                             ref_metric: float, axis: str = "log") -> np.ndarray:
    """[K] per-seed hypervolumes of the test-set (speed-up, accuracy) points of that seed's settings."""
    ex, co = _check_curves(exit_layers, correct, num_layers, axis)
    mean_exit = np.concatenate([e.mean(axis=1) for e in ex])[None]
    metric = np.concatenate([c.mean(axis=1) for c in co])[None]
    return _hypervolumes(mean_exit, metric, [len(e) for e in ex], num_layers, ref_metric, axis)[0]


def hypervolume_replicates(exit_layers: list[np.ndarray], correct: list[np.ndarray], num_layers: int,
                           ref_metric: float, plan: ResamplePlan, axis: str = "log") -> np.ndarray:
    """[n_boot, K]: each seed's hypervolume under each example resample.

    Speed-up and accuracy of every setting are recomputed on the resampled examples (weighted
    means, one matmul for all seeds and settings); ref_metric stays fixed. The settings themselves
    stay those the seed's validation frontier chose: choosing them is not part of the test noise.
    """
    ex, co = _check_curves(exit_layers, correct, num_layers, axis)
    _check_plan_seeds(len(ex), plan, "exit_layers/correct")
    _check_plan_examples(co[0].shape[1], plan, "exit_layers/correct")
    mean_exit = _weighted_means(plan.example_weights, np.concatenate(ex))
    metric = _weighted_means(plan.example_weights, np.concatenate(co))
    return _hypervolumes(mean_exit, metric, [len(e) for e in ex], num_layers, ref_metric, axis)


# --- the comparison ---------------------------------------------------------------------------

def paired_difference(a_point: np.ndarray, b_point: np.ndarray, a_reps: np.ndarray, b_reps: np.ndarray,
                      plan: ResamplePlan, level: float = 0.95) -> Interval:
    """mean over seeds of a minus b, with a percentile interval from the shared (paired) plan.

    Replicate b averages a_reps[b, seed_draws[b, j]] over the drawn seed positions j, and the
    same positions of b_reps: seed 2 of arm a is compared with seed 2 of arm b.
    """
    a_point, b_point = np.asarray(a_point, np.float64), np.asarray(b_point, np.float64)
    a_reps, b_reps = np.asarray(a_reps, np.float64), np.asarray(b_reps, np.float64)
    if not 0.0 < level < 1.0:
        raise ConfigError(f"level must lie strictly between 0 and 1 (e.g. 0.95), got {level}")
    if a_point.ndim != 1 or a_point.shape != b_point.shape:
        raise ConfigError(f"arm a has point values of shape {a_point.shape} and arm b {b_point.shape}; train "
                          "every arm with the same seeds and pass one value per seed")
    if a_reps.shape != b_reps.shape:
        raise ConfigError(f"arm a has replicates of shape {a_reps.shape} and arm b {b_reps.shape}; compute both "
                          "with the same resample plan and the same seeds")
    if a_reps.shape != (plan.n_boot, a_point.shape[0]):
        raise ConfigError(f"replicates have shape {a_reps.shape} but {a_point.shape[0]} point values and a plan "
                          f"of {plan.n_boot} replicates need ({plan.n_boot}, {a_point.shape[0]}); compute the "
                          "replicates with this plan")
    _check_plan_seeds(a_point.shape[0], plan, "the point values")
    if not (np.isfinite(a_point).all() and np.isfinite(b_point).all()
            and np.isfinite(a_reps).all() and np.isfinite(b_reps).all()):
        raise ConfigError("point values or replicates are not finite (NaN/inf); check the evaluations")
    diffs = (np.take_along_axis(a_reps, plan.seed_draws, axis=1).mean(axis=1)
             - np.take_along_axis(b_reps, plan.seed_draws, axis=1).mean(axis=1))
    low, high = np.quantile(diffs, [(1 - level) / 2, 1 - (1 - level) / 2])
    return Interval(float(a_point.mean() - b_point.mean()), float(low), float(high), level)


def verdict(interval: Interval, better_is_higher: bool = True) -> str:
    """"better" / "worse" only when the whole interval is on one side of 0 (touching 0 is not enough)."""
    if interval.low > 0:
        return "better" if better_is_higher else "worse"
    if interval.high < 0:
        return "worse" if better_is_higher else "better"
    return "no detectable difference"


def describe(interval: Interval, scale: float = 100.0, unit: str = " points") -> str:
    """E.g. "+1.23 points [+0.40, +2.05]": a fraction difference times scale, signed, 2 decimals."""
    # + 0.0 turns an exact -0.0 into 0.0; a tiny negative stays "-0.00", in line with a "worse" verdict.
    est, low, high = (v * scale + 0.0 for v in (interval.estimate, interval.low, interval.high))
    return f"{est:+.2f}{unit} [{low:+.2f}, {high:+.2f}]"
