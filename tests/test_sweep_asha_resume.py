"""ASHA survives --resume: kill the driver mid-search (SIGKILL), resume, and every trial is promoted or
stopped exactly as in an uninterrupted run of the same sweep.

Real local Ray, real Optuna (sqlite), real ASHA and MLflow; the trainer is the scheduling
simulator's stand-in (benchmarks/cluster_sim.py), whose objectives are a fixed function of a trial's
configuration and epoch, so the two runs are comparable trial by trial. One trial at a time and
random search (6 trials): which configuration each trial number gets, and in which order results
reach ASHA, do not depend on timing.
"""

from __future__ import annotations

import re
import signal
import subprocess
import sys
import time

import pytest

from test_sweep_helpers import ROOT, sweep_env

pytestmark = pytest.mark.integration

TRIALS, EPOCHS = 6, 3  # ASHA rungs at epochs 1 and 2 (grace 1, reduction factor 2, max_t 3)
DRIVER = """
import sys
from benchmarks.cluster_sim import Plan, StandInTrainer
from sweeps.presets import build_config
from sweeps.state import resume_config, start_config
from sweeps.runner import run_sweep

root, name, resume = sys.argv[1], sys.argv[2], sys.argv[3] == "resume"
cfg = build_config(preset="smoke", overrides=[
    "arms=[fixed-uniform]", "trials=%d", "train.epochs=%d", "scheduler=asha", "grace_period=1",
    "reduction_factor=2", "max_concurrent=1", "final_seeds=[]", "register=false", "reuse_actors=true"],
    flags={"name": name, "root": root})
cfg = resume_config(cfg) if resume else start_config(cfg)
plan = Plan(fixed_epoch_s=0.5, startup_s=0.0, finish_s=0.0, checkpoint_s=0.0, jitter=0.0)
run_sweep(cfg, resume=resume, trainer=StandInTrainer(plan=plan, exits=3, test_examples=64))
""" % (TRIALS, EPOCHS)
DONE = re.compile(r"trial (\d+)/\d+ (stopped by ASHA|epoch \d+/\d+: .*\| test hypervolume)")


def driver(root, name: str, mode: str) -> list[str]:
    return [sys.executable, "-c", DRIVER, str(root), name, mode]


def epochs_by_trial(root, name: str) -> dict[int, int]:
    """Trial number -> epochs it ran, from the experiment Tune saved (not from folders on disk: a
    trial the killed driver started after its last save is drawn again under a new id)."""
    from ray.tune import ExperimentAnalysis

    from sweeps.spec import TrialSpec

    trials = ExperimentAnalysis(str(root / name / "ray" / "search")).trials
    return {TrialSpec.of(t).number: int(t.last_result["epoch"]) for t in trials}


def test_asha_promotes_and_stops_the_same_trials_after_a_resume(tmp_path):
    root = tmp_path / "sweeps"
    whole = subprocess.run(driver(root, "uninterrupted", "start"), cwd=ROOT, env=sweep_env(), capture_output=True,
                           text=True, timeout=600)
    assert whole.returncode == 0, whole.stdout[-3000:] + whole.stderr[-3000:]
    expected = epochs_by_trial(root, "uninterrupted")
    assert sorted(expected) == list(range(1, TRIALS + 1))
    stopped = [n for n, e in expected.items() if e < EPOCHS]
    assert stopped and any(expected[n] == EPOCHS for n in expected if n > 3), expected  # both kinds after the kill

    proc = subprocess.Popen(driver(root, "interrupted", "start"), cwd=ROOT, env=sweep_env(), stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True, bufsize=1)
    seen: list[str] = []
    try:
        done: set[int] = set()
        deadline = time.time() + 300
        while len(done) < 3 and time.time() < deadline:  # three trials decided, the fourth under way: kill
            line = proc.stdout.readline()
            if not line and proc.poll() is not None:
                raise AssertionError(f"driver exited ({proc.returncode}) early:\n" + "".join(seen[-40:]))
            seen.append(line)
            match = DONE.search(line)
            if match:
                done.add(int(match.group(1)))
        assert len(done) >= 3, "".join(seen[-40:])
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
    resumed = subprocess.run(driver(root, "interrupted", "resume"), cwd=ROOT, env=sweep_env(), capture_output=True,
                             text=True, timeout=600)
    assert resumed.returncode == 0, resumed.stdout[-3000:] + resumed.stderr[-3000:]
    assert "search: resuming the experiment" in resumed.stdout
    assert epochs_by_trial(root, "interrupted") == expected

    import optuna

    from sweeps.studies import JOURNAL_FILE, journal_storage

    # one fidelity per study, in both runs: COMPLETE for full-length trials, PRUNED for ASHA's stops
    for name in ("uninterrupted", "interrupted"):
        study = optuna.load_study(study_name="fixed-uniform", storage=journal_storage(root / name / JOURNAL_FILE))
        states = [t.state.name for t in study.get_trials(deepcopy=False) if t.state.name != "FAIL"]
        assert states.count("PRUNED") == len(stopped) and states.count("COMPLETE") == TRIALS - len(stopped), (name, states)
