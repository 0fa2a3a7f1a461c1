"""The benchmark scripts run end to end (on the tiny model) and write what they promise."""

import json
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


def test_compare_methods_writes_a_results_table(tmp_path):
    results = tmp_path / "results.md"
    proc = subprocess.run(
        [sys.executable, "benchmarks/compare_methods.py", "--model", "tiny-random", "--seeds", "1",
         "--train-subset", "64", "--epochs", "1", "--max-length", "24", "--batch-size", "16", "--threads", "1",
         "--work-dir", str(tmp_path / "work"), "--results", str(results)],
        cwd=REPO, capture_output=True, text=True, timeout=600,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    text = results.read_text()
    rows = [line for line in text.splitlines() if line.startswith("| ") and "---" not in line]
    assert [row.split(" | ")[0].strip("| ") for row in rows[1:]] == ["fixed-uniform", "fixed-pabee", "bilevel", "clo"]
    assert "| 1.00x |" in rows[1], "fixed-uniform's time ratio to itself is 1"
    assert "--seeds 1" in text
    # a second invocation reuses the finished runs instead of training again
    again = subprocess.run(proc.args, cwd=REPO, capture_output=True, text=True, timeout=600)
    assert again.returncode == 0 and again.stdout.count("already done") == 4


def test_throughput_prints_its_figures():
    proc = subprocess.run(
        [sys.executable, "benchmarks/throughput.py", "--model", "tiny-random", "--steps", "2", "--warmup", "1",
         "--threads", "1", "--eval-examples", "64"],
        cwd=REPO, capture_output=True, text=True, timeout=600,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    for needle in ("train ZeRO-0:", "train ZeRO-2:", "wall time ZeRO-2 / ZeRO-0:", "samples/s"):
        assert needle in proc.stdout


@pytest.mark.integration
def test_scaling_prints_its_figures(tmp_path):
    figures = tmp_path / "scaling.json"
    proc = subprocess.run(
        [sys.executable, "benchmarks/scaling.py", "--quick", "--trials", "1", "--json", str(figures)],
        cwd=REPO, capture_output=True, text=True, timeout=900,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    for needle in ("A 1 node (2 CPUs)", "B 2 nodes (1+1 CPUs)", "ratio B / A (trials/h)", "Platform overhead per trial",
                   "DeepSpeed save per epoch (timed)", "checkpoint size on disk"):
        assert needle in proc.stdout
    data = json.loads(figures.read_text())
    assert data["throughput"]["A"]["completed"] == data["throughput"]["B"]["completed"] == 1
    assert data["throughput"]["ratio_B_over_A_run_sweep"] > 0
    assert data["overhead"]["smoke, A (1 node)"]["overhead_median"] is not None
    assert data["checkpoint"]["checkpoint_mb"] > 0
    assert not data["address_file"]["private_left"]


@pytest.mark.integration
def test_study_writes_results_and_resumes(tmp_path):
    """benchmarks/study.py on a tiny model: the whole pipeline writes the results document; run
    again, it trains nothing and writes it again, with the time of both invocations added up."""
    results = tmp_path / "docs" / "results.md"
    command = [sys.executable, "benchmarks/study.py", "--root", str(tmp_path / "study"), "--name", "tiny-study",
               "--results", str(results)]
    overrides = ["methods=[bilevel,clo]", "budget_epochs=2", "train.model=tiny-random",
                 "train.train_subset=256", "train.max_length=24", "train.batch_size=16", "final_train.train_subset=256",
                 "final_seeds=[1,2]", "bootstrap=200", "timing_repeats=1", "env.RAY_USAGE_STATS_ENABLED=0"]
    env = {**__import__("os").environ, "RAY_AUTH_MODE": "disabled", "HF_HUB_OFFLINE": "1"}
    proc = subprocess.run(command + [a for o in overrides for a in ("--set", o)], cwd=REPO, capture_output=True,
                          text=True, timeout=900, env=env)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    text = results.read_text()
    for needle in ("## What each arm's search used and chose", "| bilevel | ", "random search",
                   "## Is CLO better? Paired differences, clo minus each arm",
                   "clo vs bilevel: ", "**bilevel** (mean over seeds 1, 2", "**clo** (mean over seeds 1, 2"):
        assert needle in text, needle
    assert (results.parent / "results-frontiers.png").is_file() and (results.parent / "results-weights.png").is_file()
    again = subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=900, env=env)
    assert again.returncode == 0, again.stdout[-3000:] + again.stderr[-3000:]
    assert "continuing the study" in again.stdout and " started" not in again.stdout
    assert "over 2 invocation(s)" in results.read_text()


@pytest.mark.integration
def test_cluster_sim_quick_keeps_its_small_cluster_busy(tmp_path):
    """SIMULATION (benchmarks/cluster_sim.py --quick): the real run_sweep on two Ray nodes that declare
    4 GPUs each, with the stand-in trainer. Both stages end within 15 % of the ideal, and with one
    arm uniformly worse its trials are still promoted by ASHA within their own arm."""
    figures = tmp_path / "sim.json"
    proc = subprocess.run([sys.executable, "benchmarks/cluster_sim.py", "--quick", "--worse-arm", "fixed-uniform",
                           "--json", str(figures)], cwd=REPO, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "SIMULATION" in proc.stdout
    last = json.loads(proc.stdout.strip().splitlines()[-1])
    assert set(last) == {"search_makespan_over_ideal", "final_makespan_over_ideal", "utilization"}
    assert last["search_makespan_over_ideal"] <= 1.15, proc.stdout[-2000:]
    assert last["final_makespan_over_ideal"] <= 1.15, proc.stdout[-2000:]
    data = json.loads(figures.read_text())
    assert data["search"]["trials"] == 3 * 16 and data["final"]["trials"] == 3
    epochs = {arm: {int(k): v for k, v in counts.items()} for arm, counts in data["search"]["epochs_by_arm"].items()}
    worse, others = epochs["fixed-uniform"], [epochs["bilevel"], epochs["clo"]]
    # one ASHA over all arms would stop every trial of the worse arm at its first rung
    assert worse.get(2, 0) >= 2, epochs
    assert abs(worse.get(2, 0) - sum(o.get(2, 0) for o in others) / 2) <= 3, epochs
