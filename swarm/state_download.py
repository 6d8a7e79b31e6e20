"""Download a shard's averaged training state from the swarm, the way hivemind's own newcomers do.

Every non-client worker's hivemind.Optimizer serves its TrainingStateAverager state (``rpc_download_state``):
msgpack metadata (``epoch``, optimizer metadata) and a flat tensor list that starts with the optimized
parameters, in the order the worker passed them (the shard's LoRA parameter order). This module lists the peers
that advertise their state for a shard and downloads from each, so the coordinator never depends on files
uploaded by one worker and can compare several peers.

Usage::

    sharers = list_state_sharers(dht, "demo/shard0")
    state = download_state(dht, "demo/shard0", sharers[0], num_parameters=48, timeout=30, max_bytes=2**24)
    state.epoch, state.parameters[0].shape

A download reads at most ``max_bytes`` of tensor data and stops as soon as it holds the parameters (the
optimizer statistics that follow are never read): a peer streaming gigabytes is cut off, not buffered.
"""

from __future__ import annotations

import asyncio
import functools
from dataclasses import dataclass

import hivemind
import torch
from hivemind.compression import deserialize_torch_tensor
from hivemind.optim.state_averager import TrainingStateAverager
from hivemind.p2p import PeerID
from hivemind.proto import averaging_pb2
from hivemind.utils.serializer import MSGPackSerializer
from hivemind.utils.streaming import combine_from_streaming

from swarm.dht import shard_state_prefix, shard_state_sharers_key

STATE_SLACK_BYTES = 2**20  # room for metadata and serialization overhead beyond the tensors


def default_state_cap(parameter_bytes: int, max_state_bytes: int | None = None) -> int:
    """Bytes one state download may read: the spec's ``robustness.max_state_bytes`` if set, else 4x the shard's
    fp32 LoRA parameter bytes (parameters and Adam's two statistics, with room) plus 1 MiB."""
    return max_state_bytes if max_state_bytes is not None else 4 * parameter_bytes + STATE_SLACK_BYTES


class StateDownloadError(RuntimeError):
    """No usable state could be downloaded from a peer."""


@dataclass(frozen=True)
class DownloadedState:
    peer_id: str
    epoch: int
    parameters: list[torch.Tensor]


def list_state_sharers(dht: hivemind.DHT, shard_run_id: str) -> list[str]:
    """Peer IDs (base58) that currently serve this shard's state, highest priority (most trained) first."""
    found = dht.get(shard_state_sharers_key(shard_run_id), latest=True)
    if found is None or not isinstance(found.value, dict):
        return []
    priority = {
        peer_id: entry.value
        for peer_id, entry in found.value.items()
        if isinstance(getattr(entry, "value", None), (int, float))
    }
    return [str(PeerID(peer_id)) for peer_id in sorted(priority, key=lambda peer: priority[peer], reverse=True)]


def download_state(
    dht: hivemind.DHT, shard_run_id: str, peer_id: str, num_parameters: int, timeout: float = 60.0,
    max_bytes: int = 2**30,
) -> DownloadedState:
    """Download one peer's state for a shard; keep the first ``num_parameters`` tensors (the parameters).

    ``StateDownloadError`` if the peer sends more than ``max_bytes`` before the parameters are complete."""
    coroutine = functools.partial(
        _download_in_dht_process, prefix=shard_state_prefix(shard_run_id), peer_id=peer_id, timeout=timeout,
        num_parameters=num_parameters, max_bytes=max_bytes,
    )
    metadata, shared = dht.run_coroutine(coroutine)
    # the tensors arrive in shared memory (hivemind's file_system strategy, kept alive by torch's shm manager);
    # private copies free it now, not at interpreter exit when the manager may be gone (an abort in torch)
    tensors = [tensor.clone() for tensor in shared]
    del shared
    if not isinstance(metadata, dict) or not isinstance(metadata.get("epoch"), int):
        raise StateDownloadError(f"peer {peer_id} sent no state for {shard_run_id}")
    if len(tensors) < num_parameters:
        raise StateDownloadError(
            f"peer {peer_id} sent {len(tensors)} tensors for {shard_run_id}, expected at least {num_parameters}"
        )
    return DownloadedState(peer_id=peer_id, epoch=metadata["epoch"], parameters=tensors[:num_parameters])


async def _download_in_dht_process(_dht, node, *, prefix: str, peer_id: str, timeout: float, num_parameters: int,
                                   max_bytes: int):
    """Runs inside the DHT process (hivemind.DHT.run_coroutine), where the libp2p connection lives. Counts the
    bytes while streaming: over ``max_bytes`` the stream is closed before the next part is read."""
    stub = TrainingStateAverager.get_stub(node.p2p, PeerID.from_base58(peer_id), namespace=prefix)

    async def receive():
        metadata, parts, tensors, received = None, [], [], 0
        stream = await stub.rpc_download_state(averaging_pb2.DownloadRequest())
        try:
            async for message in stream:
                received += len(message.metadata) + len(message.tensor_part.buffer)
                if received > max_bytes:
                    raise StateDownloadError(f"peer {peer_id} sent more than the {max_bytes} bytes a state of "
                                             f"{prefix} may have; download stopped")
                if message.metadata:
                    metadata = MSGPackSerializer.loads(message.metadata)
                if message.tensor_part.dtype and parts:  # a set dtype marks the first part of the next tensor
                    tensors.append(deserialize_torch_tensor(combine_from_streaming(parts)))
                    parts = []
                    if len(tensors) >= num_parameters:
                        return metadata, tensors  # the parameters are complete; the rest is never read
                parts.append(message.tensor_part)
        finally:
            await stream.aclose()
        if parts:
            tensors.append(deserialize_torch_tensor(combine_from_streaming(parts)))
        return metadata, tensors

    try:
        return await asyncio.wait_for(receive(), timeout=timeout)
    except StateDownloadError:
        raise
    except Exception as exc:  # sent back to the caller's process as a readable error
        raise StateDownloadError(f"download from {peer_id} failed: {exc!r}") from None
