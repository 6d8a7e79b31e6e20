"""The coordinator's view of what the swarm itself reports: hivemind's per-peer progress records in the DHT.

Every peer's ProgressTracker publishes, per shard, a signed record (epoch, samples accumulated, samples/s)
under ``<shard run id>_progress``; the worker signs it with its identity key, so the record's owner key must
derive to the peer ID inside it ("key bound"). The watcher reads these records periodically, stores them as
observations, and has the ledger cross-check receipts against them.

Usage::

    watcher = ProgressWatcher(dht, storage, registry, ledger_recheck=ledger.recheck_unverified)
    watcher.start(interval_s=2.0)
    watcher.poll_shard("demo", 0)   # read one shard now
"""

from __future__ import annotations

import threading
from typing import Callable

import hivemind
from cryptography.hazmat.primitives import serialization
from hivemind.dht.crypto import RSASignatureValidator
from hivemind.dht.schema import SchemaValidator
from hivemind.optim.progress_tracker import LocalTrainingProgress, TrainingProgressSchema
from hivemind.p2p import PeerID

from coordinator.registry import RunRegistry
from coordinator.storage import Storage
from swarm.dht import shard_progress_key
from swarm.identity import peer_id_of_public_key
from swarm.log import get_logger

logger = get_logger(__name__)


def _owner_peer_id(subkey: bytes) -> str | None:
    """The peer ID of the RSA key that owns (signed) a DHT record, from its ``[owner:ssh-rsa ...]`` subkey."""
    found = RSASignatureValidator._PUBLIC_KEY_RE.findall(subkey)
    if len(found) != 1:
        return None
    try:
        key = serialization.load_ssh_public_key(found[0])
        der = key.public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
    except (ValueError, TypeError):
        return None
    return peer_id_of_public_key(der)


def read_shard_progress(dht: hivemind.DHT, shard_run_id: str) -> list[tuple[str, LocalTrainingProgress, bool]]:
    """(peer ID, progress, key bound) for every peer that currently publishes progress for the shard."""
    found = dht.get(shard_progress_key(shard_run_id), latest=True)
    if found is None or not isinstance(found.value, dict):
        return []
    records = []
    for subkey, entry in found.value.items():
        try:
            progress = LocalTrainingProgress.parse_obj(entry.value)
        except Exception:
            continue  # an expired (None) or malformed record
        peer_id = PeerID(progress.peer_id).to_base58()
        records.append((peer_id, progress, _owner_peer_id(subkey) == peer_id))
    return records


class ProgressWatcher:
    def __init__(self, dht: hivemind.DHT, storage: Storage, registry: RunRegistry,
                 ledger_recheck: Callable[[str], int] = lambda run: 0):
        self.dht, self.storage, self.registry = dht, storage, registry
        self.ledger_recheck = ledger_recheck
        self._validated: set[str] = set()
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def _ensure_validators(self, shard_run_id: str) -> None:
        # hivemind signs progress records and checks them against a schema; reading them needs both validators
        with self._lock:
            if shard_run_id in self._validated:
                return
            self.dht.add_validators([SchemaValidator(TrainingProgressSchema, prefix=shard_run_id),
                                     RSASignatureValidator()])
            self._validated.add(shard_run_id)

    def poll_shard(self, run_name: str, shard: int) -> int:
        """Read the shard's progress records now and store them; returns how many peers were seen."""
        shard_run_id = self.registry.context(run_name).spec.shard_run_id(shard)
        self._ensure_validators(shard_run_id)
        records = read_shard_progress(self.dht, shard_run_id)
        for peer_id, progress, key_bound in records:
            self.storage.ledger.record_observation(run_name, shard, peer_id, progress.epoch,
                                                   progress.samples_per_second, progress.samples_accumulated, key_bound)
        return len(records)

    def poll_all(self) -> None:
        for run in self.storage.runs.list_runs():
            for shard in range(self.registry.context(run.name).spec.shards):
                self.poll_shard(run.name, shard)
            self.ledger_recheck(run.name)

    def _loop(self, interval_s: float) -> None:
        while not self._stop.wait(interval_s):
            try:
                self.poll_all()
            except Exception as exc:  # keep watching; the next pass may succeed
                logger.warning("progress watcher pass failed: %s", exc)

    def start(self, interval_s: float = 2.0) -> None:
        self._thread = threading.Thread(target=self._loop, args=(interval_s,), name="progress-watcher", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=10)
