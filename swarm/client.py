"""A typed client of the coordinator's gRPC API, used by the CLI, workers and the pull API.

The channel is TLS unless the endpoint says ``insecure``, or the coordinator is on loopback and no trust (CA file or
fingerprint) was given. It trusts a pinned certificate fingerprint, else the CA file, else the system's roots, and
never falls back to plaintext: a TLS failure is a ``CoordinatorError`` that says what to pass.

Usage::

    with CoordinatorClient(Endpoint("coord.example.org:50051", fingerprint="sha256:ab12...")) as client:
        assignment = client.join(identity, run_name="demo")   # signed with the worker's identity key

    with CoordinatorClient(Endpoint("127.0.0.1:50051", operator_token=token)) as client:
        launched = client.launch_run(spec)                      # operator RPCs need the operator token
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import grpc

from nomoat_proto import coordinator_pb2 as pb
from nomoat_proto import coordinator_pb2_grpc as pb_grpc
from swarm.identity import Identity
from swarm.join_proof import (
    hand_over_statement,
    join_statement,
    leave_statement,
    renew_statement,
    report_statement,
    sign_statement,
)
from swarm.receipts import SignedReceipt
from swarm.sample_wire import SliceError, SliceReader
from swarm.samples import TrainingSample
from swarm.spec import RunSpec
from swarm.tls import TlsError, channel_credentials, is_loopback, split_address

MAX_MESSAGE_BYTES = 64 * 1024 * 1024
CHANNEL_OPTIONS = [
    ("grpc.max_send_message_length", MAX_MESSAGE_BYTES),
    ("grpc.max_receive_message_length", MAX_MESSAGE_BYTES),
]


@dataclass(frozen=True)
class Endpoint:
    """How to reach a coordinator, and who to be there. Everything that talks to a coordinator takes an Endpoint
    (or a plain ``HOST:PORT``, which means ``Endpoint(address)``)."""

    address: str  # HOST:PORT
    ca_file: Path | None = None  # trust the coordinator's certificate if this CA signed it
    fingerprint: str | None = None  # trust exactly the certificate with this sha256 fingerprint
    insecure: bool = False  # plaintext gRPC even off loopback (the operator must have asked for it too)
    operator_token: str | None = None  # the operator credential, for administration
    join_token: str | None = None  # a join token of a run: to join a token run, or to read a private one

    def metadata(self) -> tuple[tuple[str, str], ...]:
        """The gRPC metadata that presents this endpoint's credentials."""
        values = []
        if self.operator_token:
            values.append(("authorization", f"Bearer {self.operator_token}"))
        if self.join_token:
            values.append(("nomoat-join-token", self.join_token))
        return tuple(values)

    def __post_init__(self) -> None:
        if self.insecure and (self.ca_file or self.fingerprint):
            raise ValueError("choose plaintext (--insecure) or TLS trust (--ca / --fingerprint), not both")

    @classmethod
    def of(cls, target: "str | Endpoint") -> "Endpoint":
        return target if isinstance(target, Endpoint) else cls(target)

    def uses_tls(self) -> bool:
        """TLS unless asked for plaintext, or on loopback with no trust given (local use stays plaintext)."""
        if self.insecure:
            return False
        return bool(self.ca_file or self.fingerprint) or not is_loopback(split_address(self.address)[0])


class CoordinatorError(RuntimeError):
    """The coordinator refused a request or could not be reached; the message is the coordinator's own."""


TRUST_HINT = ("pass --fingerprint sha256:... as printed by `swarm coordinator` (or set NOMOAT_FINGERPRINT), "
              "or --ca FILE with the certificate that signed the coordinator's")
# what gRPC's details say when the TLS handshake failed: not trusted, or no TLS at the other end
_UNTRUSTED = ("CERTIFICATE_VERIFY_FAILED", "certificate verify failed", "self signed certificate",
              "unable to get local issuer certificate", "Peer name")
_NOT_TLS = ("WRONG_VERSION_NUMBER", "wrong version number", "packet length too long", "record overflow")


def _explain(exc: grpc.RpcError, address: str, tls: bool) -> CoordinatorError:
    code = exc.code() if hasattr(exc, "code") else None
    details = exc.details() if hasattr(exc, "details") else None
    if code == grpc.StatusCode.UNAVAILABLE:
        text = details or ""
        if tls and any(sign in text for sign in _NOT_TLS):
            return CoordinatorError(f"the coordinator at {address} does not speak TLS; if its operator serves it "
                                    f"with --insecure, pass --insecure too (plaintext: anyone on the path can read "
                                    f"and change what you send) ({text})")
        if tls and any(sign in text for sign in _UNTRUSTED):
            return CoordinatorError(f"refusing the coordinator at {address}: its TLS certificate is not trusted "
                                    f"({text}); {TRUST_HINT}")
        if tls and "handshake" in text.lower():
            return CoordinatorError(f"TLS handshake with the coordinator at {address} failed ({text}); "
                                    f"{TRUST_HINT}")
        hint = "" if tls else "; if it serves TLS, pass --fingerprint or --ca instead of plaintext"
        return CoordinatorError(f"coordinator at {address} is unreachable ({text}){hint}")
    return CoordinatorError(details or str(exc))


class CoordinatorClient:
    """One channel to a coordinator, opened on the first call (constructing a client never touches the network)
    and reopened after ``close``."""

    def __init__(self, endpoint: str | Endpoint, timeout: float = 30.0):
        self.endpoint = Endpoint.of(endpoint)
        self.address = self.endpoint.address
        self.timeout = timeout
        self._channel: grpc.Channel | None = None
        self._stub: pb_grpc.CoordinatorStub | None = None
        self._tls = False
        self._lock = threading.Lock()
        self._metadata = self.endpoint.metadata()
        self._coordinator_id: str | None = None

    def __enter__(self) -> "CoordinatorClient":
        return self

    def __exit__(self, *exc_info) -> None:
        self.close()

    def close(self) -> None:
        with self._lock:
            if self._channel is not None:
                self._channel.close()
            self._channel = self._stub = None

    def _connected(self) -> pb_grpc.CoordinatorStub:
        with self._lock:
            if self._stub is None:
                try:
                    self._tls = self.endpoint.uses_tls()
                    self._channel = self._open_channel() if self._tls else grpc.insecure_channel(
                        self.address, options=CHANNEL_OPTIONS)
                except TlsError as exc:  # its message names the file, address or certificate at fault
                    raise CoordinatorError(str(exc)) from None
                self._stub = pb_grpc.CoordinatorStub(self._channel)
            return self._stub

    def _open_channel(self) -> grpc.Channel:
        # with a pinned fingerprint this reads the server's certificate first: a mismatch is refused before
        # any request is sent
        credentials, options = channel_credentials(self.address, self.endpoint.ca_file, self.endpoint.fingerprint)
        return grpc.secure_channel(self.address, credentials, options=[*CHANNEL_OPTIONS, *options])

    def _call(self, method: str, request, timeout: float | None = None):
        stub = self._connected()
        try:
            return getattr(stub, method)(request, timeout=timeout or self.timeout, metadata=self._metadata)
        except grpc.RpcError as exc:
            raise _explain(exc, self.address, self._tls) from None

    def _stream(self, method: str, request, timeout: float | None = None) -> Iterator:
        stub = self._connected()
        try:
            yield from getattr(stub, method)(request, timeout=timeout, metadata=self._metadata)
        except grpc.RpcError as exc:
            raise _explain(exc, self.address, self._tls) from None

    def launch_run(self, spec: RunSpec, timeout: float = 600.0, join_policy: str = "open",
                   private: bool = False) -> pb.LaunchRunResponse:
        request = pb.LaunchRunRequest(spec_json=spec.to_json(), join_policy=join_policy, private=private)
        return self._call("LaunchRun", request, timeout=timeout)

    def coordinator_info(self) -> pb.CoordinatorInfo:
        return self._call("GetCoordinatorInfo", pb.CoordinatorInfoRequest())

    def coordinator_id(self) -> str:
        """The peer ID of the coordinator's key, which signed Joins and Leaves name (asked once per client)."""
        if self._coordinator_id is None:
            self._coordinator_id = self.coordinator_info().coordinator_id
        return self._coordinator_id

    def join(self, identity: Identity, run_name: str = "", display_name: str = "", max_shards: int = 0,
             device: str = "cpu") -> pb.Assignment:
        """Join as ``identity``, signed with its key (``swarm.join_proof``); ``run_name`` empty: the default run."""
        now = time.time()
        statement = join_statement(coordinator=self.coordinator_id(), run=run_name, peer_id=identity.peer_id,
                                   display_name=display_name, max_shards=max_shards, device=device, timestamp=now)
        proof = sign_statement(identity, statement, now)
        request = pb.JoinRequest(run_name=run_name, peer_id=identity.peer_id, display_name=display_name,
                                 max_shards=max_shards, device=device, public_key=proof.public_key,
                                 signature=proof.signature, timestamp=proof.timestamp)
        return self._call("Join", request)

    def data_slice(self, run_name: str, data_slice: int, worker_id: str) -> list[TrainingSample]:
        """The samples of the data slice that the Join of ``worker_id`` assigned, checked (``SliceReader``):
        CoordinatorError when the coordinator sent a malformed or oversized slice."""
        reader = SliceReader()
        request = pb.DataSliceRequest(run_name=run_name, data_slice=data_slice, worker_id=worker_id)
        try:
            for chunk in self._stream("StreamDataSlice", request, timeout=self.timeout * 10):
                reader.add(chunk)
            return reader.samples()
        except SliceError as exc:
            raise CoordinatorError(f"data slice {data_slice} of run '{run_name}' from {self.address}: {exc}") from None

    def submit_receipts(self, receipts: list[SignedReceipt], timeout: float | None = None) -> list[pb.ReceiptResult]:
        batch = pb.ReceiptBatch(receipts=[pb.SignedReceipt(payload=r.payload, public_key=r.public_key,
                                                           signature=r.signature) for r in receipts])
        return list(self._call("SubmitReceipts", batch, timeout=timeout).results)

    def leaderboard(self, run_name: str, include_unverified: bool = False) -> pb.Leaderboard:
        return self._call("GetLeaderboard", pb.LeaderboardRequest(run_name=run_name,
                                                                  include_unverified=include_unverified))

    def leave(self, worker_id: str, identity: Identity) -> pb.LeaveResponse:
        """End the registration ``worker_id`` of ``identity``, signed with its key."""
        now = time.time()
        statement = leave_statement(coordinator=self.coordinator_id(), worker_id=worker_id, peer_id=identity.peer_id,
                                    timestamp=now)
        proof = sign_statement(identity, statement, now)
        return self._call("Leave", pb.LeaveRequest(worker_id=worker_id, public_key=proof.public_key,
                                                   signature=proof.signature, timestamp=proof.timestamp))

    def hand_over(self, worker_id: str, identity: Identity, epoch: int, timeout: float) -> pb.HandOverResponse:
        """Ask for a snapshot of this worker's final state at ``epoch`` now (signed with its key); the reply says
        whether a version holds it. Blocks while the coordinator downloads and evaluates (up to ``timeout``)."""
        now = time.time()
        statement = hand_over_statement(coordinator=self.coordinator_id(), worker_id=worker_id,
                                        peer_id=identity.peer_id, epoch=epoch, timestamp=now)
        proof = sign_statement(identity, statement, now)
        return self._call("HandOverState", pb.HandOverRequest(
            worker_id=worker_id, epoch=epoch, public_key=proof.public_key, signature=proof.signature,
            timestamp=proof.timestamp), timeout=timeout)

    def renew_access(self, worker_id: str, identity: Identity) -> pb.AccessGrant:
        """A fresh swarm access token for the registration ``worker_id`` of ``identity``, signed with its key."""
        now = time.time()
        statement = renew_statement(coordinator=self.coordinator_id(), worker_id=worker_id, peer_id=identity.peer_id,
                                    timestamp=now)
        proof = sign_statement(identity, statement, now)
        return self._call("RenewAccessToken", pb.RenewAccessRequest(
            worker_id=worker_id, public_key=proof.public_key, signature=proof.signature, timestamp=proof.timestamp))

    def report_peers(self, worker_id: str, identity: Identity,
                     reports: list[tuple[str, int, str]]) -> pb.PeerReportResponse:
        """Report ``(peer_id, count, reason)``: peers whose contributions this worker's averagers refused."""
        now = time.time()
        statement = report_statement(coordinator=self.coordinator_id(), worker_id=worker_id,
                                     peer_id=identity.peer_id, reports=reports, timestamp=now)
        proof = sign_statement(identity, statement, now)
        return self._call("ReportPeers", pb.PeerReportRequest(
            worker_id=worker_id, reports=[pb.PeerReport(peer_id=p, count=c, reason=r) for p, c, r in reports],
            public_key=proof.public_key, signature=proof.signature, timestamp=proof.timestamp))

    def status(self, run_name: str = "", include_archived: bool = False) -> pb.StatusResponse:
        return self._call("GetStatus", pb.StatusRequest(run_name=run_name, include_archived=include_archived))

    def publish_now(self, run_name: str, timeout: float = 600.0) -> pb.PublishResponse:
        return self._call("PublishNow", pb.PublishRequest(run_name=run_name), timeout=timeout)

    def pull_stream(self, run_name: str, version: int = 0, offsets: dict[str, int] | None = None,
                    chunk_bytes: int = 0) -> Iterator[pb.PullChunk]:
        request = pb.PullRequest(run_name=run_name, version=version, offsets=offsets or {}, chunk_bytes=chunk_bytes)
        return self._stream("PullAdapter", request, timeout=3600)

    def get_version(self, run_name: str, version: int = 0) -> pb.VersionManifest:
        return self._call("GetVersion", pb.VersionRequest(run_name=run_name, version=version))

    def mark_release(self, run_name: str, version: int, release: bool = True) -> pb.VersionInfo:
        return self._call("MarkRelease", pb.ReleaseRequest(run_name=run_name, version=version, release=release))

    # Operator: run administration

    def create_join_token(self, run_name: str, label: str = "") -> pb.JoinTokenCreated:
        return self._call("CreateJoinToken", pb.CreateJoinTokenRequest(run_name=run_name, label=label))

    def list_join_tokens(self, run_name: str) -> list[pb.JoinTokenInfo]:
        return list(self._call("ListJoinTokens", pb.ListJoinTokensRequest(run_name=run_name)).tokens)

    def revoke_join_token(self, token_id: int) -> pb.JoinTokenInfo:
        return self._call("RevokeJoinToken", pb.RevokeJoinTokenRequest(token_id=token_id))

    def set_run_state(self, run_name: str, state: str, force: bool = False) -> pb.RunStateResponse:
        return self._call("SetRunState", pb.RunStateRequest(run_name=run_name, state=state, force=force))

    def set_default_run(self, run_name: str) -> pb.CoordinatorInfo:
        return self._call("SetDefaultRun", pb.DefaultRunRequest(run_name=run_name))

    def ban_peer(self, run_name: str, peer_id: str, reason: str = "") -> pb.PeerBanInfo:
        return self._call("BanPeer", pb.BanPeerRequest(run_name=run_name, peer_id=peer_id, reason=reason))

    def unban_peer(self, run_name: str, peer_id: str) -> pb.PeerBanInfo:
        return self._call("UnbanPeer", pb.BanPeerRequest(run_name=run_name, peer_id=peer_id))
