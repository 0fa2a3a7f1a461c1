"""Loopback only: a sweep on a private local Ray opens no socket that another machine can reach.

While the session's smoke sweep runs (tests/conftest.py), the listening TCP sockets (IPv4 and IPv6) of its whole process tree
(the driver, Ray's GCS, raylet, agents and workers, the trials' trainers) are sampled every ~2 s;
every one must be bound to 127.0.0.1 or ::1, none to 0.0.0.0, :: or a machine address."""

from __future__ import annotations

import ipaddress

import pytest

pytestmark = pytest.mark.integration

MIN_SOCKETS = 5  # Ray's GCS, raylet, object manager, agents, core workers: about 13 in all


def is_loopback(address: str) -> bool:
    try:
        ip = ipaddress.ip_address(address.split("%", 1)[0])
    except ValueError:
        return False
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped  # ::ffff:127.0.0.1
    return ip.is_loopback  # 127.0.0.0/8 or ::1; never 0.0.0.0, :: or a machine address


def test_local_sweep_listens_on_loopback_only(smoke_sweep):
    """The session's smoke sweep (tests/conftest.py), sampled while it ran."""
    proc, seen, samples = smoke_sweep["proc"], smoke_sweep["sockets"], smoke_sweep["samples"]
    output = proc.stdout + proc.stderr
    assert proc.returncode == 0, output[-4000:]
    assert "local Ray" in output, output[-2000:]
    listing = "\n".join(f"  {addr}:{port}  pid {pid}  {name}" for (addr, port, pid), name in sorted(seen.items()))
    exposed = sorted(f"{addr}:{port} ({name})" for (addr, port, _), name in seen.items() if not is_loopback(addr))
    assert len({(addr, port) for addr, port, _ in seen}) >= MIN_SOCKETS, \
        f"only {len(seen)} listening sockets seen in {samples} samples:\n{listing}"
    assert not exposed, f"sockets bound outside loopback: {exposed}\nall listening sockets seen:\n{listing}"
    assert not smoke_sweep["survivors"], f"processes of the sweep survived it: {[p.pid for p in smoke_sweep['survivors']]}"
