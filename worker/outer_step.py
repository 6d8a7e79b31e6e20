"""The state averager of local mode: averages each peer's pseudo-gradient and applies one outer Nesterov step.

In local mode (``spec.averaging.mode = "local"``, DiLoCo) every worker steps its own optimizer on every
microbatch, from the *outer parameters* ``m`` that all peers of a shard hold in common after a round. Once per
epoch the group averages the pseudo-gradient ``m - theta`` (how far each peer's local parameters ``theta``
moved) through hivemind, robustly (``swarm.robust_allreduce``), and every peer applies the same outer step
``m <- NesterovSGD(m, average pseudo-gradient)``. Peers that completed a round hold identical ``m``.

With overlap the round runs in the background while the next local steps compute. When it lands, the local
progress made meanwhile is kept on top of the new outer parameters: ``theta <- m' + (theta_now - theta_at_start)``
(a one-round-delayed outer update, as in DiLoCo with eager updates).

What peers and the coordinator download from this averager (``get_current_state``) is ``m``, the inner
optimizer's state and the outer momentum: a late joiner starts from the swarm's outer state, and a snapshot is
the same on every peer that completed the same rounds.

Usage (built by ``worker.local_updates.LocalUpdateShardOptimizer``)::

    averager = OuterStepStateAverager(dht=dht, prefix="demo_shard0_state_averager", optimizer=make_adamw,
                                      params=params, robustness=spec.robustness, outer_lr=0.7, outer_momentum=0.9)
"""

from __future__ import annotations

from collections import Counter
from typing import Any, Sequence

import torch
from hivemind.averaging.control import StepControl
from hivemind.optim.state_averager import TrainingStateAverager, load_optimizer_state

from swarm.log import get_logger
from swarm.robust_allreduce import RobustTrainingStateAverager

logger = get_logger(__name__)


class OuterStepStateAverager(RobustTrainingStateAverager):
    """A robust TrainingStateAverager whose rounds average pseudo-gradients and apply an outer Nesterov step.

    ``round_outcome`` after a round lands: "averaged" (with at least one other peer), "alone", or "failed" (the
    all-reduce failed: the outer parameters are unchanged, the local progress is kept, and the shard should
    load the swarm's state before the next round, ``needs_resync``)."""

    local_epoch: int
    zero_refused_spans = True  # a refused span moves no honest peer's outer parameters: they stay identical
    identical_results = True  # every peer applies the same (compressed) average, not its own rounding of it

    def __init__(self, *args: Any, outer_lr: float, outer_momentum: float, **kwargs: Any):
        self.outer_lr, self.outer_momentum = outer_lr, outer_momentum
        self.outer_parameters: list[torch.Tensor] | None = None  # set once hivemind's __init__ made main_parameters
        self._round_start: list[torch.Tensor] | None = None
        self._round_control: StepControl | None = None
        self.round_outcome = ""
        self.round_counts: Counter[str] = Counter()  # outcomes of the rounds so far
        self.needs_resync = False
        super().__init__(*args, **kwargs)
        self.outer_parameters = [param.detach().clone() for param in self.main_parameters]
        self.outer_optimizer = torch.optim.SGD(self.outer_parameters, lr=outer_lr, momentum=outer_momentum,
                                               nesterov=outer_momentum > 0)

    # ---------------------------------------------------------------- the round

    def _do(self, wait_for_trigger: Any, optimizer_step: bool, zero_grad: bool, averaging_round: bool,
            averaging_control: StepControl | None, grad_scaler: Any, set_to_none: bool,
            timeout: float | None = None, **kwargs: Any) -> None:
        """hivemind's ``_do``, with the round's control kept so that its outcome is known when it is applied."""
        if averaging_round:
            if averaging_control is None or averaging_control.triggered or averaging_control.done():
                averaging_control = super(TrainingStateAverager, self).step(
                    gather=self.local_epoch, require_trigger=True, timeout=timeout, wait=False, **kwargs)
            self._round_control = averaging_control
        super()._do(wait_for_trigger, optimizer_step, zero_grad, averaging_round, averaging_control, grad_scaler,
                    set_to_none, timeout=timeout, **kwargs)

    @torch.no_grad()
    def _load_local_tensors_into_averager_(self) -> None:
        """The averager's buffers get this peer's pseudo-gradient ``m - theta`` (parameters) and its extra tensors;
        ``theta`` is remembered, so that local steps taken while the round runs can be kept."""
        if self.outer_parameters is None:  # hivemind's own __init__: nothing to average yet
            return super()._load_local_tensors_into_averager_()
        if self._round_start is None:
            self.begin_round()
        assert self._round_start is not None
        count = len(self._round_start)
        with self.get_tensors() as averaged:
            for buffer, outer, start in zip(averaged[:count], self.outer_parameters, self._round_start):
                buffer.copy_(outer.to(buffer.device) - start.to(buffer.device))
            for buffer, local in zip(averaged[count:], list(self._local_tensors())[count:]):
                buffer.copy_(local)

    @torch.no_grad()
    def begin_round(self) -> None:
        """Remember the local parameters this round's pseudo-gradient is taken at. Called by the training thread
        as the epoch ends, so that a local step of the next epoch never slips into this round (with overlap
        the all-reduce itself starts in the background)."""
        with self.lock_optimizer:  # never a half-applied local step
            self._round_start = [param.detach().clone() for param in self.main_parameters]

    @torch.no_grad()
    def _apply_averaging_results_(self) -> None:
        """Apply the outer step with the averaged pseudo-gradient and move the local parameters onto the new
        outer parameters, keeping the local steps taken since the round began."""
        if self.outer_parameters is None or self._round_start is None:
            return
        outcome, behind = self._outcome()
        self.round_outcome = outcome
        self.round_counts[outcome] += 1
        if outcome == "failed":
            logger.info("%s: the averaging round failed; keeping the local progress and loading the swarm's state "
                        "before the next round", self.prefix)
            self.needs_resync = True
            self._round_start = None
            return
        if behind:
            self.needs_resync = True  # a peer of the group was rounds ahead: our outer parameters are stale
        with self.get_tensors() as averaged:
            pseudo_gradients = [tensor.detach().clone() for tensor in averaged[:len(self.outer_parameters)]]
        self.apply_outer_step(pseudo_gradients)

    @torch.no_grad()
    def apply_outer_step(self, pseudo_gradients: Sequence[torch.Tensor]) -> None:
        """``m <- NesterovSGD(m, pseudo_gradients)``; then ``theta <- m + (theta_now - theta_at_round_start)``.
        A non-finite pseudo-gradient is refused (``m`` kept, a resync asked for)."""
        assert self.outer_parameters is not None
        finite = all(bool(torch.isfinite(gradient).all()) for gradient in pseudo_gradients)
        if not finite:  # the robust reducers refuse non-finite parts; this is the last line
            logger.warning("%s: refused an outer step on a non-finite pseudo-gradient", self.prefix)
            self.needs_resync = True
        start = self._round_start
        with self.lock_optimizer:  # a state download (get_current_state) never sees half a step
            if finite:
                for outer, gradient in zip(self.outer_parameters, pseudo_gradients):
                    outer.grad = gradient.to(device=outer.device, dtype=outer.dtype)
                self.outer_optimizer.step()
                self.outer_optimizer.zero_grad(set_to_none=True)
            for index, (param, outer) in enumerate(zip(self.main_parameters, self.outer_parameters)):
                local_progress = param.detach() - start[index].to(param.device) if start is not None else 0
                param.copy_(outer.to(param.device) + local_progress)
        self._round_start = None

    def outer_step_alone(self) -> None:
        """An epoch with nobody to average with: the outer step uses this peer's own pseudo-gradient."""
        assert self.outer_parameters is not None
        self.begin_round()
        assert self._round_start is not None
        pseudo_gradients = [outer - start for outer, start in zip(self.outer_parameters, self._round_start)]
        self.round_outcome = "alone"
        self.round_counts["alone"] += 1
        self.apply_outer_step(pseudo_gradients)

    def _outcome(self) -> tuple[str, bool]:
        """("averaged" | "alone" | "failed", whether a peer of the group was at a later epoch)."""
        control = self._round_control
        self._round_control = None
        if control is None or not control.done() or control.cancelled() or control.exception() is not None:
            return "failed", False
        gathered = control.result()
        epochs = [epoch for epoch in gathered.values() if isinstance(epoch, int)]
        behind = any(epoch > self.local_epoch for epoch in epochs)  # both counted after the round's epoch increment
        return ("averaged" if len(gathered) > 1 else "alone"), behind

    # ---------------------------------------------------------------- state sharing

    def get_current_state(self) -> tuple[dict, list[torch.Tensor], list]:
        """hivemind's state with the outer parameters in place of the local ones and the outer momentum appended
        after the inner optimizer's tensors (``metadata["outer_momentum"]`` counts them)."""
        metadata, tensors, infos = super().get_current_state()
        if self.outer_parameters is None:
            return metadata, tensors, infos
        from hivemind.compression import CompressionInfo, TensorRole

        count = len(self.outer_parameters)
        with torch.no_grad(), self.lock_optimizer:
            outer = [tensor.detach().cpu().clone() for tensor in self.outer_parameters]
            momentum = [self._momentum_buffer(tensor).detach().cpu().clone() for tensor in self.outer_parameters]
        tensors = outer + list(tensors[count:]) + momentum
        infos = list(infos) + [CompressionInfo.from_tensor(buffer, key=f"outer_momentum{index}",
                                                           role=TensorRole.OPTIMIZER)
                               for index, buffer in enumerate(momentum)]
        return dict(metadata, outer_momentum=len(momentum)), tensors, infos

    def _momentum_buffer(self, outer: torch.Tensor) -> torch.Tensor:
        buffer = self.outer_optimizer.state.get(outer, {}).get("momentum_buffer")
        return buffer if buffer is not None else torch.zeros_like(outer)

    def load_state_from_peers(self, **kwargs: Any) -> None:
        """hivemind's ``TrainingStateAverager.load_state_from_peers`` for this state: the downloaded outer
        parameters become both the outer and the local parameters, and the outer momentum is restored."""
        opt_parameters = tuple(param for group in self.optimizer.param_groups for param in group["params"])
        with_extras = tuple(opt_parameters) + tuple(self.extra_tensors)
        loaded = super(TrainingStateAverager, self).load_state_from_peers(**kwargs)
        if loaded is None:
            return
        metadata, flat_tensors = loaded
        if not isinstance(metadata, dict) or not isinstance(metadata.get("epoch"), int):
            logger.warning("%s: refusing a downloaded state without an epoch", self.prefix)
            return
        if metadata["epoch"] < self.local_epoch:
            logger.warning("%s: refusing to load state from a peer behind our epoch", self.prefix)
            return
        momentum_count = metadata.get("outer_momentum")
        count = len(with_extras)
        if momentum_count != len(opt_parameters) or len(flat_tensors) < count + momentum_count:
            logger.warning("%s: refusing a downloaded state without outer momentum (not a local-mode peer)",
                           self.prefix)
            return
        loaded_parameters = flat_tensors[:count]
        optimizer_tensors = flat_tensors[count:len(flat_tensors) - momentum_count]
        momentum = flat_tensors[len(flat_tensors) - momentum_count:]
        if any(a.shape != b.shape for a, b in zip(loaded_parameters, with_extras)) or any(
                a.shape != b.shape for a, b in zip(momentum, opt_parameters)):
            logger.warning("%s: refusing a downloaded state of other shapes", self.prefix)
            return
        with torch.no_grad(), self.lock_averaged_tensors, self.lock_optimizer:
            try:
                load_optimizer_state(self.optimizer, metadata["optimizer_metadata"], optimizer_tensors)
            except StopIteration:
                logger.warning("%s: refusing a downloaded state with too few optimizer statistics", self.prefix)
                return
            for local, value in zip(with_extras, loaded_parameters):
                local.copy_(value, non_blocking=True)
            assert self.outer_parameters is not None
            for outer, value, buffer in zip(self.outer_parameters, loaded_parameters, momentum):
                outer.copy_(value)
                self.outer_optimizer.state[outer]["momentum_buffer"] = buffer.to(outer.device, outer.dtype).clone()
        self._round_start, self.needs_resync, self.round_outcome = None, False, "loaded"
        self.local_epoch = metadata["epoch"]
        self._update_scheduler()
