"""A real MLflow tracking server (`mlflow server --serve-artifacts` on 127.0.0.1, as
clusters/mlflow/server.sh starts it): the smoke sweep logs to it over HTTP, its artifacts go
through the server into the server's artifact store, and the registered champion loads from it."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path
from urllib.parse import urlparse

import pandas as pd
import pytest
import requests

from test_sweep_helpers import free_port, run_sweep_cli, runs_by_role, stop_session, use_mlflow_uri

pytestmark = pytest.mark.integration

BIN = Path(sys.executable).parent
NAME = "server-test"
TRIALS = 2  # the smoke preset's budget


def start_server(store: Path, log, port: int) -> subprocess.Popen:
    env = {**os.environ, "PATH": f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}",  # it runs uvicorn by name
           "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"}  # as server.sh: no job runner processes
    for key in ("MLFLOW_TRACKING_URI", "MLFLOW_REGISTRY_URI"):
        env.pop(key, None)
    cmd = [str(BIN / "mlflow"), "server", "--backend-store-uri", f"sqlite:///{store / 'mlflow.db'}",
           "--artifacts-destination", str(store / "mlartifacts"), "--serve-artifacts",
           "--host", "127.0.0.1", "--port", str(port), "--workers", "1"]
    return subprocess.Popen(cmd, env=env, cwd=store, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)


def healthy(url: str) -> bool:
    try:
        return requests.get(f"{url}/health", timeout=2).status_code == 200
    except requests.RequestException:
        return False


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    store = tmp_path_factory.mktemp("mlflow-server")
    log_path = store / "server.log"
    log = open(log_path, "ab")
    proc = None
    try:
        for attempt in range(3):  # a free port can be taken again before the server binds it
            port = free_port()
            url = f"http://127.0.0.1:{port}"
            proc = start_server(store, log, port)
            deadline = time.time() + 60
            while proc.poll() is None and time.time() < deadline and not healthy(url):
                time.sleep(1)
            if proc.poll() is None and healthy(url):
                break
            survivors = stop_session(proc, timeout=10, grace=10)
            assert not survivors, f"mlflow server processes survived: {[p.pid for p in survivors]}"
            proc = None
        else:
            raise AssertionError("mlflow server did not answer /health within 60 s (3 tries):\n"
                                 + log_path.read_text(errors="replace")[-4000:])
        yield {"url": url, "store": store, "port": port, "log": log_path}
    finally:
        survivors = stop_session(proc, timeout=30, grace=30) if proc is not None else []
        log.close()
        assert not survivors, f"processes of the mlflow server survived SIGTERM: {[p.pid for p in survivors]}"


@pytest.fixture(scope="module")
def sweep(server, tmp_path_factory):
    from mlflow import MlflowClient

    root = tmp_path_factory.mktemp("sweeps")
    proc = run_sweep_cli(root, NAME, "--tracking-uri", server["url"], "--set", "arms=[fixed]")
    assert proc.returncode == 0, (proc.stdout[-3000:] + proc.stderr[-3000:]
                                  + "\n--- server log ---\n" + server["log"].read_text(errors="replace")[-3000:])
    client = MlflowClient(tracking_uri=server["url"], registry_uri=server["url"])
    return {"root": root, "dir": root / NAME, "proc": proc, "client": client, "runs": runs_by_role(client, NAME)}


def test_sweep_runs_are_on_the_server(server, sweep):
    runs = sweep["runs"]
    assert f"MLflow {server['url']}" in sweep["proc"].stdout
    assert f"MLflow UI:      {server['url']}" in sweep["proc"].stdout
    assert [r.data.tags["arm"] for r in runs.get("arm", [])] == ["fixed"]
    assert len(runs.get("trial", [])) == TRIALS and len(runs.get("comparison", [])) == 1
    assert set(runs) == {"arm", "trial", "comparison"}, set(runs)
    for run in sum(runs.values(), []):
        assert run.info.status == "FINISHED", (run.info.run_name, run.info.status)
    completed = [r for r in runs["trial"] if r.data.tags["trial_status"] == "completed"]
    assert completed, [r.data.tags["trial_status"] for r in runs["trial"]]
    for run in runs["trial"]:
        assert run.data.tags["trial_status"] in ("completed", "stopped_early")
    for run in completed:  # a trial ASHA stopped early has no test metrics
        assert 0 <= run.data.metrics["test/hypervolume"] <= 1
    # nothing was written to a local store next to the sweep
    assert not (sweep["dir"] / "mlflow.db").exists()
    assert not (sweep["dir"] / "mlartifacts").exists()


def test_artifacts_go_through_the_server(server, sweep, tmp_path):
    client = sweep["client"]
    experiment = client.get_experiment_by_name(NAME)
    assert experiment.artifact_location.startswith("mlflow-artifacts:"), experiment.artifact_location
    run = next(r for r in sweep["runs"]["trial"] if r.data.tags["trial_status"] == "completed")
    assert run.info.artifact_uri.startswith("mlflow-artifacts:"), run.info.artifact_uri
    names = {a.path for a in client.list_artifacts(run.info.run_id)}
    assert {"config.json", "summary.json"} <= names, names

    folder = Path(client.download_artifacts(run.info.run_id, "", str(tmp_path / "download")))
    config = json.loads((folder / "config.json").read_text())
    assert config["model"] == "tiny-random" and config["method"] == "fixed"
    summary = json.loads((folder / "summary.json").read_text())
    assert summary  # a trainer summary, non-empty

    import mlflow.artifacts

    one = Path(mlflow.artifacts.download_artifacts(run_id=run.info.run_id, artifact_path="summary.json",
                                                   dst_path=str(tmp_path / "one"), tracking_uri=server["url"]))
    assert one.read_bytes() == (folder / "summary.json").read_bytes()

    # the bytes landed in the server's artifact store, under the run's path
    stored = server["store"] / "mlartifacts" / urlparse(run.info.artifact_uri).path.lstrip("/")
    for name in ("config.json", "summary.json"):
        assert (stored / name).is_file(), sorted(str(p) for p in (server["store"] / "mlartifacts").rglob("*"))[:40]
        assert (stored / name).read_bytes() == (folder / name).read_bytes()
    # ... and not in the sweep's folder (no local artifact store, no ./mlruns fallback)
    assert not list(sweep["dir"].rglob("mlartifacts")) and not list(sweep["dir"].rglob("mlruns"))
    assert not (sweep["dir"] / "mlflow.db").exists()


@pytest.mark.filterwarnings("ignore:.*type hints")
def test_registered_champion_loads_from_the_server(server, sweep, monkeypatch):
    import mlflow

    client = sweep["client"]
    version = client.get_model_version_by_alias("leebert-mr", "champion")
    assert version.tags["arm"] == "fixed"
    assert client.get_model_version_by_alias("leebert-mr", "fixed-best").version == version.version
    use_mlflow_uri(monkeypatch, server["url"])
    model = mlflow.pyfunc.load_model("models:/leebert-mr@champion")
    out = model.predict(pd.DataFrame({"sentence": ["a gripping , funny and moving film .",
                                                   "tedious and badly acted ."]}))
    assert len(out) == 2 and out["label"].isin([0, 1]).all(), out
    # the model's files are in the server's artifact store too
    stored = [p for p in (server["store"] / "mlartifacts").rglob("MLmodel")]
    assert stored, "no MLmodel file under the server's artifact store"


def test_environment_names_the_server_by_default(server, monkeypatch, tmp_path):
    """MLFLOW_TRACKING_URI set and no --tracking-uri: the sweep config resolves to that server,
    lets it manage artifacts, and the preflight check reaches it."""
    from sweeps.preflight import preflight
    from sweeps.presets import build_config

    monkeypatch.setenv("MLFLOW_TRACKING_URI", server["url"])
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    cfg = build_config(preset="smoke", flags={"root": str(tmp_path), "name": "env-default"})
    assert cfg.tracking_uri is None
    assert cfg.resolved_tracking_uri == server["url"]
    assert cfg.artifact_location is None  # the server's --artifacts-destination decides
    preflight(cfg)  # GET /health on the server answers 200
    explicit = build_config(preset="smoke", flags={"root": str(tmp_path), "name": "env-default",
                                                   "tracking_uri": f"sqlite:///{tmp_path / 'other.db'}"})
    assert explicit.resolved_tracking_uri == f"sqlite:///{tmp_path / 'other.db'}"  # the flag wins
