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
        try:
            Path(path).parent.mkdir(parents=True, exist_ok=True)
        except OSError as err:
            raise ConfigError(f"MLflow store {uri}: cannot create folder {Path(path).parent} ({err.strerror})") from None
        if not os.access(Path(path).parent, os.W_OK):
            raise ConfigError(f"MLflow store {uri}: folder {Path(path).parent} is not writable")
        return
    if scheme in ("", "file"):
        raise ConfigError(f"tracking URI '{uri}' is a file store, which cannot hold the model registry; "
                          "use sqlite:///path/mlflow.db or an http(s):// tracking server")
    if scheme not in ("postgresql", "mysql", "mssql", "databricks") and not scheme.startswith(("postgresql+", "mysql+", "mssql+")):
        raise ConfigError(f"tracking URI '{uri}' has an unsupported scheme '{scheme}'; use sqlite:///..., http(s)://... "
                          "or a database URI (postgresql://...)")


def preflight(cfg: SweepConfig) -> None:
    """Reachability checks before anything starts (no Ray, no MLflow import needed)."""
    address = cfg.ray_address or os.environ.get("RAY_ADDRESS")
    if address:
        check_ray_address(address)
    check_tracking_uri(cfg.resolved_tracking_uri)


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
