"""A real MLflow tracking server, as users run it: clusters/mlflow/server.sh on 127.0.0.1
(`mlflow server --serve-artifacts`) with MLFLOW_AUTH=basic (MLflow's basic-auth app), its sweep
user made by clusters/mlflow/create-user.sh. One server and one smoke sweep serve every test here
(a sweep and a server start cost a minute of CPU; the plain no-auth server.sh is
tests/test_cluster_configs.py's).

- Over HTTP: the sweep's runs are on the server, its artifacts go through the server into the
  server's artifact store (none next to the sweep), and the champion that platform/register.py
  registered loads from it.
- Nobody else gets in: the sweep and platform/register.py run as the sweep user
  (MLFLOW_TRACKING_USERNAME / MLFLOW_TRACKING_PASSWORD); a client without them (or with a wrong
  password) gets 401 from the API, cannot delete a run, move the champion alias or delete the
  model, and the sweep and registration refuse to start with one error line (exit 2)."""

from __future__ import annotations

import json
import os
import secrets
import subprocess
import sys
import time
from pathlib import Path
from urllib.parse import urlparse

import pandas as pd
import pytest
import requests

from test_sweep_helpers import ROOT, free_port, runs_by_role, stop_session, sweep_cmd, sweep_env, use_mlflow_uri

pytestmark = pytest.mark.integration

BIN = Path(sys.executable).parent
SERVER_SH = ROOT / "clusters" / "mlflow" / "server.sh"
CREATE_USER = ROOT / "clusters" / "mlflow" / "create-user.sh"
REGISTER = ROOT / "platform" / "register.py"
NAME = "server-test"
TRIALS = 2  # the smoke preset's budget
USER = "leebert-sweep"


def healthy(url: str) -> bool:
    try:
        return requests.get(f"{url}/health", timeout=2).status_code == 200
    except requests.RequestException:
        return False


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    store = tmp_path_factory.mktemp("mlflow-auth")
    admin_password, user_password = secrets.token_hex(16), secrets.token_hex(16)
    log_path = store / "server.log"
    log = open(log_path, "ab")
    base_env = {k: v for k, v in os.environ.items() if not k.startswith(("MLFLOW_TRACKING_", "MLFLOW_REGISTRY_"))}
    proc = None
    try:
        for attempt in range(3):  # a free port can be taken again before the server binds it
            port = free_port()
            url = f"http://127.0.0.1:{port}"
            env = {**base_env, "PATH": f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}", "MLFLOW_STORE": str(store),
                   "MLFLOW_PORT": str(port), "MLFLOW_WORKERS": "1", "MLFLOW_AUTH": "basic",
                   "MLFLOW_AUTH_ADMIN_PASSWORD": admin_password, "MLFLOW_FLASK_SERVER_SECRET_KEY": secrets.token_hex(32)}
            proc = subprocess.Popen([str(SERVER_SH)], env=env, cwd=store, stdout=log, stderr=subprocess.STDOUT,
                                    start_new_session=True)
            deadline = time.time() + 90
            while proc.poll() is None and time.time() < deadline and not healthy(url):
                time.sleep(1)
            if proc.poll() is None and healthy(url):
                break
            assert not stop_session(proc, timeout=10, grace=10)
            proc = None
        else:
            raise AssertionError("the basic-auth server did not answer /health (3 tries):\n"
                                 + log_path.read_text(errors="replace")[-4000:])
        made = subprocess.run([str(CREATE_USER), USER], capture_output=True, text=True, timeout=120, env={
            **base_env, "PATH": env["PATH"], "MLFLOW_TRACKING_URI": url, "MLFLOW_TRACKING_USERNAME": "admin",
            "MLFLOW_TRACKING_PASSWORD": admin_password, "MLFLOW_NEW_USER_PASSWORD": user_password})
        assert made.returncode == 0 and f"user {USER} on {url}: created" in made.stdout, made.stdout + made.stderr
        yield {"url": url, "store": store, "log": log_path, "admin": ("admin", admin_password),
               "user": (USER, user_password), "env": base_env}
    finally:
        survivors = stop_session(proc, timeout=30, grace=30) if proc is not None else []
        log.close()
        assert not survivors, f"processes of the mlflow server survived SIGTERM: {[p.pid for p in survivors]}"


def as_user(server, credentials) -> dict[str, str]:
    env = sweep_env()
    for key in [k for k in env if k.startswith(("MLFLOW_TRACKING_", "MLFLOW_REGISTRY_"))]:
        del env[key]
    if credentials:
        env.update(MLFLOW_TRACKING_USERNAME=credentials[0], MLFLOW_TRACKING_PASSWORD=credentials[1])
    return env


def client_of(server, credentials, monkeypatch):
    """An MlflowClient that logs in with ``credentials`` (MLflow reads them from the environment,
    set here until the test ends)."""
    from mlflow import MlflowClient

    monkeypatch.setenv("MLFLOW_TRACKING_USERNAME", credentials[0])
    monkeypatch.setenv("MLFLOW_TRACKING_PASSWORD", credentials[1])
    return MlflowClient(tracking_uri=server["url"], registry_uri=server["url"])


@pytest.fixture(scope="module")
def registered(server, tmp_path_factory):
    root = tmp_path_factory.mktemp("sweeps")
    env = as_user(server, server["user"])
    sweep = subprocess.run(sweep_cmd(root, NAME, "--tracking-uri", server["url"], "--set", "arms=[fixed]",
                                     "--set", "register=false"),
                           capture_output=True, text=True, timeout=900, env=env, cwd=ROOT)
    assert sweep.returncode == 0, (sweep.stdout[-3000:] + sweep.stderr[-3000:] + "\n--- server log ---\n"
                                   + server["log"].read_text(errors="replace")[-3000:])
    register = subprocess.run([sys.executable, str(REGISTER), "--sweep", NAME, "--root", str(root)],
                              capture_output=True, text=True, timeout=600, env=env, cwd=ROOT)
    assert register.returncode == 0, register.stdout[-3000:] + register.stderr[-3000:]
    return {"root": root, "sweep": sweep, "register": register}


@pytest.fixture
def sweep(server, registered, monkeypatch):
    """The registered sweep, read back over HTTP as the sweep user (credentials set until the test ends)."""
    client = client_of(server, server["user"], monkeypatch)
    return {"root": registered["root"], "dir": registered["root"] / NAME, "proc": registered["sweep"], "client": client,
            "runs": runs_by_role(client, NAME)}


def snapshot(client) -> dict:
    """What a stranger must not change: every run's status and lifecycle, the models and their aliases."""
    from mlflow.entities import ViewType

    experiment = client.get_experiment_by_name(NAME)
    runs = client.search_runs([experiment.experiment_id], run_view_type=ViewType.ALL, max_results=1000)
    models = client.search_registered_models()
    return {"runs": sorted((r.info.run_id, r.info.status, r.info.lifecycle_stage) for r in runs),
            "models": {m.name: dict(m.aliases) for m in models},
            "versions": sorted((v.name, v.version) for m in models for v in client.search_model_versions(f"name = '{m.name}'"))}


def test_the_sweep_and_registration_run_as_the_sweep_user(server, registered, monkeypatch):
    client = client_of(server, server["user"], monkeypatch)
    state = snapshot(client)
    assert len(state["runs"]) >= 4 and all(status == "FINISHED" for _, status, _ in state["runs"])
    assert set(state["models"]) == {"leebert-mr"} and {"champion", "fixed-best"} <= set(state["models"]["leebert-mr"])
    assert "champion: models:/leebert-mr@champion = fixed" in registered["register"].stdout
    experiment = client.get_experiment_by_name(NAME)
    # the sweep user owns what it made: the auth app granted it MANAGE
    from mlflow.server import get_app_client

    admin = get_app_client("basic-auth", tracking_uri=server["url"])
    client_of(server, server["admin"], monkeypatch)  # the admin's credentials from here on
    assert admin.get_user_permission(USER, "experiment", experiment.experiment_id).permission == "MANAGE"
    assert admin.get_user_permission(USER, "registered_model", "leebert-mr").permission == "MANAGE"


def test_a_client_without_credentials_gets_401_and_changes_nothing(server, registered, monkeypatch):
    client = client_of(server, server["user"], monkeypatch)
    before = snapshot(client)
    experiment = client.get_experiment_by_name(NAME)
    run_id = before["runs"][0][0]
    champion = before["models"]["leebert-mr"]["champion"]
    api = f"{server['url']}/api/2.0/mlflow"
    attempts = [
        ("GET", "experiments/search", {"params": {"max_results": 10}}),
        ("GET", "runs/get", {"params": {"run_id": run_id}}),
        ("POST", "runs/delete", {"json": {"run_id": run_id}}),
        ("POST", "experiments/delete", {"json": {"experiment_id": experiment.experiment_id}}),
        ("POST", "registered-models/alias", {"json": {"name": "leebert-mr", "alias": "champion", "version": "999"}}),
        ("DELETE", "registered-models/alias", {"json": {"name": "leebert-mr", "alias": "champion"}}),
        ("DELETE", "registered-models/delete", {"json": {"name": "leebert-mr"}}),
        ("POST", "users/create", {"json": {"username": "intruder", "password": "intruder-password-1"}}),
    ]
    for auth in (None, (USER, "a-wrong-password"), ("intruder", "intruder-password-1")):
        for method, path, kwargs in attempts:
            response = requests.request(method, f"{api}/{path}", auth=auth, timeout=30, **kwargs)
            assert response.status_code == 401, (auth, method, path, response.status_code, response.text[:300])
    assert snapshot(client) == before
    assert client.get_registered_model("leebert-mr").aliases["champion"] == champion
    # a colleague with a login of their own may look (default_permission READ), not change
    from mlflow.server import get_app_client

    client_of(server, server["admin"], monkeypatch)
    get_app_client("basic-auth", tracking_uri=server["url"]).create_user("colleague", "colleague-password-1")
    colleague = ("colleague", "colleague-password-1")
    assert requests.get(f"{api}/runs/get", params={"run_id": run_id}, auth=colleague, timeout=30).status_code == 200
    for method, path, kwargs in attempts[2:7]:
        response = requests.request(method, f"{api}/{path}", auth=colleague, timeout=30, **kwargs)
        assert response.status_code == 403, (method, path, response.status_code, response.text[:300])
    client = client_of(server, server["user"], monkeypatch)
    assert snapshot(client) == before

    # the project's own commands refuse before doing anything: one error line, exit 2
    stranger = as_user(server, None)
    sweep = subprocess.run(sweep_cmd(registered["root"], "auth-stranger", "--tracking-uri", server["url"]),
                           capture_output=True, text=True, timeout=300, env=stranger, cwd=ROOT)
    register = subprocess.run([sys.executable, str(REGISTER), "--sweep", NAME, "--root", str(registered["root"])],
                              capture_output=True, text=True, timeout=300, env=stranger, cwd=ROOT)
    wrong = subprocess.run([sys.executable, str(REGISTER), "--sweep", NAME, "--root", str(registered["root"])],
                           capture_output=True, text=True, timeout=300, env=as_user(server, (USER, "a-wrong-password")),
                           cwd=ROOT)
    for proc, needle in ((sweep, "set MLFLOW_TRACKING_USERNAME and MLFLOW_TRACKING_PASSWORD"),
                         (register, "set MLFLOW_TRACKING_USERNAME and MLFLOW_TRACKING_PASSWORD"),
                         (wrong, f"refused the credentials of user '{USER}'")):
        lines = proc.stderr.strip().splitlines()
        assert proc.returncode == 2 and lines and lines[-1].startswith("error: ") and needle in lines[-1], proc.stderr[-2000:]
        assert "requires a login" in lines[-1]
    assert not (registered["root"] / "auth-stranger").exists(), "the refused sweep left nothing behind"
    assert snapshot(client) == before


# ---------------------------------------------------------------- over HTTP
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
    lets it manage artifacts, and the preflight check reaches it and logs in."""
    from sweeps.preflight import preflight
    from sweeps.presets import build_config

    monkeypatch.setenv("MLFLOW_TRACKING_URI", server["url"])
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    client_of(server, server["user"], monkeypatch)  # the sweep user's login: preflight also checks it
    cfg = build_config(preset="smoke", flags={"root": str(tmp_path), "name": "env-default"})
    assert cfg.tracking_uri is None
    assert cfg.resolved_tracking_uri == server["url"]
    assert cfg.artifact_location is None  # the server's --artifacts-destination decides
    preflight(cfg)  # GET /health on the server answers 200
    explicit = build_config(preset="smoke", flags={"root": str(tmp_path), "name": "env-default",
                                                   "tracking_uri": f"sqlite:///{tmp_path / 'other.db'}"})
    assert explicit.resolved_tracking_uri == f"sqlite:///{tmp_path / 'other.db'}"  # the flag wins
