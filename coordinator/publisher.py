"""The snapshotter and publisher: every publish interval, fetch each shard's averaged state from the swarm,
merge the shards into one PEFT adapter, measure eval loss on the held-out split, and store version N.

The state comes from the workers' hivemind state averagers (the same download a newcomer peer does), never from
files a single worker uploads.

Usage::

    publisher = Publisher(storage, runs, store, dht, identity, PublishPolicy(max_eval_regression=0.05))
    outcome = publisher.publish("demo")          # PublishOutcome(published=True, version=VersionRecord(...))

Before a version is stored, each shard's state is downloaded from the run's authorized peers (its live
registered workers) and a strict majority of all authorized peers serving the shard must agree on it; a peer
that disagrees, sends non-finite values or wrong shapes, claims an epoch beyond the median epoch of the
authorized peers' signed progress records plus ``max_epoch_lead``, or streams more than the shard's state cap
is left out and logged (``coordinator.snapshot_choice``). A version never records an epoch beyond that bound.
The merged adapter must pass the quality gate: finite eval loss, not worse than the base model
(``max_base_regression``) nor than the previous version by more than the policy's margin, and a parameter change
from the previous version in line with the run's history (``coordinator.version_change``). Refused snapshots
are recorded with the reason (``swarm status`` shows them). Each version is stored with a manifest signed by the
coordinator's key, listing as contributors the peers with verified work since the previous version.
    publisher.start(poll_s=1.0)                  # background loop honouring each run's publish_interval_s
"""

from __future__ import annotations

import hashlib
import math
import tempfile
import threading
import time
from dataclasses import dataclass, replace
from datetime import datetime, timedelta, timezone
from pathlib import Path

import hivemind

from coordinator.adapter_store import AdapterStore, StoreError
from coordinator.authorized import authorized_peers
from coordinator.publish_policy import PublishPolicy
from coordinator.retention import Retention
from coordinator.runtime import RunRuntime, RunRuntimes
from coordinator.snapshot_choice import (  # noqa: F401 (re-exported: the publisher's API)
    NoMajority,
    NothingToSnapshot,
    ShardSnapshot,
    SnapshotError,
    StateChoice,
    choose_agreeing_state,
    fetch_shard_snapshot,
    tensors_agree,
)
from coordinator.storage import Storage, VersionRecord
from coordinator.version_change import ChangeHistory
from swarm.background import BackgroundLoop
from swarm.dht import progress_validators, read_shard_progress
from swarm.evaluation import eval_loss
from swarm.identity import Identity
from swarm.log import get_logger
from swarm.manifest import Manifest, SignedManifest, sign_manifest
from swarm.progress_filter import epoch_bound
from swarm.state_download import default_state_cap

logger = get_logger(__name__)


@dataclass(frozen=True)
class PublishOutcome:
    published: bool
    message: str
    version: VersionRecord | None = None


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
        self._changes = ChangeHistory()
        self._validated: set[str] = set()
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
        snapshots, bounds = [], []
        for shard in range(spec.shards):
            authorized = authorized_peers(self.storage, spec.name, shard, policy.authorized_window_s)
            bound = self.epoch_bound(runtime, shard, authorized)
            shapes = runtime.shard_shapes[shard]
            cap = default_state_cap(sum(4 * math.prod(shape) for shape in shapes), spec.robustness.max_state_bytes)
            snapshots.append(fetch_shard_snapshot(self.dht, spec.shard_run_id(shard), shard, runtime.shard_names[shard],
                                                  shapes, self.download_timeout, policy, authorized=authorized,
                                                  max_epoch=bound, max_bytes=cap))
            bounds.append(bound)
        previous = self.storage.versions.get_version(spec.name)
        # a version recorded with an epoch beyond what honest peers are at now (stored before epochs were bounded)
        # is not compared with: one liar must not stop publishing
        if previous is not None and previous.epoch <= min(bounds) and all(snapshot.epoch <= previous.epoch for snapshot in snapshots):
            raise NothingToSnapshot(f"no new epoch since version {previous.version} (epoch {previous.epoch})")
        return snapshots

    def epoch_bound(self, runtime: RunRuntime, shard: int, authorized: set[str]) -> int:
        """The highest epoch a snapshot of the shard may have: the (lower) median epoch of the authorized peers'
        signed progress records in the DHT (else of the watcher's recent observations of them) plus
        ``max_epoch_lead``. NothingToSnapshot when no authorized peer's progress is known."""
        spec = runtime.spec
        shard_run_id = spec.shard_run_id(shard)
        if shard_run_id not in self._validated:
            self.dht.add_validators(progress_validators(shard_run_id, self.identity.as_hivemind_key()))
            self._validated.add(shard_run_id)
        epochs = [record.progress.epoch for record in read_shard_progress(self.dht, shard_run_id)
                  if record.peer_id in authorized]
        if not epochs:
            since = datetime.now(timezone.utc) - timedelta(seconds=self.policy.authorized_window_s)
            latest: dict[str, int] = {}
            for observation in self.storage.ledger.observations(spec.name, shard, start=since):
                if observation.peer_id in authorized and observation.key_bound:
                    latest[observation.peer_id] = max(latest.get(observation.peer_id, 0), observation.epoch)
            epochs = list(latest.values())
        bound = epoch_bound(epochs, spec.robustness.max_epoch_lead)
        if bound is None:
            raise NothingToSnapshot(f"no authorized peer of shard {shard} has published its progress: the "
                                    f"snapshot's epoch cannot be checked")
        return bound

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
        refusal = self.quality_gate(loss, previous, base_loss)
        if refusal is None:
            refusal = self._changes.check(runtime, self.storage.versions.list_versions(run_name), adapter_dir, epoch,
                                          runtime.spec.robustness.max_version_change_ratio)
        if refusal:
            logger.warning("run %s: snapshot at epoch %d refused: %s", run_name, epoch, refusal)
            self.storage.versions.add_rejected_snapshot(run_name, refusal, epoch=epoch, eval_loss=loss)
            return PublishOutcome(False, refusal, previous)
        version = self.storage.versions.next_version_number(run_name)
        now = datetime.now(timezone.utc)
        # only work the swarm's signed records confirmed: unverified receipts may be a stranger's invention
        contributors = self.storage.ledger.contributors_between(run_name, previous.created_at if previous else None,
                                                                now, verified_only=True)
        samples = self.storage.ledger.distinct_samples(run_name, verified_only=True)  # not once per shard
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
                contributor_names=tuple(self.storage.ledger.display_names(run_name, contributors)),
                spec_json=_spec_json_of(runtime.record),
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
        self._changes.record(run_name, version, epoch, Path(stored.path))
        logger.info("run %s: published version %d (epoch %d, eval loss %.4f, base %.4f, %d contributors, "
                    "%d peer(s) agreed)", run_name, version, epoch, loss, base_loss, len(contributors),
                    peers_compared)
        if self.retention is not None:
            try:
                self.retention.collect(run_name)
            except Exception:  # retention must never undo a publish
                logger.exception("run %s: retention failed", run_name)
        return PublishOutcome(True, f"published version {version}", record)

    def quality_gate(self, loss: float, previous: VersionRecord | None, base_loss: float | None = None) -> str | None:
        """Why a snapshot with this eval loss must not be published, or None: a non-finite loss, a loss worse
        than the base model's (``max_base_regression``), or worse than the previous version's beyond the
        margin."""
        if not math.isfinite(loss):
            return f"eval loss of the merged adapter is {loss}"
        if base_loss is not None and loss > base_loss * (1.0 + self.policy.max_base_regression):
            return (f"eval loss {loss:.4f} is worse than the base model's {base_loss:.4f} (allowed: "
                    f"{self.policy.max_base_regression:.0%})")
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


def _spec_json_of(record) -> str:
    """The run's stored spec, for the manifest, when it is the exact text its spec_hash names ("" if not)."""
    text = record.spec_json
    return text if "sha256:" + hashlib.sha256(text.encode()).hexdigest() == record.spec_hash else ""
