"""The snapshotter and publisher: every publish interval, fetch each shard's averaged state from the swarm,
merge the shards into one PEFT adapter, measure eval loss on the held-out split, and store version N.

The state comes from the workers' hivemind state averagers (the same download a newcomer peer does), never from
files a single worker uploads.

Usage::

    publisher = Publisher(storage, registry, store, dht)
    outcome = publisher.publish("demo")          # PublishOutcome(published=True, version=VersionRecord(...))
    publisher.start(poll_s=1.0)                  # background loop honouring each run's publish_interval_s
"""

from __future__ import annotations

import math
import tempfile
import threading
import time
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

import hivemind
import torch

from coordinator.adapter_store import AdapterStore, StoreError
from coordinator.registry import RunContext, RunRegistry
from coordinator.storage import Storage, VersionRecord
from swarm.evaluation import eval_loss
from swarm.log import get_logger
from swarm.model import build_lora_model, load_base_model, lora_parameters
from swarm.state_download import StateDownloadError, download_state, list_state_sharers

logger = get_logger(__name__)


class SnapshotError(RuntimeError):
    """The swarm's state could not be turned into a valid adapter; nothing was published."""


@dataclass(frozen=True)
class PublishOutcome:
    published: bool
    message: str
    version: VersionRecord | None = None


@dataclass(frozen=True)
class ShardSnapshot:
    shard: int
    epoch: int
    peer_id: str
    tensors: dict[str, torch.Tensor]


def fetch_shard_snapshot(dht: hivemind.DHT, context: RunContext, shard: int, timeout: float) -> ShardSnapshot:
    """Download one shard's averaged LoRA tensors from the best peer that serves them; check shape and values."""
    run_id = context.spec.shard_run_id(shard)
    names = context.shard_names[shard]
    sharers = list_state_sharers(dht, run_id)
    if not sharers:
        raise SnapshotError(f"no peer serves the state of shard {shard} ({run_id}) yet")
    errors = []
    for peer_id in sharers:
        try:
            state = download_state(dht, run_id, peer_id, num_parameters=len(names), timeout=timeout)
        except StateDownloadError as exc:
            errors.append(str(exc))
            continue
        if not all(torch.isfinite(tensor).all() for tensor in state.parameters):
            errors.append(f"peer {peer_id} sent non-finite values")
            continue
        return ShardSnapshot(shard, state.epoch, peer_id, dict(zip(names, state.parameters)))
    raise SnapshotError(f"no usable state for shard {shard}: " + "; ".join(errors))


class Publisher:
    def __init__(self, storage: Storage, registry: RunRegistry, store: AdapterStore, dht: hivemind.DHT,
                 download_timeout: float = 60.0):
        self.storage, self.registry, self.store, self.dht = storage, registry, store, dht
        self.download_timeout = download_timeout
        self._lock = threading.Lock()  # one publish at a time: version numbers stay dense
        self._last_attempt: dict[str, float] = {}
        self._base_eval: dict[str, float] = {}
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def _evaluate(self, context: RunContext, tensors: dict[str, torch.Tensor] | None):
        base, tokenizer = load_base_model(context.spec.base_model)
        model = build_lora_model(base, context.spec.lora, seed=context.spec.seed)
        if tensors is not None:
            params = lora_parameters(model)
            with torch.no_grad():
                for name, tensor in tensors.items():
                    if params[name].shape != tensor.shape:
                        raise SnapshotError(f"{name}: swarm sent shape {tuple(tensor.shape)}, "
                                            f"run expects {tuple(params[name].shape)}")
                    params[name].copy_(tensor)
        loss = eval_loss(model, context.split.eval, tokenizer, context.spec.seq_len)
        return model, loss

    def base_eval_loss(self, context: RunContext) -> float:
        """Eval loss of the base model with the run's untrained LoRA (B = 0: exactly the base model)."""
        if context.spec.name not in self._base_eval:
            self._base_eval[context.spec.name] = self._evaluate(context, None)[1]
        return self._base_eval[context.spec.name]

    def publish(self, run_name: str) -> PublishOutcome:
        with self._lock:
            self._last_attempt[run_name] = time.monotonic()
            try:
                return self._publish_locked(run_name)
            except (SnapshotError, StoreError) as exc:
                logger.warning("run %s: snapshot not published: %s", run_name, exc)
                return PublishOutcome(False, str(exc))

    def _publish_locked(self, run_name: str) -> PublishOutcome:
        context = self.registry.context(run_name)
        snapshots = [fetch_shard_snapshot(self.dht, context, shard, self.download_timeout)
                     for shard in range(context.spec.shards)]
        epoch = min(snapshot.epoch for snapshot in snapshots)
        previous = self.storage.get_version(run_name)
        if previous is not None and epoch <= previous.epoch and all(s.epoch <= previous.epoch for s in snapshots):
            return PublishOutcome(False, f"no new epoch since version {previous.version} (epoch {epoch})", previous)
        merged = {name: tensor for snapshot in snapshots for name, tensor in snapshot.tensors.items()}
        model, loss = self._evaluate(context, merged)
        if not math.isfinite(loss):
            raise SnapshotError(f"eval loss of the merged adapter is {loss}")
        version = self.storage.next_version_number(run_name)
        now = datetime.now(timezone.utc)
        contributors = self.storage.contributors_between(run_name, previous.created_at if previous else None, now)
        samples = sum(self.storage.samples_by_shard(run_name).values())
        with tempfile.TemporaryDirectory() as workdir:
            model.save_pretrained(workdir, safe_serialization=True)
            stored = self.store.put(run_name, version, Path(workdir))
        record = self.storage.add_version(
            run_name, version, stored.sha256, str(stored.path), epoch, samples, loss,
            self.base_eval_loss(context), contributors,
        )
        logger.info("run %s: published version %d (epoch %d, eval loss %.4f, base %.4f, %d contributors)",
                    run_name, version, epoch, loss, record.base_eval_loss, len(contributors))
        return PublishOutcome(True, f"published version {version}", record)

    def start(self, poll_s: float = 1.0) -> None:
        """Publish each run whenever its publish_interval_s has passed since the last attempt."""
        def loop():
            while not self._stop.wait(poll_s):
                for record in self.storage.list_runs():
                    try:
                        interval = self.registry.context(record.name).spec.publish_interval_s
                        last = self._last_attempt.setdefault(record.name, time.monotonic())
                        if time.monotonic() - last >= interval:
                            self.publish(record.name)
                    except Exception:  # one broken run must not stop publishing for the others
                        logger.exception("run %s: publisher failed", record.name)

        self._thread = threading.Thread(target=loop, name="publisher", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=30)
