"""Reachability checks before a sweep starts: the MLflow tracking store and the Ray cluster.

``preflight`` runs once, when ``sweeps.runner.run_sweep`` starts, before Ray is started or joined:
an unreachable service is a ``ConfigError`` (one ``error: ...`` line, exit code 2), not a failure
half-way into the sweep.
"""

from __future__ import annotations

import os
import socket
from pathlib import Path
from urllib.parse import urlparse

from sweeps.config import SweepConfig
from trainers.errors import ConfigError

def check_tracking_uri(uri: str, timeout: float = 3.0) -> None:
    """An http(s) server must answer /health; a sqlite file's folder must be creatable."""
    scheme = urlparse(uri).scheme
    if scheme in ("http", "https"):
        import requests

        try:
            response = requests.get(uri.rstrip("/") + "/health", timeout=timeout)
        except requests.RequestException as err:
            reason = type(err).__name__.replace("Error", " error").strip()
            raise ConfigError(f"MLflow tracking server {uri} is not reachable ({reason}); start it (clusters/mlflow/server.sh) "
                              "or leave tracking_uri unset for a local sqlite store") from None
        if response.status_code != 200:
            raise ConfigError(f"MLflow tracking server {uri} answered /health with HTTP {response.status_code}; is it an MLflow server?")
        # /health answers whatever the Host header and without a login; the API refuses hosts outside
        # --allowed-hosts, and a server with authentication refuses clients without MLflow's credentials
        user, password = os.environ.get("MLFLOW_TRACKING_USERNAME"), os.environ.get("MLFLOW_TRACKING_PASSWORD")
        token = os.environ.get("MLFLOW_TRACKING_TOKEN")
        try:  # a login costs the server a password hash (~0.2 s): more time than /health
            api = requests.get(uri.rstrip("/") + "/api/2.0/mlflow/experiments/search", params={"max_results": 1},
                               timeout=max(timeout, 30.0), auth=(user, password) if user and password else None,
                               headers={"Authorization": f"Bearer {token}"} if token and not user else None)
        except requests.RequestException as err:
            raise ConfigError(f"MLflow tracking server {uri} answers /health but not its API "
                              f"({type(err).__name__}); see the server's log") from None
        if api.status_code == 401:
            raise ConfigError(f"MLflow tracking server {uri} requires a login" + (
                f" and refused the credentials of user '{user}' (MLFLOW_TRACKING_USERNAME / MLFLOW_TRACKING_PASSWORD)"
                if user and password else ": set MLFLOW_TRACKING_USERNAME and MLFLOW_TRACKING_PASSWORD (or "
                "MLFLOW_TRACKING_TOKEN) in the environment; on Kubernetes they come from a Secret (docs/cluster.md)"))
        if api.status_code == 403:
            raise ConfigError(f"MLflow tracking server {uri} refuses this host name (HTTP 403); start it with "
                              f"--allowed-hosts including '{urlparse(uri).netloc}'")
        return
    if scheme == "sqlite":
        path = uri[len("sqlite:///"):] if uri.startswith("sqlite:///") else ""
        if not path or path == ":memory:":
            raise ConfigError(f"tracking URI '{uri}' must name a file: sqlite:////absolute/path/mlflow.db")
        check_creatable(Path(path).parent, f"MLflow store {uri}")
        return
    if scheme in ("", "file"):
        raise ConfigError(f"tracking URI '{uri}' is a file store, which cannot hold the model registry; "
                          "use sqlite:///path/mlflow.db or an http(s):// tracking server")
    if scheme not in ("postgresql", "mysql", "mssql", "databricks") and not scheme.startswith(("postgresql+", "mysql+", "mssql+")):
        raise ConfigError(f"tracking URI '{uri}' has an unsupported scheme '{scheme}'; use sqlite:///..., http(s)://... "
                          "or a database URI (postgresql://...)")


def check_creatable(folder: Path, what: str) -> None:
    """``folder`` exists or can be made, and a file can be written in it; the folders made to find
    out are removed again, so that a sweep refused later (say, for resources) leaves nothing behind.
    A probe, not a permission test: root passes os.access on read-only places such as /proc."""
    made = []
    try:
        for part in reversed((folder, *folder.parents)):
            if not part.exists():
                part.mkdir()
                made.append(part)
        probe = folder / f".leebert-probe-{os.getpid()}"
        probe.write_text("")
        probe.unlink()
    except OSError as err:
        raise ConfigError(f"{what}: cannot create folder {folder} or write in it ({err.strerror})") from None
    finally:
        for part in reversed(made):
            part.rmdir()


def preflight(cfg: SweepConfig) -> None:
    """Reachability checks before anything starts (no Ray, no MLflow import needed); they write nothing."""
    address = cfg.ray_address or os.environ.get("RAY_ADDRESS")
    if address:
        check_ray_address(address)
    else:
        check_local_resources(cfg)
    check_tracking_uri(cfg.resolved_tracking_uri)


def check_local_resources(cfg: SweepConfig) -> None:
    """A trial must fit the local Ray the sweep is about to start: refused here in a second, rather
    than after Ray has started (``sweeps.ray_cluster`` checks a joined cluster once it is joined)."""
    cpus = cfg.num_cpus or os.cpu_count() or 1
    need_cpus = cfg.cpus_per_trial * cfg.workers_per_trial
    need_gpus = cfg.gpus_per_trial * cfg.workers_per_trial
    gpus = 0
    if need_gpus > 0:
        import torch

        gpus = torch.cuda.device_count()
    if need_cpus > cpus or need_gpus > gpus:
        raise ConfigError(f"a trial of {cfg.workers_per_trial} worker(s) needs {need_cpus:g} CPU / {need_gpus:g} GPU but "
                          f"this machine has {cpus:g} CPU / {gpus:g} GPU (num_cpus: {cfg.num_cpus or 'all'}); lower "
                          "workers_per_trial, cpus_per_trial or gpus_per_trial, or join a bigger cluster (ray_address)")


def sqlite_folder(uri: str) -> Path | None:
    """The folder of a sqlite:/// tracking store (None for a server), which the sweep creates when it starts."""
    if urlparse(uri).scheme == "sqlite" and uri.startswith("sqlite:///"):
        return Path(uri[len("sqlite:///"):]).parent
    return None


def check_ray_address(address: str, timeout: float = 3.0) -> None:
    """A host:port (or ray://host:port) must accept a TCP connection; 'auto' is checked by ray.init."""
    if address in ("auto", "local"):
        return
    if address.startswith(("http://", "https://")):
        raise ConfigError(f"Ray address '{address}' is the dashboard / job-submission address; the sweep needs the "
                          "cluster address host:6379 (or none at all inside `ray job submit`)")
    target = address[len("ray://"):] if address.startswith("ray://") else address
    host, _, port = target.rpartition(":")
    if not host or not port.isdigit():
        raise ConfigError(f"Ray address '{address}' must look like host:port (e.g. 10.0.0.5:6379), ray://host:10001 or auto")
    try:
        with socket.create_connection((host, int(port)), timeout=timeout):
            pass
    except OSError as err:
        reason = err.strerror or type(err).__name__
        raise ConfigError(f"cannot reach the Ray cluster at {address} ({reason}); start one with `ray start --head` "
                          "or fix ray_address") from None
