"""The worker's training loop around hivemind.Optimizer: local steps on the worker's data slice, one optimizer
step per assigned shard, a live progress line (worker.progress_display), and periodic per-shard reports of what
was trained.

Usage::

    loop = TrainingLoop(spec, run_model, optimizers, texts, device, on_report=send_reports)
    summary = loop.run(TrainingLimits(max_epochs=3), stop_event)
"""

from __future__ import annotations

import math
import threading
import time
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from dataclasses import dataclass, field
from typing import Callable, Sequence

import torch

from swarm.data import IGNORE_INDEX, iterate_batches
from swarm.log import get_logger
from swarm.precision import Precision
from swarm.samples import TrainingSample
from swarm.spec import RunSpec
from worker.gradient_step import GradientStep
from worker.model_setup import RunModel
from worker.progress_display import ProgressDisplay, ProgressSnapshot
from worker.shard_optimizers import SAY_WAIT_EVERY_S, ShardOptimizer

logger = get_logger(__name__)
RECOVERY_INTERVAL_S = 5.0  # a worker holding non-finite parameters asks its peers for their state this often


@dataclass(frozen=True)
class TrainingLimits:
    """When a worker stops on its own (Ctrl-C always stops it). None: no limit."""

    max_steps: int | None = None  # local steps
    max_seconds: float | None = None  # wall time of the loop
    max_epochs: int | None = None  # stop once every assigned shard's hivemind epoch reaches this


@dataclass
class ShardReport:
    """What one worker trained on one shard since its previous report."""

    shard: int
    samples: int = 0
    steps: int = 0
    epoch: int = 0
    loss_sum: float = 0.0
    compute_seconds: float = 0.0
    tokens: int = 0  # tokens that carried a loss
    started_at: float = field(default_factory=time.time)  # unix time; the interval ends when it is reported
    ended_at: float = 0.0

    @property
    def mean_loss(self) -> float:
        return self.loss_sum / self.steps if self.steps else 0.0


@dataclass
class TrainingSummary:
    steps: int = 0
    samples: int = 0
    last_loss: float = math.nan
    epochs: dict[int, int] = field(default_factory=dict)
    samples_by_shard: dict[int, int] = field(default_factory=dict)  # samples each shard's optimizer accumulated
    stopped_by: str = ""


class TrainingLoop:
    def __init__(
        self,
        spec: RunSpec,
        run_model: RunModel,
        optimizers: dict[int, ShardOptimizer],
        texts: Sequence[TrainingSample],
        device: torch.device,
        on_report: Callable[[list[ShardReport]], None] = lambda reports: None,
        report_interval_s: float = 5.0,
        show_progress: bool = True,
        data_seed: int = 0,
        sync_peers: int = 1,
        sync_timeout_s: float = 60.0,
        gradient_step: GradientStep | None = None,
    ):
        self.spec, self.run_model, self.optimizers = spec, run_model, optimizers
        self.texts, self.device = texts, device
        self.on_report, self.report_interval_s = on_report, report_interval_s
        self.show_progress, self.data_seed = show_progress, data_seed
        self.sync_peers, self.sync_timeout_s = sync_peers, sync_timeout_s
        self._pending = {shard: ShardReport(shard) for shard in optimizers}
        # fp32, the whole batch at once unless the worker set a precision and micro-batch size
        self.gradient_step = gradient_step or GradientStep(Precision("fp32"), device)
        self.skipped_steps = 0  # steps whose loss or gradients were not finite: never averaged, never credited
        self._last_recovery = -math.inf

    def _flush_reports(self) -> None:
        now = time.time()
        for shard, optimizer in self.optimizers.items():
            self._pending[shard].epoch = optimizer.local_epoch
            self._pending[shard].ended_at = now
        reports = [report for report in self._pending.values() if report.steps]
        if not reports:
            return
        try:
            self.on_report(reports)
        except Exception as exc:  # training never stops because reporting failed
            logger.warning("could not record contribution (will retry with the next report): %s", exc)
            return
        # the next interval starts where this one ended, so a worker's intervals never overlap
        self._pending = {shard: ShardReport(shard, epoch=opt.local_epoch, started_at=now)
                         for shard, opt in self.optimizers.items()}

    def _skip_non_finite_step(self, what: str) -> None:
        """Drop this step's gradients (a NaN or inf must never reach the swarm's average) and, when a shard's own
        parameters are no longer finite, load the shard's state from its peers (at most every few seconds)."""
        for optimizer in self.optimizers.values():
            optimizer.zero_grad()
        self.skipped_steps += 1
        if self.skipped_steps == 1 or self.skipped_steps % 100 == 0:
            logger.warning("skipped %d step(s) so far: the %s was not finite (not averaged, not credited)",
                           self.skipped_steps, what)
        if time.monotonic() - self._last_recovery < RECOVERY_INTERVAL_S:
            return
        self._last_recovery = time.monotonic()
        for shard, optimizer in self.optimizers.items():
            if not all(torch.isfinite(param).all() for param in self.run_model.shard_parameters(shard)):
                logger.warning("shard %d holds non-finite parameters: loading its state from peers", shard)
                optimizer.load_state_from_peers()

    def _gradients_finite(self) -> bool:
        return all(torch.isfinite(param.grad).all() for shard in self.optimizers
                   for param in self.run_model.shard_parameters(shard) if param.grad is not None)

    def _done(self, limits: TrainingLimits, steps: int, started: float) -> str:
        if limits.max_steps is not None and steps >= limits.max_steps:
            return "max_steps"
        if limits.max_seconds is not None and time.monotonic() - started >= limits.max_seconds:
            return "max_seconds"
        if limits.max_epochs is not None and all(o.local_epoch >= limits.max_epochs for o in self.optimizers.values()):
            return "max_epochs"
        return ""

    def _wait_until_trackers_see_peers(self, stop: threading.Event, deadline: float) -> None:
        """hivemind's progress tracker publishes a peer only once it has accumulated samples, so a swarm that
        starts together takes one step each, then waits until every shard's tracker counts ``sync_peers``:
        otherwise the fastest peer finishes the first epoch alone and the peers' parameters part ways. The wait
        ends at ``deadline`` (monotonic: the sync timeout or --max-seconds) and says what it waits for."""
        started = time.monotonic()
        deadline = min(deadline, started + self.sync_timeout_s)
        next_say = started + 1.0  # a wait under a second is not worth a line
        while not stop.is_set():
            seen = {shard: opt.tracker.global_progress.num_peers for shard, opt in self.optimizers.items()}
            short = {shard: count for shard, count in seen.items() if count < self.sync_peers}
            if not short:
                return
            now = time.monotonic()
            if now >= deadline:
                logger.warning("trackers see fewer than %d peers after %.0fs; training on", self.sync_peers,
                               now - started)
                return
            if now >= next_say:
                logger.info("waiting for %d peers to report progress on shard %s (%s so far; %.0fs of %.0fs)",
                            self.sync_peers, ", ".join(map(str, short)), ", ".join(map(str, short.values())),
                            now - started, deadline - started)
                next_say = now + SAY_WAIT_EVERY_S
            stop.wait(0.1)

    def _step_shards(self, limits: TrainingLimits, epoch_runner: ThreadPoolExecutor) -> list[int]:
        """Accumulate this microbatch into every training shard, then finish the epochs that are due; returns
        the shards whose optimizer took this microbatch (a shard that had to catch up with its peers did not).

        A shard's epoch end blocks until its group has averaged. While one is in flight this keeps checking the
        others and starts each one that becomes due: a worker waiting in shard 0's round must still join shard
        1's round, or a peer waiting there for it (and so not joining shard 0's) deadlocks both until timeout.
        """
        # a shard that reached max_epochs stops stepping, so its parameters stay those of that epoch
        training = {shard: optimizer for shard, optimizer in self.optimizers.items()
                    if limits.max_epochs is None or optimizer.local_epoch < limits.max_epochs}
        accumulated = [shard for shard, optimizer in training.items() if optimizer.accumulate()]
        for optimizer in self.optimizers.values():
            optimizer.zero_grad()
        in_flight: dict[int, Future] = {}
        while True:
            for shard, optimizer in training.items():
                if shard not in in_flight and optimizer.epoch_is_due:
                    in_flight[shard] = epoch_runner.submit(optimizer.finish_epoch)
            running = [future for future in in_flight.values() if not future.done()]
            if not running:
                break
            wait(running, timeout=0.1, return_when=FIRST_COMPLETED)
        for future in in_flight.values():
            future.result()
        return accumulated

    def run(self, limits: TrainingLimits, stop: threading.Event | None = None) -> TrainingSummary:
        stop = stop or threading.Event()
        model = self.run_model.model.to(self.device)
        model.train()
        batches = iterate_batches(self.texts, self.run_model.tokenizer, self.spec.seq_len,
                                  self.spec.batch_size_per_step, seed=self.data_seed, packing=self.spec.packing)
        summary = TrainingSummary()
        started = last_report = time.monotonic()
        display = ProgressDisplay(self.spec.name, max_steps=limits.max_steps, max_seconds=limits.max_seconds,
                                  max_epochs=limits.max_epochs, enabled=self.show_progress).start()
        epoch_runner = ThreadPoolExecutor(len(self.optimizers), thread_name_prefix="shard-epoch")
        try:
            while not stop.is_set() and not (stopped_by := self._done(limits, summary.steps + self.skipped_steps,
                                                                             started)):
                data_epoch, input_ids, labels = next(batches)
                step_started = time.monotonic()
                loss = self.gradient_step.run(model, input_ids, labels)  # forward and backward, micro-batched
                if not torch.isfinite(loss):
                    self._skip_non_finite_step("loss")
                    continue
                if not self._gradients_finite():
                    self._skip_non_finite_step("gradient")
                    continue
                trained = self._step_shards(limits, epoch_runner)
                step_seconds = time.monotonic() - step_started
                loss_value = float(loss.detach())
                tokens = int((labels != IGNORE_INDEX).sum())
                summary.steps += 1
                summary.samples += self.spec.batch_size_per_step
                summary.last_loss = loss_value
                for shard in trained:
                    report = self._pending[shard]
                    report.samples += self.spec.batch_size_per_step
                    report.steps += 1
                    report.tokens += tokens
                    report.loss_sum += loss_value
                    report.compute_seconds += step_seconds / len(trained)
                    summary.samples_by_shard[shard] = summary.samples_by_shard.get(shard, 0) + \
                        self.spec.batch_size_per_step
                any_optimizer = next(iter(self.optimizers.values()))
                display.update(ProgressSnapshot(
                    steps=summary.steps, samples=summary.samples, elapsed_s=time.monotonic() - started,
                    loss=loss_value, peers=any_optimizer.tracker.global_progress.num_peers,
                    epochs={shard: o.local_epoch for shard, o in self.optimizers.items()}, data_pass=data_epoch))
                if summary.steps == 1 and self.sync_peers > 1:
                    self._wait_until_trackers_see_peers(stop, started + limits.max_seconds
                                                        if limits.max_seconds is not None else math.inf)
                if time.monotonic() - last_report >= self.report_interval_s:
                    self._flush_reports()
                    last_report = time.monotonic()
            summary.stopped_by = "interrupted" if stop.is_set() else stopped_by
        finally:
            epoch_runner.shutdown(wait=True)
            display.close()
            self._flush_reports()
            summary.epochs = {shard: optimizer.local_epoch for shard, optimizer in self.optimizers.items()}
        return summary
