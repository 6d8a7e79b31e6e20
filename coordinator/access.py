"""Who may call what: the role of every RPC in one table (``METHOD_ROLES``), the operator credential, join tokens
and the checks of signed Joins and Leaves.

- **operator**: the bearer of the operator token (``<data dir>/operator.token``, made on first start, mode 0600),
  sent as gRPC metadata ``authorization: Bearer <token>``. Needed for launching, publishing, releases and every
  administration RPC.
- **reader**: anyone, unless the run is private; then the operator or a join token of that run (metadata
  ``nomoat-join-token``).
- **volunteer**: anyone who proves its identity key (signed Join and Leave, signed receipts), and on a run with
  join policy ``token`` also holds a valid join token of the run. The service makes these checks through
  ``AccessPolicy`` because they need the request's content.
- **public**: anyone (what a worker needs to know before it signs).

An RPC missing from the table is refused (default deny). A missing credential is UNAUTHENTICATED, a wrong or
revoked one PERMISSION_DENIED, each with a message naming the credential needed; ``RpcErrorInterceptor`` logs
every refusal with method, peer and reason (never a token).

Usage::

    policy = AccessPolicy(storage, operator_token=load_or_create_operator_token(data_dir / OPERATOR_TOKEN_FILE),
                          coordinator_id=identity.peer_id)
    server = grpc.server(executor, interceptors=[RpcErrorInterceptor(), AccessInterceptor(policy)])
"""

from __future__ import annotations

import enum
import hashlib
import hmac
import secrets
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterable

import grpc

from coordinator.request_checks import check_run_name
from coordinator.storage import RunSettings, Storage
from swarm.credentials import OPERATOR_TOKEN_FILE, CredentialError, read_operator_token
from swarm.join_proof import Proof, ProofError, ReplayGuard, verify_proof
from swarm.log import get_logger
from swarm.private_files import require_private, write_private_file

__all__ = ["OPERATOR_TOKEN_FILE", "METHOD_ROLES", "AccessError", "AccessInterceptor", "AccessPolicy", "Credentials",
           "PermissionDenied", "Role", "Unauthenticated", "load_or_create_operator_token", "token_digest"]

logger = get_logger(__name__)

AUTHORIZATION_KEY = "authorization"  # value: "Bearer <operator token>"
JOIN_TOKEN_KEY = "nomoat-join-token"
OPERATOR_HINT = ("the operator token (the coordinator's <data dir>/operator.token: pass --operator-token-file "
                 "FILE or set NOMOAT_OPERATOR_TOKEN)")


class Role(enum.Enum):
    OPERATOR = "operator"
    READER = "reader"
    VOLUNTEER = "volunteer"
    PUBLIC = "public"


METHOD_ROLES: dict[str, Role] = {
    "LaunchRun": Role.OPERATOR,
    "PublishNow": Role.OPERATOR,
    "MarkRelease": Role.OPERATOR,
    "CreateJoinToken": Role.OPERATOR,
    "ListJoinTokens": Role.OPERATOR,
    "RevokeJoinToken": Role.OPERATOR,
    "SetRunState": Role.OPERATOR,
    "SetDefaultRun": Role.OPERATOR,
    "BanPeer": Role.OPERATOR,
    "UnbanPeer": Role.OPERATOR,
    "GetStatus": Role.READER,
    "GetLeaderboard": Role.READER,
    "GetVersion": Role.READER,
    "PullAdapter": Role.READER,
    "Join": Role.VOLUNTEER,
    "Leave": Role.VOLUNTEER,
    "StreamDataSlice": Role.VOLUNTEER,
    "SubmitReceipts": Role.VOLUNTEER,
    "RenewAccessToken": Role.VOLUNTEER,  # signed by the worker's key, checked by the service
    "ReportPeers": Role.VOLUNTEER,  # signed by the worker's key, checked by the service
    "HandOverState": Role.VOLUNTEER,  # signed by the worker's key, checked by the service
    "GetCoordinatorInfo": Role.PUBLIC,
}


class AccessError(Exception):
    """The caller may not do this; ``status`` is the gRPC status code it gets."""

    status = grpc.StatusCode.PERMISSION_DENIED


class Unauthenticated(AccessError):
    """A needed credential is missing."""

    status = grpc.StatusCode.UNAUTHENTICATED


class PermissionDenied(AccessError):
    """A credential is wrong, revoked, or not enough."""

    status = grpc.StatusCode.PERMISSION_DENIED


@dataclass(frozen=True)
class Credentials:
    """What a caller presented in its call's metadata."""

    operator_token: str | None = None
    join_token: str | None = None

    @classmethod
    def of_metadata(cls, metadata: Iterable[tuple[str, Any]] | None) -> "Credentials":
        values = {key.lower(): value for key, value in (metadata or ())}
        bearer = values.get(AUTHORIZATION_KEY)
        operator = None
        if isinstance(bearer, str) and bearer.lower().startswith("bearer "):
            operator = bearer[len("bearer "):].strip() or None
        join = values.get(JOIN_TOKEN_KEY)
        return cls(operator, join.strip() or None if isinstance(join, str) else None)

    @classmethod
    def of_context(cls, context: grpc.ServicerContext) -> "Credentials":
        return cls.of_metadata(context.invocation_metadata())


def token_digest(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def load_or_create_operator_token(path: Path) -> str:
    """The operator token kept in ``path``; on first use a new random one, written there with mode 0600
    (``swarm.private_files``: never readable by others nor half-written). A token file that group or others may
    read is refused (``InsecureFileError``, a PermissionError naming the chmod to run)."""
    path = Path(path)
    if not path.exists():
        try:
            write_private_file(path, (secrets.token_urlsafe(32) + "\n").encode(), replace=False)
            logger.info("created the operator token in %s", path)
        except FileExistsError:
            pass  # another process created it first: use that one
    require_private(path)
    try:
        return read_operator_token(path)
    except CredentialError as exc:
        raise ValueError(f"{exc}: delete it to have a new token made") from None


class AccessPolicy:
    """The checks behind the roles; shared by ``AccessInterceptor`` and the service. Thread-safe."""

    def __init__(self, storage: Storage, operator_token: str, coordinator_id: str,
                 replay_guard: ReplayGuard | None = None):
        self.storage, self.coordinator_id = storage, coordinator_id
        self._operator_token = operator_token.encode()
        self.replays = replay_guard or ReplayGuard()

    def is_operator(self, credentials: Credentials) -> bool:
        presented = credentials.operator_token
        return presented is not None and hmac.compare_digest(presented.encode(), self._operator_token)

    def require_operator(self, credentials: Credentials, what: str) -> None:
        if credentials.operator_token is None:
            raise Unauthenticated(f"{what} needs {OPERATOR_HINT}")
        if not self.is_operator(credentials):
            raise PermissionDenied(f"{what}: the operator token is wrong; it needs {OPERATOR_HINT}")

    def join_token_valid(self, run_name: str, token: str | None) -> bool:
        if not token:
            return False
        record = self.storage.tokens.find(token_digest(token))
        return record is not None and record.revoked_at is None and record.run_name == run_name

    def require_join_token(self, run_name: str, credentials: Credentials, what: str) -> None:
        """A valid join token of the run (the operator token also does)."""
        if self.is_operator(credentials) or self.join_token_valid(run_name, credentials.join_token):
            return
        needed = f"a join token of run '{run_name}' (--join-token or NOMOAT_JOIN_TOKEN; the operator mints them)"
        if credentials.join_token is None and credentials.operator_token is None:
            raise Unauthenticated(f"{what} needs {needed}")
        raise PermissionDenied(f"{what}: the token is wrong, revoked or of another run; it needs {needed}")

    def may_read(self, settings: RunSettings, run_name: str, credentials: Credentials) -> bool:
        return (not settings.private or self.is_operator(credentials)
                or self.join_token_valid(run_name, credentials.join_token))

    def require_reader(self, run_name: str, credentials: Credentials) -> None:
        check_run_name(run_name)  # before any lookup: a huge or hostile name is refused without being echoed
        settings = self.storage.runs.settings(run_name)  # UnknownRunError: NOT_FOUND
        if settings.private:
            self.require_join_token(run_name, credentials, f"run '{run_name}' is private: reading it")

    def require_proof(self, proof: Proof | None, peer_id: str, statement: bytes, what: str) -> None:
        """``proof`` signs ``statement`` with ``peer_id``'s key, freshly, and was not seen before."""
        if proof is None or not proof.public_key or not proof.signature:
            raise Unauthenticated(f"{what} must be signed with the worker's identity key (public_key, signature "
                                  f"and timestamp; see swarm.join_proof)")
        try:
            verify_proof(proof, peer_id, statement)
            self.replays.check_fresh(proof.signature)
        except ProofError as exc:
            raise PermissionDenied(f"{what} refused: {exc}") from None


def _guarded(handler: Any, check: Callable[[Any], None]) -> Any:
    """``handler`` with ``check(request)`` run before its behavior (inside it, so that the error interceptor
    around it maps and logs what ``check`` raises)."""
    if handler.unary_unary:
        unary = handler.unary_unary

        def call(request: Any, context: grpc.ServicerContext) -> Any:
            check(request)
            return unary(request, context)

        return handler._replace(unary_unary=call)
    if handler.unary_stream:
        stream = handler.unary_stream

        def call_stream(request: Any, context: grpc.ServicerContext) -> Any:
            check(request)
            yield from stream(request, context)

        return handler._replace(unary_stream=call_stream)
    # no method of the service streams its requests; refuse one rather than let it through unchecked
    def refuse(request: Any, context: grpc.ServicerContext) -> Any:
        check(None)
        raise PermissionDenied("request streams are not served")

    return handler._replace(stream_unary=refuse) if handler.stream_unary else handler._replace(stream_stream=refuse)


class AccessInterceptor(grpc.ServerInterceptor):
    """Enforces ``METHOD_ROLES`` before any servicer code runs. Place it after ``RpcErrorInterceptor``."""

    def __init__(self, policy: AccessPolicy):
        self.policy = policy

    def intercept_service(self, continuation: Callable[[grpc.HandlerCallDetails], Any],
                          handler_call_details: grpc.HandlerCallDetails) -> Any:
        handler = continuation(handler_call_details)
        if handler is None:
            return None
        method = handler_call_details.method.rsplit("/", 1)[-1]
        role = METHOD_ROLES.get(method)
        credentials = Credentials.of_metadata(handler_call_details.invocation_metadata)
        policy = self.policy

        def check(request: Any) -> None:
            if role is None:
                raise PermissionDenied(f"{method} is not open to any caller on this coordinator")
            if role is Role.OPERATOR:
                policy.require_operator(credentials, method)
            elif role is Role.READER:
                run_name: str = getattr(request, "run_name", "")
                if run_name:  # GetStatus of every run lists only the runs the caller may read
                    policy.require_reader(run_name, credentials)

        if role in (Role.VOLUNTEER, Role.PUBLIC):
            return handler
        return _guarded(handler, check)
