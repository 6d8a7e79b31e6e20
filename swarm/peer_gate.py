"""Whether a peer may average with a run's workers right now: the run's published access tokens, verified.

Each worker publishes its access token (``swarm.peer_access``) under ``swarm.dht.run_access_key(run)``, in a
subkey owned by its identity key. A ``PeerGate`` reads those records, keeps the peers whose token the run's
coordinator signed for this run and that has not expired, and answers ``allows(peer_id)`` from that cache; a peer
not in it makes the gate read the records again, at most once per ``refresh_s`` (a flood of strangers costs one
DHT read per interval). The coordinator's own peer ID is always allowed (its publisher downloads state).

The coordinator also publishes there, in a subkey it owns, its signed revocation list (``swarm.revocations``):
a banned peer is refused although its token has not expired. A known peer's standing is read again every
``REVOCATION_CHECK_S``, so a ban reaches every gate within seconds.

A gate works in any process that holds the DHT handle: the averagers' child processes use it
(``swarm.gated_averager``). The DHT must have ``access_validators`` (``publish_access_token`` adds them; the
coordinator adds them at start): hivemind cannot even parse signed records without them.

Usage::

    publish_access_token(dht, "demo", token, identity.as_hivemind_key())     # a worker, after each renewal
    gate = PeerGate(dht, "demo", authority_public_key=assignment.authority_public_key)
    gate.allows("QmPeer...")                                                  # True / False
"""

from __future__ import annotations

import threading
import time
from typing import Callable

import hivemind
from hivemind.dht.crypto import RSASignatureValidator
from hivemind.p2p import PeerID
from hivemind.proto.auth_pb2 import AccessToken
from hivemind.utils.crypto import RSAPrivateKey

from swarm.dht import owner_subkey, run_access_key
from swarm.identity import peer_id_of_public_key
from swarm.log import get_logger
from swarm.peer_access import AccessTokenError, token_from_bytes, token_to_bytes, verify_access_token
from swarm.revocations import RevocationError, Revocations, verify_revocations

logger = get_logger(__name__)

DEFAULT_REFRESH_S = 2.0
FRESH_REFRESH_S = 0.25  # the least time between two reads for an unknown peer of a group (allows(fresh=True))
REVOCATION_CHECK_S = 10.0  # a known peer's standing is read again this often (a ban reaches the gate this fast)
MAX_RECORDS = 100_000  # more subkeys than this under one run's key are not read (a flood)
REVOCATIONS_SUBKEY = "revocations"  # the coordinator's owned subkey under the run's access key


def access_validators(private_key: RSAPrivateKey) -> list[RSASignatureValidator]:
    """The validator that makes the owned subkeys of ``run_access_key`` records unforgeable on this peer (and
    signs this peer's own). hivemind keeps the first RSASignatureValidator a DHT is given: pass the key the
    DHT's other records are signed with (the identity key)."""
    return [RSASignatureValidator(private_key)]


def publish_access_token(dht: hivemind.DHT, run: str, token: AccessToken, private_key: RSAPrivateKey,
                         expires_at: float) -> bool:
    """Store this peer's ``token`` under the run's access key until ``expires_at``, in the subkey owned by
    ``private_key`` (the identity key the token names). True if at least one peer stored it."""
    dht.add_validators(access_validators(private_key))
    subkey = owner_subkey(dht.peer_id.to_base58(), private_key)
    return bool(dht.store(run_access_key(run), token_to_bytes(token), expiration_time=expires_at, subkey=subkey))


def publish_revocations(dht: hivemind.DHT, run: str, signed: bytes, private_key: RSAPrivateKey,
                        expires_at: float) -> bool:
    """Store the run's signed revocation list (``swarm.revocations``) under its access key, in the subkey owned by
    ``private_key`` (the coordinator's identity key). True if at least one peer stored it."""
    dht.add_validators(access_validators(private_key))
    subkey = owner_subkey(REVOCATIONS_SUBKEY, private_key)
    return bool(dht.store(run_access_key(run), signed, expiration_time=expires_at, subkey=subkey))


class PeerGate:
    """The peers authorized in ``run`` by the coordinator whose identity public key (DER) is
    ``authority_public_key``. Thread-safe; forked into averager processes with the DHT handle."""

    def __init__(self, dht: hivemind.DHT, run: str, authority_public_key: bytes,
                 refresh_s: float = DEFAULT_REFRESH_S, clock: Callable[[], float] = time.time):
        self.dht, self.run, self.authority_public_key = dht, run, bytes(authority_public_key)
        self.coordinator_id = peer_id_of_public_key(self.authority_public_key)
        self.refresh_s, self.clock = refresh_s, clock
        self._authorized: dict[str, float] = {}  # peer ID -> expiry of its token
        self._revoked: frozenset[str] = frozenset()  # banned by the coordinator (its newest signed list)
        self._revocations_issued_at = -float("inf")
        self._refreshed_at = -float("inf")  # monotonic
        self._lock = threading.Lock()

    def allows(self, peer_id: str | PeerID, fresh: bool = False) -> bool:
        """True if ``peer_id`` is the coordinator or holds an unexpired token of the run. ``fresh``: for a peer not
        known yet, read the records again after only ``FRESH_REFRESH_S`` (for peers of a group being formed or
        averaged with, whose records may have just been published; a flood still costs a few reads a second)."""
        peer = peer_id.to_base58() if isinstance(peer_id, PeerID) else str(peer_id)
        if peer == self.coordinator_id:
            return True
        known = self._known(peer)
        with self._lock:
            since = time.monotonic() - self._refreshed_at
            wait = REVOCATION_CHECK_S if known else (FRESH_REFRESH_S if fresh else self.refresh_s)
            if since < wait:
                return known
            self._refreshed_at = time.monotonic()
        self.refresh()
        allowed = self._known(peer)
        if not allowed:
            logger.debug("%s: peer %s holds no access token of the run", self.run, peer)
        return allowed

    def _known(self, peer: str) -> bool:
        with self._lock:
            expires_at = self._authorized.get(peer)
            revoked = peer in self._revoked
        return expires_at is not None and expires_at > self.clock() and not revoked

    def authorized_peers(self) -> dict[str, float]:
        """Peer ID -> token expiry of every peer the last refresh found authorized and not banned (the coordinator
        excluded)."""
        with self._lock:
            now = self.clock()
            return {peer: expiry for peer, expiry in self._authorized.items()
                    if expiry > now and peer not in self._revoked}

    def refresh(self) -> None:
        """Read and verify the run's access records now."""
        found = self.dht.get(run_access_key(self.run), latest=True)
        authorized: dict[str, float] = {}
        entries = found.value if found is not None and isinstance(found.value, dict) else {}
        now = self.clock()
        newest: Revocations | None = None
        for index, entry in enumerate(entries.values()):
            if index >= MAX_RECORDS:
                break
            value = getattr(entry, "value", None)
            try:
                claims = verify_access_token(token_from_bytes(value), self.authority_public_key, run=self.run,
                                             now=now)
            except AccessTokenError:
                try:  # not a token: perhaps the coordinator's revocation list
                    revocations = verify_revocations(value, self.authority_public_key, self.run)
                except RevocationError:
                    continue  # expired, forged, of another run, or nothing of ours at all
                if newest is None or revocations.issued_at > newest.issued_at:
                    newest = revocations
                continue
            authorized[claims.peer_id] = max(claims.expires_at, authorized.get(claims.peer_id, 0.0))
        with self._lock:
            # a token is good until it expires, seen again or not: a read that misses records (a peer that just
            # joined the DHT, a host cut off for a while) must not make known peers strangers and break rounds
            for peer, expires_at in self._authorized.items():
                if expires_at > now:
                    authorized[peer] = max(expires_at, authorized.get(peer, 0.0))
            self._authorized = authorized
            if newest is not None and newest.issued_at >= self._revocations_issued_at:
                self._revoked, self._revocations_issued_at = newest.peer_ids, newest.issued_at
