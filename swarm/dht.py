"""The swarm's DHT: starting a hivemind peer, and every DHT key name and record nomoat uses.

All key names live here. hivemind.Optimizer's own keys derive from the shard run id
(``RunSpec.shard_run_id``): ``<run>/shard<k>_progress`` (training progress) and
``<run>/shard<k>_state_averager.all_averagers`` (peers that serve their averaged state). ``<run>/peer_access``
holds the access tokens of the run's workers (``run_access_key``; read by ``swarm.peer_gate``).

Usage::

    dht = start_dht(initial_peers=[], host="127.0.0.1")
    dht.add_validators(progress_validators("demo/shard0", identity.as_hivemind_key()))
    for record in read_shard_progress(dht, "demo/shard0"):   # ProgressRecord(peer_id, progress): signed by peer_id
        ...
"""

from __future__ import annotations

import socket
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import hivemind
from hivemind.dht.crypto import RSASignatureValidator
from hivemind.dht.schema import SchemaValidator
from hivemind.dht.validation import RecordValidatorBase
from hivemind.optim.progress_tracker import LocalTrainingProgress, TrainingProgressSchema
from hivemind.utils.auth import TokenAuthorizerBase
from hivemind.utils.crypto import RSAPrivateKey

from swarm.dht_requests import RequestPipe
from swarm.process_groups import OwnProcessGroup
from swarm.process_lock import IDENTITY_RELEASE_WAIT_S, ProcessLock, identity_lock
from swarm.progress_filter import WarnOnce, implausible, parse_signed_progress

_warn_once = WarnOnce()


def shard_progress_key(shard_run_id: str) -> str:
    """Where hivemind.Optimizer's ProgressTracker publishes each peer's LocalTrainingProgress."""
    return f"{shard_run_id}_progress"


@dataclass(frozen=True)
class ProgressRecord:
    """One peer's training progress for a shard, as its hivemind ProgressTracker published it, signed by the key
    its ``peer_id`` derives from (records that are not are never returned)."""

    peer_id: str  # base58: the signer, which is also the peer the record names
    progress: LocalTrainingProgress


def progress_validators(shard_run_id: str, private_key: RSAPrivateKey) -> list[RecordValidatorBase]:
    """The validators a DHT peer needs to read (and sign) a shard's progress records: hivemind's schema and its
    RSA owner signatures. ``private_key`` signs the records this peer owns (a worker passes its identity key);
    hivemind keeps the first RSASignatureValidator a DHT is given, so every one added must carry the same key."""
    return [SchemaValidator(TrainingProgressSchema, prefix=shard_run_id), RSASignatureValidator(private_key)]


def read_shard_progress(dht: hivemind.DHT, shard_run_id: str) -> list[ProgressRecord]:
    """Every peer's current progress record for the shard, each attributed to the key that signed it.

    Skipped (and logged): expired and malformed records, records that name another peer than their signer
    (nobody may speak for a victim), and records with non-finite or out-of-range numbers
    (``swarm.progress_filter.implausible``). Whether an epoch is believable given the other peers' is for the
    caller to judge (``swarm.progress_filter.filter_progress``): it knows which peers are authorized."""
    found = dht.get(shard_progress_key(shard_run_id), latest=True)
    if found is None or not isinstance(found.value, dict):
        return []
    records = []
    for record, _subkey in parse_signed_progress(found.value):
        if record is None:
            continue  # an expired (None) or malformed record
        why = implausible(record)
        if why:
            _warn_once((shard_run_id, record.peer_id, why), "%s: skipping a progress record naming %s: %s",
                       shard_run_id, record.peer_id, why)
            continue
        records.append(ProgressRecord(record.peer_id, record.progress))
    return records


def shard_state_prefix(shard_run_id: str) -> str:
    """The namespace of hivemind.Optimizer's TrainingStateAverager for one shard."""
    return f"{shard_run_id}_state_averager"


def shard_state_sharers_key(shard_run_id: str) -> str:
    """Peers that serve their averaged state for download, with their priority."""
    return f"{shard_state_prefix(shard_run_id)}.all_averagers"


def run_access_key(run: str) -> str:
    """Where a run's workers publish their access tokens (``swarm.peer_access``): one subkey per worker, owned
    (signed) by its identity key, value the serialized token. ``swarm.peer_gate.PeerGate`` reads them."""
    return f"{run}/peer_access"


def owner_subkey(name: str, private_key: RSAPrivateKey) -> bytes:
    """A subkey that only the holder of ``private_key`` may write where peers run an RSASignatureValidator (the
    record is signed and the subkey carries hivemind's ``[owner:...]`` marker of the key)."""
    return name.encode() + RSASignatureValidator(private_key).local_public_key

# how long ``shutdown`` waits for the DHT process (hivemind: 3 s) before it kills it "the hard way" with a warning:
# on a busy machine the node's own shutdown took longer
SHUTDOWN_TIMEOUT_S = 10.0


class SwarmDHT(OwnProcessGroup, hivemind.DHT):
    """A hivemind DHT that holds its identity key's lock (swarm.process_lock) until it is shut down, and whose
    process (with the libp2p daemon it starts) runs in a process group of its own (swarm.process_groups).
    Requests whose sender process has ended are skipped (swarm.dht_requests), not logged with a traceback and
    slept on."""

    identity_lock: ProcessLock | None = None

    def run(self) -> None:
        pipe: Any = RequestPipe(getattr(self, "_inner_pipe"))  # a Connection in all but recv
        self._inner_pipe = pipe
        super().run()

    async def _skip_request(self) -> None:
        """What a request becomes when its sender has ended (swarm.dht_requests.SKIPPED)."""

    def shutdown(self) -> None:
        try:
            super().shutdown()
        finally:
            if self.identity_lock is not None:
                self.identity_lock.release()


def start_dht(
    initial_peers: Sequence[str] = (),
    host: str = "127.0.0.1",
    port: int = 0,
    client_mode: bool = False,
    announce_host: str | None = None,
    identity_path: str | None = None,
    authorizer: TokenAuthorizerBase | None = None,
) -> SwarmDHT:
    """Start a hivemind DHT peer listening on ``host:port`` (0: any free port).

    ``client_mode`` peers only dial out (volunteers behind NAT); ``announce_host`` is the address other peers
    should dial when ``host`` is a wildcard such as 0.0.0.0; ``identity_path`` fixes the peer ID (swarm.identity);
    ``authorizer`` (``swarm.peer_access.SwarmAuthorizer``) admits only peers with an access token of the swarm's
    coordinator (None: an open swarm, for local tools and tests).

    A second peer on this machine under the same identity is refused (``ProcessLocked``, naming the holder;
    after ``IDENTITY_RELEASE_WAIT_S``, in case the holder is on its way out) by a lock beside the key.
    hivemind's own check, which asks the swarm whether the peer ID is online, is off: it dials the ID through
    the DHT with no timeout and was seen to hang a start-up indefinitely.
    """
    if announce_host and not port:  # hivemind cannot announce port 0: take a free one now (README: swarm donate
        port = _free_port(host)       # --host 0.0.0.0 --announce-host IP has no port option)
    kwargs: dict = dict(host_maddrs=[f"/ip4/{host}/tcp/{port}"], client_mode=client_mode,
                        shutdown_timeout=SHUTDOWN_TIMEOUT_S)
    if authorizer is not None:
        kwargs["authorizer"] = authorizer
    lock = None
    if identity_path:
        kwargs["identity_path"] = str(identity_path)
        kwargs["check_if_identity_free"] = False
        lock = identity_lock(Path(identity_path)).acquire(wait_s=IDENTITY_RELEASE_WAIT_S)
    if announce_host:
        kwargs["announce_maddrs"] = [f"/ip4/{announce_host}/tcp/{port}"]
    try:
        dht = SwarmDHT(initial_peers=list(initial_peers), start=False, **kwargs)
        dht.identity_lock = lock
        dht.run_in_background(await_ready=True)
    except BaseException:
        if lock is not None:
            lock.release()
        raise
    return dht


def _free_port(host: str) -> int:
    with socket.socket() as probe:
        probe.bind((host, 0))
        return probe.getsockname()[1]


async def _connected_peers(dht: hivemind.DHT, node) -> list[str]:
    return [f"{address}/p2p/{info.peer_id}" for info in await node.p2p.list_peers() for address in info.addrs]


def connected_peer_addresses(dht: hivemind.DHT) -> list[str]:
    """Multiaddrs (with /p2p/<peer id>) of the peers this DHT peer is connected to right now."""
    return sorted(dht.run_coroutine(_connected_peers))


def visible_addresses(dht: hivemind.DHT) -> list[str]:
    """Multiaddrs (with /p2p/<peer id>) other peers use as ``initial_peers``; loopback last."""
    addresses = [str(maddr) for maddr in dht.get_visible_maddrs()]
    return sorted(addresses, key=lambda address: "/127.0.0.1/" in address)
