"""MLflow run lifecycle on a real sqlite store: a half-written trial run is completed under its own
run id, orphans of a dead driver are closed KILLED, a live driver's runs are never touched."""

from __future__ import annotations

import subprocess
import sys

import pytest

from sweeps.records import TrialRecord
from sweeps.tracking import PARENT_TAG, Tracker


def record(trial_id: str = "abc123") -> TrialRecord:
    epochs = [{"epoch": e, "step": 10 * e, "objective": 0.1 * e, "val_hypervolume": 0.1 * e,
               "val_last_exit": 0.5 + 0.01 * e, "timestamp": 1_700_000_000 + e} for e in (1, 2)]
    return TrialRecord(arm="clo", stage="search", trial_id=trial_id, number=1, status="completed", sampled={"lr": 1e-3},
                       train={"lr": 1e-3, "method": "clo"}, epochs=epochs, start_ms=1_700_000_000_000,
                       end_ms=1_700_000_002_000)


@pytest.fixture
def tracker(tmp_path):
    return Tracker(f"sqlite:///{tmp_path / 'mlflow.db'}", "lifecycle", (tmp_path / "artifacts").as_uri())


def test_a_half_written_trial_run_is_completed_under_its_run_id(tracker):
    parent = tracker.arm_run("clo", "search", params={"trials": 1}, tags={})
    # a crash after create_run and part of the metrics: the run exists, RUNNING, without `logged`
    crashed = tracker.client.create_run(tracker.experiment_id, run_name="clo-01", tags={
        PARENT_TAG: parent, "role": "trial", "arm": "clo", "stage": "search", "trial_id": "abc123"}).info.run_id
    tracker.client.log_metric(crashed, "val/hypervolume", 0.1, timestamp=1_700_000_001_000, step=10)
    assert not tracker.trial_logged("clo", "search", "abc123")

    assert tracker.log_trial(record(), parent) == crashed
    assert tracker.log_trial(record(), parent) is None  # complete now: nothing written twice
    runs = tracker.runs(role="trial")
    assert [r.info.run_id for r in runs] == [crashed]
    run = tracker.client.get_run(crashed)
    assert run.info.status == "FINISHED" and run.data.tags["logged"] == "true"
    history = tracker.client.get_metric_history(crashed, "val/hypervolume")
    assert sorted((m.step, m.value) for m in history) == [(10, pytest.approx(0.1)), (20, pytest.approx(0.2))]


def test_orphans_of_a_dead_driver_are_closed_and_a_live_drivers_are_not(tracker, tmp_path):
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    live = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        other = Tracker(tracker.uri, "other-sweep")
        ids = {}
        for name, pid in (("dead", dead.pid), ("live", live.pid)):
            ids[name] = other.client.create_run(other.experiment_id, run_name=name, tags={
                "role": "arm", "driver_host": tracker.driver["driver_host"], "driver_pid": str(pid)}).info.run_id
        mine = tracker.client.create_run(tracker.experiment_id, run_name="left", tags={"role": "arm"}).info.run_id
        assert tracker.close_orphans() == 2
        status = lambda run_id: tracker.client.get_run(run_id).info.status  # noqa: E731
        assert status(ids["dead"]) == "KILLED" and status(mine) == "KILLED"
        assert status(ids["live"]) == "RUNNING"
    finally:
        live.kill()
        live.wait()


def test_close_own_runs_ends_only_this_drivers_runs(tracker):
    own = tracker.arm_run("fixed", "search", params={}, tags={})
    foreign = tracker.client.create_run(tracker.experiment_id, run_name="x", tags={
        "role": "arm", "driver_host": "elsewhere", "driver_pid": "1"}).info.run_id
    assert tracker.close_own_runs("KILLED") == 1
    assert tracker.client.get_run(own).info.status == "KILLED"
    assert tracker.client.get_run(foreign).info.status == "RUNNING"
