"""The snapshotter and publisher: every publish interval, fetch each shard's averaged state from the swarm,
merge the shards into one PEFT adapter, measure eval loss on the held-out split, and store version N.

The state comes from the workers' hivemind state averagers (the same download a newcomer peer does), never from
files a single worker uploads.

Usage::

    publisher = Publisher(storage, runs, store, dht, identity, PublishPolicy(max_eval_regression=0.05))
    outcome = publisher.publish("demo")          # PublishOutcome(published=True, version=VersionRecord(...))

Before a version is stored, each shard's state is downloaded from several peers and compared (a peer that
disagrees with the majority, sends non-finite values or wrong shapes is left out and logged), and the merged
adapter must pass the quality gate (finite eval loss, not worse than the previous version by more than the
policy's margin). Refused snapshots are recorded with the reason (``swarm status`` shows them). Each version is
stored with a manifest signed by the coordinator's key.
    publisher.start(poll_s=1.0)                  # background loop honouring each run's publish_interval_s
"""

from __future__ import annotations

import math
import tempfile
import threading
import time
from dataclasses import dataclass, replace
from datetime import datetime, timezone
from pathlib import Path

import hivemind
import torch

from coordinator.adapter_store import AdapterStore, StoreError
from coordinator.retention import Retention
from coordinator.runtime import RunRuntime, RunRuntimes
from coordinator.storage import Storage, VersionRecord
from swarm.background import BackgroundLoop
from swarm.evaluation import eval_loss
from swarm.identity import Identity
from swarm.log import get_logger
from swarm.manifest import Manifest, SignedManifest, sign_manifest
from swarm.state_download import DownloadedState, StateDownloadError, download_state, list_state_sharers

logger = get_logger(__name__)


class SnapshotError(RuntimeError):
    """The swarm's state could not be turned into a valid adapter; nothing was published."""


class NothingToSnapshot(SnapshotError):
    """No snapshot was taken: no peer serves the state yet, or nothing changed since the last version."""


@dataclass(frozen=True)
class PublishPolicy:
    """What the publisher trusts and what it publishes."""

    compare_peers: int = 3  # download each shard's state from up to this many peers and compare them
    # Two peers agree on a tensor when |a - b| <= rtol * max(|a|, |b|) + (atol + drift_steps * step_size) * sqrt(n)
    # (L2 norms, n elements). Peers that averaged the same epochs hold the same values; after a failed round a
    # peer drifts by about one optimizer step (~lr per element with Adam) per epoch it stepped alone, until the
    # next state averaging repairs it. The drift allowance tolerates that; a poisoned or broken peer is far out.
    agreement_rtol: float = 0.02
    agreement_atol: float = 1e-5  # per element
    drift_steps: float = 5.0  # unaveraged optimizer steps two honest peers may be apart
    step_size: float = 0.0  # per-element size of one optimizer step: the publisher sets the run's lr
    max_eval_regression: float = 0.05  # refuse a version whose eval loss is this fraction worse than the previous
    keep_versions: int = 10  # retention: the newest K versions keep their files (releases and parents always)
    attempts: int = 3  # downloads are retried when peers straddle an epoch boundary
    retry_pause_s: float = 2.0


@dataclass(frozen=True)
class PublishOutcome:
    published: bool
    message: str
    version: VersionRecord | None = None


@dataclass(frozen=True)
class ShardSnapshot:
    shard: int
    epoch: int
    peer_id: str  # the peer whose tensors are used
    tensors: dict[str, torch.Tensor]
    agreeing_peers: tuple[str, ...] = ()  # peers whose state matched (the used one included)
    excluded: tuple[tuple[str, str], ...] = ()  # (peer, why) for peers whose state was not used


def tensors_agree(first: list[torch.Tensor], second: list[torch.Tensor], policy: PublishPolicy) -> bool:
    """Every tensor within the policy's tolerance of its counterpart."""
    per_element = policy.agreement_atol + policy.drift_steps * policy.step_size
    for a, b in zip(first, second):
        scale = max(a.norm().item(), b.norm().item())
        if (a - b).norm().item() > policy.agreement_rtol * scale + per_element * math.sqrt(a.numel()):
            return False
    return True


def _problem_with(state: DownloadedState, shapes: list[tuple[int, ...]]) -> str | None:
    if len(state.parameters) != len(shapes):
        return f"sent {len(state.parameters)} tensors, the run's shard has {len(shapes)}"
    for index, (tensor, shape) in enumerate(zip(state.parameters, shapes)):
        if tuple(tensor.shape) != tuple(shape):
            return f"tensor {index} has shape {tuple(tensor.shape)}, the run's spec gives {tuple(shape)}"
        if not torch.isfinite(tensor).all():
            return f"tensor {index} holds non-finite values"
    return None


@dataclass(frozen=True)
class StateChoice:
    chosen: list[DownloadedState]  # agreeing states, the most trained peer first
    excluded: list[tuple[str, str]]  # (peer, why) for every other peer
    valid: int  # how many states were well-formed and finite

    @property
    def cross_checked(self) -> bool:
        return len(self.chosen) >= 2


def choose_agreeing_state(states: list[DownloadedState], shapes: list[tuple[int, ...]],
                          policy: PublishPolicy) -> StateChoice:
    """The peers whose states to trust, and every other peer with the reason it was left out.

    Invalid states (wrong count or shapes, non-finite values) are left out first. Then, at the highest epoch
    where at least two peers serve a state, the largest group of mutually agreeing peers wins if it is a strict
    majority of that epoch's peers; the rest are excluded as disagreeing. With no majority, nothing can be
    trusted (SnapshotError). Only when no epoch has two valid peers is a single peer's state used.
    """
    excluded, valid = [], []
    for state in states:
        problem = _problem_with(state, shapes)
        if problem:
            excluded.append((state.peer_id, problem))
        else:
            valid.append(state)
    if not valid:
        raise SnapshotError("no peer served a usable state: " + "; ".join(f"{p}: {why}" for p, why in excluded))
    by_epoch: dict[int, list[DownloadedState]] = {}
    for state in valid:
        by_epoch.setdefault(state.epoch, []).append(state)
    for epoch in sorted(by_epoch, reverse=True):
        group = by_epoch[epoch]
        if len(group) < 2:
            continue
        clusters = [[other for other in group if tensors_agree(one.parameters, other.parameters, policy)]
                    for one in group]
        best = max(clusters, key=len)  # ties: the first, i.e. the most trained peer by sharing priority
        if 2 * len(best) <= len(group):
            raise SnapshotError(f"the {len(group)} peers at epoch {epoch} disagree and no majority agrees "
                                f"({', '.join(state.peer_id for state in group)})")
        chosen = {state.peer_id for state in best}
        excluded += [(state.peer_id, f"its state disagrees with the majority of {len(group)} peers at epoch {epoch}")
                     for state in group if state.peer_id not in chosen]
        excluded += [(state.peer_id, f"at epoch {state.epoch}, behind the compared epoch {epoch}")
                     for state in valid if state.epoch != epoch]
        return StateChoice(best, excluded, len(valid))
    newest = max(valid, key=lambda state: state.epoch)
    behind = [(state.peer_id, f"at epoch {state.epoch}, behind {newest.epoch}") for state in valid if state is not newest]
    return StateChoice([newest], excluded + behind, len(valid))


def fetch_shard_snapshot(dht: hivemind.DHT, shard_run_id: str, shard: int, names: list[str],
                         shapes: list[tuple[int, ...]], timeout: float, policy: PublishPolicy) -> ShardSnapshot:
    """Download one shard's averaged LoRA tensors from up to ``policy.compare_peers`` peers and keep the state
    they agree on (see ``choose_agreeing_state``); peers left out are logged."""
    for attempt in range(policy.attempts):
        sharers = list_state_sharers(dht, shard_run_id)
        if not sharers:
            raise NothingToSnapshot(f"no peer serves the state of shard {shard} ({shard_run_id}) yet")
        states: list[DownloadedState] = []
        errors: list[str] = []
        for peer_id in sharers:
            if len(states) >= policy.compare_peers:
                break
            try:
                states.append(download_state(dht, shard_run_id, peer_id, num_parameters=len(names), timeout=timeout))
            except StateDownloadError as exc:
                errors.append(str(exc))
        if not states:
            raise SnapshotError(f"no peer of shard {shard} sent its state: " + "; ".join(errors))
        choice = choose_agreeing_state(states, shapes, policy)
        if not choice.cross_checked and choice.valid > 1 and attempt + 1 < policy.attempts:
            time.sleep(policy.retry_pause_s)  # valid peers straddle an epoch boundary: compare them again shortly
            continue
        for peer_id, why in choice.excluded:
            logger.warning("shard %d: not using the state of peer %s: %s", shard, peer_id, why)
        used = choice.chosen[0]
        return ShardSnapshot(shard, used.epoch, used.peer_id, dict(zip(names, used.parameters)),
                             tuple(state.peer_id for state in choice.chosen), tuple(choice.excluded))
    raise AssertionError("unreachable")


class Publisher:
    def __init__(self, storage: Storage, runs: RunRuntimes, store: AdapterStore, dht: hivemind.DHT,
                 identity: Identity, policy: PublishPolicy | None = None, download_timeout: float = 60.0,
                 retention: Retention | None = None):
        self.storage, self.runs, self.store, self.dht = storage, runs, store, dht
        self.identity = identity
        self.policy = policy or PublishPolicy()
        self.retention = retention
        self.download_timeout = download_timeout
        self._lock = threading.Lock()  # one publish at a time: version numbers stay dense
        self._last_attempt: dict[str, float] = {}
        self._base_eval: dict[str, float] = {}
        self._loop: BackgroundLoop | None = None

    def base_eval_loss(self, runtime: RunRuntime) -> float:
        """Eval loss of the base model (with the run's parent chain merged in) and the run's untrained LoRA
        (B = 0: exactly that base)."""
        if runtime.name not in self._base_eval:
            with runtime.evaluation_model(None) as model:
                self._base_eval[runtime.name] = eval_loss(model, runtime.split.eval, runtime.tokenizer,
                                                          runtime.spec.seq_len)
        return self._base_eval[runtime.name]

    def publish(self, run_name: str) -> PublishOutcome:
        with self._lock:
            self._last_attempt[run_name] = time.monotonic()
            try:
                runtime = self.runs.get(run_name)
                snapshots = self.fetch_snapshots(runtime)
                return self.publish_snapshots(runtime, snapshots)
            except NothingToSnapshot as exc:
                logger.info("run %s: nothing to publish: %s", run_name, exc)
                return PublishOutcome(False, str(exc))
            except (SnapshotError, StoreError) as exc:
                logger.warning("run %s: snapshot not published: %s", run_name, exc)
                self.storage.versions.add_rejected_snapshot(run_name, str(exc))
                return PublishOutcome(False, str(exc))

    def fetch_snapshots(self, runtime: RunRuntime) -> list[ShardSnapshot]:
        """Every shard's cross-checked state; NothingToSnapshot when no shard moved since the last version."""
        spec = runtime.spec
        policy = replace(self.policy, step_size=spec.lr)
        snapshots = [fetch_shard_snapshot(self.dht, spec.shard_run_id(shard), shard, runtime.shard_names[shard],
                                          runtime.shard_shapes[shard], self.download_timeout, policy)
                     for shard in range(spec.shards)]
        previous = self.storage.versions.get_version(spec.name)
        if previous is not None and all(snapshot.epoch <= previous.epoch for snapshot in snapshots):
            raise NothingToSnapshot(f"no new epoch since version {previous.version} (epoch {previous.epoch})")
        return snapshots

    def publish_snapshots(self, runtime: RunRuntime, snapshots: list[ShardSnapshot]) -> PublishOutcome:
        """Merge the shards, evaluate, apply the quality gate, and store and sign version N (caller holds no
        lock; one publish runs at a time through ``publish``). Rejections are recorded with their reason."""
        run_name = runtime.name
        epoch = min(snapshot.epoch for snapshot in snapshots)
        merged = {name: tensor for snapshot in snapshots for name, tensor in snapshot.tensors.items()}
        base_loss = self.base_eval_loss(runtime)
        with tempfile.TemporaryDirectory() as workdir:
            try:
                with runtime.evaluation_model(merged) as model:
                    loss = eval_loss(model, runtime.split.eval, runtime.tokenizer, runtime.spec.seq_len)
                    model.save_pretrained(workdir, safe_serialization=True)
            except ValueError as exc:  # the swarm's tensors do not fit the run's LoRA
                raise SnapshotError(str(exc)) from None
            return self._store_version(runtime, snapshots, epoch, loss, base_loss, Path(workdir))

    def _store_version(self, runtime: RunRuntime, snapshots: list[ShardSnapshot], epoch: int, loss: float,
                       base_loss: float, adapter_dir: Path) -> PublishOutcome:
        """Gate the evaluated adapter in ``adapter_dir``; store, sign and record it as the next version."""
        run_name = runtime.name
        previous = self.storage.versions.get_version(run_name)
        refusal = self.quality_gate(loss, previous)
        if refusal:
            logger.warning("run %s: snapshot at epoch %d refused: %s", run_name, epoch, refusal)
            self.storage.versions.add_rejected_snapshot(run_name, refusal, epoch=epoch, eval_loss=loss)
            return PublishOutcome(False, refusal, previous)
        version = self.storage.versions.next_version_number(run_name)
        now = datetime.now(timezone.utc)
        contributors = self.storage.ledger.contributors_between(run_name, previous.created_at if previous else None, now)
        samples = sum(self.storage.ledger.samples_by_shard(run_name).values())
        peers_compared = min(len(s.agreeing_peers) for s in snapshots)
        signed: SignedManifest | None = None

        def sign(files) -> SignedManifest:
            nonlocal signed
            manifest = Manifest(
                run=run_name, version=version, spec_hash=runtime.record.spec_hash,
                base_model=runtime.spec.base_model, base_model_fingerprint=runtime.record.base_model_fingerprint,
                epoch=epoch, samples=samples, eval_loss=loss, base_eval_loss=base_loss,
                contributors=tuple(contributors), files=tuple(files), created_at=now.isoformat(),
                coordinator=self.identity.peer_id, parent=runtime.chain[-1] if runtime.chain else None,
                chain=tuple(runtime.chain), peers_compared=peers_compared,
            )
            signed = sign_manifest(manifest, self.identity)
            return signed

        stored = self.store.put(run_name, version, adapter_dir, sign=sign)
        if signed is None:
            raise RuntimeError(f"the adapter store did not sign version {version} of {run_name}")
        record = self.storage.versions.add_version(
            run_name, version, stored.sha256, str(stored.path), epoch, samples, loss, base_loss, contributors,
            manifest=signed.payload.decode(), manifest_signature=signed.signature_json(),
        )
        logger.info("run %s: published version %d (epoch %d, eval loss %.4f, base %.4f, %d contributors, "
                    "%d peer(s) agreed)", run_name, version, epoch, loss, base_loss, len(contributors),
                    peers_compared)
        if self.retention is not None:
            try:
                self.retention.collect(run_name)
            except Exception:  # retention must never undo a publish
                logger.exception("run %s: retention failed", run_name)
        return PublishOutcome(True, f"published version {version}", record)

    def quality_gate(self, loss: float, previous: VersionRecord | None) -> str | None:
        """Why a snapshot with this eval loss must not be published, or None."""
        if not math.isfinite(loss):
            return f"eval loss of the merged adapter is {loss}"
        if previous is not None:
            limit = previous.eval_loss * (1.0 + self.policy.max_eval_regression)
            if loss > limit:
                return (f"eval loss {loss:.4f} is worse than version {previous.version}'s {previous.eval_loss:.4f} "
                        f"by more than the allowed {self.policy.max_eval_regression:.0%}")
        return None

    def start(self, poll_s: float = 1.0) -> None:
        """Publish each run whenever its publish_interval_s has passed since the last attempt."""
        self._loop = BackgroundLoop("publisher", poll_s, self._publish_due_runs).start()

    def _publish_due_runs(self) -> None:
        for runtime in self.runs.available():
            if self.storage.runs.settings(runtime.name).state != "active":  # stopped by the operator
                continue
            try:
                last = self._last_attempt.setdefault(runtime.name, time.monotonic())
                if time.monotonic() - last >= runtime.spec.publish_interval_s:
                    self.publish(runtime.name)
            except Exception:  # one broken run must not stop publishing for the others
                logger.exception("run %s: publisher failed", runtime.name)

    def stop(self) -> None:
        if self._loop is not None:
            self._loop.stop(timeout=30)
