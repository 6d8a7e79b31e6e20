"""The swarm's DHT: starting a hivemind peer, and every DHT key name and record nomoat uses.

All key names live here. hivemind.Optimizer's own keys derive from the shard run id
(``RunSpec.shard_run_id``): ``<run>/shard<k>_progress`` (training progress) and
``<run>/shard<k>_state_averager.all_averagers`` (peers that serve their averaged state).

Usage::

    dht = start_dht(initial_peers=[], host="127.0.0.1")
    announce_run(dht, RunAnnouncement(run_name="demo", spec_hash="sha256:...", coordinator="127.0.0.1:50051"))
    lookup_runs(dht)  # {"demo": RunAnnouncement(...)}
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Sequence

import hivemind
from hivemind.utils import get_dht_time

RUNS_KEY = "nomoat/runs"
RUN_ANNOUNCEMENT_TTL_S = 600.0


def shard_progress_key(shard_run_id: str) -> str:
    """Where hivemind.Optimizer's ProgressTracker publishes each peer's LocalTrainingProgress."""
    return f"{shard_run_id}_progress"


def shard_state_prefix(shard_run_id: str) -> str:
    """The namespace of hivemind.Optimizer's TrainingStateAverager for one shard."""
    return f"{shard_run_id}_state_averager"


def shard_state_sharers_key(shard_run_id: str) -> str:
    """Peers that serve their averaged state for download, with their priority."""
    return f"{shard_state_prefix(shard_run_id)}.all_averagers"


def start_dht(
    initial_peers: Sequence[str] = (),
    host: str = "127.0.0.1",
    port: int = 0,
    client_mode: bool = False,
    announce_host: str | None = None,
    identity_path: str | None = None,
) -> hivemind.DHT:
    """Start a hivemind DHT peer listening on ``host:port`` (0: any free port).

    ``client_mode`` peers only dial out (volunteers behind NAT); ``announce_host`` is the address other peers
    should dial when ``host`` is a wildcard such as 0.0.0.0; ``identity_path`` fixes the peer ID (swarm.identity).
    """
    kwargs = dict(host_maddrs=[f"/ip4/{host}/tcp/{port}"], client_mode=client_mode)
    if identity_path:
        kwargs["identity_path"] = str(identity_path)
    if announce_host:
        kwargs["announce_maddrs"] = [f"/ip4/{announce_host}/tcp/{port}"]
    return hivemind.DHT(initial_peers=list(initial_peers), start=True, **kwargs)


async def _connected_peers(dht: hivemind.DHT, node) -> list[str]:
    return [f"{address}/p2p/{info.peer_id}" for info in await node.p2p.list_peers() for address in info.addrs]


def connected_peer_addresses(dht: hivemind.DHT) -> list[str]:
    """Multiaddrs (with /p2p/<peer id>) of the peers this DHT peer is connected to right now."""
    return sorted(dht.run_coroutine(_connected_peers))


def visible_addresses(dht: hivemind.DHT) -> list[str]:
    """Multiaddrs (with /p2p/<peer id>) other peers use as ``initial_peers``; loopback last."""
    addresses = [str(maddr) for maddr in dht.get_visible_maddrs()]
    return sorted(addresses, key=lambda address: "/127.0.0.1/" in address)


@dataclass(frozen=True)
class RunAnnouncement:
    """A run as announced on the DHT: enough for a peer to find its coordinator and check the spec."""

    run_name: str
    spec_hash: str
    coordinator: str


def announce_run(dht: hivemind.DHT, announcement: RunAnnouncement, ttl_s: float = RUN_ANNOUNCEMENT_TTL_S) -> bool:
    return bool(
        dht.store(RUNS_KEY, subkey=announcement.run_name, value=asdict(announcement),
                  expiration_time=get_dht_time() + ttl_s)
    )


def lookup_runs(dht: hivemind.DHT) -> dict[str, RunAnnouncement]:
    """Every run currently announced on the DHT (malformed records are skipped)."""
    found = dht.get(RUNS_KEY, latest=True)
    if found is None or not isinstance(found.value, dict):
        return {}
    runs = {}
    for run_name, entry in found.value.items():
        value = getattr(entry, "value", None)
        if not isinstance(value, dict):
            continue
        try:
            runs[run_name] = RunAnnouncement(**value)
        except TypeError:
            continue
    return runs
