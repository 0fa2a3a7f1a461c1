"""Resume: kill the driver mid-search (SIGKILL), run again with --resume. Finished trials are not
redone, nothing in MLflow is duplicated or left RUNNING, and the Ray the driver started dies with it."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import time

import psutil
import pytest

from test_sweep_helpers import ROOT, leftover_processes, client, run_sweep_cli, runs_by_role, sweep_cmd, sweep_env

pytestmark = pytest.mark.integration

NAME = "resume-test"
ARMS = ["fixed", "clo"]
TRIALS = 2


def wait_for_line(proc: subprocess.Popen, needle: str, timeout: float, seen: list[str]) -> None:
    deadline = time.time() + timeout
    while time.time() < deadline:
        line = proc.stdout.readline()
        if not line:
            if proc.poll() is not None:
                raise AssertionError(f"driver exited ({proc.returncode}) before '{needle}':\n" + "".join(seen[-40:]))
            continue
        seen.append(line)
        if needle in line:
            return
    raise AssertionError(f"'{needle}' not seen within {timeout}s:\n" + "".join(seen[-40:]))


def result_rows(experiment) -> dict[str, list[dict]]:
    """Every trial's reported results (its result file), by trial id."""
    rows: dict[str, list[dict]] = {}
    for path in experiment.rglob("result.json"):
        for line in path.read_text().splitlines():
            try:
                row = json.loads(line)
            except json.JSONDecodeError:  # a line being written
                continue
            rows.setdefault(row["trial_id"], []).append(row)
    return rows


def finished_trials(experiment) -> set[str]:
    """Trials whose final report is in their result file."""
    return {trial for trial, rows in result_rows(experiment).items() if any(r.get("final_report") is True for r in rows)}


def epochs_trained(rows: list[dict]) -> list[tuple[int, int]]:
    """(epoch, pid) of every epoch a trial trained and reported; a finished trial that Tune restored
    only reports its final checkpoint again (a row with final_report and no training before it)."""
    return [(r["epoch"], r["pid"]) for r in rows if r.get("final_report") is not True]


def test_kill_driver_then_resume(tmp_path):
    root = tmp_path / "sweeps"
    proc = subprocess.Popen(sweep_cmd(root, NAME, "--set", f"arms=[{','.join(ARMS)}]", "--set", "scheduler=none"),
                            cwd=ROOT, env=sweep_env(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, bufsize=1)
    seen: list[str] = []
    try:
        # one trial finished (its final report, in its result file), the others still training: kill the driver
        wait_for_line(proc, "| test hypervolume", timeout=300, seen=seen)
        deadline = time.time() + 30
        while not finished_trials(root / NAME / "ray" / "search") and time.time() < deadline:
            time.sleep(0.1)
        family = psutil.Process(proc.pid).children(recursive=True)
        assert any("raylet" in " ".join(p.cmdline()) for p in family if p.is_running())
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
    mlflow_client, _ = client(root, NAME)
    before = runs_by_role(mlflow_client, NAME)
    logged = {r.data.tags["trial_id"]: r.info.run_id for r in before.get("trial", [])
              if r.data.tags.get("logged") == "true"}
    running = {r.data.tags["arm"]: r.info.status for r in before["arm"]}
    assert set(running.values()) == {"RUNNING"}, running  # every arm was searching when the driver died
    experiment = root / NAME / "ray" / "search"
    finished = finished_trials(experiment)
    assert finished, "a trial finished before the kill"
    trained_before = {t: epochs_trained(rows) for t, rows in result_rows(experiment).items() if t in finished}

    resumed = run_sweep_cli(root, NAME, "--resume")
    assert resumed.returncode == 0, resumed.stdout[-3000:] + resumed.stderr[-3000:]
    # The Ray the killed driver started went down with it: its workers at once, Ray's agents
    # once they notice their raylet is gone (about a minute; the resumed run took longer).
    alive = leftover_processes(family, timeout=90)
    assert not alive, [p.pid for p in alive]
    out = resumed.stdout
    assert re.search(r"\[sweep\] search: resuming the experiment in \S+", out), out[-3000:]
    # finished trials are not trained again (a trial whose end the killed driver had not saved yet
    # reports its final checkpoint once more) and keep their MLflow run
    after_rows = result_rows(experiment)
    assert {t: epochs_trained(after_rows[t]) for t in trained_before} == trained_before

    after = runs_by_role(mlflow_client, NAME)
    assert len(after["arm"]) == len(ARMS) and len(after["comparison"]) == 1
    trial_ids = [r.data.tags["trial_id"] for r in after["trial"]]
    assert len(trial_ids) == len(set(trial_ids)) == TRIALS * len(ARMS)
    assert {k: v for k, v in ((r.data.tags["trial_id"], r.info.run_id) for r in after["trial"]) if k in logged} == logged
    for run in sum(after.values(), []):
        assert run.info.status == "FINISHED", (run.info.run_name, run.info.status)
    # registered once, after every arm finished: still exactly one version per arm
    versions = mlflow_client.search_model_versions("name = 'leebert-mr'")
    assert sorted(v.tags["arm"] for v in versions) == sorted(ARMS), [v.tags for v in versions]
    for arm in ARMS:
        registered = json.loads(next(r for r in after["arm"] if r.data.tags["arm"] == arm).data.tags["registered"])
        alias = mlflow_client.get_model_version_by_alias("leebert-mr", f"{arm}-best")
        assert registered["version"] == str(alias.version) and alias.tags["arm"] == arm

    import optuna

    from sweeps.studies import JOURNAL_FILE, journal_storage

    storage = journal_storage(root / NAME / JOURNAL_FILE)
    for arm in ARMS:
        trials = optuna.load_study(study_name=arm, storage=storage).get_trials(deepcopy=False)
        states = [t.state for t in trials]
        assert optuna.trial.TrialState.RUNNING not in states
        assert states.count(optuna.trial.TrialState.COMPLETE) == TRIALS
    assert os.path.isfile(root / NAME / "report" / "summary.csv")
