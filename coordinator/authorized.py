"""Which peers the coordinator trusts to speak for a run's shard: the workers registered for it (Join proved
their identity key) that have not left, were seen lately and are not banned from the run. Everything else in
the DHT is a stranger's word.

Usage::

    peers = authorized_peers(storage, "demo", shard=0)   # {"QmAlice...", "QmBob..."}
"""

from __future__ import annotations

from coordinator.storage import Storage

AUTHORIZED_WINDOW_S = 300.0  # a registered worker still counts this long after it was last seen (Join, receipts)


def authorized_peers(storage: Storage, run_name: str, shard: int,
                     seen_within_s: float = AUTHORIZED_WINDOW_S) -> set[str]:
    """Peer IDs (base58) of the live registered workers of ``run_name`` assigned ``shard``, less banned ones."""
    banned = {ban.peer_id for ban in storage.bans.list_bans(run_name)}
    return {worker.peer_id for worker in storage.runs.live_workers(run_name, seen_within_s)
            if shard in worker.shards and worker.peer_id not in banned}
