"""Figures for MLflow and the sweep report (matplotlib, no display needed)."""

from __future__ import annotations

import re
import zlib
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.colors  # noqa: E402
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from trainers.results import FrontierSetting, Summary  # noqa: E402

# One colour per arm, the same in every PNG and in the MLflow UI (sweeps.mlflow_view tags the runs
# with it): by name, never by position, so an arm keeps its colour whichever arms a sweep compares.
ARM_COLORS = {"fixed": "#8c564b", "fixed-uniform": "#7f7f7f", "fixed-pabee": "#2ca02c", "fixed-last": "#bcbd22",
              "bilevel": "#1f77b4", "clo": "#d62728"}
_OTHER_COLORS = ("#9467bd", "#e377c2", "#17becf", "#ff7f0e")  # an arm not listed: picked by a hash of its name


def arm_color(arm: str) -> str:
    """The arm's colour (hex), stable across sweeps and processes."""
    return ARM_COLORS.get(arm) or _OTHER_COLORS[zlib.crc32(arm.encode()) % len(_OTHER_COLORS)]


def final_color(arm: str) -> str:
    """The arm's colour for its final stage: the same hue, darker, so that the search curve and the
    final one of an arm read as one arm in an overlay and can still be told apart."""
    red, green, blue = matplotlib.colors.to_rgb(arm_color(arm))
    return matplotlib.colors.to_hex((0.6 * red, 0.6 * green, 0.6 * blue))


def weights_figure(names: list[str], final: list[float], num_exits: int, path: Path, title: str = "") -> Path:
    """Learned loss weights over the exits: CE weight per exit, and the KD weight matrix."""
    ce = np.full(num_exits, np.nan)
    kd = np.full((num_exits, num_exits), np.nan)
    for name, value in zip(names, final):
        if m := re.fullmatch(r"ce/(\d+)", name):
            ce[int(m.group(1)) - 1] = value
        elif m := re.fullmatch(r"kd/(\d+)<-(\d+)", name):
            kd[int(m.group(1)) - 1, int(m.group(2)) - 1] = value
    has_kd = not np.all(np.isnan(kd))
    fig, axes = plt.subplots(1, 2 if has_kd else 1, figsize=(10 if has_kd else 5, 3.8), squeeze=False)
    exits = np.arange(1, num_exits + 1)
    ax = axes[0, 0]
    ax.bar(exits, ce, color="#1f77b4")
    ax.axhline(1.0, color="k", lw=0.8, ls="--", label="uniform (1)")
    ax.set_xlabel("exit (layer)")
    ax.set_ylabel("weight w")
    ax.set_title("cross-entropy weight per exit")
    ax.set_xticks(exits)
    ax.legend(loc="best", fontsize=8)
    if has_kd:
        ax = axes[0, 1]
        image = ax.imshow(kd, cmap="viridis", origin="upper")
        ax.set_xticks(range(num_exits), [str(e) for e in exits])
        ax.set_yticks(range(num_exits), [str(e) for e in exits])
        ax.set_xlabel("teacher exit")
        ax.set_ylabel("student exit")
        ax.set_title("distillation weight (student ← teacher)")
        fig.colorbar(image, ax=ax, fraction=0.046)
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def _frontier_xy(frontier: list[FrontierSetting], split: str) -> tuple[list[float], list[float]]:
    points = sorted(((p.validation_speedup, p.validation_metric) if split == "validation" else (p.test_speedup, p.test_metric)
                     for p in frontier), key=lambda xy: xy[0])
    return [x for x, _ in points], [y for _, y in points]


def frontier_figure(summary: Summary, path: Path, title: str = "") -> Path:
    """One trial's speed-accuracy frontier: settings chosen on validation, shown on validation and test."""
    metric = summary.metric
    fig, ax = plt.subplots(figsize=(6, 4))
    for split, style in (("validation", "o-"), ("test", "s--")):
        x, y = _frontier_xy(summary.frontier, split)
        ax.plot(x, y, style, drawstyle="default", label=f"{split} (hypervolume {getattr(summary, split).hypervolume:.3f})")
    ax.axhline(summary.validation.reference_metric, color="k", lw=0.8, ls=":", label="majority class (validation)")
    ax.set_xlabel("speed-up (L / mean exit layer)")
    ax.set_ylabel(f"{metric} (fraction)")
    ax.set_title(title or "speed-accuracy frontier")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def pareto_overlay(best: dict[str, Summary], path: Path, title: str = "") -> Path:
    """The best trial of each arm, overlaid: validation frontier left, test (same settings) right."""
    fig, axes = plt.subplots(1, 2, figsize=(12, 4.6), sharey=True)
    metric = next(iter(best.values())).metric if best else "metric"
    for ax, split in zip(axes, ("validation", "test")):
        for arm, summary in best.items():
            x, y = _frontier_xy(summary.frontier, split)
            on = getattr(summary, split)
            ax.plot(x, y, "o-", color=arm_color(arm), ms=4,
                    label=f"{arm} (HV {on.hypervolume:.3f}, last exit {on.last_exit:.3f})")
        if best:
            ref = getattr(next(iter(best.values())), split).reference_metric
            ax.axhline(ref, color="k", lw=0.8, ls=":", label="majority class")
        ax.set_title(f"{split}" + (" (settings chosen on validation)" if split == "test" else " (Pareto front)"))
        ax.set_xlabel("speed-up (L / mean exit layer)")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8, loc="lower left")
    axes[0].set_ylabel(f"{metric} (fraction)")
    fig.suptitle(title or "best trial per arm: speed-accuracy frontiers")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def mean_frontier(curves: list[list[tuple[float, float]]], grid: np.ndarray) -> np.ndarray:
    """Per seed, f(s) = best metric among its points with speed-up >= s (NaN past its fastest);
    rows are seeds, columns the grid."""
    out = np.full((len(curves), len(grid)), np.nan)
    for k, points in enumerate(curves):
        for i, s in enumerate(grid):
            ok = [m for x, m in points if x >= s - 1e-9]
            if ok:
                out[k, i] = max(ok)
    return out


def final_frontiers_figure(curves: dict[str, list[list[tuple[float, float]]]], num_layers: int, path: Path,
                           metric: str, reference: float | None, title: str = "") -> Path:
    """Each arm's mean test frontier over its seeds, with the seeds' min-max as a band (log speed-up axis)."""
    grid = np.exp(np.linspace(0.0, np.log(num_layers), 121))
    fig, ax = plt.subplots(figsize=(7.5, 4.8))
    for arm, arm_curves in curves.items():
        values = mean_frontier(arm_curves, grid)
        with np.errstate(all="ignore"):
            import warnings

            with warnings.catch_warnings():
                warnings.simplefilter("ignore", RuntimeWarning)  # all-NaN columns past the fastest point
                mean, low, high = np.nanmean(values, 0), np.nanmin(values, 0), np.nanmax(values, 0)
        color = final_color(arm)
        ax.plot(grid, mean, color=color, drawstyle="steps-post", label=f"{arm} ({len(arm_curves)} seeds)")
        ax.fill_between(grid, low, high, color=color, alpha=0.15, step="post")
    if reference is not None:
        ax.axhline(reference, color="k", lw=0.8, ls=":", label="majority class")
    ax.set_xscale("log")
    ticks = [t for t in (1, 1.5, 2, 3, 4, 6, 8, 12, 16, 24) if t <= num_layers]
    ax.set_xticks(ticks, [f"{t:g}x" for t in ticks])
    ax.set_xlabel("test speed-up (L / mean exit layer), settings chosen on validation")
    ax.set_ylabel(f"best test {metric} at this speed-up or faster (fraction)")
    ax.set_title(title or "mean frontier over seeds")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="lower left")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
