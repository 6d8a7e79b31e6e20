"""A typed client of the coordinator's gRPC API, used by the CLI, workers and the pull API.

Usage::

    with CoordinatorClient("127.0.0.1:50051") as client:
        launched = client.launch_run(spec)
        assignment = client.join(peer_id="12D3Koo...", run_name="demo")
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import grpc

from nomoat_proto import coordinator_pb2 as pb
from nomoat_proto import coordinator_pb2_grpc as pb_grpc
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

    def __enter__(self) -> "CoordinatorClient":
        return self

    def __exit__(self, *exc_info) -> None:
        self.close()

    def close(self) -> None:
        self._channel.close()

    def _call(self, method: str, request, timeout: float | None = None):
        try:
            return getattr(self._stub, method)(request, timeout=timeout or self.timeout)
        except grpc.RpcError as exc:
            raise _explain(exc, self.address) from None

    def _stream(self, method: str, request, timeout: float | None = None) -> Iterator:
        try:
            yield from getattr(self._stub, method)(request, timeout=timeout)
        except grpc.RpcError as exc:
            raise _explain(exc, self.address) from None

    def launch_run(self, spec: RunSpec, timeout: float = 600.0) -> pb.LaunchRunResponse:
        return self._call("LaunchRun", pb.LaunchRunRequest(spec_json=spec.to_json()), timeout=timeout)

    def join(self, peer_id: str, run_name: str = "", display_name: str = "", max_shards: int = 0,
             device: str = "cpu") -> pb.Assignment:
        request = pb.JoinRequest(run_name=run_name, peer_id=peer_id, display_name=display_name,
                                 max_shards=max_shards, device=device)
        return self._call("Join", request)

    def data_slice(self, run_name: str, data_slice: int) -> list[str]:
        texts: list[str] = []
        for chunk in self._stream("StreamDataSlice", pb.DataSliceRequest(run_name=run_name, data_slice=data_slice),
                                  timeout=self.timeout * 10):
            texts.extend(chunk.texts)
        return texts

    def submit_receipts(self, receipts: list[SignedReceipt], timeout: float | None = None) -> list[pb.ReceiptResult]:
        batch = pb.ReceiptBatch(receipts=[pb.SignedReceipt(payload=r.payload, public_key=r.public_key,
                                                           signature=r.signature) for r in receipts])
        return list(self._call("SubmitReceipts", batch, timeout=timeout).results)

    def leaderboard(self, run_name: str, include_unverified: bool = False) -> pb.Leaderboard:
        return self._call("GetLeaderboard", pb.LeaderboardRequest(run_name=run_name,
                                                                  include_unverified=include_unverified))

    def leave(self, worker_id: str) -> pb.LeaveResponse:
        return self._call("Leave", pb.LeaveRequest(worker_id=worker_id))

    def status(self, run_name: str = "") -> pb.StatusResponse:
        return self._call("GetStatus", pb.StatusRequest(run_name=run_name))

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
