"""A typed client of the coordinator's gRPC API, used by the CLI, workers and the pull API.

Usage::

    with CoordinatorClient("127.0.0.1:50051") as client:
        assignment = client.join(identity, run_name="demo")   # signed with the worker's identity key

    with CoordinatorClient(Endpoint("127.0.0.1:50051", operator_token=token)) as client:
        launched = client.launch_run(spec)                      # operator RPCs need the operator token
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import grpc

from nomoat_proto import coordinator_pb2 as pb
from nomoat_proto import coordinator_pb2_grpc as pb_grpc
from swarm.identity import Identity
from swarm.join_proof import join_statement, leave_statement, sign_statement
from swarm.receipts import SignedReceipt
from swarm.spec import RunSpec

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

    @classmethod
    def of(cls, target: "str | Endpoint") -> "Endpoint":
        return target if isinstance(target, Endpoint) else cls(target)


class CoordinatorError(RuntimeError):
    """The coordinator refused a request or could not be reached; the message is the coordinator's own."""


def _explain(exc: grpc.RpcError, address: str) -> CoordinatorError:
    code = exc.code() if hasattr(exc, "code") else None
    if code == grpc.StatusCode.UNAVAILABLE:
        return CoordinatorError(f"coordinator at {address} is unreachable ({exc.details()})")
    return CoordinatorError(exc.details() if hasattr(exc, "details") and exc.details() else str(exc))


class CoordinatorClient:
    def __init__(self, endpoint: str | Endpoint, timeout: float = 30.0):
        self.endpoint = Endpoint.of(endpoint)
        address = self.address = self.endpoint.address
        self.timeout = timeout
        self._channel = grpc.insecure_channel(address, options=CHANNEL_OPTIONS)
        self._stub = pb_grpc.CoordinatorStub(self._channel)
        self._metadata = self.endpoint.metadata()
        self._coordinator_id: str | None = None

    def __enter__(self) -> "CoordinatorClient":
        return self

    def __exit__(self, *exc_info) -> None:
        self.close()

    def close(self) -> None:
        self._channel.close()

    def _call(self, method: str, request, timeout: float | None = None):
        try:
            return getattr(self._stub, method)(request, timeout=timeout or self.timeout, metadata=self._metadata)
        except grpc.RpcError as exc:
            raise _explain(exc, self.address) from None

    def _stream(self, method: str, request, timeout: float | None = None) -> Iterator:
        try:
            yield from getattr(self._stub, method)(request, timeout=timeout, metadata=self._metadata)
        except grpc.RpcError as exc:
            raise _explain(exc, self.address) from None

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

    def data_slice(self, run_name: str, data_slice: int, worker_id: str) -> list[str]:
        """The texts of the data slice that the Join of ``worker_id`` assigned."""
        texts: list[str] = []
        request = pb.DataSliceRequest(run_name=run_name, data_slice=data_slice, worker_id=worker_id)
        for chunk in self._stream("StreamDataSlice", request, timeout=self.timeout * 10):
            texts.extend(chunk.texts)
        return texts

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
