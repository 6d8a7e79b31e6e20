"""hivemind's butterfly all-reduce with robust aggregation: a reducer that screens and robustly combines the parts
its senders sent, a runner that also refuses averaged parts that come back poisoned, and a mixin that puts both
into any ``DecentralizedAverager`` (hivemind 1.1.12).

In hivemind each peer reduces a span of the flat vector: it takes a weighted mean of whatever its group sent for
that span (weights are self-declared) and sends each sender the difference to its own part. One peer sending NaN
turns every honest peer's tensors into NaN. Here:

- the reducer (``RobustTensorPartReducer``) collects every live sender's part for the current part index, refuses
  non-finite parts and parts of an outsized norm (``swarm.robust_aggregation.screen_parts``) and combines the rest
  with the run's aggregator; with ``mean`` and no refusals it computes what hivemind's does;
- the runner (``RobustAllReduceRunner``) refuses an averaged part received from another reducer when it is not
  finite or moves its own part by more than ``max_norm_ratio`` x its norm, and keeps its local values for that
  reducer's span instead (hivemind's ``register_failed_reducer``);
- the mixin (``RobustAveragingMixin``) gives every peer with a nonzero share an equal share of the vector (a peer
  declaring a huge bandwidth would otherwise reduce all of it), and carries the refusals from the averager's
  child process to the main process (``drain_rejections``).

Usage::

    class RobustAverager(RobustAveragingMixin, hivemind.DecentralizedAverager):
        pass

    averager = RobustAverager(tensors, dht, robustness=spec.robustness, prefix="demo", start=True)
    averager.step()
    averager.drain_rejections()  # [(peer_id_base58, reason), ...]: one per peer, reason and round
"""

from __future__ import annotations

import asyncio
import math
import multiprocessing as mp
import queue
from collections import Counter
from typing import Any, Callable, Optional, Sequence

import torch
from hivemind.averaging.allreduce import AllReduceRunner, AveragingMode
from hivemind.averaging.group_info import GroupInfo
from hivemind.averaging.partition import AllreduceException, BannedException, TensorPartReducer
from hivemind.compression import deserialize_torch_tensor
from hivemind.optim.grad_averager import GradientAverager
from hivemind.optim.state_averager import TrainingStateAverager
from hivemind.p2p import PeerID
from hivemind.proto import averaging_pb2
from hivemind.utils.asyncio import aiter_with_timeout, amap_in_executor, as_aiter, attach_event_on_finished, azip
from hivemind.utils.timed_storage import get_dht_time

from swarm.log import get_logger
from swarm.robust_aggregation import NORM_EPSILON, aggregate, screen_parts
from swarm.spec import RobustnessSpec

logger = get_logger(__name__)
REFUSED_MALFORMED = "part_malformed"  # wrong shape or dtype: the sender is dropped from the round
REFUSED_WEIGHT = "weight_invalid"  # a negative or non-finite self-declared weight
REFUSED_RESULT_NON_FINITE = "result_non_finite"  # an averaged part that came back from a reducer
REFUSED_RESULT_NORM = "result_norm"

RefusalSink = Callable[[int, str], None]  # (sender index, reason)


class RefusedResultError(AllreduceException):
    """A reducer sent back an averaged part that this peer refuses to apply."""


class RobustTensorPartReducer(TensorPartReducer):
    """hivemind's ``TensorPartReducer`` that keeps every sender's part of the current part index, then screens and
    aggregates them once all live senders have sent it (it waits for the same senders as hivemind's, and drops
    failed and banned senders the same way).

    ``own_sender_index``: the reducing peer's own sender index (its part is always trusted), None when it sends
    nothing. ``on_refused(sender_index, reason)`` is called for every refused part.
    """

    current_part_index: int
    current_part_accumulated_from: int
    num_current_senders: int
    current_part_future: asyncio.Future
    accumulator: Optional[torch.Tensor]
    denominator: float

    def __init__(self, part_shapes: Sequence[torch.Size], num_senders: int, *, robustness: RobustnessSpec,
                 own_sender_index: Optional[int], on_refused: RefusalSink):
        self.robustness, self.own_sender_index, self.on_refused = robustness, own_sender_index, on_refused
        self.current_parts: dict[int, tuple[torch.Tensor, float]] = {}
        super().__init__(part_shapes, num_senders)

    def reset_accumulators(self) -> None:
        """Start collecting the next part in line (hivemind's, without the running sum)."""
        assert self.current_part_accumulated_from == self.num_current_senders or self.current_part_index == -1
        if self.current_part_index >= self.num_parts - 1:
            self.finalize()
            return
        self.current_part_index += 1
        self.current_part_accumulated_from = 0
        self.current_part_future = asyncio.Future()
        self.num_current_senders = sum(
            self.current_part_index < failed_index for failed_index in self.sender_failed_after
        )
        self.accumulator = None  # hivemind's finalize deletes it
        self.denominator = 0.0
        self.current_parts = {}

    async def accumulate_part(self, sender_index: int, part_index: int, tensor_part: torch.Tensor,
                              weight: float = 1.0) -> torch.Tensor:
        """Keep this sender's part, wait until all live senders sent theirs, return the aggregated part.

        A part of the wrong shape or dtype raises before it counts as received, so the runner bans the sender and
        the round goes on without it (hivemind would fail the add and then wait for it until the timeout)."""
        assert 0 <= sender_index < self.num_senders, "invalid sender index"
        assert 0 <= part_index < self.num_parts, "invalid part index"
        if tensor_part.shape != self.part_shapes[part_index] or not tensor_part.is_floating_point():
            self.on_refused(sender_index, REFUSED_MALFORMED)
            raise AllreduceException(f"sender {sender_index} sent a part of shape {tuple(tensor_part.shape)} and "
                                     f"dtype {tensor_part.dtype}, expected {tuple(self.part_shapes[part_index])}")
        self.num_parts_received[sender_index] += 1

        while part_index > self.current_part_index:
            await asyncio.wait({self.current_part_future, asyncio.create_task(self.finished.wait())},
                               return_when=asyncio.FIRST_COMPLETED)
            if self.finished.is_set():
                raise AllreduceException(f"attempted to aggregate part in a finalized {self.__class__.__name__}")

        if self.sender_failed_after[sender_index] != float("inf"):
            raise BannedException(f"sender {sender_index} was banned in background")
        assert part_index == self.current_part_index

        current_part_future = self.current_part_future
        if part_index < self.sender_failed_after[sender_index]:
            self.current_parts[sender_index] = (tensor_part, float(weight))
            self.current_part_accumulated_from += 1
            self.check_current_part_finished()
        return await current_part_future

    def check_current_part_finished(self) -> None:
        assert self.current_part_accumulated_from <= self.num_current_senders
        if self.current_part_accumulated_from == self.num_current_senders:
            try:
                self.current_part_future.set_result(self._reduce_current_part())
            except Exception as exc:  # nothing usable arrived: every sender of this part keeps its own values
                self.current_part_future.set_exception(AllreduceException(str(exc)))
            self.reset_accumulators()

    def _reduce_current_part(self) -> torch.Tensor:
        senders = sorted(self.current_parts)
        shape = self.part_shapes[self.current_part_index]
        if not senders:
            raise AllreduceException("no sender sent this part")
        parts = torch.stack([self.current_parts[index][0].reshape(-1).float() for index in senders])
        weights = torch.tensor([self.current_parts[index][1] for index in senders], dtype=torch.float64)
        own = self.own_sender_index
        own_row = senders.index(own) if own is not None and own in self.current_parts else None
        screening = screen_parts(parts, own_row, self.robustness.max_norm_ratio)
        usable = screening.accepted.clone()
        for row, reason in screening.refused.items():
            self.on_refused(senders[row], reason)
        for row, weight in enumerate(weights.tolist()):
            if not math.isfinite(weight) or weight < 0:
                usable[row] = False
                if row != own_row and row not in screening.refused:
                    self.on_refused(senders[row], REFUSED_WEIGHT)
        usable &= weights > 0  # peers tagging along with zero weight (no samples this epoch) carry no data
        if not bool(usable.any()):
            if own_row is None:
                raise AllreduceException("no usable part for this part index")
            return parts[own_row].reshape(shape).to(self.current_parts[senders[own_row]][0].dtype)
        result = aggregate(parts[usable], weights[usable].float(), self.robustness)
        return result.reshape(shape).to(self.current_parts[senders[0]][0].dtype)


class RobustAllReduceRunner(AllReduceRunner):
    """hivemind's ``AllReduceRunner`` with a ``RobustTensorPartReducer``, which also refuses averaged parts
    received from other reducers that are non-finite or move its own part by more than ``max_norm_ratio`` x the
    scale of its own data there (the part's norm, or its whole vector's RMS over the part's size if larger):
    for the rest of that reducer's span it keeps its local values. A peer with weight 0
    (tagging along without samples) checks only finiteness, since its own part holds no data to compare with.

    ``on_refusal(peer_id, reason, parts)`` is called once per peer and reason by ``report_refusals`` when the
    round ends, and the refusals are logged then, in one line per round."""

    tensor_part_reducer: TensorPartReducer
    group_id: bytes
    reducer_class: type[RobustTensorPartReducer] = RobustTensorPartReducer

    def __init__(self, *, robustness: RobustnessSpec,
                 on_refusal: Callable[[PeerID, str, int], None] = lambda peer, reason, parts: None,
                 zero_refused_spans: bool = False, **kwargs: Any):
        super().__init__(**kwargs)
        self.robustness, self.on_refusal = robustness, on_refusal
        self.zero_refused_spans = zero_refused_spans
        self.refusals: Counter[tuple[PeerID, str]] = Counter()
        own = self.sender_peer_ids.index(self.peer_id) if self.peer_id in self.sender_peer_ids else None
        discarded = self.tensor_part_reducer
        discarded.finished.set()  # it never runs: keep its finalize from warning that it received nothing
        self.tensor_part_reducer = self.reducer_class(
            discarded.part_shapes, discarded.num_senders, robustness=robustness, own_sender_index=own,
            on_refused=lambda sender, reason: self._count(self.sender_peer_ids[sender], reason))
        container = self.tensor_part_container
        own_parts = [[part for part, _ in container._input_parts_by_peer[index]] for index in range(self.group_size)]
        self._own_part_norms = [[float(torch.linalg.vector_norm(part.double())) for part in parts]
                                for parts in own_parts]
        self._own_part_sizes = [[part.numel() for part in parts] for parts in own_parts]
        squares = sum(norm ** 2 for norms in self._own_part_norms for norm in norms)
        elements = sum(size for sizes in self._own_part_sizes for size in sizes)
        self._own_rms = math.sqrt(squares / max(elements, 1))  # per element, over this peer's whole vector

    def _count(self, peer_id: PeerID, reason: str) -> None:
        self.refusals[peer_id, reason] += 1

    def _check_result(self, peer_index: int, part_index: int, delta: torch.Tensor) -> None:
        """Raise RefusedResultError when the averaged part (as a delta to the own part) must not be applied."""
        reducer = self.ordered_peer_ids[peer_index]
        norms = self._own_part_norms[peer_index]
        if part_index >= len(norms):
            raise AllreduceException(f"{reducer} sent more parts than expected")
        if not torch.isfinite(delta).all():
            self._count(reducer, REFUSED_RESULT_NON_FINITE)
            raise RefusedResultError(f"{reducer} sent a non-finite averaged part")
        # the scale of this peer's own data: its part of this span, or its whole vector's per-element RMS over the
        # span's size when this span of its own data happens to be small (an honest average then moves it far)
        scale = max(norms[part_index], self._own_rms * math.sqrt(self._own_part_sizes[peer_index][part_index]))
        bound = self.robustness.max_norm_ratio * (scale + NORM_EPSILON)
        if self.weight > 0 and float(torch.linalg.vector_norm(delta.double())) > bound:
            self._count(reducer, REFUSED_RESULT_NORM)
            raise RefusedResultError(f"{reducer} sent an averaged part that moves ours too far")

    async def _communicate_with_peer(self, peer_id: PeerID) -> None:
        """hivemind's, with every averaged part received from another reducer checked before it is registered."""
        if peer_id == self.peer_id:
            await super()._communicate_with_peer(peer_id)
            return
        peer_index = self.ordered_peer_ids.index(peer_id)
        try:
            done_sending = asyncio.Event()
            inputs_aiter = attach_event_on_finished(self._generate_input_for_peer(peer_index), done_sending)
            stream = await self._get_peer_stub(peer_id).rpc_aggregate_part(inputs_aiter)
            if self.should_delay_results(self.peer_id):
                await done_sending.wait()
            part_index = 0

            def _try_deserialize(msg: averaging_pb2.AveragingData) -> torch.Tensor:
                if msg.code != averaging_pb2.AVERAGED_PART:
                    raise AllreduceException(f"{peer_id} sent {averaging_pb2.MessageCode.Name(msg.code)}")
                return deserialize_torch_tensor(msg.tensor_part)

            async for delta in amap_in_executor(_try_deserialize, aiter_with_timeout(stream, self.reducer_timeout),
                                                max_prefetch=self.tensor_part_container.prefetch):
                self._check_result(peer_index, part_index, delta)
                self.tensor_part_container.register_processed_part(peer_index, part_index, delta)
                part_index += 1
            if part_index != self.tensor_part_container.num_parts_by_peer[peer_index]:
                raise AllreduceException(f"peer {peer_id} sent {part_index} parts, but we expected "
                                         f"{self.tensor_part_container.num_parts_by_peer[peer_index]}")
        except BaseException as exc:
            if isinstance(exc, Exception):
                logger.debug("caught %r when communicating to %s", exc, peer_id, exc_info=True)
            self._register_refused_span(peer_index)
            raise

    def _register_refused_span(self, peer_index: int) -> None:
        """The rest of a failed or refused reducer's span: this peer's own values (hivemind's choice), or, with
        ``zero_refused_spans``, zero. Every honest peer that refused the span then holds the same there: local
        mode's outer step stays identical on all of them instead of each applying its own pseudo-gradient."""
        container = self.tensor_part_container
        if not self.zero_refused_spans:
            container.register_failed_reducer(peer_index)
            return
        assert container.return_deltas, "zeroing a span needs hivemind's delta results"
        for part_index in range(container._outputs_registered_by_peer[peer_index],
                                container.num_parts_by_peer[peer_index]):
            own_part = container._input_parts_by_peer[peer_index][part_index][0]
            container.register_processed_part(peer_index, part_index, -own_part)
            container.failed_size += own_part.numel()

    def report_refusals(self) -> None:
        """Log this round's refusals in one line and pass them to ``on_refusal``; called once the round is over
        (by then the own reducer has seen every sender and every reducer's result has been checked)."""
        if not self.refusals:
            return
        refusals, self.refusals = self.refusals, Counter()
        logger.warning("all-reduce %s: refused %s", self.group_id.hex()[:12], ", ".join(
            f"{parts} part(s) from {peer.to_base58()} ({reason})" for (peer, reason), parts in sorted(
                refusals.items(), key=lambda item: (str(item[0][0]), item[0][1]))))
        for (peer, reason), parts in refusals.items():
            self.on_refusal(peer, reason, parts)


def equal_peer_fractions(group_info: GroupInfo, serializer: Any) -> tuple[float, ...]:
    """An equal share of the vector for every peer that can reduce (not a client, declared bandwidth not zero),
    computed from the group's gathered data alone, so every peer of the group gets the same fractions. hivemind
    splits by declared bandwidth: a peer declaring a huge one would reduce (and so decide) the whole vector."""
    eligible = []
    for gathered in group_info.gathered:
        bandwidth, mode_id, _ = serializer.loads(gathered)
        eligible.append(AveragingMode(mode_id) != AveragingMode.CLIENT and bandwidth != 0)
    if not any(eligible):
        raise AllreduceException("no peer of the group can reduce")
    share = 1.0 / sum(eligible)
    return tuple(share if can_reduce else 0.0 for can_reduce in eligible)


class RobustAveragingMixin:
    """Put in front of a ``DecentralizedAverager`` subclass: its all-reduce rounds use ``RobustAllReduceRunner``
    with ``robustness``, equal shares for reducers, and the refusals reach the main process through a
    multiprocessing queue created before the averager's child process starts (see ``drain_rejections``)."""

    _running_groups: dict
    _averaging_alpha: float
    _state_updated: asyncio.Event
    _p2p: Any
    serializer: Any
    prefix: str
    peer_id: PeerID
    last_updated: float
    runner_class: type[RobustAllReduceRunner] = RobustAllReduceRunner
    zero_refused_spans = False  # see RobustAllReduceRunner._register_refused_span

    def __init__(self, *args: Any, robustness: RobustnessSpec, **kwargs: Any):
        self.robustness = robustness
        self._rejections: mp.Queue = mp.Queue()
        super().__init__(*args, **kwargs)

    @classmethod
    def _get_handle_name(cls, namespace: Optional[str], method_name: str) -> str:
        """hivemind names an averager's RPC handlers after its class (``<prefix>::TrainingStateAverager.rpc_...``):
        a robust averager answers under the name of the hivemind class it extends, so its peers, the coordinator's
        state download (``swarm.state_download``) and tools built on hivemind's classes reach it."""
        hivemind_class = next(base for base in cls.__mro__ if base.__module__.startswith("hivemind."))
        handle_name = f"{hivemind_class.__name__}.{method_name}"
        return f"{namespace}::{handle_name}" if namespace else handle_name

    def drain_rejections(self) -> list[tuple[str, str]]:
        """Refusals since the last call, as (peer_id base58, reason): one per peer, reason and all-reduce round
        (however many parts of the round were refused)."""
        drained = []
        while True:
            try:
                drained.append(self._rejections.get_nowait())
            except queue.Empty:
                return drained

    def _report_refusal(self, peer_id: PeerID, reason: str, parts: int) -> None:
        self._rejections.put((peer_id.to_base58(), reason))

    async def _run_allreduce_inplace_(self, tensors: Sequence[torch.Tensor], group_info: GroupInfo,
                                      group_id: Optional[bytes] = None, **kwargs: Any) -> None:
        """hivemind's ``_run_allreduce_inplace_`` with the robust runner and equal reducer shares."""
        group_id = group_info.group_id if group_id is None else group_id
        kwargs["peer_fractions"] = equal_peer_fractions(group_info, self.serializer)
        runner = self.runner_class(
            robustness=self.robustness, on_refusal=self._report_refusal, zero_refused_spans=self.zero_refused_spans,
            p2p=self._p2p, servicer_type=type(self),
            prefix=self.prefix, tensors=tensors, group_id=group_id, ordered_peer_ids=group_info.peer_ids, **kwargs)
        assert group_id in self._running_groups, f"group {group_id!r} was not registered in _register_allreduce_group"
        self._running_groups[group_id].set_result(runner)
        try:
            if runner.modes[group_info.peer_ids.index(self.peer_id)] != AveragingMode.AUX:
                async for tensor, update in azip(as_aiter(*tensors), runner):
                    tensor.add_(update, alpha=self._averaging_alpha)
                    self.last_updated = get_dht_time()
                    self._state_updated.set()
            else:
                async for _ in runner:
                    raise ValueError("aux peers should not receive averaged tensors")
        finally:
            runner.report_refusals()


class RobustGradientAverager(RobustAveragingMixin, GradientAverager):
    """hivemind's ``GradientAverager`` with robust all-reduce (pass ``robustness=spec.robustness``)."""


class RobustTrainingStateAverager(RobustAveragingMixin, TrainingStateAverager):
    """hivemind's ``TrainingStateAverager`` with robust all-reduce (pass ``robustness=spec.robustness``)."""
