"""One hivemind.Optimizer per adapter shard: each shard's LoRA parameters are averaged in their own group
(``run_id = "<run>_shard<k>"``), so workers of different shards never wait on each other.

Gradients are averaged synchronously (``use_local_updates=False``): all peers apply the same averaged gradient
to the same parameters, which keeps the LoRA A and B matrices identical across peers, the condition under which
averaging A and B separately is exact.

Both averagers (gradients and state) reduce robustly with the run's ``spec.robustness``
(``swarm.robust_allreduce``): a peer sending NaN or outsized parts is refused, not averaged in. The refusals are
drained with ``ShardOptimizer.drain_rejections``; an optimizer step that leaves non-finite parameters or moves
them too far is rolled back (``finish_epoch``).
"""

from __future__ import annotations

import math
import threading
import time
from typing import Any, Callable, Iterable, Sequence, TypeVar

import hivemind
import torch
from hivemind.averaging.control import StepControl
from hivemind.optim.grad_averager import GradientAverager
from hivemind.optim.state_averager import TrainingStateAverager
from hivemind.utils.crypto import RSAPrivateKey

from swarm.dht import read_shard_progress
from swarm.log import get_logger
from swarm.gated_averager import gate_averager_class
from swarm.peer_gate import PeerGate
from swarm.process_groups import in_own_process_group
from swarm.progress_filter import TrustedProgressTracker
from swarm.compression import averaging_compression
from swarm.round_timeouts import round_timeouts
from swarm.robust_allreduce import RobustGradientAverager, RobustTrainingStateAverager
from swarm.spec import RobustnessSpec, RunSpec
from swarm.state_download import list_state_sharers

logger = get_logger(__name__)
SAY_WAIT_EVERY_S = 10.0  # a wait for peers says what it waits for this often
AveragerT = TypeVar("AveragerT", bound=hivemind.DecentralizedAverager)


def torch_optimizer_factory(spec: RunSpec) -> Callable[[Iterable[torch.nn.Parameter]], torch.optim.Optimizer]:
    def make(params):
        if spec.optimizer == "adamw":
            return torch.optim.AdamW(params, lr=spec.lr, weight_decay=spec.weight_decay)
        if spec.optimizer == "adam":
            return torch.optim.Adam(params, lr=spec.lr)
        return torch.optim.SGD(params, lr=spec.lr, weight_decay=spec.weight_decay)

    return make


class ShardOptimizer(hivemind.Optimizer):
    """A hivemind.Optimizer whose ``step`` is split in two, so that one worker can train several shards.

    ``accumulate`` adds this microbatch's gradients (fast, in the training thread) and ``finish_epoch`` runs the
    epoch's averaging round and optimizer step (blocks until the group has averaged). With one plain ``step``
    per shard called in turn, two workers of two shards deadlock until the averaging timeout: each waits inside
    one shard's round for the other, which waits inside the other shard's round. Splitting lets the training
    loop start every shard's round that becomes due while it waits for another (see ``TrainingLoop``).

    Both halves do what hivemind's ``Optimizer.step`` does (hivemind 1.1.x), in the same order, without AMP.

    Its averagers are ``gradient_averager_class`` and ``state_averager_class`` (robust by default), both built by
    ``_build_averager``, behind ``peer_gate`` when one is given (only the run's authorized peers are dealt with).
    """

    scheduled_grads: StepControl | None  # hivemind's pre-scheduled gradient round, set in Optimizer.__init__
    scheduled_state: StepControl | None  # and its pre-scheduled state round
    gradient_averager_class: type[GradientAverager] = RobustGradientAverager
    state_averager_class: type[TrainingStateAverager] = RobustTrainingStateAverager

    def __init__(self, *, robustness: RobustnessSpec | None = None, peer_gate: PeerGate | None = None,
                 **kwargs: Any):
        # both are read by the averager factories during hivemind's __init__
        self.robustness = robustness or RobustnessSpec()
        self.peer_gate = peer_gate
        if not kwargs.get("use_local_updates"):  # local mode (worker.local_updates) averages no gradients
            kwargs["grad_averager_factory"] = self._make_robust_gradient_averager
        super().__init__(**kwargs)

    def _build_averager(self, averager_class: type[AveragerT], **kwargs: Any) -> AveragerT:
        """The one place both averagers are constructed: with the run's robustness settings and, when the swarm
        is gated, behind the run's peer gate (swarm.gated_averager: unauthorized peers are refused both ways)."""
        # in a process group of its own: a Ctrl-C or a group's SIGTERM is for this process, which stops it in order
        averager = in_own_process_group(gate_averager_class(averager_class, self.peer_gate))
        return averager(robustness=self.robustness, **kwargs)

    def _make_robust_gradient_averager(self, **kwargs: Any) -> GradientAverager:
        return self._build_averager(self.gradient_averager_class, **kwargs)

    def _make_state_averager(self, **kwargs: Any) -> TrainingStateAverager:
        """hivemind's state averager settings, built as ``state_averager_class``."""
        return self._build_averager(
            self.state_averager_class,
            dht=self.dht,
            prefix=f"{self.run_id}_state_averager",
            min_matchmaking_time=self.matchmaking_time,
            allreduce_timeout=self.allreduce_timeout,
            shutdown_timeout=self.shutdown_timeout,
            offload_optimizer=self.offload_optimizer,
            custom_gradients=self.offload_optimizer,
            status_loglevel=self.status_loglevel,
            next_chunk_timeout=self.next_chunk_timeout,
            client_mode=self.client_mode,
            auxiliary=self.auxiliary,
            start=True,
            **kwargs,
        )

    def drain_rejections(self) -> list[tuple[str, str]]:
        """Contributions this peer's reducers refused since the last call, as (peer_id base58, reason), from both
        averagers: one entry per offending peer, reason and all-reduce round. Reasons: ``part_non_finite``,
        ``part_norm``, ``part_malformed``, ``weight_invalid`` (a part that peer sent), ``result_non_finite``,
        ``result_norm`` (an averaged part that peer, as a reducer, sent back)."""
        drained = self.state_averager.drain_rejections()  # type: ignore[attr-defined]
        if self.grad_averager is not None:
            drained.extend(self.grad_averager.drain_rejections())  # type: ignore[attr-defined]
        return drained

    def accumulate(self) -> bool:
        """Add the current .grad of this shard's parameters; False if this peer had to catch up instead."""
        self.state_averager.step(apply_delayed_updates=True)
        if self._should_load_state_from_peers():
            logger.info("%s: out of sync with the swarm, loading state from peers", self.run_id)
            self.load_state_from_peers()
            return False  # these gradients were computed with out-of-date parameters
        self._check_and_accumulate_gradients(self.batch_size_per_step, grad_scaler=None)
        self._maybe_schedule_gradient_averaging()
        self._maybe_schedule_state_averaging()
        return True

    def settle(self) -> None:
        """After the last step: let a background round finish and be applied (nothing is left in flight)."""
        self.state_averager.step(wait_for_delayed_updates=True)

    def report_progress_now(self) -> None:
        """Publish this peer's progress record at its current epoch now (the tracker otherwise refreshes it every
        ``progress_refresh_s``): the coordinator bounds a snapshot's epoch by these records, and a hand-over
        right after fast epochs would otherwise find this peer "beyond" its own stale record."""
        self.tracker.report_local_progress(self.local_epoch, self.tracker.local_progress.samples_accumulated)

    def start_at_epoch(self, epoch: int) -> None:
        """Continue the shard's epochs from ``epoch`` (its parameters were loaded from a published version of that
        epoch): the state is shared, and progress reported, as that epoch's, as after hivemind's state download."""
        self.state_averager.local_epoch = epoch
        with self.tracker.pause_updates():
            self.tracker.update_epoch(new_epoch=epoch)
        if not self.client_mode:
            self.state_averager.state_sharing_priority = epoch

    @property
    def epoch_is_due(self) -> bool:
        """The swarm has accumulated the target batch for this epoch (or its deadline passed)."""
        return self.tracker.ready_to_update_epoch

    def finish_epoch(self) -> None:
        """Average gradients with this shard's group and take the optimizer step (blocking).

        Step guard: when the step leaves a parameter non-finite or (Adam, AdamW) moves the parameters by more than
        ``max_step_lr_multiple`` learning rates per element (RMS), the parameters before the step are restored and
        the shard loads its state from its peers: a poisoned average that got past the reducers is never kept."""
        self._forget_spent_gradient_round()
        self.state_averager.step(apply_delayed_updates=True)  # a finished state-averaging round is not this step
        before = [param.detach().clone() for param in self.state_averager.main_parameters]
        self._update_global_epoch(grad_scaler=None)
        problem = self._step_problem(before)
        if problem:
            logger.warning("%s: rolled back the step of epoch %d (%s); loading state from peers", self.run_id,
                           self.local_epoch, problem)
            self._restore_parameters(before)
            self.load_state_from_peers()

    def _step_problem(self, before: list[torch.Tensor]) -> str:
        """Why the step just taken must be rolled back ("" when it may stay)."""
        after = self.state_averager.main_parameters
        if not all(bool(torch.isfinite(param).all()) for param in after):
            return "non-finite parameters"
        if self.opt_kind not in ("adam", "adamw"):
            return ""
        squares = sum(float((param.detach() - old).double().square().sum()) for param, old in zip(after, before))
        count = sum(old.numel() for old in before)
        rms = math.sqrt(squares / max(count, 1))
        lr = max(float(group["lr"]) for group in self.opt.param_groups)
        limit = self.robustness.max_step_lr_multiple * lr
        return f"step RMS {rms:.3g} > {limit:.3g}" if rms > limit else ""

    @property
    def opt_kind(self) -> str:
        """'adam', 'adamw' or 'sgd' (the torch optimizer this shard steps with)."""
        if isinstance(self.opt, torch.optim.AdamW):
            return "adamw"
        return "adam" if isinstance(self.opt, torch.optim.Adam) else "sgd"

    @torch.no_grad()
    def _restore_parameters(self, saved: list[torch.Tensor]) -> None:
        """Put ``saved`` back into the model's parameters and the offloaded optimizer's copies of them."""
        offloaded = [param for group in self.opt.param_groups for param in group["params"]]
        with self.state_averager.lock_averaged_tensors:
            for main, copy, old in zip(self.state_averager.main_parameters, offloaded, saved):
                main.copy_(old)
                if copy is not main:
                    copy.copy_(old)

    def _forget_spent_gradient_round(self) -> None:
        """Drop a pre-scheduled gradient round that can no longer be joined, so a fresh one is started.

        hivemind 1.1 keeps the previous epoch's (triggered, finished) round in ``scheduled_grads`` until it
        pre-schedules the next one. When an epoch falls due before that happens (the other peers brought most of
        the samples, or a round failed early), ``_begin_averaging_gradients`` logs "Not using pre-scheduled
        group ... already used elsewhere" and, instead of starting a new round, steps with this peer's local
        gradients: the peers silently diverge. With the spent round dropped, it starts a new round and averages.
        """
        spent = self.scheduled_grads
        if spent is not None and (spent.triggered or spent.done()):
            logger.debug("%s: replacing a spent pre-scheduled gradient round", self.run_id)
            self.scheduled_grads = None

    def _make_progress_tracker(self, target_batch_size: int, **kwargs: Any) -> TrustedProgressTracker:
        """hivemind's tracker, believing only progress records signed by the peer they name, with finite numbers
        and at most ``robustness.max_epoch_lead`` epochs beyond the median (swarm.progress_filter), and of peers
        the run's gate authorizes: an epoch liar moves nobody's epoch and causes no state downloads."""
        kwargs.setdefault("max_epoch_lead", self.robustness.max_epoch_lead)
        kwargs.setdefault("peer_allowed", self.peer_gate.allows if self.peer_gate is not None else None)
        return TrustedProgressTracker(dht=self.dht, prefix=self.run_id, target_batch_size=target_batch_size,
                                      client_mode=self.client_mode, status_loglevel=self.status_loglevel, start=True,
                                      **kwargs)


def make_shard_optimizer(spec: RunSpec, shard: int, params: list[torch.nn.Parameter], dht: hivemind.DHT,
                         private_key: RSAPrivateKey, verbose: bool = True, peer_gate: PeerGate | None = None,
                         param_names: Sequence[str] | None = None) -> ShardOptimizer:
    """The optimizer of one shard: a ShardOptimizer (sync mode) or a ``LocalUpdateShardOptimizer``
    (``spec.averaging.mode == "local"``; ``param_names``, the shard's LoRA parameter names, tell its factors
    apart). Client mode follows the DHT's (a NAT'ed peer passes a client DHT).

    ``private_key`` signs this peer's progress records in the DHT: the worker's identity key
    (``Identity.as_hivemind_key()``, the key its DHT was started with), so that the coordinator can tie the
    records to the worker's peer ID and cross-check its receipts. Every shard of one DHT must get the same key.
    ``verbose`` makes hivemind log each averaging round at INFO (including failed rounds). Both averagers
    reduce with ``spec.robustness`` and, given ``peer_gate`` (swarm.peer_gate), deal only with the run's authorized
    peers. The averaging and chunk timeouts fit one round's payload at ``spec.averaging.link_mbit``
    (``swarm.round_timeouts``)."""
    averaging = spec.averaging
    payload = sum(param.numel() for param in params)
    timeouts = round_timeouts(payload, averaging)
    common: dict[str, Any] = dict(
        robustness=spec.robustness,
        peer_gate=peer_gate,
        dht=dht,
        run_id=spec.shard_run_id(shard),
        params=params,
        optimizer=torch_optimizer_factory(spec),
        target_batch_size=spec.target_batch_size,
        batch_size_per_step=spec.batch_size_per_step,
        matchmaking_time=averaging.matchmaking_time,
        averaging_timeout=timeouts.averaging,
        # on busy machines a peer's part can arrive late; waiting only matchmaking_time for it (hivemind's
        # default) drops it from the average and leaves peers with different parameters
        next_chunk_timeout=timeouts.next_chunk,
        # hivemind 1.1.12 keeps client_mode=None when it is not given (its fallback to the DHT's is inverted),
        # then treats None as "not a client" and sets a state-sharing priority that a client-mode averager
        # refuses with ValueError at the first epoch: a NAT'ed worker crashed. Passing the DHT's avoids that.
        client_mode=dht.client_mode,
        verbose=verbose,
        tracker_opts=dict(
            private_key=private_key,
            default_refresh_period=averaging.progress_refresh_s,
            min_refresh_period=min(0.5, averaging.progress_refresh_s),
            max_refresh_period=max(10.0, averaging.progress_refresh_s),
        ),
    )
    if averaging.mode == "local":
        from worker.local_updates import LocalUpdateShardOptimizer  # it extends ShardOptimizer, defined here

        return LocalUpdateShardOptimizer(
            outer_lr=averaging.outer_lr, outer_momentum=averaging.outer_momentum,
            lora_factors=averaging.lora_factors, param_names=param_names, overlap=averaging.overlap,
            state_averaging_compression=averaging_compression(averaging.compression), **common)
    return ShardOptimizer(use_local_updates=False, average_state_every=averaging.average_state_every,
                          grad_compression=averaging_compression(averaging.compression), **common)


def _peers_of_shard(dht: hivemind.DHT, shard_run_id: str) -> set[str]:
    """Peers (base58) known to train a shard: those serving its state, those publishing progress for it (NAT'ed
    client-mode peers never serve state, so they are seen only there), and this peer itself."""
    peers = set(list_state_sharers(dht, shard_run_id))
    peers.update(record.peer_id for record in read_shard_progress(dht, shard_run_id))
    peers.add(dht.peer_id.to_base58())
    return peers


def wait_for_peers(dht: hivemind.DHT, spec: RunSpec, shards: Iterable[int], peers: int, timeout: float,
                   stop: threading.Event | None = None, say_every_s: float = SAY_WAIT_EVERY_S) -> bool:
    """Block until every given shard has ``peers`` peers (this one included) training it, or ``timeout``, or
    ``stop`` is set; every ``say_every_s`` it logs what it waits for ("waiting for 1 more peer on shard 0 (12s
    of 60s)"). True when the peers are there.

    A swarm that starts together (the demo, tests, a scheduled event) uses this so that the first epochs are
    averaged by everyone instead of being stepped alone by whoever is fastest.
    """
    stop = stop or threading.Event()
    shards = list(shards)
    started = time.monotonic()
    next_say = started  # says it at once, then every say_every_s
    while not stop.is_set():
        missing = {shard: peers - len(_peers_of_shard(dht, spec.shard_run_id(shard))) for shard in shards}
        missing = {shard: count for shard, count in missing.items() if count > 0}
        if not missing:
            return True
        waited = time.monotonic() - started
        if waited >= timeout:
            return False
        if time.monotonic() >= next_say:
            logger.info("waiting for %s (%.0fs of %.0fs)", describe_missing_peers(missing), waited, timeout)
            next_say = time.monotonic() + say_every_s
        stop.wait(min(0.2, max(0.0, timeout - waited)))
    return False


def describe_missing_peers(missing: dict[int, int]) -> str:
    """``{0: 1}`` -> "1 more peer on shard 0"; ``{0: 2, 1: 2}`` -> "2 more peers on shards 0, 1"."""
    by_count: dict[int, list[int]] = {}
    for shard, count in sorted(missing.items()):
        by_count.setdefault(count, []).append(shard)
    parts = []
    for count, on in sorted(by_count.items(), reverse=True):
        parts.append(f"{count} more peer{'s' if count != 1 else ''} on shard{'s' if len(on) != 1 else ''} "
                     + ", ".join(str(shard) for shard in on))
    return "; ".join(parts)
