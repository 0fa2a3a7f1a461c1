"""The GPU-side scripts run their code paths on the CPU (a tiny model), so a mistake in them shows
up here rather than in the few minutes a GPU machine is lent."""

import json
import math
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
CHECKS = ["import_deepspeed", "engine", "train/fixed", "train/bilevel", "train/clo", "syncs/zero2", "syncs/zero0",
          "hypergradient", "resume", "step_cost", "packing", "compile", "early_exit"]


@pytest.mark.integration
def test_gpu_check_passes_every_check_on_the_cpu_in_bf16(tmp_path):
    out = tmp_path / "checks.json"
    proc = subprocess.run([sys.executable, "benchmarks/gpu_check.py", "--device", "cpu", "--quick", "--precision", "bf16",
                           "--out", str(tmp_path / "scratch"), "--json", str(out)],
                          cwd=REPO, capture_output=True, text=True, timeout=900)  # packing, compile: 5 subprocesses
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    results = json.loads(out.read_text())
    assert [r["check"] for r in results] == CHECKS and all(r["ok"] for r in results)
    lines = [l for l in proc.stdout.splitlines() if l.startswith(("PASS", "FAIL"))]
    assert len(lines) == len(CHECKS), "one line per check"
    figures = {r["check"]: r.get("figures", {}) for r in results}
    assert figures["resume"]["max_abs_theta_diff"] <= 1e-6 and figures["hypergradient"]["fd_vs_exact_cosine"] >= 0.99
    assert set(figures["step_cost"]["outer_step_cost"]) == {"bilevel", "clo"}
    assert figures["import_deepspeed"]["torch"] and figures["import_deepspeed"]["deepspeed"]
    assert figures["hypergradient"]["fd_fp32_trainer_xi_cosine"] >= 0.99
    assert set(figures["packing"]) == {"1", "2"} and len(figures["packing"]["2"]["each"]) == 2  # --quick: 1 and 2
    assert figures["compile"]["compiled_steps_per_s"] > 0 and figures["syncs/zero0"]["fixed"]["debug_mode"] == 0


def test_gpu_check_without_cuda_fails_at_once_with_exit_2():
    proc = subprocess.run([sys.executable, "benchmarks/gpu_check.py"], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2 and proc.stderr.startswith("error: device 'cuda'") and "no CUDA support" in proc.stderr


@pytest.mark.integration
def test_step_cost_prints_every_figure_and_its_json():
    """Both precisions on the CPU (bf16 autocast runs anywhere; it pays where the CPU has bf16 units),
    and the entries for sweeps/budget.py's MEASURED_OUTER_STEP_COST named at the end."""
    proc = subprocess.run([sys.executable, "benchmarks/step_cost.py", "--quick", "--precision", "fp32", "bf16",
                           "--breakdown", "1"], cwd=REPO, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    for needle in ("plain PyTorch loop (reference)", "fixed step / plain loop step:", "outer_step_cost per step",
                   "epoch slices at outer_every 6", "host syncs:", "cpu bf16\n", "MEASURED_OUTER_STEP_COST entries",
                   "fp32 / bf16 time per step"):
        assert needle in proc.stdout
    everything = json.loads(proc.stdout.strip().splitlines()[-1])
    for precision in ("fp32", "bf16"):
        figures = everything[f"cpu/{precision}/threads=1"]
        assert set(figures["outer_step_cost"]) == set(figures["epoch_outer_step_cost"]) == {"bilevel", "clo"}
        assert figures["seconds_per_step"]["clo/outer"] > figures["seconds_per_step"]["clo/step"] > 0
        entry = everything["budget_entries"][f"cpu/{precision}"]
        assert f'("cpu", "{precision}"): {json.dumps(entry)},' in proc.stdout
        for arm in ("bilevel", "clo"):  # the figure rounded up to 0.1, as the table's are
            assert entry[arm] == pytest.approx(math.ceil(round(figures["outer_step_cost"][arm], 2) * 10 - 1e-9) / 10)
    assert set(everything["fp32_over_bf16"]["fixed/step"]) == {"threads=1"}
