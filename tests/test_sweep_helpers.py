"""Shared helpers for the sweep tests (no tests here): run the CLI, read the MLflow store back."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "platform" / "sweep.py"
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def sweep_env(**extra: str) -> dict[str, str]:
    env = {**os.environ, "RAY_AUTH_MODE": "disabled", "RAY_USAGE_STATS_ENABLED": "0", "HF_HUB_OFFLINE": "1",
           "PYTHONUNBUFFERED": "1", **extra}
    env.pop("RAY_ADDRESS", None)
    return env


def sweep_cmd(root: Path, name: str, *args: str) -> list[str]:
    return [sys.executable, str(SCRIPT), "--preset", "smoke", "--root", str(root), "--name", name, *args]


def run_sweep_cli(root: Path, name: str, *args: str, timeout: int = 600) -> subprocess.CompletedProcess:
    return subprocess.run(sweep_cmd(root, name, *args), capture_output=True, text=True, timeout=timeout,
                          env=sweep_env(), cwd=ROOT)


def client(root: Path, name: str):
    from mlflow import MlflowClient

    uri = f"sqlite:///{root / name / 'mlflow.db'}"
    return MlflowClient(tracking_uri=uri, registry_uri=uri), uri


def runs_by_role(mlflow_client, experiment_name: str) -> dict[str, list]:
    from mlflow.entities import ViewType

    experiment = mlflow_client.get_experiment_by_name(experiment_name)
    assert experiment is not None, f"no MLflow experiment {experiment_name}"
    runs = mlflow_client.search_runs([experiment.experiment_id], run_view_type=ViewType.ALL, max_results=1000)
    out: dict[str, list] = {}
    for run in runs:
        out.setdefault(run.data.tags.get("role", "?"), []).append(run)
    return out


def history(mlflow_client, run_id: str, key: str) -> list[tuple[int, float]]:
    return sorted((m.step, m.value) for m in mlflow_client.get_metric_history(run_id, key))


def is_zombie(process) -> bool:
    import psutil

    try:
        return process.status() == psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return True
