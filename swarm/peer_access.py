"""Who may be in a run's swarm: short-lived access tokens that the coordinator signs, and the hivemind DHT
authorizer that enforces them.

A token (hivemind's ``AccessToken`` proto) binds a run, a worker's identity public key (so its libp2p peer ID)
and an expiry, signed by the coordinator's identity key (the *authority*). Every DHT request and response of the
product swarm carries the sender's token and is signed with the key the token names (hivemind's
``TokenAuthorizerBase`` protocol), so a process without a token the authority signed, or with an expired or
revoked one, can neither store nor read through an authorized peer. The DHT accepts tokens of any run of the
authority (the runs of one coordinator share its DHT); which peers may average with a run's workers is decided
per run by ``swarm.peer_gate.PeerGate``.

Tokens are public (workers publish theirs in the DHT): a token is worth nothing without the private key it names.

Usage::

    token = issue_access_token(coordinator_identity, run="demo", public_key_der=worker.public_key_der,
                               lifetime_s=600)
    claims = verify_access_token(token, coordinator_identity.public_key_der, run="demo")   # AccessTokenError
    authorizer = SwarmAuthorizer(worker.as_hivemind_key(), coordinator_identity.public_key_der, token=token)
    dht = start_dht(initial_peers, identity_path=worker.path, authorizer=authorizer)
    push_access_token(dht, renewed)                  # replace the token inside the running DHT process
    push_revoked(dht, {("demo", banned_peer_id)})    # refuse these peers at once
"""

from __future__ import annotations

import base64
import json
import math
import time
from dataclasses import dataclass
from functools import partial
from typing import Iterable

import hivemind
from cryptography.hazmat.primitives import serialization
from google.protobuf.message import DecodeError  # type: ignore[import-untyped]
from hivemind.proto.auth_pb2 import AccessToken
from hivemind.utils.auth import TokenAuthorizerBase
from hivemind.utils.crypto import RSAPrivateKey

from swarm.identity import Identity, peer_id_of_public_key, verify_signature
from swarm.log import get_logger

logger = get_logger(__name__)

TOKEN_FORMAT = "nomoat.peer-access.v1"
MAX_TOKEN_BYTES = 4096  # a serialized token; an RSA-2048 one is about 1 KiB
MAX_CLAIMS_CHARS = 1024
MAX_PUBLIC_KEY_BYTES = 2048
MAX_SIGNATURE_BYTES = 1024
DEFAULT_LIFETIME_S = 600.0
ANY_RUN = ""  # the run a coordinator's own token names: it serves every run


class AccessTokenError(ValueError):
    """An access token that cannot be accepted; the message says why."""


@dataclass(frozen=True)
class TokenClaims:
    """What a verified access token says."""

    coordinator: str  # peer ID of the authority that signed it
    run: str  # ANY_RUN for the coordinator's own token
    peer_id: str  # the peer ID of the public key it names
    expires_at: float  # unix time

    def expired(self, now: float | None = None) -> bool:
        return (time.time() if now is None else now) >= self.expires_at


def _canonical(values: dict) -> bytes:
    return json.dumps(values, sort_keys=True, separators=(",", ":"), allow_nan=False).encode()


def _signed_bytes(token: AccessToken) -> bytes:
    """What the authority signs: every field but the signature, canonically."""
    return _canonical({"claims": token.username, "public_key": base64.b64encode(token.public_key).decode(),
                       "expires": token.expiration_time})


def _ssh_key(public_key_der: bytes) -> bytes:
    """A DER public key in the OpenSSH form hivemind's ``RSAPublicKey.from_bytes`` reads (it checks request
    signatures against the key a token names)."""
    key = serialization.load_der_public_key(public_key_der)
    return key.public_bytes(serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH)


def _der_of_ssh(public_key: bytes) -> bytes:
    key = serialization.load_ssh_public_key(public_key)
    return key.public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)


def issue_access_token(authority: Identity, run: str, public_key_der: bytes, lifetime_s: float = DEFAULT_LIFETIME_S,
                       now: float | None = None) -> AccessToken:
    """A token for the holder of ``public_key_der`` (DER SubjectPublicKeyInfo) in ``run``, valid ``lifetime_s``
    seconds from ``now``, signed by ``authority`` (the coordinator's identity)."""
    if not (math.isfinite(lifetime_s) and lifetime_s > 0):
        raise ValueError(f"lifetime_s must be positive, not {lifetime_s!r}")
    now = time.time() if now is None else now
    claims = _canonical({"format": TOKEN_FORMAT, "coordinator": authority.peer_id, "run": run,
                         "peer_id": peer_id_of_public_key(public_key_der)}).decode()
    token = AccessToken(username=claims, public_key=_ssh_key(public_key_der),
                        expiration_time=repr(float(now + lifetime_s)))
    token.signature = authority.sign(_signed_bytes(token))
    return token


def verify_access_token(token: AccessToken, authority_public_key: bytes, run: str | None = None,
                        now: float | None = None) -> TokenClaims:
    """The claims of ``token`` if ``authority_public_key`` (DER) signed it, it has not expired at ``now`` and (when
    ``run`` is given) it is of ``run``; ``AccessTokenError`` with the reason otherwise. Sizes and types are
    checked before anything is parsed: the token came from the network."""
    if not isinstance(token, AccessToken):
        raise AccessTokenError(f"not an AccessToken: {type(token).__name__}")
    if (len(token.username) > MAX_CLAIMS_CHARS or len(token.public_key) > MAX_PUBLIC_KEY_BYTES
            or len(token.signature) > MAX_SIGNATURE_BYTES or len(token.expiration_time) > 64):
        raise AccessTokenError("the token is oversized")
    if not token.signature or not verify_signature(authority_public_key, _signed_bytes(token), token.signature):
        raise AccessTokenError("the token is not signed by this swarm's coordinator")
    try:
        claims = json.loads(token.username)
        expires_at = float(token.expiration_time)
        key_peer = peer_id_of_public_key(_der_of_ssh(token.public_key))
    except (ValueError, TypeError):
        raise AccessTokenError("the token is malformed") from None
    if not isinstance(claims, dict) or claims.get("format") != TOKEN_FORMAT:
        raise AccessTokenError("the token is not a nomoat peer access token")
    fields: dict[str, str] = {}
    for name in ("coordinator", "run", "peer_id"):
        value = claims.get(name)
        if not isinstance(value, str):
            raise AccessTokenError("the token is malformed")
        fields[name] = value
    if not math.isfinite(expires_at):
        raise AccessTokenError("the token is malformed")
    if fields["peer_id"] != key_peer:
        raise AccessTokenError("the token's peer ID is not that of the key it names")
    if fields["coordinator"] != peer_id_of_public_key(authority_public_key):
        raise AccessTokenError("the token names another coordinator")
    result = TokenClaims(fields["coordinator"], fields["run"], fields["peer_id"], expires_at)
    if result.expired(now):
        raise AccessTokenError("the token has expired")
    if run is not None and result.run != run:
        raise AccessTokenError(f"the token is of run {result.run!r}, not {run!r}")
    return result


def token_to_bytes(token: AccessToken) -> bytes:
    return token.SerializeToString()


def token_from_bytes(data: object) -> AccessToken:
    """A token parsed from bytes that came from the network (gRPC or the DHT); ``AccessTokenError`` if it is not
    one (or is oversized)."""
    if not isinstance(data, bytes) or not data or len(data) > MAX_TOKEN_BYTES:
        raise AccessTokenError("an access token must be 1..4096 bytes")
    try:
        return AccessToken.FromString(data)
    except DecodeError:
        raise AccessTokenError("the access token does not parse") from None


class SwarmAuthorizer(TokenAuthorizerBase):
    """hivemind's token authorizer for the swarm of one coordinator (the *authority*): a peer's DHT requests and
    responses are accepted only with a token the authority signed, unexpired, and not revoked for its run.

    A worker passes the token of its Join and replaces it inside the DHT process as it renews it
    (``push_access_token``); the coordinator passes ``issuer`` (its own identity) instead and mints its own
    tokens as they age. The revoked set of ``(run, peer_id)`` pairs is replaced the same way (``push_revoked``).

    Example::

        authorizer = SwarmAuthorizer(identity.as_hivemind_key(), authority_der, token=assignment_token)
        dht = start_dht(peers, identity_path=identity.path, authorizer=authorizer)
    """

    def __init__(self, local_private_key: RSAPrivateKey, authority_public_key: bytes,
                 token: AccessToken | None = None, issuer: Identity | None = None,
                 lifetime_s: float = DEFAULT_LIFETIME_S):
        super().__init__(local_private_key)
        if (token is None) == (issuer is None):
            raise ValueError("a SwarmAuthorizer needs either a token (a worker) or an issuer (the coordinator)")
        self.authority_public_key = authority_public_key
        self.issuer, self.lifetime_s = issuer, lifetime_s
        self.revoked: frozenset[tuple[str, str]] = frozenset()
        if token is not None:
            verify_access_token(token, authority_public_key)  # AccessTokenError: refuse to start with a bad one
            self._local_access_token = token

    async def get_token(self) -> AccessToken:
        if self.issuer is None:
            raise AccessTokenError("this peer has no access token")  # unreachable: set at construction
        der = self.issuer.public_key_der
        return issue_access_token(self.issuer, ANY_RUN, der, self.lifetime_s)

    def is_token_valid(self, access_token: AccessToken) -> bool:
        try:
            claims = verify_access_token(access_token, self.authority_public_key)
        except AccessTokenError as exc:
            logger.debug("refusing a DHT peer: %s", exc)
            return False
        if (claims.run, claims.peer_id) in self.revoked or (ANY_RUN, claims.peer_id) in self.revoked:
            logger.debug("refusing revoked DHT peer %s", claims.peer_id)
            return False
        return True

    def does_token_need_refreshing(self, access_token: AccessToken) -> bool:
        if self.issuer is None:
            return False  # a worker's token is replaced from outside (push_access_token)
        try:
            claims = verify_access_token(access_token, self.authority_public_key)
        except AccessTokenError:
            return True
        return claims.expires_at - time.time() < self.lifetime_s / 3

    def set_token(self, token: AccessToken) -> TokenClaims:
        """Use ``token`` from now on (it must be valid and name this peer's key)."""
        claims = verify_access_token(token, self.authority_public_key)
        if token.public_key != self.local_public_key.to_bytes():
            raise AccessTokenError("the token names another peer's key")
        self._local_access_token = token
        return claims

    def set_revoked(self, revoked: Iterable[tuple[str, str]]) -> None:
        """Refuse these ``(run, peer_id)`` pairs from now on (``(ANY_RUN, peer_id)``: in every run)."""
        self.revoked = frozenset((str(run), str(peer)) for run, peer in revoked)


def _authorizer_of(node) -> SwarmAuthorizer:
    authorizer = node.protocol.authorizer
    if not isinstance(authorizer, SwarmAuthorizer):
        raise RuntimeError("this DHT was not started with a SwarmAuthorizer")
    return authorizer


async def _set_token(_dht, node, *, token_bytes: bytes) -> None:
    _authorizer_of(node).set_token(token_from_bytes(token_bytes))


async def _set_revoked(_dht, node, *, revoked: list[tuple[str, str]]) -> None:
    _authorizer_of(node).set_revoked(revoked)


def push_access_token(dht: hivemind.DHT, token: AccessToken) -> None:
    """Replace the token of the SwarmAuthorizer inside ``dht``'s process (after a renewal)."""
    dht.run_coroutine(partial(_set_token, token_bytes=token_to_bytes(token)))


def push_revoked(dht: hivemind.DHT, revoked: Iterable[tuple[str, str]]) -> None:
    """Replace the revoked ``(run, peer_id)`` set of the SwarmAuthorizer inside ``dht``'s process."""
    dht.run_coroutine(partial(_set_revoked, revoked=sorted(set(revoked))))
