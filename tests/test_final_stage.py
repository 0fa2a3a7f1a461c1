"""The final stage end to end (real local Ray, DeepSpeed trainings and sqlite MLflow): each arm's
configuration chosen on validation is retrained with every seed, exactly as chosen, all arms x seeds
at once in one experiment; no training times itself: the timing phase times the models, interleaved,
after the last training ended; the comparison lands in the report and in MLflow; a resumed sweep
retrains and re-times nothing. The sweep is the session's tiny MR study (tests/conftest.py
``study_sweep``, which the studies test reads too). And, without Ray, the interleaved timing of
two tiny models."""

from __future__ import annotations

import json
import math
import re
import statistics
from pathlib import Path

import pandas as pd
import pytest
import torch

from conftest import STUDY_ARMS as ARMS
from conftest import STUDY_SEEDS as SEEDS
from test_sweep_helpers import PNG_MAGIC, client, history, run_sweep_cli, runs_by_role


@pytest.fixture(scope="module")
def final(study_sweep):
    """The session's tiny MR study (tests/conftest.py): a whole sweep with its final stage."""
    return study_sweep


@pytest.fixture(scope="module")
def resumed(final):
    """``platform/sweep.py --resume`` on the finished study: the CLI's closing print (the study
    script prints its own), and the files a resume must leave as they were, read before it."""
    folder = final["dir"] / "report" / "final"
    before = {name: (folder / name).read_text() for name in ("final_table.csv", "timing.json")}
    proc = run_sweep_cli(final["root"], final["name"], "--resume")
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return {"proc": proc, "before": before}


def _params(run) -> dict:
    return dict(run.data.params)


@pytest.mark.integration
def test_final_stage_retrains_exactly_the_configurations_chosen_on_validation(final):
    runs = final["runs"]
    search_trials = [r for r in runs["trial"] if r.data.tags["stage"] == "search"]
    for arm in ARMS:
        trials = [r for r in search_trials if r.data.tags["arm"] == arm and r.data.tags["trial_status"] == "completed"]
        assert len(trials) == 2
        # chosen here, independently: the best validation objective (last epoch) of the arm's trials
        best = max(trials, key=lambda r: history(final["client"], r.info.run_id, "objective")[-1][1])
        seeds = [r for r in runs["trial"] if r.data.tags["arm"] == arm and r.data.tags["stage"] == "final"]
        assert sorted(int(_params(r)["seed"]) for r in seeds) == SEEDS
        parent = next(r for r in runs["final"] if r.data.tags["arm"] == arm and r.data.tags["stage"] == "final")
        assert parent.info.run_name == f"final/{arm}"
        assert parent.data.params["source_trial_id"] == best.data.tags["trial_id"]
        for run in seeds:
            assert run.data.tags["mlflow.parentRunId"] == parent.info.run_id
            retrained, chosen = _params(run), _params(best)
            # final_train: ours, and the default's whole test set
            overridden = {"seed": None, "train_subset": "384", "epochs": "2", "eval_subset": None, "wallclock_eval": None}
            for key, value in chosen.items():
                if key in overridden:
                    continue
                assert retrained[key] == value, (arm, key)  # the searched values and every other option
            assert retrained["train_subset"] == "384" and retrained["epochs"] == "2"
            assert retrained["eval_subset"] == "None" and chosen["eval_subset"] == "128"
            assert retrained["method"] == best.data.params["method"]
            assert retrained["wallclock_eval"] == "False"  # no final training times itself
            assert math.isfinite(run.data.metrics["test/hypervolume"])


def _timing(final) -> dict:
    return json.loads((final["dir"] / "report" / "final" / "timing.json").read_text())


def _training_windows(final) -> dict[str, tuple[float, float]]:
    """trial id -> (trained_from, trained_until), from the final report in Tune's result.json of each trial."""
    windows = {}
    for results in (final["dir"] / "ray" / "final").glob("*/result.json"):
        rows = [json.loads(line) for line in results.read_text().splitlines() if line.strip()]
        last = next(r for r in reversed(rows) if r.get("final_report") is True)
        windows[last["trial_id"]] = (last["trained_from"], last["trained_until"])
    return windows


def _final_trials(final) -> list:
    return [r for r in final["runs"]["trial"] if r.data.tags["stage"] == "final"]


@pytest.mark.integration
def test_all_arms_and_seeds_train_at_once_and_time_nothing_themselves(final):
    seeds = _final_trials(final)
    assert len(seeds) == len(ARMS) * len(SEEDS)
    latest_start, earliest_end = max(r.info.start_time for r in seeds), min(r.info.end_time for r in seeds)
    assert latest_start < earliest_end, "every final training should overlap every other (one experiment)"
    windows = _training_windows(final)
    assert set(windows) == {r.data.tags["trial_id"] for r in seeds}
    for run in seeds:
        assert run.data.params["wallclock_eval"] == "False"
        summary = json.loads(Path(final["client"].download_artifacts(run.info.run_id, "summary.json")).read_text())
        # the trials' own summaries carry no wall-clock figure: only the timing phase measures one
        assert all(op["wallclock_speedup"] is None for op in summary["operating_points"]), run.info.run_name
        started, ended = windows[run.data.tags["trial_id"]]
        assert started < ended


@pytest.mark.integration
def test_trial_records_carry_the_training_windows(final):
    """The driver's records (rebuilt from Tune's experiment, as sweeps.experiment does) hold each
    trial's training window as Tune's result.json has it."""
    from ray.tune import ExperimentAnalysis

    from sweeps.records import build_record

    storage = final["dir"] / "ray"
    analysis = ExperimentAnalysis(str(storage / "final"))
    windows = _training_windows(final)
    for trial in analysis.trials:
        record = build_record(trial, analysis.trial_dataframes[trial.trial_id].to_dict("records"),
                              storage_path=str(storage))
        assert (record.trained_from, record.trained_until) == pytest.approx(windows[trial.trial_id])


@pytest.mark.integration
def test_timing_runs_after_every_training_and_interleaves_the_arms(final):
    timing, windows = _timing(final), _training_windows(final)
    passes = timing["passes"]
    assert passes and timing["repeats"] == 2 and timing["device"] == "cpu"
    node_cpus = float(re.search(r"local Ray \((\d+) CPU", final["proc"].stdout).group(1))
    assert timing["cpus"] == timing["threads"] == node_cpus  # every CPU of the (one) node: nothing else ran beside it
    for p in passes:
        assert p["start"] <= p["end"]
        for trained_from, trained_until in windows.values():  # no timing window overlaps a training window
            assert p["end"] < trained_from or p["start"] > trained_until
    last_training = max(until for _, until in windows.values())
    assert timing["started"] > last_training and min(p["start"] for p in passes) > last_training
    assert timing["started"] <= min(p["start"] for p in passes) and max(p["end"] for p in passes) <= timing["ended"]
    # timing_seeds=1: seed 1 of each arm, arms in `arms` order, passes A B A B ... (full, then early exit)
    seed_one = {r.data.tags["arm"]: r.data.tags["trial_id"]
                for r in _final_trials(final) if r.data.params["seed"] == "1"}
    order = [seed_one[arm] for arm in ARMS]
    assert list(timing["models"]) and set(timing["models"]) == set(order)
    assert [(p["trial_id"], p["kind"], p["repeat"]) for p in passes] == [
        (trial_id, kind, repeat) for repeat in range(2) for trial_id in order for kind in ("full", "early_exit")]
    for earlier, later in zip(passes, passes[1:]):  # one pass at a time, in that order
        assert earlier["end"] <= later["start"]


@pytest.mark.integration
def test_the_table_and_mlflow_show_the_timing_phase_medians(final):
    timing = _timing(final)
    table = pd.read_csv(final["dir"] / "report" / "final" / "final_table.csv").set_index("arm")
    runs = {r.data.tags["trial_id"]: r for r in _final_trials(final)}
    for trial_id, model in timing["models"].items():
        seconds = {(p["repeat"], p["kind"]): p["seconds"] for p in timing["passes"] if p["trial_id"] == trial_id}
        assert model["ratios"] == pytest.approx([seconds[r, "full"] / seconds[r, "early_exit"] for r in range(2)])
        assert model["median"] == pytest.approx(statistics.median(model["ratios"]))
        assert model["min"] <= model["q1"] <= model["median"] <= model["q3"] <= model["max"]
        assert model["min"] == min(model["ratios"]) and model["max"] == max(model["ratios"])
        arm = model["arm"]
        assert table.loc[arm, "wallclock_2x_median_mean"] == pytest.approx(model["median"])  # one timed seed per arm
        assert table.loc[arm, "wallclock_2x_min"] == pytest.approx(model["min"])
        assert table.loc[arm, "wallclock_2x_max"] == pytest.approx(model["max"])
        metrics = runs[trial_id].data.metrics  # the timed seed's MLflow run shows the median, as before
        assert metrics["op_2x/wallclock_speedup"] == pytest.approx(model["median"])
        assert metrics["op_2x/wallclock_speedup_min"] == pytest.approx(model["min"])
    untimed = [r for r in runs.values() if r.data.params["seed"] == "2"]
    assert untimed and all("op_2x/wallclock_speedup" not in r.data.metrics for r in untimed)
    (comparison,) = final["runs"]["final_comparison"]
    assert "timing.json" in {a.path for a in final["client"].list_artifacts(comparison.info.run_id)}
    for arm in ARMS:  # each arm's final run shows the mean of its timed seeds' medians
        parent = next(r for r in final["runs"]["final"] if r.data.tags["arm"] == arm)
        assert parent.data.metrics["op_2x/wallclock_speedup"] == pytest.approx(table.loc[arm, "wallclock_2x_median_mean"])
    assert "final timing: 2 model(s) x 2 repeats" in final["proc"].stdout


@pytest.mark.integration
def test_comparison_report_and_mlflow(final, resumed):
    out, printed = final["proc"].stdout, resumed["proc"].stdout  # the sweep's progress; the CLI's closing print
    assert "Final stage: each best configuration retrained with seeds 1, 2" in printed
    assert "Paired differences, clo minus each arm" in printed
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
    assert f"clo vs fixed-pabee: {expected}" in out and f"clo vs fixed-pabee: {expected}" in printed
    assert (folder / "final_frontiers.png").read_bytes()[:8] == PNG_MAGIC

    (comparison,) = final["runs"]["final_comparison"]
    assert comparison.data.tags["verdict/fixed-pabee"].startswith(f"clo vs fixed-pabee: {expected}")
    artifacts = {a.path for a in final["client"].list_artifacts(comparison.info.run_id)}
    assert {"final_table.json", "final_table.md", "final_table.csv", "verdicts.md", "final_frontiers.png"} <= artifacts
    assert comparison.data.metrics == {}  # the statistics are a table, not hundreds of metrics
    # the table in MLflow's own table format (what mlflow.log_table writes), listed as a table for the UI
    # (read here without MlflowClient.load_table: it searches the process-wide tracking URI, not the client's)
    logged = pd.read_json(final["client"].download_artifacts(comparison.info.run_id, "final_table.json",
                                                             str(final["dir"])), orient="split")
    assert list(logged["arm"]) == ARMS
    assert {"path": "final_table.json", "type": "table"} in json.loads(comparison.data.tags["mlflow.loggedArtifacts"])
    by_arm = table.set_index("arm")
    for arm in ARMS:
        assert logged.set_index("arm").loc[arm, "hypervolume_mean"] == pytest.approx(by_arm.loc[arm, "hypervolume_mean"])
        parent = next(r for r in final["runs"]["final"] if r.data.tags["arm"] == arm)
        # the final run: its means under the search runs' keys, and its mean test frontier as theirs
        assert parent.data.metrics["test/hypervolume"] == pytest.approx(by_arm.loc[arm, "hypervolume_mean"])
        assert parent.data.metrics["op_2x/test_metric"] == pytest.approx(by_arm.loc[arm, "at_2x_mean"])
        for key in ("frontier/accuracy", "frontier_test/accuracy"):
            curve = history(final["client"], parent.info.run_id, key)
            assert len(curve) >= 2 and curve[0][0] == 100  # from speed-up 1.00x on
            values = [v for _, v in curve]
            assert values == sorted(values, reverse=True)  # best metric at this speed-up or faster: never rises
        if arm != "clo":  # the reference arm has no verdict against itself
            assert parent.data.tags["verdict"] == comparison.data.tags[f"verdict/{arm}"]
    for parent in final["runs"]["final"]:
        assert parent.info.status == "FINISHED" and parent.data.tags.get("finalized") == "true"


PARENT_ROLES = ("arm", "final", "comparison", "final_comparison")  # the runs the UI compares (not trials)
MAX_PARENT_METRIC_KEYS = 40  # the chart view builds one chart per key: 193 on the demo before issue 24


@pytest.mark.integration
def test_the_mlflow_ui_shows_the_frontiers_first(final):
    """Issue 24, read back through MLflow's client: the parent runs carry few metric keys (so the
    frontier charts come first), every arm's search and final run has the frontier metric (so they
    overlay), trial runs keep their per-exit and per-weight curves, and every parent run's
    description names the axes and links a figure that is there."""
    from sweeps.plots import arm_color, final_color

    mlflow_client, runs = final["client"], final["runs"]
    parents = [run for role in PARENT_ROLES for run in runs.get(role, [])]
    assert {r.data.tags["role"] for r in parents} == set(PARENT_ROLES)
    keys = set().union(*(r.data.metrics for r in parents))
    assert len(keys) <= MAX_PARENT_METRIC_KEYS, sorted(keys)
    for arm in ARMS:
        for role in ("arm", "final"):
            (run,) = [r for r in runs[role] if r.data.tags["arm"] == arm]
            curve = history(mlflow_client, run.info.run_id, "frontier/accuracy")
            assert len(curve) >= 2 and all(100 <= step <= 300 and 0 <= value <= 1 for step, value in curve), (arm, role)
            # one colour per arm, the PNGs' (darker for the final stage), set for the UI
            expected = final_color(arm) if role == "final" else arm_color(arm)
            assert run.data.tags["mlflow.runColor"] == expected
            assert len(run.data.params) <= 20, sorted(run.data.params)  # the compared ones; the rest in settings.json
            assert "settings.json" in {a.path for a in mlflow_client.list_artifacts(run.info.run_id)}
    completed = [r for r in runs["trial"] if r.data.tags["trial_status"] == "completed"]
    assert completed
    for run in completed:  # the trial runs keep everything: every exit's and every weight's curve
        exits = [k for k in run.data.metrics if k.startswith("val/exit_")]
        assert len(exits) == 3 and all(len(history(mlflow_client, run.info.run_id, k)) >= 2 for k in exits)
        weights = [k for k in run.data.metrics if k.startswith("weight/")]
        assert {f"weight/ce_{m}" for m in (1, 2, 3)} <= set(weights)
        if run.data.tags["arm"] == "clo":  # learned weights: their trajectory over training
            assert all(len(history(mlflow_client, run.info.run_id, k)) >= 2 for k in weights)
    for run in parents:
        note = run.data.tags.get("mlflow.note.content", "")
        assert "Step = speed-up × 100" in note and "accuracy as a fraction" in note, run.info.run_name
        for run_id, path in re.findall(r"/runs/([0-9a-f]+)/artifactPath/([^)\s]+)\)", note):
            assert path in {a.path for a in mlflow_client.list_artifacts(run_id)}, (run.info.run_name, path)
        assert "artifactPath/" in note, run.info.run_name  # each links its figure


@pytest.mark.integration
def test_resume_retrains_and_retimes_nothing(final, resumed):
    table, timing, proc = resumed["before"]["final_table.csv"], resumed["before"]["timing.json"], resumed["proc"]
    assert "started" not in proc.stdout  # no search trial, no seed trained again
    assert "final: the experiment in" in proc.stdout and "is finished; reusing its trials" in proc.stdout
    assert "already times all 2 model(s); reusing it" in proc.stdout and "repeats (full" not in proc.stdout
    assert (final["dir"] / "report" / "final" / "timing.json").read_text() == timing  # nothing re-timed
    assert (final["dir"] / "report" / "final" / "final_table.csv").read_text() == table
    mlflow_client, _ = client(final["root"], final["name"])
    runs = runs_by_role(mlflow_client, final["name"])
    assert len([r for r in runs["trial"] if r.data.tags["stage"] == "final"]) == len(ARMS) * len(SEEDS)
    assert len(runs["final"]) == len(ARMS) and len(runs["final_comparison"]) == 1


def test_interleaved_timing_of_two_tiny_models(tiny_model):
    """No Ray: the timing phase's loop on two tiny random models. Passes run model by model within
    each repeat (A full, A early exit, B full, B early exit, then again), and each ratio is the
    full time over the early-exit time of the same model and repeat."""
    from sweeps.timing import EARLY_EXIT, FULL, LoadedModel, ratios_by_model, time_interleaved
    from trainers.data import Split
    from trainers.evaluate import ExitTimer
    from trainers.policies import make_policy

    gen = torch.Generator().manual_seed(0)
    lengths = [8, 5, 7, 3, 6, 4, 8, 2, 5]
    test = Split("test", input_ids=[torch.randint(5, 100, (n,), generator=gen).tolist() for n in lengths],
                 token_type_ids=[[0] * n for n in lengths], labels=torch.tensor([i % 3 for i in range(9)]),
                 ids=torch.arange(9))
    models = [LoadedModel(name, ExitTimer(tiny_model(num_layers=layers, seed=seed).eval(), test, batch_size=4,
                                          pad_token_id=0), make_policy("patience", 1), test.ids)
              for name, layers, seed in (("A", 3, 0), ("B", 4, 1))]
    repeats = 3
    passes = time_interleaved(models, repeats)
    assert [(p.trial_id, p.repeat, p.kind) for p in passes] == [
        (name, repeat, kind) for repeat in range(repeats) for name in ("A", "B") for kind in (FULL, EARLY_EXIT)]
    for earlier, later in zip(passes, passes[1:]):
        assert earlier.start <= earlier.end <= later.start and earlier.seconds > 0
    ratios = ratios_by_model(passes)
    for name in ("A", "B"):
        mine = {(p.repeat, p.kind): p.seconds for p in passes if p.trial_id == name}
        assert ratios[name] == [mine[r, FULL] / mine[r, EARLY_EXIT] for r in range(repeats)]


def test_timing_holds_a_whole_device_and_never_times_on_the_cpu_instead_of_a_gpu():
    """With GPUs the timing task holds one whole GPU (and a trial's CPUs); on CPUs every CPU of a
    node. A GPU plan on a machine whose CUDA does not work fails with the cause, never times on the CPU."""
    from sweeps.presets import build_config
    from sweeps.timing import _device, timing_plan
    from trainers.errors import ConfigError

    plan = timing_plan(build_config(preset="smoke", overrides=["gpus_per_trial=1", "cpus_per_trial=4"]), [])
    assert (plan.device, plan.gpus, plan.cpus, plan.threads) == ("cuda", 1, 4, 4)
    if not torch.cuda.is_available():
        with pytest.raises(ConfigError, match="device 'cuda' was asked for"):
            _device("cuda")
