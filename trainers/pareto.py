"""The Pareto frontier of speed-accuracy points, its hypervolume and operating points (method doc, section 5).

The frontier keeps the non-dominated points; the hypervolume turns a frontier into one number in
[0, 1] so that training methods can be compared. No torch here: the sweep driver compares arms
and validates configs with these (the points come from ``trainers.frontier``).
"""

from __future__ import annotations

import math
from typing import Iterable

from trainers.errors import ConfigError
from trainers.results import CurvePoint

# Speed-ups are ratios of floats; a threshold of exactly 2.0 must accept a computed 1.9999999999.
_SPEEDUP_TOL = 1e-9


def pareto_front(points: Iterable[CurvePoint]) -> list[CurvePoint]:
    """Non-dominated points (maximize speed-up and metric), sorted by speed-up ascending.

    A point is dropped when another is at least as fast and at least as accurate; of exact
    duplicates the one first in (policy, setting) order is kept, so the result does not depend on
    the input order.
    """
    ordered = sorted((p for p in points if not math.isnan(p.metric)),
                     key=lambda p: (-p.speedup, -p.metric, p.policy, p.setting, p.delta or 0.0))
    front, best = [], -math.inf
    for p in ordered:  # fastest first: a point survives only by beating every faster point's metric
        if p.metric > best:
            front.append(p)
            best = p.metric
    return front[::-1]


HYPERVOLUME_AXES = ("log", "linear")


def hypervolume(points: Iterable[CurvePoint], num_layers: int, ref_metric: float,
                max_metric: float = 1.0, axis: str = "log") -> float:
    """Normalized area the frontier dominates above (speed-up 1, ref_metric), over speed-ups 1..L.

    With f(s) = best metric among points with speed-up >= s, the area is
    integral max(0, f(s) - ref) dx over x = log s (``axis="log"``, the default) or x = s
    (``"linear"``, the convention before 2026-11), divided by the box width (log L or L - 1) and
    height (max_metric - ref) to land in [0, 1]. On the log axis every doubling of speed-up weighs
    the same: 1-2x, where users operate, counts as much as 2-4x (docs/method.md, "Hypervolume").
    ref_metric is normally the majority baseline, so only what beats a constant model counts.
    """
    if not max_metric > ref_metric:
        raise ConfigError(f"hypervolume needs max_metric > ref_metric, got {max_metric} <= {ref_metric}")
    if axis not in HYPERVOLUME_AXES:
        raise ConfigError(f"unknown hypervolume axis '{axis}'; choose one of {', '.join(HYPERVOLUME_AXES)}")
    if num_layers <= 1:
        return 0.0
    x = math.log if axis == "log" else (lambda s: s)
    area, left = 0.0, 1.0
    # Along the front (ascending speed-up, descending metric), f(s) on (previous speed-up, this
    # speed-up] is this point's metric: it is the most accurate point at least this fast.
    for p in pareto_front(points):
        right = min(p.speedup, float(num_layers))
        if right > left:
            area += (x(right) - x(left)) * max(0.0, min(p.metric, max_metric) - ref_metric)
            left = right
    return area / ((x(float(num_layers)) - x(1.0)) * (max_metric - ref_metric))


def operating_point(val_points: Iterable[CurvePoint], min_speedup: float) -> CurvePoint | None:
    """The most accurate validation point with speed-up >= min_speedup (ties: the faster one)."""
    ok = [p for p in val_points if p.speedup >= min_speedup - _SPEEDUP_TOL and not math.isnan(p.metric)]
    return max(ok, key=lambda p: (p.metric, p.speedup)) if ok else None


def _format_setting(p: CurvePoint) -> str:
    if p.policy == "none":
        return "-"
    text = str(int(p.setting)) if p.policy == "patience" else f"{p.setting:.4g}"
    return text if p.delta is None else f"{text}, delta={p.delta:g}"


def curve_table(points: Iterable[CurvePoint], metric_name: str) -> str:
    """A plain-text table for the terminal: policy, setting, speed-up (1.37x), metric in %."""
    rows = [("policy", "setting", "speed-up", metric_name)]
    rows += [(p.policy, _format_setting(p), f"{p.speedup:.2f}x", f"{100 * p.metric:.2f}") for p in points]
    widths = [max(len(r[i]) for r in rows) for i in range(4)]
    # Text columns left-aligned, numbers right-aligned so decimal points line up.
    lines = ["  ".join([r[0].ljust(widths[0]), r[1].ljust(widths[1]),
                        r[2].rjust(widths[2]), r[3].rjust(widths[3])]).rstrip() for r in rows]
    lines.insert(1, "-" * len(lines[0]))
    return "\n".join(lines)
