"""The smoke sweep end to end: real local Ray, real Optuna, real DeepSpeed trainings, real MLflow
(sqlite in a temporary folder). Checks that the runs, metrics, artifacts, Optuna storage and
registered models exist and hold sane values."""

from __future__ import annotations

import json
import sys
import math
from pathlib import Path

import pandas as pd
import pytest

from test_sweep_helpers import PNG_MAGIC, history, use_mlflow_uri

pytestmark = pytest.mark.integration

ARMS = ["fixed", "bilevel", "clo"]
TRIALS = 2
EPOCHS = 3  # the smoke preset's train.epochs
EXITS = 3   # tiny-random has 3 layers


@pytest.fixture(scope="module")
def smoke(smoke_sweep):
    """The session's smoke sweep (tests/conftest.py), shared with the loopback and model-server tests."""
    return smoke_sweep


def test_progress_and_where_to_look(smoke):
    out = smoke["proc"].stdout
    for arm in ARMS:
        assert f"[sweep] {arm} trial 1/{TRIALS} started" in out
        assert f"models:/leebert-mr@{arm}-best" in out  # registered once every arm finished
    assert "[sweep] registered model leebert-mr" in out and "champion: models:/leebert-mr@champion" in out
    assert "mlflow.pyfunc.load_model('models:/leebert-mr@champion')" in out
    assert "mlflow models serve -m models:/leebert-mr@champion --env-manager local" in out
    assert f"{sys.executable} -m mlflow ui --backend-store-uri {smoke['uri']}" in out
    assert str(smoke["dir"] / "report" / "frontiers.png") in out
    assert str(smoke["dir"] / "report" / "summary.md") in out
    assert "| arm |" in out
    # registration prints its own lines: none of MLflow's event lines, on either stream (as register.py)
    assert "Successfully registered" not in smoke["proc"].stderr + out and "Created version" not in smoke["proc"].stderr


def test_trial_numbers_agree_between_console_and_mlflow(smoke):
    import re

    started = re.findall(r"\[sweep\] (\w+) trial (\d+)/\d+ started: (.*)", smoke["proc"].stdout)
    assert len(started) == TRIALS * len(ARMS)
    by_name = {r.info.run_name: r for r in smoke["runs"]["trial"]}
    for arm, number, params in started:
        run = by_name[f"{arm}-{int(number):02d}"]
        printed = dict(item.split("=") for item in params.split(", "))
        assert {k: float(v) for k, v in printed.items()} == pytest.approx(
            {k: float(run.data.params[k]) for k in printed}, rel=5e-3)


def test_every_arm_searches_at_the_same_time_within_its_budget(smoke):
    """One Tune experiment for all arms: trials of different arms overlap in time (MLflow start and
    end times), and each arm runs exactly its budget of trials."""
    by_arm: dict[str, list] = {}
    for run in smoke["runs"]["trial"]:
        by_arm.setdefault(run.data.tags["arm"], []).append((run.info.start_time, run.info.end_time))
    assert {arm: len(spans) for arm, spans in by_arm.items()} == {m: TRIALS for m in ARMS}
    overlapping = {tuple(sorted((a, b))) for a in by_arm for b in by_arm if a != b
                   for (s1, e1) in by_arm[a] for (s2, e2) in by_arm[b] if s1 < e2 and s2 < e1}
    assert len(overlapping) >= 2, f"trials of different arms should run at once; overlapping arm pairs: {overlapping}"
    # one experiment (<storage>/search), not one per arm
    assert sorted(p.name for p in (smoke["dir"] / "ray").iterdir() if p.is_dir()) == ["search"]


def test_experiment_layout(smoke):
    runs, mlflow_client = smoke["runs"], smoke["client"]
    experiment = mlflow_client.get_experiment_by_name("smoke-test")
    assert experiment.artifact_location == (smoke["dir"] / "mlartifacts").as_uri()
    assert sorted(r.data.tags["arm"] for r in runs["arm"]) == sorted(ARMS)
    assert len(runs["trial"]) == TRIALS * len(ARMS)
    assert len(runs["comparison"]) == 1
    parents = {r.info.run_id: r.data.tags["arm"] for r in runs["arm"]}
    for run in runs["trial"]:
        assert parents[run.data.tags["mlflow.parentRunId"]] == run.data.tags["arm"]
    for run in sum(runs.values(), []):
        assert run.info.status == "FINISHED", (run.info.run_name, run.info.status)
        assert run.info.lifecycle_stage == "active"


def test_trial_runs_hold_params_metrics_and_artifacts(smoke):
    mlflow_client = smoke["client"]
    completed = 0
    for run in smoke["runs"]["trial"]:
        arm, params, metrics = run.data.tags["arm"], run.data.params, run.data.metrics
        assert params["method"] == arm and params["model"] == "tiny-random"  # these arms are named after their method
        searched = {"lr", "head_lr"} | ({"lr_outer", "outer_every"} if arm != "fixed" else set())
        assert set(run.data.tags["searched"].split(",")) == searched
        assert 1e-3 <= float(params["lr"]) <= 5e-3 and 2e-3 <= float(params["head_lr"]) <= 1e-2
        epochs = history(mlflow_client, run.info.run_id, "val/hypervolume")
        assert 1 <= len(epochs) <= EPOCHS and all(0 <= v <= 1 for _, v in epochs)
        assert all(0 <= v <= 1 for _, v in history(mlflow_client, run.info.run_id, "val/last_exit"))
        assert len(history(mlflow_client, run.info.run_id, "objective")) == len(epochs)
        artifacts = {a.path for a in mlflow_client.list_artifacts(run.info.run_id)}
        assert "config.json" in artifacts
        if run.data.tags["trial_status"] != "completed":
            assert run.data.tags["trial_status"] == "stopped_early" and len(epochs) < EPOCHS
            continue
        completed += 1
        assert len(epochs) == EPOCHS
        assert {"summary.json", "weights.png", "frontier.png"} <= artifacts
        for key in ("test/hypervolume", "test/last_exit", "val/hypervolume"):
            assert 0 <= metrics[key] <= 1
        assert 0.3 <= metrics["test/last_exit"] <= 0.8  # two balanced classes, a barely trained tiny model
        # the speed-accuracy curve as metric history: step = speed-up × 100 within 1x..3x
        curve = history(mlflow_client, run.info.run_id, "frontier/accuracy")
        assert curve and all(100 <= step <= 100 * EXITS and 0 <= value <= 1 for step, value in curve)
        assert history(mlflow_client, run.info.run_id, "frontier_test/accuracy")
        # learned weights: 3 CE + 6 KD terms; fixed keeps them at 1, the others keep their sum (softmax)
        weights = {k: v for k, v in metrics.items() if k.startswith("weight/")}
        assert len(weights) == EXITS + EXITS * (EXITS - 1)
        if arm == "fixed":
            assert all(v == 1.0 for v in weights.values())
        else:
            assert math.isclose(sum(weights.values()), len(weights), rel_tol=1e-4)
        folder = mlflow_client.download_artifacts(run.info.run_id, "", str(smoke["dir"] / "download" / run.info.run_id))
        for png in ("weights.png", "frontier.png"):
            assert open(f"{folder}/{png}", "rb").read(8) == PNG_MAGIC
        config = json.load(open(f"{folder}/config.json"))
        assert config["method"] == arm and config["deepspeed_config"].endswith("cpu_zero0.json")
    assert completed >= len(ARMS)  # ASHA lets at least the first trial of each arm finish


def test_arm_runs_name_the_best_trial(smoke):
    runs = smoke["runs"]
    trials = {r.data.tags["trial_id"]: r for r in runs["trial"]}
    for run in runs["arm"]:
        tags, metrics = run.data.tags, run.data.metrics
        assert tags["finalized"] == "true"
        best = trials[tags["best_trial_id"]]
        assert best.data.tags["trial_status"] == "completed" and best.data.tags.get("best") == "true"
        siblings = [r for r in runs["trial"] if r.data.tags["arm"] == tags["arm"]
                    and r.data.tags["trial_status"] == "completed"]
        assert metrics["best_objective"] == max(r.data.metrics["val/hypervolume"] for r in siblings)
        assert run.data.params["space.lr"].startswith("loguniform(")
        assert history(smoke["client"], run.info.run_id, "frontier/accuracy")
        assert metrics["trials_completed"] + metrics["trials_stopped_early"] + metrics["trials_error"] == TRIALS


def test_sweep_report_and_comparison_run(smoke):
    report = smoke["dir"] / "report"
    summary = pd.read_csv(report / "summary.csv")
    assert list(summary["arm"]) == ARMS
    assert summary["val HV"].between(0, 1).all() and summary["test last exit"].between(0, 1).all()
    assert (report / "frontiers.png").read_bytes()[:8] == PNG_MAGIC
    assert "| arm |" in (report / "summary.md").read_text()
    assert len(pd.read_csv(report / "trials.csv")) == TRIALS * len(ARMS)
    comparison = smoke["runs"]["comparison"][0]
    artifacts = {a.path for a in smoke["client"].list_artifacts(comparison.info.run_id)}
    assert {"frontiers.png", "summary.csv", "summary.md", "trials.csv", "optuna.journal", "sweep.json"} <= artifacts
    # the arms' figures are in summary.csv, not one metric per arm (the chart view stays short)
    assert set(comparison.data.metrics) == {"wall_time_s"}
    assert "Step = speed-up × 100" in comparison.data.tags["mlflow.note.content"]


def test_optuna_storage_holds_one_study_per_arm(smoke):
    import optuna

    from sweeps.studies import JOURNAL_FILE, journal_storage

    storage = journal_storage(smoke["dir"] / JOURNAL_FILE)  # a journal file, not sqlite: it works on NFS
    assert not (smoke["dir"] / "optuna.db").exists()
    studies = {s.study_name: s for s in optuna.get_all_study_summaries(storage)}
    assert set(studies) == set(ARMS)
    first = {}
    for arm in ARMS:
        study = optuna.load_study(study_name=arm, storage=storage)
        trials = study.get_trials(deepcopy=False)
        assert len(trials) == TRIALS
        # one fidelity per study: exactly the trials Tune stopped early are PRUNED, with their per-epoch
        # objectives as intermediate values; only full-length trials are COMPLETE
        runs = {int(r.info.run_name.rsplit("-", 1)[1]): r for r in smoke["runs"]["trial"] if r.data.tags["arm"] == arm}
        for trial in trials:
            run = runs[trial.number + 1]  # trial numbers are the study's + 1 in a fresh study
            objectives = [v for _, v in history(smoke["client"], run.info.run_id, "objective")]
            expected = {"completed": "COMPLETE", "stopped_early": "PRUNED"}[run.data.tags["trial_status"]]
            assert trial.state.name == expected, (arm, trial.number, run.data.tags["trial_status"])
            assert trial.params == pytest.approx({k: float(run.data.params[k]) for k in trial.params}, rel=1e-6)
            if expected == "PRUNED":
                assert len(objectives) < EPOCHS
                assert list(trial.intermediate_values.values()) == pytest.approx(objectives)
            else:
                assert len(objectives) == EPOCHS and trial.value == pytest.approx(objectives[-1])
        assert study.direction == optuna.study.StudyDirection.MAXIMIZE
        first[arm] = trials[0].params
    # the same sampler seed for every arm: the shared parameters start from the same draw
    assert first["fixed"]["lr"] == first["clo"]["lr"] == first["bilevel"]["lr"]


def test_the_search_storage_holds_only_what_the_rules_allow_after_every_trial_end(smoke):
    """keep_checkpoints: best (the default), checked from the storage listing the driver took after
    each search trial's end (sweeps.checkpoints; LEEBERT_STORAGE_LOG, set by tests/conftest.py):
    a stopped or failed trial keeps nothing, a completed one its model only while it is its arm's
    best (lower trial number on a tie), a running one at most its last epoch checkpoint and the one
    being registered."""
    snapshots = [json.loads(line) for line in smoke["storage_log"].read_text().splitlines()]
    assert len(snapshots) == TRIALS * len(ARMS)  # one per trial end
    assert [len(s["ended"]) for s in snapshots] == list(range(1, TRIALS * len(ARMS) + 1))
    statuses = {t["status"] for t in snapshots[-1]["ended"].values()}
    assert "completed" in statuses and statuses <= {"completed", "stopped_early", "error"}
    for snapshot in snapshots:
        ended, held = snapshot["ended"], snapshot["checkpoints"]
        assert not any(owner.startswith("_train/") for owner in held)  # one worker per trial: Tune's folders only
        best = {}
        for trial in ended.values():
            if trial["status"] == "completed":
                key = (trial["objective"], -trial["number"])
                best[trial["arm"]] = max(best.get(trial["arm"], key), key)
        allowed = {}
        for trial in ended.values():
            keeps = trial["status"] == "completed" and best[trial["arm"]] == (trial["objective"], -trial["number"])
            allowed[trial["folder"]] = 1 if keeps else 0
            assert len(held.get(trial["folder"], [])) == allowed[trial["folder"]], (trial, held)
        running = {folder: names for folder, names in held.items() if folder not in allowed}
        assert len(running) <= 2 and all(len(names) <= 2 for names in running.values()), held  # max_concurrent: 2
        assert sum(map(len, held.values())) <= len(best) + 2 * 2
    # after the sweep: one model per arm (its best trial's), nothing else
    search = smoke["dir"] / "ray" / "search"
    kept = sorted(c.parent.name for c in search.glob("*/checkpoint_*"))
    assert len(kept) == len(ARMS) and {name.split("_")[0] for name in kept} == set(ARMS)


def test_the_driver_opens_no_checkpoint_while_a_stage_runs(smoke):
    """Records come from results (a trial's summary travels in its final result): the driver
    counts every checkpoint it opens (sweeps.checkpoints.open_checkpoint) and none is opened
    while the search runs."""
    assert (f"[sweep] search: {TRIALS * len(ARMS)} trials ended; checkpoints the driver opened during the stage: 0"
            in smoke["proc"].stdout)


@pytest.mark.filterwarnings("ignore:.*type hints")
def test_registered_models_predict_with_early_exit(smoke, monkeypatch):
    import mlflow

    use_mlflow_uri(monkeypatch, smoke["uri"])
    mlflow_client = smoke["client"]
    # one registered model, one version per arm's best trial; champion = the best validation objective
    assert [m.name for m in mlflow_client.search_registered_models()] == ["leebert-mr"]
    assert len(mlflow_client.search_model_versions("name = 'leebert-mr'")) == len(ARMS)
    assert set(mlflow_client.get_registered_model("leebert-mr").aliases) == {"champion", *(f"{m}-best" for m in ARMS)}
    objectives = {r.data.tags["arm"]: r.data.metrics["best_objective"] for r in smoke["runs"]["arm"]}
    champion = mlflow_client.get_model_version_by_alias("leebert-mr", "champion")
    assert objectives[champion.tags["arm"]] == max(objectives.values())
    sentences = pd.DataFrame({"sentence": ["a gripping , funny and moving film .", "tedious and badly acted .",
                                           "it 's fine .", "the worst movie of the year ."]})
    for arm in ARMS:
        version = mlflow_client.get_model_version_by_alias("leebert-mr", f"{arm}-best")
        assert version.tags["arm"] == arm and version.tags["policy"] in ("patience", "entropy", "confidence", "none")
        model = mlflow.pyfunc.load_model(f"models:/leebert-mr@{arm}-best")
        out = model.predict(sentences)
        assert list(out.columns) == ["label", "label_name", "probabilities", "exit_layer", "truncated"] and len(out) == 4
        assert not out["truncated"].any()
        assert out["label"].isin([0, 1]).all()
        assert out["exit_layer"].between(1, EXITS).all()
        assert all(len(p) == 2 and 0.5 <= max(p) <= 1.0 and math.isclose(sum(p), 1.0, rel_tol=1e-5)
                   for p in out["probabilities"])


def test_no_trainer_folder_outlives_the_sweep(smoke):
    """Every trial's node-local working folder (stopped by ASHA, at max_t, or finished) is gone."""
    from sweeps.placement import local_sweep_dir

    folder = local_sweep_dir(str(Path(smoke["dir"]).resolve() / "ray"))
    assert not folder.exists(), sorted(p.name for p in folder.iterdir())
