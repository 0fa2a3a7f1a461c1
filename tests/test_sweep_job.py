"""`ray job submit`: a real local head (`ray start --head`), the smoke sweep submitted with the
repository as working dir, results checked in MLflow. Only the Ray this test starts is stopped."""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import psutil
import pytest
import requests

from test_sweep_helpers import ROOT, client, free_port, leftover_processes, runs_by_role, still_running, sweep_env

pytestmark = pytest.mark.integration

BIN = Path(sys.executable).parent


@pytest.fixture
def ray_head():
    temp_dir = tempfile.mkdtemp(prefix="ray", dir="/tmp")  # short: Ray's socket paths live under it
    ports = {name: free_port() for name in ("port", "dashboard-port", "ray-client-server-port",
                                            "dashboard-agent-listen-port", "dashboard-agent-grpc-port",
                                            "runtime-env-agent-port", "metrics-export-port",
                                            "node-manager-port", "object-manager-port")}
    env = sweep_env(PATH=f"{BIN}{os.pathsep}{os.environ['PATH']}")  # the job's `python` is this venv's
    cmd = [str(BIN / "ray"), "start", "--head", "--num-cpus=2", "--dashboard-host=127.0.0.1",
           "--disable-usage-stats", f"--temp-dir={temp_dir}", "--block",
           *(f"--{name}={port}" for name, port in ports.items())]
    head = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            start_new_session=True)
    dashboard = f"http://127.0.0.1:{ports['dashboard-port']}"
    try:
        deadline = time.time() + 90
        while True:
            try:
                if requests.get(f"{dashboard}/api/version", timeout=2).ok:
                    break
            except requests.RequestException:
                pass
            if head.poll() is not None or time.time() > deadline:
                raise AssertionError("ray head did not come up:\n" + (head.stdout.read() if head.poll() is not None else ""))
            time.sleep(1)
        yield {"dashboard": dashboard, "env": env, "temp_dir": temp_dir}
    finally:
        family = [p for p in psutil.Process(head.pid).children(recursive=True)] if head.poll() is None else []
        head.send_signal(signal.SIGINT)  # --block: a clean shutdown of this head's processes only
        try:
            head.wait(timeout=20)  # 1.5 s idle; once it took over 60 s on a loaded machine
        except subprocess.TimeoutExpired:
            head.kill()
        for process in family:  # what the head did not stop (dashboard modules): ask, then kill
            try:
                process.terminate()
            except psutil.NoSuchProcess:
                pass
        # Ray's own processes, not the project's: one that ignores SIGTERM for 30 s (a dashboard
        # module on a loaded machine did, in the full suite) is killed; none may survive that
        killed = leftover_processes(family, timeout=30)
        survivors = [p for p in killed if still_running(p)]
        shutil.rmtree(temp_dir, ignore_errors=True)
        assert not survivors, f"processes of the test's Ray head survived SIGKILL: {[p.pid for p in survivors]}"


def test_ray_job_submit_runs_the_smoke_sweep(ray_head, tmp_path):
    root = tmp_path / "sweeps"
    # one arm, two trials one after the other in the same reused worker process (reuse_actors):
    # the second trial finds the DeepSpeed process group already initialized
    submit = [str(BIN / "ray"), "job", "submit", "--address", ray_head["dashboard"], "--working-dir", str(ROOT),
              "--", "python", "platform/sweep.py", "--preset", "smoke", "--root", str(root), "--name", "job",
              "--set", "arms=[clo]", "--set", "reuse_actors=true", "--set", "max_concurrent=1",
              "--set", "scheduler=none"]
    proc = subprocess.run(submit, env=ray_head["env"], capture_output=True, text=True, timeout=600, cwd=ROOT)
    output = proc.stdout + proc.stderr
    assert proc.returncode == 0, output[-4000:]
    assert re.search(r"Job '\S+' succeeded", output), output[-4000:]
    assert "local Ray" not in output and "on cluster" in output  # the driver joined the job's cluster
    # what the head unpacked as the job's working dir: the code, not .venv, runs or .git (.rayignore)
    packages = list(Path(ray_head["temp_dir"]).glob("session_2*/runtime_resources/working_dir_files/_ray_pkg_*"))
    packages = [p for p in packages if p.is_dir()]
    assert packages, "no working_dir package on the head"
    for package in packages:
        names = {p.name for p in package.iterdir()}
        assert {"platform", "sweeps", "trainers", "search_spaces", "clusters"} <= names
        assert not names & {".venv", "runs", ".git"}, names
        size = sum(f.stat().st_size for f in package.rglob("*") if f.is_file())
        assert size < 20 * 2**20, f"working dir upload of {size / 2**20:.1f} MiB"

    mlflow_client, _ = client(root, "job")
    runs = runs_by_role(mlflow_client, "job")
    assert [r.data.tags["arm"] for r in runs["arm"]] == ["clo"]
    assert len(runs["trial"]) == 2 and len(runs["comparison"]) == 1
    for run in sum(runs.values(), []):
        assert run.info.status == "FINISHED"
    for run in runs["trial"]:
        assert run.data.tags["trial_status"] == "completed"
        assert 0 <= run.data.metrics["test/hypervolume"] <= 1
    assert str(mlflow_client.get_model_version_by_alias("leebert-mr", "champion").version) == "1"
    assert str(mlflow_client.get_model_version_by_alias("leebert-mr", "clo-best").version) == "1"
    pids = {json.loads(line)["pid"] for path in (root / "job" / "ray" / "search").rglob("result.json")
            for line in path.read_text().splitlines() if line.strip()}
    assert len(pids) == 1, f"both trials should have run in one reused worker process, got pids {pids}"
