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
