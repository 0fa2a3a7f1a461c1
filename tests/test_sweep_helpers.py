"""Shared helpers for the sweep tests (no tests here): run the CLI, read the MLflow store back."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from contextlib import contextmanager
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
    for key in ("RAY_ADDRESS", "MLFLOW_TRACKING_URI", "MLFLOW_REGISTRY_URI"):  # a test names its own
        env.pop(key, None)
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


def still_running(process) -> bool:
    """Alive and not a zombie (a zombie has exited and only waits for its parent or PID 1 to reap it)."""
    import psutil

    try:
        return process.is_running() and process.status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


def leftover_processes(processes, timeout: float) -> list:
    """The processes still running (not zombies) ``timeout`` seconds from now; those are then killed.

    Status is re-read on every poll and once more after a short grace at the deadline: a process
    caught while exiting (alive on one read, a zombie on the next) is not a leftover. Reading the
    status once and filtering later was a race that failed CI.
    """
    import psutil

    deadline = time.time() + timeout
    pending = list(processes)
    while pending and time.time() < deadline:
        pending = [p for p in pending if still_running(p)]
        if pending:
            time.sleep(0.5)
    if pending:
        time.sleep(2.0)
        pending = [p for p in pending if still_running(p)]
    for process in pending:
        try:
            process.kill()
        except psutil.NoSuchProcess:
            pass
    psutil.wait_procs(pending, timeout=10)
    return pending


def session_family(pid: int) -> list:
    """A process started with start_new_session=True and everything it started: its descendants and
    any process still in its session (one whose parent died and was reparented)."""
    import psutil

    try:
        leader = psutil.Process(pid)
        family = {p.pid: p for p in [leader, *leader.children(recursive=True)]}
    except psutil.NoSuchProcess:
        family = {}
    for process in psutil.process_iter():
        try:
            if process.pid not in family and os.getsid(process.pid) == pid:
                family[process.pid] = process
        except (OSError, psutil.Error):
            pass
    return list(family.values())


def stop_session(proc: subprocess.Popen, timeout: float = 30, grace: float = 30) -> list:
    """SIGTERM ``proc`` (started with start_new_session=True), SIGKILL its session if it does not
    exit within ``timeout``; returns the processes of its family still running ``grace`` seconds
    later (killed by then; zombies do not count)."""
    import signal

    family = [p for p in session_family(proc.pid) if p.pid != proc.pid]
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            try:
                os.killpg(proc.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            proc.wait(timeout=30)
    return leftover_processes(family, timeout=grace)


def use_mlflow_uri(monkeypatch, uri: str) -> None:
    """Point MLflow's process-wide tracking and registry URI at ``uri`` until the test ends.

    ``mlflow.set_tracking_uri`` also writes MLFLOW_TRACKING_URI into os.environ, which every later
    sweep started by the test session (sweep_env copies os.environ) would then log to; monkeypatch
    undoes both the module globals and the variables."""
    import mlflow.tracking._model_registry.utils as registry_utils
    import mlflow.tracking._tracking_service.utils as tracking_utils

    monkeypatch.setattr(tracking_utils, "_tracking_uri", uri)
    monkeypatch.setattr(registry_utils, "_registry_uri", uri)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    monkeypatch.setenv("MLFLOW_REGISTRY_URI", uri)


def listening_sockets(pids: dict[int, str]) -> dict[tuple[str, int, int], str]:
    """{(address, port, pid): process name} of every listening TCP socket of ``pids``."""
    import psutil

    found = {}
    try:
        connections = psutil.net_connections(kind="tcp")  # tcp4 + tcp6; pid is None where not readable
    except psutil.AccessDenied:
        connections = None
    if connections is not None:
        for conn in connections:
            if conn.status == psutil.CONN_LISTEN and conn.pid in pids:
                found[(conn.laddr.ip, conn.laddr.port, conn.pid)] = pids[conn.pid]
        return found
    for pid, name in pids.items():  # per process: only our own processes need to be readable
        try:
            for conn in psutil.Process(pid).net_connections(kind="tcp"):
                if conn.status == psutil.CONN_LISTEN:
                    found[(conn.laddr.ip, conn.laddr.port, pid)] = name
        except (psutil.NoSuchProcess, psutil.ZombieProcess, psutil.AccessDenied):
            pass  # exited between the listing and the read
    return found


def describe(process) -> str:
    import psutil

    try:
        cmdline = process.cmdline()
        words = [w.rsplit("/", 1)[-1] for w in cmdline[:3]]
        return " ".join(words)[:80].strip() or process.name()
    except (psutil.NoSuchProcess, psutil.ZombieProcess, psutil.AccessDenied):
        return "?"


def run_sampled_sweep(root: Path, name: str, *args: str, timeout: float = 600, extra_env: dict | None = None) -> dict:
    """Run the sweep CLI in its own session (stdout and stderr to files beside ``root``), sampling the
    listening TCP sockets of its whole process tree every ~2 s while it runs (tests/test_loopback.py
    checks them). Returns the finished process as a CompletedProcess, the sockets seen
    ({(address, port, pid): process}), the number of samples, and the processes of its session still
    running 60 s after it ended (killed by then)."""
    env = sweep_env(**(extra_env or {}))
    for key in ("MLFLOW_TRACKING_URI", "MLFLOW_REGISTRY_URI", "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"):
        env.pop(key, None)  # the sweep must keep Ray on loopback by itself, and log to its own store
    root.mkdir(parents=True, exist_ok=True)
    out_path, err_path = root / f"{name}.stdout.log", root / f"{name}.stderr.log"
    seen: dict[tuple[str, int, int], str] = {}  # (address, port, pid) -> the process, as first seen
    samples = 0
    command = sweep_cmd(root, name, *args)
    with open(out_path, "w") as out, open(err_path, "w") as err:
        proc = subprocess.Popen(command, cwd=ROOT, env=env, stdout=out, stderr=err, text=True,
                                start_new_session=True)
        try:
            deadline = time.time() + timeout
            while proc.poll() is None and time.time() < deadline:
                family = session_family(proc.pid)
                for key, process in listening_sockets({p.pid: describe(p) for p in family}).items():
                    seen.setdefault(key, process)
                samples += 1
                time.sleep(2)
            ended = proc.poll() is not None
        finally:
            survivors = stop_session(proc, timeout=30, grace=60)
    stdout, stderr = out_path.read_text(), err_path.read_text()
    assert ended, f"the sweep did not end within {timeout} s:\n{stdout[-3000:]}{stderr[-3000:]}"
    return {"proc": subprocess.CompletedProcess(command, proc.returncode, stdout, stderr), "sockets": seen,
            "samples": samples, "survivors": survivors}


@contextmanager
def model_server(uri: str, model_uri: str, logs: Path, ready_s: float = 120):
    """`mlflow models serve` of ``model_uri`` from the store ``uri`` on a free 127.0.0.1 port, as the
    README runs it from an unactivated shell (uvicorn found through PATH); yields its base URL and
    stops its whole process group after, asserting nothing of it survives."""
    import psutil
    import requests

    bin_dir = Path(sys.executable).parent
    env = {**sweep_env(PATH=f"{bin_dir}{os.pathsep}{os.environ['PATH']}"), "MLFLOW_TRACKING_URI": uri}
    server, base, log_path = None, None, None
    for _ in range(3):  # a port taken between choosing and binding: try another
        port = free_port()
        log_path = logs / f"serve-{port}.log"
        with open(log_path, "w") as log:
            server = subprocess.Popen([str(bin_dir / "mlflow"), "models", "serve", "-m", model_uri,
                                       "--env-manager", "local", "-h", "127.0.0.1", "-p", str(port)],
                                      env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        base = f"http://127.0.0.1:{port}"
        deadline = time.time() + ready_s
        while time.time() < deadline and server.poll() is None:
            try:
                if requests.get(f"{base}/ping", timeout=2).ok:
                    break
            except requests.RequestException:
                pass
            time.sleep(1)
        if server.poll() is None:
            break
    assert server is not None and server.poll() is None, log_path.read_text()[-3000:]
    try:
        yield base
    finally:
        family = psutil.Process(server.pid).children(recursive=True) + [psutil.Process(server.pid)]
        os.killpg(server.pid, signal.SIGTERM)
        try:
            server.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(server.pid, signal.SIGKILL)
        assert not leftover_processes(family, timeout=30)
