"""A real gRPC server between a puller and a real coordinator that forwards pulls and, when told, lies: what an
attacker on the network path (or a hostile mirror) can do to ``swarm pull``.

Usage::

    with HostileProxy(coordinator_address) as proxy:
        pull(proxy.address, "demo", out)                   # honest: a plain pass-through
        proxy.latest_as = 1                                # answer "latest" with version 1 (a downgrade)
        proxy.forge = lambda payload: resign(payload, attacker)   # rewrite the signed manifest
        proxy.corrupt = {"adapter_model.safetensors"}      # flip a byte of this file as it streams
        proxy.files = {"../x": b"..."}                     # stream these files instead of the coordinator's
"""

from __future__ import annotations

import json
from collections.abc import Callable
from concurrent import futures

import grpc

from nomoat_proto import coordinator_pb2 as pb
from nomoat_proto import coordinator_pb2_grpc as pb_grpc
from swarm.identity import Identity
from swarm.manifest import SignedManifest


def resign(payload: bytes, identity: Identity, **changes) -> tuple[bytes, str]:
    """The manifest ``payload`` with ``changes`` applied and its coordinator set to ``identity``, signed by it:
    (payload, signature_json). Values are not checked, so anything a hostile signer could send can be made."""
    data = json.loads(payload)
    data.update(coordinator=identity.peer_id, **changes)
    forged = json.dumps(data, sort_keys=True, separators=(",", ":")).encode()
    return forged, SignedManifest(forged, identity.public_key_der, identity.sign(forged)).signature_json()


class HostileProxy(pb_grpc.CoordinatorServicer):
    def __init__(self, upstream: str):
        self.latest_as: int | None = None
        self.forge: Callable[[bytes], tuple[bytes, str]] | None = None
        self.corrupt: set[str] = set()
        self.files: dict[str, bytes] | None = None
        self._channel = grpc.insecure_channel(upstream)
        self._stub = pb_grpc.CoordinatorStub(self._channel)
        self._server = grpc.server(futures.ThreadPoolExecutor(max_workers=4))
        pb_grpc.add_CoordinatorServicer_to_server(self, self._server)
        self.address = f"127.0.0.1:{self._server.add_insecure_port('127.0.0.1:0')}"
        self._last_payload = b""

    def honest(self) -> None:
        self.latest_as, self.forge, self.corrupt, self.files = None, None, set(), None

    def GetVersion(self, request, context):
        asked = pb.VersionRequest(run_name=request.run_name, version=request.version or self.latest_as or 0)
        response = self._stub.GetVersion(asked)
        if self.forge is not None:
            payload, signature_json = self.forge(response.manifest)
            response = pb.VersionManifest(version=response.version, manifest=payload, signature_json=signature_json)
        self._last_payload = response.manifest
        return response

    def PullAdapter(self, request, context):
        if self.files is not None:
            header = json.loads(self._last_payload)
            yield pb.PullChunk(header=pb.PullHeader(version=pb.VersionInfo(
                run_name=request.run_name, version=request.version, sha256=_digest_of(header))))
            for name, data in self.files.items():
                offset = request.offsets.get(name, 0)
                yield pb.PullChunk(chunk=pb.FileChunk(name=name, offset=offset, data=data[offset:]))
            return
        for message in self._stub.PullAdapter(request):
            if self.forge is not None and message.HasField("header"):
                message.header.version.sha256 = _digest_of(json.loads(self._last_payload))
            if message.HasField("chunk") and message.chunk.name in self.corrupt and message.chunk.data:
                data = bytearray(message.chunk.data)
                data[-1] ^= 0xFF
                message.chunk.data = bytes(data)
            yield message

    def __enter__(self) -> "HostileProxy":
        self._server.start()
        return self

    def __exit__(self, *exc_info) -> None:
        self._server.stop(grace=None)
        self._channel.close()


def _digest_of(manifest: dict) -> str:
    from swarm.adapter_files import FileDigest, version_digest

    try:
        return version_digest([FileDigest(**entry) for entry in manifest["files"]])
    except TypeError:
        return ""  # a manifest a puller refuses anyway
