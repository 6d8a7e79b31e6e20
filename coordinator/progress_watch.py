"""The coordinator's view of what the swarm itself reports: hivemind's per-peer progress records in the DHT.

Every peer's ProgressTracker publishes, per shard, a signed record (epoch, samples accumulated, samples/s)
under ``<shard run id>_progress``; the worker signs it with its identity key. A record counts only for the peer
whose key signed it (``read_shard_progress`` skips records naming someone else, and non-finite ones), only for
the shard's authorized peers (registered live workers, ``coordinator.authorized``), and only while its epoch is
within ``max_epoch_lead`` of the median epoch of the authorized peers' records. The watcher reads the records
periodically, stores the ones that count as observations, and has the ledger cross-check receipts against them.
A bad record is skipped and logged; it never fails a pass.

Usage::

    watcher = ProgressWatcher(dht, storage, runs, identity.as_hivemind_key(), ledger.recheck_unverified)
    watcher.start(interval_s=2.0)
    watcher.poll_shard("demo", 0)   # read one shard now
"""

from __future__ import annotations

import threading
from typing import Callable

import hivemind
from hivemind.utils.crypto import RSAPrivateKey

from coordinator.authorized import authorized_peers
from coordinator.runtime import RunRuntime, RunRuntimes
from coordinator.storage import Storage, StorageError
from swarm.background import BackgroundLoop
from swarm.dht import progress_validators, read_shard_progress
from swarm.log import get_logger
from swarm.progress_filter import WarnOnce, epoch_bound

logger = get_logger(__name__)


class ProgressWatcher:
    def __init__(self, dht: hivemind.DHT, storage: Storage, runs: RunRuntimes, private_key: RSAPrivateKey,
                 ledger_recheck: Callable[[str], int] = lambda run: 0):
        self.dht, self.storage, self.runs = dht, storage, runs
        self.private_key = private_key  # hivemind's signature validator needs one; the coordinator's identity key
        self.ledger_recheck = ledger_recheck
        self._validated: set[str] = set()
        self._warn = WarnOnce()
        self._lock = threading.Lock()
        self._loop: BackgroundLoop | None = None

    def _ensure_validators(self, shard_run_id: str) -> None:
        # hivemind signs progress records and checks them against a schema; reading them needs both validators
        with self._lock:
            if shard_run_id in self._validated:
                return
            self.dht.add_validators(progress_validators(shard_run_id, self.private_key))
            self._validated.add(shard_run_id)

    def poll_shard(self, run_name: str, shard: int) -> int:
        """Read the shard's progress records now and store those that count; returns how many were stored."""
        return self._poll(self.runs.get(run_name), shard)

    def _poll(self, runtime: RunRuntime, shard: int) -> int:
        run_name = runtime.name
        shard_run_id = runtime.spec.shard_run_id(shard)
        self._ensure_validators(shard_run_id)
        records = read_shard_progress(self.dht, shard_run_id)  # each attributed to its signer
        authorized = authorized_peers(self.storage, run_name, shard)
        counted = [record for record in records if record.peer_id in authorized]
        bound = epoch_bound((record.progress.epoch for record in counted), runtime.spec.robustness.max_epoch_lead)
        stored = 0
        for record in counted:
            progress = record.progress
            if bound is not None and progress.epoch > bound:
                self._warn((run_name, record.peer_id, "epoch"), "run %s shard %d: not counting the progress of %s "
                           "at epoch %d, beyond %d (the authorized peers' median epoch plus the lead)", run_name,
                           shard, record.peer_id, progress.epoch, bound)
                continue
            try:
                self.storage.ledger.record_observation(run_name, shard, record.peer_id, progress.epoch,
                                                       progress.samples_per_second, progress.samples_accumulated,
                                                       key_bound=True)
                stored += 1
            except (ValueError, StorageError) as exc:  # one bad record must not cost the others
                self._warn((run_name, record.peer_id, "store"), "run %s shard %d: progress of %s not stored: %s",
                           run_name, shard, record.peer_id, exc)
        return stored

    def poll_all(self) -> None:
        for runtime in self.runs.available():
            try:
                for shard in range(runtime.spec.shards):
                    self._poll(runtime, shard)
                self.ledger_recheck(runtime.name)
            except Exception as exc:  # one run's bad records must not stop the others from being watched
                logger.warning("run %s: progress watcher pass failed: %s", runtime.name, exc)

    def start(self, interval_s: float = 2.0) -> None:
        self._loop = BackgroundLoop("progress-watcher", interval_s, self.poll_all).start()

    def stop(self) -> None:
        if self._loop is not None:
            self._loop.stop(timeout=10)
