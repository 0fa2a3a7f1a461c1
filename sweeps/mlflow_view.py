"""What the MLflow UI shows of a sweep's parent runs: few metrics, few params, a description, a colour.

The parent runs (an arm's search run, ``final/<arm>``, ``comparison``, ``final-comparison``) are
what a user compares in the UI, so they carry only what is compared: each arm's speed–accuracy
frontier under one key (``frontier/<metric>``, step = speed-up × 100, the metric as a fraction),
the headline figures under the keys the trial runs use, and the params a user would put side by
side. Everything else stays on the trial runs (per-exit curves, weight histories, every trainer
option) or goes into an artifact (``settings.json``, the final comparison's table). Together the
parent runs carry about 25 metric keys whatever the number of arms (a key per arm would make the
chart view grow with every arm: 193 keys on the demo before).

Colours: MLflow 3.17's UI takes a run's colour from its ``mlflow.runColor`` tag (the tag its own
colour picker writes), so each arm's runs get the colour its PNGs use (``sweeps.plots.arm_color``).
"""

from __future__ import annotations

import json
import math
import re
from pathlib import Path

import numpy as np
import pandas as pd

from sweeps.plots import arm_color, final_color, mean_frontier

TAG_NOTE = "mlflow.note.content"  # the run's description in the UI (markdown)
TAG_RUN_COLOR = "mlflow.runColor"  # read by the UI when it loads a run; its colour picker writes it
COMPARISON_COLOUR = "#b0b0b0"  # the comparison runs draw no frontier: a light grey that no arm has
TAG_LOGGED_ARTIFACTS = "mlflow.loggedArtifacts"  # the UI lists the tables named here (as log_table does)
SETTINGS_ARTIFACT = "settings.json"  # a parent run's settings that are not compared (resources, all options)
FINAL_TABLE_JSON = "final_table.json"  # the final comparison's per-arm statistics, MLflow table format

# The trainer options a user compares between arms (as params of the parent runs); the others go
# into settings.json. The searched values come on top (final runs: the retrained configuration).
COMPARED_OPTIONS = ("task", "model", "method", "scheme", "epochs", "train_subset", "max_length", "batch_size",
                    "precision")
# The sweep settings an arm's search run lists (register.py reads `objective`); resources go to settings.json.
COMPARED_SEARCH_SETTINGS = ("objective", "trials", "budget_epochs", "outer_step_cost", "seed")

# Which keys of a trained model's summary metrics (sweeps.tracking.summary_metrics) a parent run
# keeps: the headline figures and the frontier curves. Per-exit values and the learned weights'
# histories stay on the trial runs.
PARENT_SUMMARY_KEYS = ("val/hypervolume", "val/last_exit", "test/hypervolume", "test/last_exit")


def frontier_key(metric: str) -> str:
    """The metric key of a validation frontier (search runs) or a mean test frontier (final runs)."""
    return f"frontier/{metric}"


def frontier_test_key(metric: str) -> str:
    return f"frontier_test/{metric}"


def keeps_on_parent(key: str) -> bool:
    """Whether a summary metric key belongs on a parent run (see PARENT_SUMMARY_KEYS)."""
    if key in PARENT_SUMMARY_KEYS or key.startswith(("frontier/", "frontier_test/")):
        return True
    prefix, _, rest = key.partition("/")
    return prefix.startswith("op_") and rest in ("test_metric", "test_speedup")


def split_params(params: dict, compared: tuple[str, ...]) -> tuple[dict, dict]:
    """(the params a parent run lists, the rest for settings.json)."""
    shown = {k: v for k, v in params.items() if k in compared or k.startswith("space.")}
    return shown, {k: v for k, v in params.items() if k not in shown}


# ---------------------------------------------------------------------------- the final stage's runs
# A final run's row (sweeps.arm_statistics.ArmValues.row: means over seeds) under the keys a search
# run uses for the same figure, so the columns and charts line up; std over seeds as <key>_std.
def final_run_metrics(row: dict) -> dict[str, float]:
    names = {"last_exit_mean": "test/last_exit", "last_exit_std": "test/last_exit_std",
             "hypervolume_mean": "test/hypervolume", "hypervolume_std": "test/hypervolume_std",
             "wallclock_2x_median_mean": "op_2x/wallclock_speedup"}
    for column in row:  # the targets the row has (sweeps.arm_statistics.TARGETS): at_1.5x_mean, ...
        if found := re.fullmatch(r"at_(.+)x_mean", column):
            t = found.group(1)
            names.update({f"at_{t}x_mean": f"op_{t}x/test_metric", f"at_{t}x_std": f"op_{t}x/test_metric_std",
                          f"speedup_{t}x_mean": f"op_{t}x/test_speedup"})
    return {key: float(row[column]) for column, key in names.items()
            if isinstance(row.get(column), (int, float)) and math.isfinite(row[column])}


def mean_frontier_steps(curves: list[list[tuple[float, float]]], layers: int) -> list[tuple[int, float]]:
    """(step, value) of the mean over seeds of "best metric at this speed-up or faster", on 41
    speed-ups from 1x to ``layers``x (log-spaced); step = speed-up × 100, as the search runs' curves."""
    if not curves:
        return []
    grid = np.exp(np.linspace(0, math.log(layers), 41))
    mean = np.nanmean(mean_frontier(curves, grid), axis=0)
    return [(int(round(100 * s)), float(v)) for s, v in zip(grid, mean) if np.isfinite(v)]


def table_json(rows: list[dict], path: Path) -> Path:
    """``rows`` in the format of ``MlflowClient.log_table`` (pandas' "split" orient). Written and
    logged as a plain artifact: log_table appends to an existing file, so a resumed sweep's second
    comparison would double the rows."""
    pd.DataFrame(rows).to_json(path, orient="split", index=False)
    return path


def logged_tables(tags: dict[str, str], path: str) -> str:
    """The ``mlflow.loggedArtifacts`` tag value with ``path`` listed as a table (what log_table sets)."""
    try:
        listed = json.loads(tags.get(TAG_LOGGED_ARTIFACTS, "[]"))
    except json.JSONDecodeError:
        listed = []
    entry = {"path": path, "type": "table"}
    return json.dumps(listed if entry in listed else [*listed, entry])


# ---------------------------------------------------------------------------- descriptions
def artifact_link(experiment_id: str, run_id: str, path: str) -> str:
    """A link the UI opens on a run's artifact (relative: it works behind any host or prefix)."""
    return f"[{path}](#/experiments/{experiment_id}/runs/{run_id}/artifactPath/{path})"


def axes_line(metric: str) -> str:
    """The first line of every parent run's description (the UI shows the first lines folded)."""
    return (f"Frontier charts (`{frontier_key(metric)}`, `{frontier_test_key(metric)}`): x axis "
            f"**Step = speed-up × 100** (100 = the full model, 200 = twice as fast), y axis **{metric} as a "
            f"fraction** (0.80 = 80 %), in the PNGs too.")


def axes_details() -> str:
    return ("The \"step\" of a frontier is not a training step: \"Latest/Min/Max (step=…)\" in its metric "
            "table are its fastest, least and most accurate points. Select the arm runs and the `final/<arm>` runs "
            "to overlay them: each arm has one colour (darker for its final stage), the same as in the PNGs.")


def search_note(arm: str, metric: str, figure: str) -> str:
    return (f"**Search of arm `{arm}`**, figure {figure}. " + axes_line(metric) + "\n\n"
            f"Metrics: those of the arm's best trial (chosen on validation). `{frontier_key(metric)}`: its "
            f"speed–accuracy frontier on validation; `{frontier_test_key(metric)}`: the same exit-policy settings "
            f"on test. The trials are the nested runs `{arm}-NN`; the options not listed as params are in "
            "settings.json. " + axes_details())


def final_note(arm: str, metric: str, figure: str | None) -> str:
    where = f", figure {figure} (with the seeds' min–max band)" if figure else ""
    return (f"**Final stage of arm `{arm}`**{where}. " + axes_line(metric) + "\n\n"
            f"Its best search configuration retrained once per seed (the nested runs `final/{arm}-S`). "
            f"Metrics: means over seeds on test (`_std`: standard deviations). `{frontier_key(metric)}` and "
            f"`{frontier_test_key(metric)}` both hold the mean test frontier over seeds (best {metric} at that "
            "speed-up or faster), so it overlays with the search runs' curves in either chart. " + axes_details())


def comparison_note(metric: str, figure: str) -> str:
    return (f"**The search stage compared**, figure {figure} (each arm's best trial; validation left, test "
            "right). " + axes_line(metric) + "\n\nThe table: summary.md, summary.csv; every trial: trials.csv; "
            "the Optuna studies: optuna.journal (`optuna-dashboard optuna.journal`). " + axes_details())


def final_comparison_note(metric: str, figure: str, table: str) -> str:
    return (f"**The final stage compared**, figure {figure} (each arm's mean test frontier), per-arm statistics "
            f"and paired differences to the reference arm in {table}. " + axes_line(metric) + "\n\n"
            "The table also as final_table.csv and final_table.md; the verdicts as tags and in verdicts.md. "
            + axes_details())


def run_colour(arm: str, final: bool) -> str:
    return final_color(arm) if final else arm_color(arm)
