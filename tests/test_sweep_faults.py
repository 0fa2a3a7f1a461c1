"""Faults during a sweep, with real Ray, DeepSpeed and MLflow: a trial process killed, a trial
that diverges, the driver stopped by SIGTERM."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import threading
import time
from pathlib import Path

import pytest
import torch

from test_sweep_helpers import ROOT, client, run_sweep_cli, runs_by_role, sweep_cmd, sweep_env

pytestmark = pytest.mark.integration


def result_rows(folder: Path) -> list[dict]:
    rows = []
    for path in sorted(folder.rglob("result.json")):
        rows += [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    return rows


def final_weights(root: Path, name: str, arm: str) -> dict[str, torch.Tensor]:
    (path,) = (root / name / "ray" / "search").glob(f"{arm}_*/checkpoint_*/model/weights.pt")
    return torch.load(path, map_location="cpu")


def test_killed_trial_process_resumes_from_its_checkpoint(tmp_path):
    """SIGKILL the trial's training process after epoch 1: the trial restarts from the epoch-1
    checkpoint, reports epochs 2 and 3 once each, and ends with the weights of a run never killed."""
    root = tmp_path / "sweeps"
    args = ("--set", "arms=[clo]", "--set", "trials=1", "--set", "scheduler=none", "--set", "keep_checkpoints=all",
            "--set", "register=false")  # registration has its own tests (test_register.py, the smoke sweep)
    killed: dict = {}

    def kill_after_first_epoch():
        deadline = time.time() + 300
        while time.time() < deadline and not killed:
            rows = [r for r in result_rows(root / "killed" / "ray" / "search") if r.get("epoch") == 1]
            if rows:
                killed["pid"] = rows[0]["pid"]
                os.kill(rows[0]["pid"], signal.SIGKILL)
                return
            time.sleep(0.2)

    watcher = threading.Thread(target=kill_after_first_epoch, daemon=True)
    watcher.start()
    interrupted = run_sweep_cli(root, "killed", *args)
    watcher.join(timeout=5)
    assert interrupted.returncode == 0, interrupted.stdout[-3000:] + interrupted.stderr[-3000:]
    assert killed, "the trial never reported epoch 1"
    assert "restarting from its checkpoint of epoch 1" in interrupted.stdout

    rows = result_rows(root / "killed" / "ray" / "search")
    assert [r["epoch"] for r in rows] == [1, 2, 3]  # no epoch repeated or skipped
    assert rows[0]["pid"] == killed["pid"] and {r["pid"] for r in rows[1:]} != {killed["pid"]}

    straight = run_sweep_cli(root, "straight", *args)
    assert straight.returncode == 0, straight.stdout[-3000:] + straight.stderr[-3000:]
    resumed, reference = final_weights(root, "killed", "clo"), final_weights(root, "straight", "clo")
    assert resumed.keys() == reference.keys()
    worst = max(float((resumed[k] - reference[k]).abs().max()) for k in reference)
    assert worst <= 1e-6, f"weights after the restart differ from an uninterrupted run by {worst:.2e}"
    # the learned loss weights too (summary of the final checkpoint)
    summaries = [json.loads(next((root / n / "ray" / "search").glob("clo_*/checkpoint_*/summary.json")).read_text())
                 for n in ("killed", "straight")]
    assert summaries[0]["weights"]["final"] == pytest.approx(summaries[1]["weights"]["final"], abs=1e-6)
    assert [e["epoch"] for e in summaries[0]["epochs"]] == [1, 2, 3]

    mlflow_client, _ = client(root, "killed")
    runs = runs_by_role(mlflow_client, "killed")
    assert len(runs["trial"]) == 1 and runs["trial"][0].info.status == "FINISHED"


def test_a_diverging_trial_fails_and_the_sweep_goes_on(tmp_path):
    """Trial 2 of fixed is made to diverge at step 3 (the diverge_trials test hook, an argument of the
    trainer): it ends FAILED in Tune, MLflow and Optuna with the reason, is not retried into
    training, and the other trials finish."""
    root = tmp_path / "sweeps"
    proc = run_sweep_cli(root, "nan", "--set", "arms=[fixed]", "--set", "trials=3", "--set", "scheduler=none",
                         "--set", "max_concurrent=1", "--set", "diverge_trials.fixed-2=3", "--set", "register=false")
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "fixed trial 2/3 FAILED: diverged at step 3 (" in proc.stdout

    mlflow_client, _ = client(root, "nan")
    runs = runs_by_role(mlflow_client, "nan")
    by_name = {r.info.run_name: r for r in runs["trial"]}
    assert sorted(by_name) == ["fixed-01", "fixed-02", "fixed-03"]
    failed = by_name["fixed-02"]
    assert failed.info.status == "FAILED"
    assert failed.data.tags["trial_status"] == "error"
    assert failed.data.tags["failure_reason"].startswith("diverged at step 3 (")
    for name in ("fixed-01", "fixed-03"):
        assert by_name[name].info.status == "FINISHED"
        assert 0 <= by_name[name].data.metrics["test/hypervolume"] <= 1
    assert runs["arm"][0].info.status == "FINISHED"

    from ray.tune import ExperimentAnalysis

    from sweeps.spec import TrialSpec

    analysis = ExperimentAnalysis(str(root / "nan" / "ray" / "search"))
    statuses = {TrialSpec.of(t).number: t.status for t in analysis.trials}
    assert statuses == {1: "TERMINATED", 2: "ERROR", 3: "TERMINATED"}
    failed_trial = next(t for t in analysis.trials if TrialSpec.of(t).number == 2)
    assert "diverged at step 3 (" in str(failed_trial.get_error())
    # retries (max_failures=2) found the divergence marker and did not train again: no epoch reported
    assert not [r for r in result_rows(root / "nan" / "ray" / "search") if r.get("trial_id") == failed_trial.trial_id
                and "epoch" in r]

    import optuna

    from sweeps.studies import JOURNAL_FILE, journal_storage

    study = optuna.load_study(study_name="fixed", storage=journal_storage(root / 'nan' / JOURNAL_FILE))
    states = {t.number + 1: t.state for t in study.get_trials(deepcopy=False)}
    assert states[2] in (optuna.trial.TrialState.FAIL, optuna.trial.TrialState.PRUNED)
    assert states[1] == states[3] == optuna.trial.TrialState.COMPLETE


def test_sigterm_ends_the_open_runs_killed(tmp_path):
    root = tmp_path / "sweeps"
    # one trial at a time: the smoke preset's second concurrent trial process would only add its imports
    command = sweep_cmd(root, "term", "--set", "arms=[clo]", "--set", "max_concurrent=1")
    proc = subprocess.Popen(command, cwd=ROOT, env=sweep_env(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            bufsize=1)
    lines: list[str] = []
    try:
        deadline = time.time() + 300
        while time.time() < deadline:
            line = proc.stdout.readline()
            if not line:
                break
            lines.append(line)
            if "epoch 1/" in line:
                break
        assert any("epoch 1/" in line for line in lines), "".join(lines[-50:])
        proc.send_signal(signal.SIGTERM)
        rest, _ = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
    output = "".join(lines) + rest
    assert proc.returncode == 130, output[-3000:]
    assert "--resume --name term" in output
    mlflow_client, _ = client(root, "term")
    runs = runs_by_role(mlflow_client, "term")
    assert [r.info.status for r in runs["arm"]] == ["KILLED"]
    assert not [r for r in sum(runs.values(), []) if r.info.status == "RUNNING"]
    # the trials Ray killed with the driver's local Ray left no trainer folder (sweeps.runner)
    from sweeps.placement import local_sweep_dir

    left = local_sweep_dir(str((root / "term" / "ray").resolve()))
    assert not left.exists(), sorted(p.name for p in left.iterdir())
