"""hivemind's processes (the DHT with its libp2p daemon, each averager) run in process groups of their own, so
that a signal sent to a whole process group reaches only the nomoat process, which then stops them in order: a
terminal's Ctrl-C, ``kill -TERM -PGID``, ``swarm.local_swarm`` stopping a worker. Left in its group, a libp2p
daemon died at once under a clean stop and averagers ended before their last round. A signal sent to one of them
(hivemind's ``terminate()``) still ends it, and ``swarm.reaper`` ends them all when their parent dies.

Usage::

    class SwarmDHT(OwnProcessGroup, hivemind.DHT): ...
    averager = in_own_process_group(RobustGradientAverager)(dht=dht, ...)
"""

from __future__ import annotations

import os
from typing import Any, TypeVar

P = TypeVar("P", bound=type)


class OwnProcessGroup:
    """Put before a ``multiprocessing.Process`` subclass in the bases: its process starts a process group."""

    def run(self) -> None:
        os.setpgid(0, 0)
        super().run()  # type: ignore[misc]


def in_own_process_group(cls: P) -> P:
    """``cls`` (a ``multiprocessing.Process`` subclass) with ``OwnProcessGroup`` in front, under the same name (a
    hivemind averager's RPC handlers are named after its class)."""
    if issubclass(cls, OwnProcessGroup):
        return cls
    namespace: dict[str, Any] = {"__module__": cls.__module__, "__qualname__": cls.__qualname__, "__doc__": cls.__doc__}
    return type(cls.__name__, (OwnProcessGroup, cls), namespace)  # type: ignore[return-value]
