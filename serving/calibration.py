"""Calibrate a trained model's exit policy to a target, on validation, from the trainer's summary.

    policy = for_target_speedup(summary, 2.0)   # the most accurate setting at least 2x faster
    policy = for_max_drop(summary, 1.0)         # the fastest setting at most 1 point below full depth

``summary`` is the trainer's summary (``trainers.results.Summary``; a summary.json read with
``Summary.from_dict``): its ``validation_curve`` holds every exit-policy setting with its
validation speed-up and metric, and its ``frontier`` the validation Pareto front with the test
values at those settings. The target
selects on validation only; the test values are reported at the setting validation chose.

The result is the policy dict that ``policy.json`` of a served model holds::

    {"policy": "patience", "setting": 2.0, "delta": None, "target": {"target_speedup": 2.0},
     "validation_speedup": 2.03, "validation_metric": 0.74, "test_speedup": 2.01, "test_metric": 0.73}

Metric values are fractions (0.74); a drop ``d`` is in percentage points (``d = 1`` is 0.01).
An unreachable target raises ``trainers.errors.ConfigError`` naming what is reachable.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

from trainers.errors import ConfigError
from trainers.results import FrontierSetting, Summary

# Speed-ups and metrics are ratios of floats that went through JSON: a target of exactly 2.0 must
# accept a computed 1.9999999999 (the same tolerance as trainers.pareto.operating_point).
TOL = 1e-9
FULL_MODEL = "none"  # the policy that never exits early: speed-up 1, the last exit's metric


@dataclass(frozen=True)
class Setting:
    """One exit-policy setting of the validation curve."""

    policy: str
    setting: float
    delta: float | None
    speedup: float
    metric: float

    def order(self) -> tuple:
        """How ``trainers.pareto.pareto_front`` orders exact duplicates (it keeps the first)."""
        return (self.policy, self.setting, self.delta or 0.0)


def validation_curve(summary: Summary) -> list[Setting]:
    """Every setting of the validation curve (NaN metrics dropped), the full model always included."""
    if summary.validation_curve is not None:
        raw = [(p.policy, p.setting, p.delta, p.speedup, p.metric) for p in summary.validation_curve]
    else:  # an older summary: the frontier alone gives the same choice (see _on_front below)
        raw = [(p.policy, p.setting, p.delta, p.validation_speedup, p.validation_metric) for p in summary.frontier]
    points = [Setting(str(policy), float(setting), None if delta is None else float(delta), float(speedup), float(metric))
              for policy, setting, delta, speedup, metric in raw
              if not math.isnan(float(metric)) and not math.isnan(float(speedup))]
    if not any(p.policy == FULL_MODEL for p in points):
        points.append(Setting(FULL_MODEL, 0.0, None, 1.0, float(summary.validation.last_exit)))
    return points


def for_target_speedup(summary: Summary, target_speedup: float) -> dict[str, Any]:
    """The most accurate setting whose validation speed-up is >= ``target_speedup`` (ties: the faster)."""
    x = float(target_speedup)
    if not math.isfinite(x) or x < 1:
        raise ConfigError(f"target speed-up must be a number >= 1 (1 = the full model), got {target_speedup!r}")
    points = validation_curve(summary)
    eligible = [p for p in points if p.speedup >= x - TOL]
    if not eligible:
        fastest = _fastest(points)
        raise ConfigError(f"no exit-policy setting reaches a validation speed-up of {x:g}x; the largest reachable "
                          f"validation speed-up is {fastest.speedup:.2f}x ({_describe(fastest)})")
    chosen = min(eligible, key=lambda p: (-p.metric, -p.speedup, *p.order()))
    return _policy(summary, chosen, {"target_speedup": x})


def for_max_drop(summary: Summary, max_drop: float) -> dict[str, Any]:
    """The fastest setting whose validation metric is within ``max_drop`` percentage points of the
    full-depth model's (``summary.validation.last_exit``); ties: the more accurate.

    A negative ``max_drop`` asks for a setting that beats the full model by that much."""
    d = float(max_drop)
    if not math.isfinite(d):
        raise ConfigError(f"max drop must be a number of percentage points (e.g. 1 for 1 point), got {max_drop!r}")
    reference = float(summary.validation.last_exit)
    points = validation_curve(summary)
    floor = reference - d / 100.0
    eligible = [p for p in points if p.metric >= floor - TOL]
    if not eligible:
        best = min(points, key=lambda p: (-p.metric, -p.speedup, *p.order()))
        smallest = 100.0 * (reference - best.metric)
        raise ConfigError(f"no exit-policy setting is within {d:g} points of the full model's validation "
                          f"{summary.metric or 'metric'} ({100 * reference:.2f}); the smallest possible drop is "
                          f"{smallest:.2f} points ({_describe(best)}), and the largest reachable validation speed-up "
                          f"is {_fastest(points).speedup:.2f}x")
    chosen = min(eligible, key=lambda p: (-p.speedup, -p.metric, *p.order()))
    return _policy(summary, chosen, {"max_drop": d})


def largest_speedup(summary: Summary) -> float:
    """The largest validation speed-up any setting reaches."""
    return _fastest(validation_curve(summary)).speedup


def _fastest(points: list[Setting]) -> Setting:
    return min(points, key=lambda p: (-p.speedup, -p.metric, *p.order()))


def _describe(p: Setting) -> str:
    if p.policy == FULL_MODEL:
        return "the full model"
    text = f"{p.policy} {p.setting:g}"
    return text if p.delta is None else f"{text}, delta {p.delta:g}"


def _policy(summary: Summary, chosen: Setting, target: dict[str, float]) -> dict[str, Any]:
    # Why the chosen setting is always on the validation Pareto front (summary.frontier), so its
    # test values are there: the front drops a point only when another is at least as fast AND at
    # least as accurate (of exact duplicates it keeps the first in (policy, setting, delta) order).
    # - Target speed-up: any q dominating the chosen p is at least as fast, so it meets the target
    #   too, and at least as accurate; p maximizes (metric, speed-up), so q can only be an exact
    #   duplicate, and p is the duplicate the front keeps (same tie order).
    # - Max drop: any q dominating p is at least as accurate, so it is within the drop too, and at
    #   least as fast; p maximizes (speed-up, metric): again only an exact duplicate, p the kept one.
    # (The same argument says that calibrating on the frontier alone gives the same answer.)
    entry = _on_front(summary, chosen)
    if entry is None:
        raise ConfigError(
            f"calibration: the chosen setting ({_describe(chosen)}, validation speed-up {chosen.speedup:.4f}, "
            f"metric {chosen.metric:.4f}) is not on the summary's validation frontier; the summary is inconsistent "
            "(its 'frontier' and 'validation_curve' come from different evaluations, or it was edited)")
    return {"policy": chosen.policy, "setting": chosen.setting, "delta": chosen.delta, "target": dict(target),
            "validation_speedup": chosen.speedup, "validation_metric": chosen.metric,
            "test_speedup": float(entry.test_speedup), "test_metric": float(entry.test_metric)}


def _on_front(summary: Summary, chosen: Setting) -> FrontierSetting | None:
    for entry in summary.frontier:
        delta = entry.delta
        if (entry.policy == chosen.policy and _close(entry.setting, chosen.setting)
                and (delta is None) == (chosen.delta is None) and (delta is None or _close(delta, chosen.delta))
                and _close(entry.validation_speedup, chosen.speedup)
                and _close(entry.validation_metric, chosen.metric)):
            return entry
    if chosen.policy == FULL_MODEL and not any(e.policy == FULL_MODEL for e in summary.frontier) \
            and not any(p.policy == FULL_MODEL for p in summary.validation_curve or []):
        # a summary whose curve lacks the full model (validation_curve added it): test at full depth
        return FrontierSetting(FULL_MODEL, 0.0, None, 1.0, chosen.metric, 1.0, summary.test.last_exit)
    return None


def _close(a: float, b: float) -> bool:
    return math.isclose(float(a), float(b), rel_tol=1e-9, abs_tol=1e-12)
