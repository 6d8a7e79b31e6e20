"""hivemind averagers that deal only with the peers a ``swarm.peer_gate.PeerGate`` authorizes.

hivemind's averaging RPCs carry no credentials, but their handlers know the libp2p-authenticated peer ID of the
caller (``context.remote_id``). ``GatedAveragerMixin`` refuses, from a peer the gate does not authorize:

- ``rpc_join_group`` (it cannot join a group this peer leads: PROTOCOL_VIOLATION),
- ``rpc_aggregate_part`` (its part is not reduced and it gets none back),
- ``rpc_download_state`` (it gets an empty stream and no state);

and on the calling side it opens no stub to such a peer (``get_stub``): this peer does not follow a leader the
gate rejects, does not send its parts to an unauthorized member of a group it was put in (the round fails), and
does not download state from one. The averagers run in their own child processes: the gate is forked there with
the class.

Compose it in front of an averager class with ``gate_averager_class``, which keeps the class's name: hivemind names
the RPC handlers after the class (``<prefix>::TrainingStateAverager.rpc_download_state``), so a renamed class
would not hear its peers.

Usage::

    gate = PeerGate(dht, "demo", authority_public_key)
    GatedStateAverager = gate_averager_class(TrainingStateAverager, gate)
    averager = GatedStateAverager(dht=dht, prefix="demo/shard0_state_averager", ...)
"""

from __future__ import annotations

import asyncio
from functools import partial
from typing import Any, AsyncIterator, TypeVar

from hivemind.averaging import DecentralizedAverager
from hivemind.p2p import P2P, P2PContext, PeerID, StubBase
from hivemind.p2p.p2p_daemon_bindings.utils import P2PHandlerError
from hivemind.proto import averaging_pb2

from swarm.log import get_logger
from swarm.peer_gate import PeerGate

logger = get_logger(__name__)

A = TypeVar("A", bound=type)


class UnauthorizedPeerError(P2PHandlerError):
    """This peer will not talk to ``peer``: the gate does not authorize it. A P2PHandlerError, which hivemind's
    matchmaking treats as a leader that did not answer."""


class GatedAveragerMixin:
    """Put before a ``DecentralizedAverager`` subclass in the bases; ``peer_gate`` None: no gating."""

    peer_gate: PeerGate | None = None

    async def _gate_allows(self, peer: PeerID) -> bool:
        gate = self.peer_gate
        if gate is None:
            return True
        # a cache miss reads the DHT (blocking, through the DHT handle): off this process's event loop
        return await asyncio.get_running_loop().run_in_executor(None, partial(gate.allows, peer, fresh=True))

    async def rpc_join_group(self, request: averaging_pb2.JoinRequest,
                             context: P2PContext) -> AsyncIterator[averaging_pb2.MessageFromLeader]:
        if not await self._gate_allows(context.remote_id):
            logger.info("refused unauthorized peer %s: join group", context.remote_id)
            yield averaging_pb2.MessageFromLeader(code=averaging_pb2.PROTOCOL_VIOLATION)
            return
        async for response in super().rpc_join_group(request, context):  # type: ignore[misc]
            yield response

    async def rpc_aggregate_part(self, stream: AsyncIterator[averaging_pb2.AveragingData],
                                 context: P2PContext) -> AsyncIterator[averaging_pb2.AveragingData]:
        if not await self._gate_allows(context.remote_id):
            logger.info("refused unauthorized peer %s: aggregate part", context.remote_id)
            yield averaging_pb2.AveragingData(code=averaging_pb2.PROTOCOL_VIOLATION)
            return
        async for message in super().rpc_aggregate_part(stream, context):  # type: ignore[misc]
            yield message

    async def rpc_download_state(self, _request: averaging_pb2.DownloadRequest,
                                 _context: P2PContext) -> AsyncIterator[averaging_pb2.DownloadData]:
        if not await self._gate_allows(_context.remote_id):
            logger.info("refused unauthorized peer %s: download state", _context.remote_id)
            return
        async for message in super().rpc_download_state(_request, _context):  # type: ignore[misc]
            yield message

    @classmethod
    def get_stub(cls, p2p: P2P, peer: PeerID, *, namespace: str | None = None) -> StubBase:
        gate = cls.peer_gate
        if gate is not None and not gate.allows(peer, fresh=True):
            logger.info("not contacting unauthorized peer %s", peer)
            raise UnauthorizedPeerError(f"peer {peer} holds no access token of run {gate.run}")
        return super().get_stub(p2p, peer, namespace=namespace)  # type: ignore[misc]


def gate_averager_class(cls: A, gate: PeerGate | None) -> A:
    """``cls`` (a DecentralizedAverager subclass) behind ``gate``: a subclass with ``GatedAveragerMixin`` in
    front, under the same name (so its RPC handlers keep their names). ``gate`` None returns ``cls`` itself."""
    if gate is None:
        return cls
    if not issubclass(cls, DecentralizedAverager):
        raise TypeError(f"{cls.__name__} is not a hivemind DecentralizedAverager")
    namespace: dict[str, Any] = {"peer_gate": gate, "__module__": cls.__module__, "__qualname__": cls.__qualname__,
                                 "__doc__": cls.__doc__}
    return type(cls.__name__, (GatedAveragerMixin, cls), namespace)  # type: ignore[return-value]
