"""The final stage end to end (real local Ray, DeepSpeed trainings and sqlite MLflow): each arm's
configuration chosen on validation is retrained with every seed, exactly as chosen, all arms x seeds
at once in one experiment; each training times its own early exit; the comparison lands in the
report and in MLflow; a resumed sweep retrains and re-times nothing."""

from __future__ import annotations

import math

import pandas as pd
import pytest

from test_sweep_helpers import PNG_MAGIC, client, history, run_sweep_cli, runs_by_role

pytestmark = pytest.mark.integration

ARMS = ["fixed-pabee", "clo"]
SEEDS = [1, 2]
# no ASHA: both trials of an arm complete, so which one is best is decided by validation alone
# final_max_concurrent 4: the 4 trainings share the 2 CPUs, so all arms x seeds run at once
ARGS = ["--set", "methods=[fixed-pabee,clo]", "--set", "trials=2", "--set", "scheduler=none", "--set", "final_seeds=[1,2]",
        "--set", "register=false", "--set", "final_train.train_subset=384", "--set", "final_train.epochs=2",
        "--set", "bootstrap=300", "--set", "timing_repeats=2", "--set", "timing_seeds=1", "--set", "final_max_concurrent=4"]


@pytest.fixture(scope="module")
def final(tmp_path_factory):
    root = tmp_path_factory.mktemp("sweeps")
    proc = run_sweep_cli(root, "final-test", *ARGS)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    mlflow_client, _ = client(root, "final-test")
    return {"root": root, "dir": root / "final-test", "proc": proc, "client": mlflow_client,
            "runs": runs_by_role(mlflow_client, "final-test")}


def _params(run) -> dict:
    return dict(run.data.params)


def test_final_stage_retrains_exactly_the_configurations_chosen_on_validation(final):
    runs = final["runs"]
    search_trials = [r for r in runs["trial"] if not r.data.tags["method"].startswith("final/")]
    for arm in ARMS:
        trials = [r for r in search_trials if r.data.tags["method"] == arm and r.data.tags["trial_status"] == "completed"]
        assert len(trials) == 2
        # chosen here, independently: the best validation objective (last epoch) of the arm's trials
        best = max(trials, key=lambda r: history(final["client"], r.info.run_id, "objective")[-1][1])
        seeds = [r for r in runs["trial"] if r.data.tags["method"] == f"final/{arm}"]
        assert sorted(int(_params(r)["seed"]) for r in seeds) == SEEDS
        parent = next(r for r in runs["final"] if r.data.tags["method"] == f"final/{arm}")
        assert parent.data.params["source_trial_id"] == best.data.tags["trial_id"]
        for run in seeds:
            assert run.data.tags["mlflow.parentRunId"] == parent.info.run_id
            retrained, chosen = _params(run), _params(best)
            # final_train: ours, and the default's whole test set
            overridden = {"seed": None, "train_subset": "384", "epochs": "2", "eval_subset": None, "wallclock_eval": None,
                          "wallclock_repeats": None}
            for key, value in chosen.items():
                if key in overridden:
                    continue
                assert retrained[key] == value, (arm, key)  # the searched values and every other option
            assert retrained["train_subset"] == "384" and retrained["epochs"] == "2"
            assert retrained["eval_subset"] == "None" and chosen["eval_subset"] == "128"
            assert retrained["method"] == best.data.params["method"]
            assert math.isfinite(run.data.metrics["test/hypervolume"])


def test_all_arms_and_seeds_train_at_once_and_time_themselves(final):
    seeds = [r for r in final["runs"]["trial"] if r.data.tags["method"].startswith("final/")]
    assert len(seeds) == len(ARMS) * len(SEEDS)
    latest_start, earliest_end = max(r.info.start_time for r in seeds), min(r.info.end_time for r in seeds)
    assert latest_start < earliest_end, "every final training should overlap every other (one experiment)"
    # timing_seeds=1: seed 1 of each arm timed its early exit in its own trial, after training; seed 2 did not
    for run in seeds:
        timed = run.data.params["seed"] == "1"
        assert run.data.params["wallclock_eval"] == str(timed)
        assert ("op_2x/wallclock_speedup" in run.data.metrics) == timed, run.info.run_name
        if timed:  # a ratio of two timings made while other trainings share the 2 cores: only its kind is certain
            assert math.isfinite(run.data.metrics["op_2x/wallclock_speedup"]) and run.data.metrics["op_2x/wallclock_speedup"] > 0
    table = pd.read_csv(final["dir"] / "report" / "final" / "final_table.csv").set_index("arm")
    for arm in ARMS:  # the driver reads the figure the trial measured
        timed_run = next(r for r in seeds if r.data.tags["method"] == f"final/{arm}" and r.data.params["seed"] == "1")
        assert table.loc[arm, "wallclock_2x_median_mean"] == pytest.approx(timed_run.data.metrics["op_2x/wallclock_speedup"])


def test_comparison_report_and_mlflow(final):
    out = final["proc"].stdout
    assert "Final stage: each best configuration retrained with seeds 1, 2" in out
    assert "Paired differences, clo minus each arm" in out
    folder = final["dir"] / "report" / "final"
    table = pd.read_csv(folder / "final_table.csv")
    assert list(table["arm"]) == ARMS
    assert (table["seeds"] == "1,2").all()
    for column in ("last_exit_mean", "at_2x_mean", "hypervolume_mean"):
        assert table[column].between(0, 1).all(), column
    pabee = table.set_index("arm").loc["fixed-pabee"]
    # the interval brackets its own estimate, and the verdict follows the interval
    assert pabee["diff_hypervolume_low"] <= pabee["diff_hypervolume"] <= pabee["diff_hypervolume_high"]
    expected = ("better" if pabee["diff_hypervolume_low"] > 0 else "worse" if pabee["diff_hypervolume_high"] < 0
                else "no detectable difference")
    assert pabee["verdict_hypervolume"] == expected
    assert f"clo vs fixed-pabee: {expected}" in out
    assert (folder / "final_frontiers.png").read_bytes()[:8] == PNG_MAGIC

    (comparison,) = final["runs"]["final_comparison"]
    assert comparison.data.tags["verdict/fixed-pabee"].startswith(f"clo vs fixed-pabee: {expected}")
    artifacts = {a.path for a in final["client"].list_artifacts(comparison.info.run_id)}
    assert {"final_table.md", "final_table.csv", "verdicts.md", "final_frontiers.png"} <= artifacts
    for arm in ARMS:
        curve = history(final["client"], comparison.info.run_id, f"final_frontier/{arm}")
        assert len(curve) >= 2 and curve[0][0] == 100  # from speed-up 1.00x on
        values = [v for _, v in curve]
        assert values == sorted(values, reverse=True)  # best metric at this speed-up or faster: never rises
        assert comparison.data.metrics[f"{arm}/hypervolume_mean"] == pytest.approx(
            table.set_index("arm").loc[arm, "hypervolume_mean"])
    for parent in final["runs"]["final"]:
        assert parent.info.status == "FINISHED" and parent.data.tags.get("finalized") == "true"


def test_resume_retrains_and_retimes_nothing(final):
    table = (final["dir"] / "report" / "final" / "final_table.csv").read_text()
    proc = run_sweep_cli(final["root"], "final-test", "--resume")
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "started" not in proc.stdout  # no search trial, no seed trained (or timed) again
    assert "final: the experiment in" in proc.stdout and "is finished; reusing its trials" in proc.stdout
    assert (final["dir"] / "report" / "final" / "final_table.csv").read_text() == table
    mlflow_client, _ = client(final["root"], "final-test")
    runs = runs_by_role(mlflow_client, "final-test")
    assert len([r for r in runs["trial"] if r.data.tags["method"].startswith("final/")]) == len(ARMS) * len(SEEDS)
    assert len(runs["final"]) == len(ARMS) and len(runs["final_comparison"]) == 1
