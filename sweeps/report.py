"""Sweep-level outputs: the per-arm comparison (CSV + markdown), the Pareto overlay, the
Optuna storage, and the MLflow "comparison" run that holds them; and the final comparison's
tables, verdicts and files (its numbers come from ``sweeps.arm_statistics``)."""

from __future__ import annotations

import math
import shutil
import statistics as stats
from pathlib import Path

import pandas as pd

from sweeps.arm_statistics import TARGETS, ArmValues
from sweeps.budget import used_compute
from sweeps.plots import final_frontiers_figure, pareto_overlay
from sweeps.records import TrialRecord
from sweeps.statistics import Interval, describe, verdict


def trials_table(records: list[TrialRecord]) -> pd.DataFrame:
    rows = []
    for r in records:
        last = r.epochs[-1] if r.epochs else {}
        row = {"arm": r.arm, "trial": r.number, "trial_id": r.trial_id, "status": r.status,
               **{k: v for k, v in sorted(r.sampled.items())},
               "epochs": int(last.get("epoch", 0)) if last else 0,
               "objective": last.get("objective"), "val_hypervolume": last.get("val_hypervolume"),
               "val_last_exit": last.get("val_last_exit")}
        if r.summary:
            row.update({"test_hypervolume": r.summary.test.hypervolume, "test_last_exit": r.summary.test.last_exit,
                        "wall_time_s": r.summary.wall_time_s})
        rows.append(row)
    return pd.DataFrame(rows)


def compute_used(cfg, outcome) -> tuple[float, float]:
    """(fixed-epochs, training seconds) an arm's search used: every epoch its trials ran, each at
    the arm's cost per epoch (sweeps.budget), and the training time the trials measured."""
    cost = outcome.cost
    epochs = [(len(r.epochs), r.train) for r in outcome.records]
    seconds = sum(float(e["train_seconds"]) for r in outcome.records for e in r.epochs
                  if isinstance(e.get("train_seconds"), (int, float)) and math.isfinite(e["train_seconds"]))
    return sum(used_compute(n, train, cost) for n, train in epochs), seconds


def summary_table(result) -> pd.DataFrame:
    """One row per arm: its best trial (chosen on validation) and what that trial does on test.

    Metric columns are fractions (the markdown shows them in %); ``@Nx`` is the test metric at the
    exit-policy setting validation chose for an N-times speed-up, with the test speed-up it reached.
    """
    rows = []
    for outcome in result.outcomes:
        counts = {s: sum(r.status == s for r in outcome.records) for s in ("completed", "stopped_early", "error")}
        used, seconds = compute_used(result.cfg, outcome)
        row = {"arm": outcome.arm,
               "trials done/stopped/failed": f"{counts['completed']}/{counts['stopped_early']}/{counts['error']}",
               "compute used": f"{used:.1f}" + (f" / {result.cfg.budget_epochs:g}" if result.cfg.budget_epochs else ""),
               "train min": f"{seconds / 60:.1f}"}
        best = outcome.best
        if best is not None and best.summary:
            s = best.summary
            row.update({
                "best trial": f"#{best.number}",
                "searched": ", ".join(f"{k}={v:.2g}" if isinstance(v, float) else f"{k}={v}" for k, v in sorted(best.sampled.items())),
                "val HV": s.validation.hypervolume, "test HV": s.test.hypervolume,
                "val last exit": s.validation.last_exit, "test last exit": s.test.last_exit,
            })
            for target in (1.5, 2.0):
                op = s.operating_point(target)
                row[f"test @{target:g}x"] = op.test_metric if op else None
                row[f"speed-up @{target:g}x"] = op.test_speedup if op else None
        rows.append(row)
    return pd.DataFrame(rows)


def to_markdown(frame: pd.DataFrame, metric: str) -> str:
    def cell(column: str, row) -> str:
        value = row[column]
        if value is None or (isinstance(value, float) and pd.isna(value)):
            return "–"
        if column.startswith("test @"):
            speed = row.get(column.replace("test @", "speed-up @"))
            return f"{100 * value:.1f}" + (f" ({speed:.2f}x)" if speed is not None and not pd.isna(speed) else "")
        if isinstance(value, float):
            return f"{value:.3f}" if "HV" in column else f"{100 * value:.1f}"
        return str(value)

    columns = [c for c in frame.columns if not c.startswith("speed-up @")]
    lines = ["| " + " | ".join(columns) + " |", "|" + "|".join("---" for _ in columns) + "|"]
    for _, row in frame.iterrows():
        lines.append("| " + " | ".join(cell(c, row) for c in columns) + " |")
    note = (f"\nCompute used: training compute of the arm's trials in fixed-epochs (an epoch of bilevel/clo costs "
            "1 + outer_step_cost/outer_every), with the budget after the slash; train min: the trials' measured training time.\n"
            f"HV: hypervolume of the speed-accuracy frontier (0-1). Last exit and @Nx: {metric} in %; @Nx is measured "
            "at the exit-policy setting chosen on validation for an N-times speed-up, with the test speed-up it reached "
            "in brackets. The best trial is chosen on validation; test values are only reported.\n")
    return "\n".join(lines) + "\n" + note


def write_report(result, tracker) -> None:
    cfg, out = result.cfg, result.report_dir
    best = {o.arm: o.best.summary for o in result.outcomes if o.best is not None and o.best.summary}
    metric = next(iter(best.values())).metric if best else "metric"
    frame = summary_table(result)
    frame.to_csv(out / "summary.csv", index=False)
    markdown = to_markdown(frame, metric)
    (out / "summary.md").write_text(f"# Sweep {cfg.name}\n\n" + markdown)
    all_trials = pd.concat([trials_table(o.records) for o in result.outcomes], ignore_index=True)
    all_trials.to_csv(out / "trials.csv", index=False)
    files = {"summary_csv": out / "summary.csv", "summary_md": out / "summary.md", "trials_csv": out / "trials.csv"}
    if best:
        files["frontiers_png"] = pareto_overlay(best, out / "frontiers.png",
                                                title=f"sweep {cfg.name}: best trial per arm ({cfg.train.get('task', '')})")
    journal = cfg.optuna_journal
    if journal.is_file():  # a copy: the live file stays where OptunaSearch writes it
        shutil.copy2(journal, out / journal.name)
        files["optuna_journal"] = journal
    # the arms' figures are in summary.csv (the UI previews it): a metric per arm would grow the
    # chart view with every arm
    metrics = {"wall_time_s": result.wall_time_s}
    upload = [out / "summary.csv", out / "summary.md", out / "trials.csv", cfg.sweep_dir / "sweep.json"]
    if "frontiers_png" in files:
        upload.append(files["frontiers_png"])
    if (out / journal.name).is_file():
        upload.append(out / journal.name)
    tracker.comparison(upload, metrics, tags={"sweep": cfg.name}, metric=metric)
    result.files = files
    result.table = markdown


# ---------------------------------------------------------------------------- the final comparison
def mean_std(values: list[float | None], scale: float = 1.0, digits: int = 1, suffix: str = "") -> str:
    """``mean ± std`` of the values that are numbers (one value: itself; none: a dash)."""
    values = [v * scale for v in values if v is not None and not math.isnan(v)]
    if not values:
        return "–"
    if len(values) == 1:
        return f"{values[0]:.{digits}f}{suffix}"
    return f"{stats.mean(values):.{digits}f} ± {stats.stdev(values):.{digits}f}{suffix}"


def final_table(arms: list[ArmValues], metric: str) -> str:
    """Markdown: per arm, mean ± std over seeds of every figure (metrics in %)."""
    lines = [f"| arm | seeds | last-exit {metric} (%) | " + " | ".join(f"{metric} @{t:g}x (%) [speed-up]" for t in TARGETS)
             + " | test hypervolume | wall-clock speed-up @2x | train s / seed |",
             "|" + "---|" * (6 + len(TARGETS))]
    for values in arms:
        cells = [values.arm, f"{len(values.seeds)}/{values.runs}", mean_std(values.last_exit, 100)]
        cells += [f"{mean_std(values.accuracy[t], 100)} [{mean_std(values.speedup[t], 1, 2, 'x')}]" for t in TARGETS]
        cells.append(mean_std(values.hypervolume, 1, 3))
        timed_seeds = [str(seed) for seed, wall in zip(values.seeds, values.wallclock) if wall is not None]
        cells.append(mean_std(values.wallclock, 1, 2, "x")
                     + (f" (seed {', '.join(timed_seeds)})" if timed_seeds and len(timed_seeds) < len(values.seeds) else ""))
        cells.append(mean_std(values.train_seconds, 1, 0))
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def differences_table(reference: str, differences: dict[str, dict[str, Interval]]) -> str:
    """Markdown: the reference arm minus each other arm, estimate [95 % interval] in points, and the verdict."""
    lines = [f"| {reference} minus | last exit | " + " | ".join(f"@{t:g}x" for t in TARGETS)
             + " | hypervolume (×100) | verdict (hypervolume) |", "|" + "---|" * (4 + len(TARGETS))]
    for arm, intervals in differences.items():
        cells = [arm, _cell(intervals["last_exit"])]
        cells += [_cell(intervals[f"at_{t:g}x"]) if f"at_{t:g}x" in intervals else "–" for t in TARGETS]
        cells += [_cell(intervals["hypervolume"]), verdict(intervals["hypervolume"])]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def verdict_line(reference: str, arm: str, intervals: dict[str, Interval], metric: str) -> str:
    """One line: the reference arm against ``arm`` on hypervolume (and on the metric at 2x)."""
    hv, at2 = intervals["hypervolume"], intervals.get("at_2x")
    return (f"{reference} vs {arm}: {verdict(hv)} (hypervolume {describe(hv)}"
            + (f"; {metric} at 2x {describe(at2)}, {verdict(at2)}" if at2 else "") + ")")


def _cell(interval: Interval) -> str:
    return f"{100 * interval.estimate:+.2f} [{100 * interval.low:+.2f}, {100 * interval.high:+.2f}]"


def write_final_report(out: Path, table: str, differences: str, rows: list[dict], verdicts: dict[str, str],
                       curves: dict[str, list], layers: int, metric: str, reference_metric: float | None,
                       title: str) -> dict[str, Path]:
    """``out``/final_table.md (table and differences), final_table.csv (``rows``), verdicts.md and
    final_frontiers.png (each arm's mean test frontier with a min-max band over seeds)."""
    files = {"table_md": out / "final_table.md", "table_csv": out / "final_table.csv",
             "verdicts_md": out / "verdicts.md", "frontiers_png": out / "final_frontiers.png"}
    files["table_md"].write_text(table + "\n\n" + differences + "\n")
    pd.DataFrame(rows).to_csv(files["table_csv"], index=False)
    files["verdicts_md"].write_text("\n".join(f"- {line}" for line in verdicts.values()) + "\n")
    final_frontiers_figure(curves, layers, files["frontiers_png"], metric, reference_metric, title=title)
    return files
