"""A run's revocation list: the peers its coordinator banned, signed by the coordinator and published in the DHT
beside the workers' access tokens, so that every worker's peer gate stops dealing with a banned peer within
seconds instead of when its last token expires.

The list is the whole set (not a delta): the newest one (by ``issued_at``) a gate finds is the truth, and an
unban is a newer list without the peer.

Usage::

    data = sign_revocations(coordinator_identity, "demo", {"QmBad..."})
    revocations = verify_revocations(data, coordinator_identity.public_key_der, run="demo")
    revocations.peer_ids      # frozenset({"QmBad..."})
"""

from __future__ import annotations

import base64
import json
import math
import time
from dataclasses import dataclass
from typing import Iterable

from swarm.identity import Identity, peer_id_of_public_key, verify_signature

REVOCATIONS_FORMAT = "nomoat.peer-revocations.v1"
MAX_REVOCATION_BYTES = 1 << 20  # about 20,000 peer IDs
MAX_PEER_ID_CHARS = 128


class RevocationError(ValueError):
    """Not a revocation list of this run signed by this coordinator."""


@dataclass(frozen=True)
class Revocations:
    run: str
    peer_ids: frozenset[str]
    issued_at: float  # unix time; the newest list wins


def _canonical(values: dict) -> bytes:
    return json.dumps(values, sort_keys=True, separators=(",", ":"), allow_nan=False).encode()


def sign_revocations(authority: Identity, run: str, peer_ids: Iterable[str], now: float | None = None) -> bytes:
    """The signed list of ``peer_ids`` banned from ``run`` (bytes to store in the DHT)."""
    payload = _canonical({"format": REVOCATIONS_FORMAT, "coordinator": authority.peer_id, "run": run,
                          "peer_ids": sorted(set(peer_ids)), "issued_at": time.time() if now is None else now})
    data = _canonical({"payload": payload.decode(), "signature": base64.b64encode(authority.sign(payload)).decode()})
    if len(data) > MAX_REVOCATION_BYTES:
        raise ValueError(f"the revocation list of run {run!r} is over {MAX_REVOCATION_BYTES} bytes")
    return data


def verify_revocations(data: object, authority_public_key: bytes, run: str) -> Revocations:
    """The list in ``data`` (from the network) if ``authority_public_key`` (DER) signed it for ``run``;
    ``RevocationError`` otherwise. Sizes and types are checked before anything is trusted."""
    if not isinstance(data, bytes) or not data or len(data) > MAX_REVOCATION_BYTES:
        raise RevocationError("a revocation list is 1 byte to 1 MiB")
    try:
        outer = json.loads(data)
        payload = outer["payload"].encode()
        signature = base64.b64decode(outer["signature"], validate=True)
    except (ValueError, TypeError, KeyError, AttributeError):
        raise RevocationError("the revocation list is malformed") from None
    if not verify_signature(authority_public_key, payload, signature):
        raise RevocationError("the revocation list is not signed by this swarm's coordinator")
    fields = json.loads(payload)
    peer_ids, issued_at = fields.get("peer_ids"), fields.get("issued_at")
    if (fields.get("format") != REVOCATIONS_FORMAT or not isinstance(peer_ids, list)
            or not all(isinstance(peer, str) and len(peer) <= MAX_PEER_ID_CHARS for peer in peer_ids)
            or not isinstance(issued_at, (int, float)) or not math.isfinite(issued_at)):
        raise RevocationError("the revocation list is malformed")
    if fields.get("coordinator") != peer_id_of_public_key(authority_public_key):
        raise RevocationError("the revocation list names another coordinator")
    if fields.get("run") != run:
        raise RevocationError(f"the revocation list is of run {fields.get('run')!r}, not {run!r}")
    return Revocations(run, frozenset(peer_ids), float(issued_at))
