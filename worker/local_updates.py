"""Local mode's shard optimizer: local optimizer steps on every microbatch, one outer round per epoch (DiLoCo).

``accumulate`` takes a local step of the run's optimizer (AdamW by default) on this microbatch's gradients;
``finish_epoch`` starts the round in which the shard's group averages the pseudo-gradients and every peer applies
the same outer Nesterov step (``worker.outer_step``). With ``overlap`` the round runs in the background while the
next local steps compute and lands at the latest when the next epoch ends (at most one round in flight), so a
worker waits on the network only when a round takes longer than an epoch of its own compute.

LoRA's two factors: after local steps the average of the factors is not the factor of the average product.
``lora_factors="both"`` (the default) trains and averages both anyway: it converged best in
benchmarks/local_convergence.py. ``"alternate"`` trains only the B matrices in even rounds and only the A
matrices in odd rounds (RoLoRA): with one factor frozen and identical on every peer, averaging the other is
exact. ``"freeze_a"`` keeps A at its seeded initialisation (FFA-LoRA). Tensors whose names say neither (a bare
tensor, as in the benchmarks) always train.

Usage (``worker.shard_optimizers.make_shard_optimizer`` builds it when ``spec.averaging.mode == "local"``)::

    optimizer = LocalUpdateShardOptimizer(outer_lr=1.0, outer_momentum=0.0, lora_factors="both",
                                          param_names=names, dht=dht, run_id="demo_shard0", params=params, ...)
    if optimizer.accumulate() and optimizer.epoch_is_due:
        optimizer.finish_epoch()
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from hivemind.averaging.control import StepControl
from hivemind.utils import get_dht_time

from swarm.log import get_logger
from worker.outer_step import OuterStepStateAverager
from worker.shard_optimizers import ShardOptimizer

logger = get_logger(__name__)


def factor_of(name: str) -> str:
    """'A', 'B' or '' (neither): which LoRA factor a parameter name is."""
    if ".lora_A." in name or name.endswith(".lora_A"):
        return "A"
    if ".lora_B." in name or name.endswith(".lora_B"):
        return "B"
    return ""


def resting_factor(lora_factors: str, epoch: int) -> str:
    """The factor that does not train in this epoch's round ('' : both train)."""
    if lora_factors == "freeze_a":
        return "A"
    if lora_factors == "alternate":
        return "A" if epoch % 2 == 0 else "B"  # B first: with B = 0 at initialisation, A's gradient is zero
    return ""


class LocalUpdateShardOptimizer(ShardOptimizer):
    """A ShardOptimizer for local mode (see the module docstring). ``param_names`` (the shard's LoRA parameter
    names, in the order of ``params``) tell A from B; ``overlap`` runs each round in the background."""

    state_averager: OuterStepStateAverager
    state_averager_class = OuterStepStateAverager

    def __init__(self, *, outer_lr: float, outer_momentum: float, lora_factors: str = "both",
                 param_names: Sequence[str] | None = None, overlap: bool = True, **kwargs: Any):
        self.outer_lr, self.outer_momentum, self.lora_factors = outer_lr, outer_momentum, lora_factors
        params = list(kwargs["params"])
        names = list(param_names) if param_names is not None else [""] * len(params)
        if len(names) != len(params):
            raise ValueError(f"{len(names)} parameter names for {len(params)} parameters")
        self._factors = [factor_of(name) for name in names]
        kwargs["params"] = params
        super().__init__(use_local_updates=True, delay_state_averaging=overlap, average_state_every=1, **kwargs)

    def _make_state_averager(self, **kwargs: Any) -> OuterStepStateAverager:
        # hivemind's delta rule makes every local step wait for the round in flight; the outer step keeps the
        # local progress itself (OuterStepStateAverager.apply_outer_step)
        kwargs["delta_rule_averaging"] = False
        return super()._make_state_averager(outer_lr=self.outer_lr, outer_momentum=self.outer_momentum,
                                            **kwargs)  # type: ignore[return-value]

    def outer_parameters(self) -> list[torch.Tensor]:
        """The parameters every peer that completed the same rounds holds (what snapshots publish)."""
        assert self.state_averager.outer_parameters is not None
        return self.state_averager.outer_parameters

    def accumulate(self) -> bool:
        """A local optimizer step on this microbatch's gradients; False if this peer had to catch up instead."""
        averager = self.state_averager
        averager.step(apply_delayed_updates=True)  # a round that finished in the background lands here
        if averager.needs_resync or self._should_load_state_from_peers():
            logger.info("%s: out of sync with the swarm, loading state from peers", self.run_id)
            self.load_state_from_peers()
            return False
        resting = resting_factor(self.lora_factors, self.local_epoch)
        params = averager.main_parameters
        if resting:
            for param, factor in zip(params, self._factors):
                if factor == resting:
                    param.grad = None  # torch optimizers skip a parameter without a gradient
        with averager.lock_optimizer:
            averager.optimizer.step()
        samples = self.tracker.local_progress.samples_accumulated + self.batch_size_per_step
        self.tracker.report_local_progress(self.local_epoch, samples)
        self._maybe_schedule_round()
        return True

    def _maybe_schedule_round(self) -> None:
        """Start matchmaking for this epoch's round ``matchmaking_time`` before the swarm is expected to reach
        the epoch's samples, so that the group is formed when the epoch ends (hivemind's pre-scheduling)."""
        averager, scheduled = self.state_averager, self.scheduled_state
        if scheduled is not None and not (scheduled.triggered or scheduled.done()):
            return
        if averager.averaging_in_progress or self.tracker.global_progress.num_peers <= 1:
            return
        if self.tracker.estimated_next_update_time - get_dht_time() <= self.matchmaking_time:
            self.scheduled_state = averager.schedule_step(gather=self.local_epoch + 1, timeout=self.averaging_timeout)

    def _take_scheduled_round(self) -> StepControl | None:
        scheduled, self.scheduled_state = self.scheduled_state, None
        if scheduled is None or scheduled.triggered or scheduled.done():
            return None
        return scheduled

    def finish_epoch(self) -> None:
        """Land the round in flight (if any), then start this epoch's round (in the background with overlap)."""
        averager = self.state_averager
        averager.step(wait_for_delayed_updates=True, apply_delayed_updates=True)
        with self.tracker.pause_updates():
            scheduled = self._take_scheduled_round()
            if self.tracker.global_progress.num_peers <= 1:
                if scheduled is not None:
                    scheduled.cancel()
                averager.outer_step_alone()
                averager.step(increment_epoch=True)
            else:
                averager.begin_round()
                averager.step(increment_epoch=True, averaging_round=True, delay_averaging=self.delay_state_averaging,
                              averaging_control=scheduled, averaging_opts=dict(timeout=self.averaging_timeout))
            self.tracker.update_epoch(new_epoch=averager.local_epoch)
            self._should_check_synchronization_on_update = True
            if not self.client_mode:
                averager.state_sharing_priority = self.local_epoch
        logger.log(self.status_loglevel, "%s: transitioning to epoch %d (round %s)", self.run_id, self.local_epoch,
                   averager.round_outcome or "started")

    def settle(self) -> None:
        """Land the round in flight (or, if it failed here, load the swarm's state) and put the outer parameters
        into the model: what the swarm agreed on, not this peer's unaveraged steps since (they were credited, but
        nobody else has them)."""
        super().settle()
        averager = self.state_averager
        if averager.needs_resync:  # the last round failed here (seen: it landed on the peer, timed out here)
            logger.info("%s: the last round did not land here; loading the swarm's state before stopping",
                        self.run_id)
            self.load_state_from_peers()
        with torch.no_grad(), averager.lock_optimizer:
            for param, outer in zip(averager.main_parameters, self.outer_parameters()):
                param.copy_(outer)

    def load_state_from_peers(self, **kwargs: Any) -> None:
        """hivemind's catch-up; one try per resync request (a swarm without peers is not asked again and again)."""
        self.state_averager.step(wait_for_delayed_updates=True)
        self.state_averager.needs_resync = False
        super().load_state_from_peers(**kwargs)

