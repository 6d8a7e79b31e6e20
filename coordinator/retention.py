"""Retention of published versions: keep the newest K versions of each run, every version marked as a release,
and every version another run is stacked on; remove the files of the rest, never those of a version being pulled.

A pull holds a lease on its version for as long as it streams; ``collect`` skips leased versions, and a pull
cannot lease a version that is being collected (both take the same lock). A collected version keeps its
DB row (history, manifests, contributors), marked ``collected_at``; pulling it says it was collected.

Usage::

    retention = Retention(storage, store, keep_versions=10)
    with retention.lease("demo", 3):          # RetentionError if version 3 was collected
        stream the files ...
    retention.collect("demo")                 # -> version numbers whose files were removed
"""

from __future__ import annotations

import threading
from collections import Counter
from contextlib import contextmanager
from typing import Iterator

from coordinator.adapter_store import AdapterStore
from coordinator.storage import Storage
from swarm.log import get_logger
from swarm.spec import RunSpec, parse_version_ref

logger = get_logger(__name__)


class RetentionError(RuntimeError):
    """The version's files were removed by retention."""


class Retention:
    def __init__(self, storage: Storage, store: AdapterStore, keep_versions: int = 10):
        if keep_versions < 1:
            raise ValueError(f"keep_versions must be at least 1 (the latest version is always served), "
                             f"got {keep_versions}")
        self.storage, self.store, self.keep_versions = storage, store, keep_versions
        self._lock = threading.Lock()
        self._leases: Counter[tuple[str, int]] = Counter()

    @contextmanager
    def lease(self, run_name: str, version: int) -> Iterator[None]:
        """Keep the version's files while the block runs (a pull streaming them)."""
        with self._lock:
            record = self.storage.versions.get_version(run_name, version)
            if record is not None and record.collected_at is not None:
                raise RetentionError(
                    f"version {version} of '{run_name}' was removed by retention (the coordinator keeps the newest "
                    f"{self.keep_versions} versions, releases and stacking parents); pull a newer version")
            self._leases[(run_name, version)] += 1
        try:
            yield
        finally:
            with self._lock:
                self._leases[(run_name, version)] -= 1
                if self._leases[(run_name, version)] <= 0:
                    del self._leases[(run_name, version)]

    def stacking_parents(self) -> set[tuple[str, int]]:
        """Versions some run is launched on top of (their ancestors are parents of their own runs)."""
        parents = set()
        for run in self.storage.runs.list_runs():
            parent = RunSpec.from_json(run.spec_json).parent
            if parent:
                parents.add(parse_version_ref(parent))
        return parents

    def collect(self, run_name: str) -> list[int]:
        """Remove the files of the run's versions that nothing keeps; the version numbers removed."""
        protected = self.stacking_parents()
        with self._lock:
            live = [record for record in self.storage.versions.list_versions(run_name) if record.collected_at is None]
            newest = {record.version for record in live[-self.keep_versions:]}
            removed = []
            for record in live:
                key = (run_name, record.version)
                if record.version in newest or record.release or key in protected or self._leases[key] > 0:
                    continue
                self.storage.versions.mark_collected(run_name, record.version)  # first: no new pull can start on it
                self.store.remove(run_name, record.version)
                removed.append(record.version)
        if removed:
            logger.info("run %s: retention removed versions %s (keeping the newest %d, releases and parents)",
                        run_name, ", ".join(map(str, removed)), self.keep_versions)
        return removed
