"""Whether a peer may average with a run's workers right now: the run's published access tokens, verified.

Each worker publishes its access token (``swarm.peer_access``) under ``swarm.dht.run_access_key(run)``, in a
subkey owned by its identity key. A ``PeerGate`` reads those records, keeps the peers whose token the run's
coordinator signed for this run and that has not expired, and answers ``allows(peer_id)`` from that cache; a peer
not in it makes the gate read the records again, at most once per ``refresh_s`` (a flood of strangers costs one
DHT read per interval). The coordinator's own peer ID is always allowed (its publisher downloads state).

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

logger = get_logger(__name__)

DEFAULT_REFRESH_S = 2.0
MAX_RECORDS = 100_000  # more subkeys than this under one run's key are not read (a flood)


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


class PeerGate:
    """The peers authorized in ``run`` by the coordinator whose identity public key (DER) is
    ``authority_public_key``. Thread-safe; forked into averager processes with the DHT handle."""

    def __init__(self, dht: hivemind.DHT, run: str, authority_public_key: bytes,
                 refresh_s: float = DEFAULT_REFRESH_S, clock: Callable[[], float] = time.time):
        self.dht, self.run, self.authority_public_key = dht, run, bytes(authority_public_key)
        self.coordinator_id = peer_id_of_public_key(self.authority_public_key)
        self.refresh_s, self.clock = refresh_s, clock
        self._authorized: dict[str, float] = {}  # peer ID -> expiry of its token
        self._refreshed_at = -float("inf")  # monotonic
        self._lock = threading.Lock()

    def allows(self, peer_id: str | PeerID) -> bool:
        """True if ``peer_id`` is the coordinator or holds an unexpired token of the run."""
        peer = peer_id.to_base58() if isinstance(peer_id, PeerID) else str(peer_id)
        if peer == self.coordinator_id:
            return True
        if self._known(peer):
            return True
        with self._lock:
            if time.monotonic() - self._refreshed_at < self.refresh_s:
                return False
            self._refreshed_at = time.monotonic()
        self.refresh()
        allowed = self._known(peer)
        if not allowed:
            logger.debug("%s: peer %s holds no access token of the run", self.run, peer)
        return allowed

    def _known(self, peer: str) -> bool:
        with self._lock:
            expires_at = self._authorized.get(peer)
        return expires_at is not None and expires_at > self.clock()

    def authorized_peers(self) -> dict[str, float]:
        """Peer ID -> token expiry of every peer the last refresh found authorized (the coordinator excluded)."""
        with self._lock:
            now = self.clock()
            return {peer: expiry for peer, expiry in self._authorized.items() if expiry > now}

    def refresh(self) -> None:
        """Read and verify the run's access records now."""
        found = self.dht.get(run_access_key(self.run), latest=True)
        authorized: dict[str, float] = {}
        entries = found.value if found is not None and isinstance(found.value, dict) else {}
        now = self.clock()
        for index, entry in enumerate(entries.values()):
            if index >= MAX_RECORDS:
                break
            try:
                claims = verify_access_token(token_from_bytes(getattr(entry, "value", None)),
                                             self.authority_public_key, run=self.run, now=now)
            except AccessTokenError:
                continue  # expired, forged, of another run, or not a token at all
            authorized[claims.peer_id] = max(claims.expires_at, authorized.get(claims.peer_id, 0.0))
        with self._lock:
            self._authorized = authorized
