"""tests/ports.py: child processes' ports avoid the ephemeral range and each other."""

from __future__ import annotations

import socket

import pytest

from tests import ports


def _ephemeral_low() -> int:
    with open("/proc/sys/net/ipv4/ip_local_port_range") as f:
        return int(f.read().split()[0])


def test_picks_are_distinct_bindable_and_below_the_ephemeral_range() -> None:
    picked = [ports.free_port() for _ in range(50)]
    assert len(set(picked)) == 50
    assert all(p < _ephemeral_low() for p in picked)
    with socket.socket() as s:
        s.bind(("127.0.0.1", picked[-1]))  # nothing else holds it


def test_a_bound_port_is_passed_over() -> None:
    taken = ports.free_port()
    with socket.socket() as held:
        held.bind(("127.0.0.1", taken))
        slice_ = ports._worker_slice(*ports.PORTS)
        ports._cursor[ports.PORTS] = slice_.index(taken)  # the next pick would be it
        assert ports.pick_port(ports.PORTS) != taken
    with pytest.raises(RuntimeError, match="no free loopback port"):
        ports.pick_port(ports.PORTS, also=lambda p: False)


def test_xdist_workers_get_disjoint_slices(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PYTEST_XDIST_WORKER_COUNT", "2")
    slices = []
    for worker in ("gw0", "gw1"):
        monkeypatch.setenv("PYTEST_XDIST_WORKER", worker)
        slices.append(set(ports._worker_slice(*ports.PORTS)))
    assert slices[0] and slices[1] and not slices[0] & slices[1]
    assert max(ports.CLUSTER_PORTS) + 10000 <= _ephemeral_low()
