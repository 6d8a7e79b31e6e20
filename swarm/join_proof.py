"""Signed Join and Leave: a worker proves it holds the identity key of the peer ID it joins (or leaves) as.

The worker signs a canonical JSON statement of what it asks for, with a fresh unix timestamp and the ID of the
coordinator it talks to (the peer ID of the coordinator's key, from ``GetCoordinatorInfo``), so a statement is
worth nothing at another coordinator or after ``MAX_SKEW_S``; the coordinator also refuses a signature it has
already seen inside that window (``ReplayGuard``). Knowing a peer ID is then not enough to rename a contributor
or to leave on its behalf.

Usage::

    proof = sign_statement(identity, join_statement(coordinator=info.coordinator_id, run="demo",
                                                    peer_id=identity.peer_id, display_name="alice", max_shards=0,
                                                    device="cpu", timestamp=time.time()))
    # coordinator side, with the statement rebuilt from the request:
    verify_proof(proof, peer_id, statement, now=time.time())   # ProofError with the reason
    guard.check_fresh(proof.signature, proof.timestamp)         # ProofError on a replay
"""

from __future__ import annotations

import hashlib
import json
import math
import threading
import time
from collections import OrderedDict
from dataclasses import dataclass

from swarm.identity import Identity, peer_id_of_public_key, verify_signature

JOIN_FORMAT = "nomoat.join.v1"
LEAVE_FORMAT = "nomoat.leave.v1"
RENEW_FORMAT = "nomoat.renew-access.v1"
REPORT_FORMAT = "nomoat.report-peers.v1"
HAND_OVER_FORMAT = "nomoat.hand-over.v1"
MAX_SKEW_S = 120.0  # a statement is accepted this long before and after its timestamp


class ProofError(ValueError):
    """A signed statement that cannot be accepted; the message says why."""


@dataclass(frozen=True)
class Proof:
    public_key: bytes  # DER SubjectPublicKeyInfo of the signer's identity key
    signature: bytes  # RSA PKCS#1 v1.5 / SHA-256 over the statement
    timestamp: float  # unix time the statement names


def _canonical(values: dict) -> bytes:
    return json.dumps(values, sort_keys=True, separators=(",", ":"), allow_nan=False).encode()


def join_statement(*, coordinator: str, run: str, peer_id: str, display_name: str, max_shards: int, device: str,
                   timestamp: float) -> bytes:
    """The bytes a worker signs to join ``run`` at ``coordinator`` with these settings."""
    return _canonical({"format": JOIN_FORMAT, "coordinator": coordinator, "run": run, "peer_id": peer_id,
                       "display_name": display_name, "max_shards": int(max_shards), "device": device,
                       "timestamp": float(timestamp)})


def leave_statement(*, coordinator: str, worker_id: str, peer_id: str, timestamp: float) -> bytes:
    """The bytes a worker signs to end its registration ``worker_id``."""
    return _canonical({"format": LEAVE_FORMAT, "coordinator": coordinator, "worker_id": worker_id,
                       "peer_id": peer_id, "timestamp": float(timestamp)})


def renew_statement(*, coordinator: str, worker_id: str, peer_id: str, timestamp: float) -> bytes:
    """The bytes a worker signs to renew the swarm access token of its registration ``worker_id``."""
    return _canonical({"format": RENEW_FORMAT, "coordinator": coordinator, "worker_id": worker_id,
                       "peer_id": peer_id, "timestamp": float(timestamp)})


def hand_over_statement(*, coordinator: str, worker_id: str, peer_id: str, epoch: int, timestamp: float) -> bytes:
    """The bytes a stopping worker signs to ask for a snapshot of its final state at ``epoch``."""
    return _canonical({"format": HAND_OVER_FORMAT, "coordinator": coordinator, "worker_id": worker_id,
                       "peer_id": peer_id, "epoch": int(epoch), "timestamp": float(timestamp)})


def report_statement(*, coordinator: str, worker_id: str, peer_id: str, reports: list[tuple[str, int, str]],
                     timestamp: float) -> bytes:
    """The bytes a worker signs to report ``(peer_id, count, reason)`` refusals of its averagers."""
    return _canonical({"format": REPORT_FORMAT, "coordinator": coordinator, "worker_id": worker_id,
                       "peer_id": peer_id, "reports": [[str(p), int(c), str(r)] for p, c, r in reports],
                       "timestamp": float(timestamp)})


def sign_statement(identity: Identity, statement: bytes, timestamp: float) -> Proof:
    """``statement`` (built with ``timestamp``) signed by ``identity``."""
    return Proof(identity.public_key_der, identity.sign(statement), timestamp)


def verify_proof(proof: Proof, peer_id: str, statement: bytes, now: float | None = None,
                 max_skew_s: float = MAX_SKEW_S) -> None:
    """Check that ``proof`` signs ``statement`` with the key of ``peer_id`` at a time within ``max_skew_s`` of
    ``now``; ``ProofError`` with the reason otherwise."""
    now = time.time() if now is None else now
    if not math.isfinite(proof.timestamp) or abs(now - proof.timestamp) > max_skew_s:
        raise ProofError(f"the signed timestamp is more than {max_skew_s:.0f} s away from the coordinator's clock "
                         f"(check the worker's clock)")
    try:
        signer = peer_id_of_public_key(proof.public_key)
    except Exception:
        raise ProofError("the public key is not a DER RSA public key") from None
    if signer != peer_id:
        raise ProofError(f"the request names peer {peer_id[:16]}... but is signed by the key of {signer[:16]}...")
    if not verify_signature(proof.public_key, statement, proof.signature):
        raise ProofError(f"the signature does not match the request and the key of peer {peer_id[:16]}...")


class ReplayGuard:
    """The signatures accepted in the last ``window_s`` seconds (at most ``capacity``, oldest dropped first), so
    that a captured signed statement cannot be sent again while its timestamp is still fresh. Thread-safe.

    With ``window_s`` = 2 x ``MAX_SKEW_S`` a signature is remembered for as long as any coordinator clock could
    accept its timestamp. When more than ``capacity`` fresh signatures arrive in the window the oldest are
    forgotten; size ``capacity`` above the Joins and Leaves a coordinator takes in that time.
    """

    def __init__(self, window_s: float = 2 * MAX_SKEW_S, capacity: int = 100_000):
        self.window_s, self.capacity = window_s, capacity
        self._seen: OrderedDict[bytes, float] = OrderedDict()  # digest -> when it was first seen
        self._lock = threading.Lock()

    def check_fresh(self, signature: bytes, now: float | None = None) -> None:
        """Remember ``signature``; ``ProofError`` if it was seen inside the window."""
        now = time.monotonic() if now is None else now
        digest = hashlib.sha256(signature).digest()
        with self._lock:
            while self._seen:
                oldest, seen_at = next(iter(self._seen.items()))
                if now - seen_at <= self.window_s and len(self._seen) < self.capacity:
                    break
                del self._seen[oldest]
            if digest in self._seen:
                raise ProofError("this signed request was already used (a replay); sign a fresh one")
            self._seen[digest] = now
