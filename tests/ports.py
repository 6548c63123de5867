"""Loopback ports for the servers a test starts as child processes.

A test that starts a process must name its port before the process binds it.
A port from ``bind(0)`` comes from the kernel's ephemeral range
(``net.ipv4.ip_local_port_range``, 32768-60999 on Debian), the range every
outgoing connection takes its source port from: between the pick and the
child's bind, a client socket of the other xdist worker could take it
(``address already in use``, seen once in ``make test``). Ports below that range
are never given out as source ports, and each xdist worker walks a slice of
its own, so the two workers never pick the same port either.
"""

from __future__ import annotations

import os
import random
import socket
from collections.abc import Callable

#: ``free_port``'s span; below the ephemeral range, clear of the machine's services
#: (a port something listens on fails the bind check and is passed over).
PORTS = (12000, 20000)
#: Redis Cluster nodes: P here and its cluster bus port P + 10000 (30000-32767) both
#: stay below the ephemeral range and clear of ``PORTS``.
CLUSTER_PORTS = (20000, 22768)

_cursor: dict[tuple[int, int], int] = {}


def _worker_slice(low: int, high: int) -> range:
    """This xdist worker's share of ``[low, high)`` (all of it outside xdist)."""
    count = max(1, int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1")))
    name = os.environ.get("PYTEST_XDIST_WORKER", "gw0").removeprefix("gw")
    index = int(name) % count if name.isdigit() else 0
    size = (high - low) // count
    start = low + index * size
    return range(start, start + size)


def bindable(port: int) -> bool:
    with socket.socket() as s:
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
        return True


def pick_port(span: tuple[int, int], also: Callable[[int], bool] = bindable) -> int:
    """The next port of this worker's slice of ``span`` that binds now and passes ``also``.

    Successive picks walk forward from a random start, so two picks made before
    either port is bound never return the same one.
    """
    ports = _worker_slice(*span)
    at = _cursor.get(span, random.randrange(len(ports)))
    for step in range(len(ports)):
        port = ports[(at + step) % len(ports)]
        if bindable(port) and also(port):
            _cursor[span] = at + step + 1
            return port
    raise RuntimeError(f"no free loopback port in {ports.start}-{ports.stop - 1}")


def free_port() -> int:
    """A loopback port nothing listens on, for a child process to bind."""
    return pick_port(PORTS)
