"""The swarm's DHT: starting a hivemind peer, and every DHT key name and record nomoat uses.

All key names live here. hivemind.Optimizer's own keys derive from the shard run id
(``RunSpec.shard_run_id``): ``<run>/shard<k>_progress`` (training progress) and
``<run>/shard<k>_state_averager.all_averagers`` (peers that serve their averaged state). ``<run>/peer_access``
holds the access tokens of the run's workers (``run_access_key``; read by ``swarm.peer_gate``).

Usage::

    dht = start_dht(initial_peers=[], host="127.0.0.1")
    dht.add_validators(progress_validators("demo/shard0", identity.as_hivemind_key()))
    for record in read_shard_progress(dht, "demo/shard0"):   # ProgressRecord(peer_id, progress, key_bound)
        ...
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import hivemind
from cryptography.hazmat.primitives import serialization
from hivemind.dht.crypto import RSASignatureValidator
from hivemind.dht.schema import SchemaValidator
from hivemind.dht.validation import RecordValidatorBase
from hivemind.optim.progress_tracker import LocalTrainingProgress, TrainingProgressSchema
from hivemind.p2p import PeerID
from hivemind.utils.auth import TokenAuthorizerBase
from hivemind.utils.crypto import RSAPrivateKey

from swarm.identity import peer_id_of_public_key


def shard_progress_key(shard_run_id: str) -> str:
    """Where hivemind.Optimizer's ProgressTracker publishes each peer's LocalTrainingProgress."""
    return f"{shard_run_id}_progress"


@dataclass(frozen=True)
class ProgressRecord:
    """One peer's training progress for a shard, as its hivemind ProgressTracker published it."""

    peer_id: str  # base58, as the record states it
    progress: LocalTrainingProgress
    key_bound: bool  # signed by the key ``peer_id`` derives from: the record is that peer's own


def progress_validators(shard_run_id: str, private_key: RSAPrivateKey) -> list[RecordValidatorBase]:
    """The validators a DHT peer needs to read (and sign) a shard's progress records: hivemind's schema and its
    RSA owner signatures. ``private_key`` signs the records this peer owns (a worker passes its identity key);
    hivemind keeps the first RSASignatureValidator a DHT is given, so every one added must carry the same key."""
    return [SchemaValidator(TrainingProgressSchema, prefix=shard_run_id), RSASignatureValidator(private_key)]


def owner_peer_id(subkey: object) -> str | None:
    """The peer ID of the RSA key that owns (signed) a DHT record, from its ``[owner:ssh-rsa ...]`` subkey."""
    if not isinstance(subkey, bytes):
        return None
    found = RSASignatureValidator._PUBLIC_KEY_RE.findall(subkey)
    if len(found) != 1:
        return None
    try:
        key = serialization.load_ssh_public_key(found[0])
        der = key.public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
    except (ValueError, TypeError):
        return None
    return peer_id_of_public_key(der)


def read_shard_progress(dht: hivemind.DHT, shard_run_id: str) -> list[ProgressRecord]:
    """Every peer's current progress record for the shard; expired and malformed records are skipped.

    Only ``key_bound`` records are the named peer's own word: an unbound one may name any peer ID."""
    found = dht.get(shard_progress_key(shard_run_id), latest=True)
    if found is None or not isinstance(found.value, dict):
        return []
    records = []
    for subkey, entry in found.value.items():
        try:
            progress = LocalTrainingProgress.parse_obj(getattr(entry, "value", None))
            peer_id = PeerID(progress.peer_id).to_base58()
        except Exception:
            continue  # an expired (None) or malformed record
        records.append(ProgressRecord(peer_id, progress, owner_peer_id(subkey) == peer_id))
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


def start_dht(
    initial_peers: Sequence[str] = (),
    host: str = "127.0.0.1",
    port: int = 0,
    client_mode: bool = False,
    announce_host: str | None = None,
    identity_path: str | None = None,
    authorizer: TokenAuthorizerBase | None = None,
) -> hivemind.DHT:
    """Start a hivemind DHT peer listening on ``host:port`` (0: any free port).

    ``client_mode`` peers only dial out (volunteers behind NAT); ``announce_host`` is the address other peers
    should dial when ``host`` is a wildcard such as 0.0.0.0; ``identity_path`` fixes the peer ID (swarm.identity);
    ``authorizer`` (``swarm.peer_access.SwarmAuthorizer``) admits only peers with an access token of the swarm's
    coordinator (None: an open swarm, for local tools and tests).
    """
    kwargs: dict = dict(host_maddrs=[f"/ip4/{host}/tcp/{port}"], client_mode=client_mode)
    if authorizer is not None:
        kwargs["authorizer"] = authorizer
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
