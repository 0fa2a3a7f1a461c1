"""What the MLflow UI shows of a sweep's parent runs (sweeps.mlflow_view), on a real sqlite store
without Ray: the final comparison's statistics as one table artifact (not written twice by a
resumed sweep), each final run's means and mean frontier under the search runs' keys, descriptions
that name the axes and link figures, one stable colour per arm. The whole sweep is checked in
tests/test_final_stage.py."""

from __future__ import annotations

import json

import pytest

from sweeps import mlflow_view as view
from sweeps.plots import ARM_COLORS, arm_color, final_color
from sweeps.tracking import Tracker
from trainers.layout import STAGE_FINAL, STAGE_SEARCH

ROWS = [  # two arms' rows as sweeps.arm_statistics.ArmValues.row writes them (a failed figure: None)
    {"arm": "fixed-pabee", "seeds": "1,2", "failed_seeds": "", "last_exit_mean": 0.71, "last_exit_std": 0.01,
     "at_1.5x_mean": 0.70, "at_1.5x_std": 0.02, "speedup_1.5x_mean": 1.6, "at_2x_mean": 0.68, "at_2x_std": 0.03,
     "speedup_2x_mean": 2.1, "at_3x_mean": None, "at_3x_std": None, "speedup_3x_mean": None,
     "hypervolume_mean": 0.41, "hypervolume_std": 0.02, "wallclock_2x_median_mean": 1.8, "wallclock_2x_min": 1.7,
     "wallclock_2x_max": 1.9, "train_seconds_mean": 30.0, "diff_hypervolume": 0.01, "diff_hypervolume_low": -0.01,
     "diff_hypervolume_high": 0.03, "verdict_hypervolume": "no detectable difference"},
    {"arm": "clo", "seeds": "1,2", "failed_seeds": "", "last_exit_mean": 0.72, "last_exit_std": 0.0,
     "at_1.5x_mean": 0.71, "at_1.5x_std": 0.01, "speedup_1.5x_mean": 1.5, "at_2x_mean": 0.69, "at_2x_std": 0.01,
     "speedup_2x_mean": 2.0, "at_3x_mean": 0.6, "at_3x_std": 0.02, "speedup_3x_mean": 3.0,
     "hypervolume_mean": 0.42, "hypervolume_std": 0.01, "wallclock_2x_median_mean": None, "wallclock_2x_min": None,
     "wallclock_2x_max": None, "train_seconds_mean": 31.0},
]
CURVES = {"fixed-pabee": [[(1.0, 0.71), (2.0, 0.68), (3.0, 0.5)], [(1.0, 0.72), (1.5, 0.70)]],
          "clo": [[(1.0, 0.72), (2.0, 0.69)], [(1.0, 0.72), (2.0, 0.70), (3.0, 0.6)]]}


@pytest.fixture
def tracker(tmp_path):
    return Tracker(f"sqlite:///{tmp_path / 'mlflow.db'}", "view-test", artifact_location=str(tmp_path / "artifacts"))


def test_final_comparison_is_a_table_and_the_final_runs_overlay_the_search_runs(tracker, tmp_path):
    search = {arm: tracker.arm_run(arm, STAGE_SEARCH, params={"objective": "hypervolume"}, tags={},
                                   settings={"sweep": {"max_concurrent": 2}}) for arm in CURVES}
    finals = {arm: tracker.arm_run(arm, STAGE_FINAL, params={"seeds": "1,2"}, tags={}) for arm in CURVES}
    figure = tmp_path / "final_frontiers.png"
    figure.write_bytes(b"\x89PNG\r\n\x1a\n")
    verdicts = {"fixed-pabee": "clo vs fixed-pabee: no detectable difference (...)"}
    for _ in range(2):  # a resumed sweep compares again: the table is replaced, never appended to
        run_id = tracker.final_comparison("view-test", {"reference_arm": "clo"}, ROWS, verdicts, [figure], CURVES, 3,
                                          finals, "accuracy")
    client = tracker.client
    comparison = client.get_run(run_id)
    assert comparison.data.metrics == {}
    # MLflow's table format: MlflowClient.load_table reads it (Tracker set the process-wide tracking URI it searches)
    table = client.load_table(tracker.experiment_id, view.FINAL_TABLE_JSON, [run_id])
    assert list(table["arm"]) == ["fixed-pabee", "clo"]  # once, not twice
    assert table.set_index("arm").loc["clo", "hypervolume_mean"] == pytest.approx(0.42)
    assert json.loads(comparison.data.tags[view.TAG_LOGGED_ARTIFACTS]) == [{"path": "final_table.json", "type": "table"}]

    for arm, final_id in finals.items():
        run = client.get_run(final_id)
        metrics, row = run.data.metrics, next(r for r in ROWS if r["arm"] == arm)
        assert metrics["test/hypervolume"] == pytest.approx(row["hypervolume_mean"])
        assert metrics["op_2x/test_metric"] == pytest.approx(row["at_2x_mean"])
        assert metrics["op_1.5x/test_speedup"] == pytest.approx(row["speedup_1.5x_mean"])
        assert ("op_2x/wallclock_speedup" in metrics) == (row["wallclock_2x_median_mean"] is not None)
        assert "op_3x/test_metric" in metrics or row["at_3x_mean"] is None  # a missing figure is no metric
        for key in ("frontier/accuracy", "frontier_test/accuracy"):
            curve = sorted((m.step, m.value) for m in client.get_metric_history(final_id, key))
            at_1x = sum(max(m for _, m in seed) for seed in CURVES[arm]) / len(CURVES[arm])  # every point is >= 1x
            assert curve[0] == (100, pytest.approx(at_1x)) and curve[-1][0] <= 300
            assert [v for _, v in curve] == sorted((v for _, v in curve), reverse=True)
        assert run.data.tags[view.TAG_RUN_COLOR] == final_color(arm)
        assert client.get_run(search[arm]).data.tags[view.TAG_RUN_COLOR] == arm_color(arm)
        note = run.data.tags[view.TAG_NOTE]
        assert "Step = speed-up × 100" in note and "accuracy as a fraction" in note
        assert f"/runs/{run_id}/artifactPath/final_frontiers.png)" in note  # the figure on the comparison run
    assert client.get_run(finals["fixed-pabee"]).data.tags["verdict"] == verdicts["fixed-pabee"]
    settings = json.loads(open(client.download_artifacts(search["clo"], view.SETTINGS_ARTIFACT, str(tmp_path))).read())
    assert settings == {"sweep": {"max_concurrent": 2}}
    keys = set().union(*(client.get_run(r).data.metrics for r in [*search.values(), *finals.values(), run_id]))
    assert len(keys) <= 40


def test_parent_runs_keep_headline_metrics_and_the_frontier_only():
    kept = [k for k in ("val/hypervolume", "test/last_exit", "op_2x/test_metric", "op_1.5x/test_speedup",
                        "frontier/accuracy", "frontier_test/f1") if view.keeps_on_parent(k)]
    assert len(kept) == 6
    for key in ("val/exit_3", "weight/ce_1", "weight/kd_2_from_3", "op_2x/validation_metric", "test/reference_accuracy",
                "wall_time_s"):
        assert not view.keeps_on_parent(key), key
    shown, rest = view.split_params({"task": "mr", "lr": 1e-4, "space.lr": "loguniform(1e-5, 1e-3)", "threads": 1},
                                    view.COMPARED_OPTIONS)
    assert shown == {"task": "mr", "space.lr": "loguniform(1e-5, 1e-3)"} and rest == {"lr": 1e-4, "threads": 1}


def test_every_arm_has_its_own_stable_colour():
    arms = list(ARM_COLORS)
    assert len({arm_color(a) for a in arms}) == len(arms)  # no two arms share a colour
    assert arm_color("my-arm") == arm_color("my-arm")  # an unlisted arm: by name, not by position
    assert all(final_color(a) != arm_color(a) and final_color(a).startswith("#") for a in [*arms, "my-arm"])
