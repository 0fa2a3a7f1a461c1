"""Loopback only: a sweep on a private local Ray opens no socket that another machine can reach.

While the smoke sweep runs, the listening TCP sockets (IPv4 and IPv6) of its whole process tree
(the driver, Ray's GCS, raylet, agents and workers, the trials' trainers) are sampled every ~2 s;
every one must be bound to 127.0.0.1 or ::1, none to 0.0.0.0, :: or a machine address."""

from __future__ import annotations

import ipaddress
import subprocess
import time

import psutil
import pytest

from test_sweep_helpers import ROOT, session_family, stop_session, sweep_cmd, sweep_env

pytestmark = pytest.mark.integration

NAME = "loopback-test"
MIN_SOCKETS = 5  # Ray's GCS, raylet, object manager, agents, core workers: about 13 in all


def listening_sockets(pids: dict[int, str]) -> dict[tuple[str, int, int], str]:
    """{(address, port, pid): process name} of every listening TCP socket of ``pids``."""
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


def describe(process: psutil.Process) -> str:
    try:
        cmdline = process.cmdline()
        words = [w.rsplit("/", 1)[-1] for w in cmdline[:3]]
        return " ".join(words)[:80].strip() or process.name()
    except (psutil.NoSuchProcess, psutil.ZombieProcess, psutil.AccessDenied):
        return "?"


def is_loopback(address: str) -> bool:
    try:
        ip = ipaddress.ip_address(address.split("%", 1)[0])
    except ValueError:
        return False
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped  # ::ffff:127.0.0.1
    return ip.is_loopback  # 127.0.0.0/8 or ::1; never 0.0.0.0, :: or a machine address


def test_local_sweep_listens_on_loopback_only(tmp_path):
    root = tmp_path / "sweeps"
    env = sweep_env()
    for key in ("MLFLOW_TRACKING_URI", "MLFLOW_REGISTRY_URI", "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"):
        env.pop(key, None)  # the sweep must keep Ray on loopback by itself, and log to its own store
    log_path = tmp_path / "sweep.log"
    seen: dict[tuple[str, int, int], str] = {}  # (address, port, pid) -> the process, as first seen
    samples = 0
    with open(log_path, "w") as log:
        proc = subprocess.Popen(sweep_cmd(root, NAME, "--set", "methods=[fixed]"), cwd=ROOT, env=env,
                                stdout=log, stderr=subprocess.STDOUT, text=True, start_new_session=True)
        try:
            deadline = time.time() + 600
            while proc.poll() is None and time.time() < deadline:
                family = session_family(proc.pid)
                for key, name in listening_sockets({p.pid: describe(p) for p in family}).items():
                    seen.setdefault(key, name)
                samples += 1
                time.sleep(2)
            assert proc.poll() is not None, f"the sweep did not end within 600 s:\n{log_path.read_text()[-3000:]}"
        finally:
            survivors = stop_session(proc, timeout=30, grace=60)
    output = log_path.read_text()
    assert proc.returncode == 0, output[-4000:]
    assert "local Ray" in output, output[-2000:]
    listing = "\n".join(f"  {addr}:{port}  pid {pid}  {name}" for (addr, port, pid), name in sorted(seen.items()))
    exposed = sorted(f"{addr}:{port} ({name})" for (addr, port, _), name in seen.items() if not is_loopback(addr))
    assert len({(addr, port) for addr, port, _ in seen}) >= MIN_SOCKETS, \
        f"only {len(seen)} listening sockets seen in {samples} samples:\n{listing}"
    assert not exposed, f"sockets bound outside loopback: {exposed}\nall listening sockets seen:\n{listing}"
    assert not survivors, f"processes of the sweep survived it: {[p.pid for p in survivors]}"
