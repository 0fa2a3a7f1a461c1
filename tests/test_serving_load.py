"""benchmarks/serving_load.py, short: a real `mlflow models serve` on 127.0.0.1 serving a tiny
exported model (saved as registration logs it), 4 concurrent clients mixing good requests of
1-32 rows with bad ones for at most 200 requests / 40 s (after 100 of warm-up). Every good request is answered, every
bad one with a 4xx (the row limit the server was started with included), and the server's RSS
stays flat."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from test_serving import _cfg, _tiny, save
from test_sweep_helpers import ROOT, leftover_processes, sweep_env

pytestmark = pytest.mark.integration

BENCHMARK = ROOT / "benchmarks" / "serving_load.py"


@pytest.fixture(scope="module")
def pyfunc(tmp_path_factory):
    from serving.export import export_model
    from trainers.model import MultiExitEncoder, tiny_backbone

    folder = tmp_path_factory.mktemp("load")
    exported = export_model(_tiny(MultiExitEncoder, tiny_backbone, num_labels=2), _cfg("mr"), folder / "exported")
    return save(folder / "pyfunc", exported, {"policy": "patience", "setting": 1}, max_rows=256, device="auto")


def test_short_load_run_meets_the_targets(pyfunc, tmp_path):
    out = tmp_path / "load.json"
    proc = subprocess.run([sys.executable, str(BENCHMARK), "--model-uri", str(pyfunc), "--clients", "4",
                           "--requests", "200", "--duration", "40", "--bad-fraction", "0.3", "--max-rows", "48",
                           "--warmup", "100", "--work-dir", str(tmp_path / "work"), "--json", str(out)],
                          capture_output=True, text=True, timeout=300, env=sweep_env(), cwd=ROOT)
    assert out.is_file(), proc.stdout[-3000:] + proc.stderr[-3000:]
    result = json.loads(out.read_text())
    log = (tmp_path / "work" / "server.log").read_text(errors="replace")[-2000:]
    assert result["failed_good"] == 0, (result["failures"], log)
    assert result["bad_not_4xx"] == 0, (result["bad_statuses"], log)
    assert result["requests"] == 200 or result["seconds"] >= 40
    assert result["good"] >= 50 and result["bad"] >= 20
    assert set(result["bad_statuses"]["49 rows"]) <= {"400"}  # the limit the server was started with
    assert result["good_rows"] >= result["good"] and result["sentences_per_s"] > 0
    assert 0 < result["p50_ms"] <= result["p99_ms"]
    assert result["rss_before_mb"] > 100 and result["rss_after_mb"] > 0
    assert result["rss_growth"] < 0.10, result
    assert result["server_alive"] and proc.returncode == 0, proc.stdout[-2000:]
    assert "failed good requests:        0" in proc.stdout and "p99" in proc.stdout
    import psutil

    processes = []
    for pid in result["server_pids"]:  # the server (launcher, uvicorn) was stopped with the run
        try:
            processes.append(psutil.Process(pid))
        except psutil.NoSuchProcess:
            pass
    assert len(result["server_pids"]) >= 2 and not leftover_processes(processes, timeout=30)


def test_bad_arguments_exit_2(tmp_path):
    proc = subprocess.run([sys.executable, str(BENCHMARK), "--clients", "0", "--max-rows", "8"],
                          capture_output=True, text=True, timeout=120, env=sweep_env(), cwd=ROOT)
    assert proc.returncode == 2 and proc.stderr.startswith("error: ") and "--clients" in proc.stderr
