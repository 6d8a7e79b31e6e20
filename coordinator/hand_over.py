"""Hand-overs: a worker that stops asks the coordinator to snapshot the run now, while it still serves its final
state, so that the last minutes of a run are kept when everybody leaves (the coordinator is the state of last
resort; the next donor starts from the latest version).

The snapshot is the publisher's usual one (cross-checked downloads from the run's authorized peers, the quality
gate, a signed version); a hand-over only brings it forward. A version that already holds the worker's epoch
answers at once. Hand-overs start at most one snapshot per run every ``min_gap_s``: a caller that comes sooner is
told how long to wait, so a registered worker cannot keep the coordinator publishing.

Usage::

    hand_overs = HandOvers(publisher, storage)
    outcome = hand_overs.take("demo", epoch=12)   # HandOverOutcome(kept=True, message="published version 3", ...)
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass

from coordinator.publisher import Publisher
from coordinator.storage import Storage, VersionRecord


@dataclass(frozen=True)
class HandOverOutcome:
    kept: bool  # a version now holds the worker's epoch
    message: str
    version: VersionRecord | None = None
    retry_after_s: float = 0.0  # > 0: another snapshot of the run was started too recently; ask again then


class HandOvers:
    def __init__(self, publisher: Publisher, storage: Storage, min_gap_s: float = 10.0):
        self.publisher, self.storage, self.min_gap_s = publisher, storage, min_gap_s
        self._lock = threading.Lock()
        self._started: dict[str, float] = {}  # run -> monotonic time the last hand-over snapshot started

    def take(self, run_name: str, epoch: int) -> HandOverOutcome:
        kept = self._holding(run_name, epoch)
        if kept is not None:
            return kept
        with self._lock:
            since = time.monotonic() - self._started.get(run_name, float("-inf"))
            if since < self.min_gap_s:
                wait = self.min_gap_s - since
                return HandOverOutcome(False, f"a snapshot of run '{run_name}' was started {since:.0f}s ago",
                                       retry_after_s=wait)
            self._started[run_name] = time.monotonic()
        outcome = self.publisher.publish(run_name)  # one publish at a time: a concurrent one waits for it
        kept = self._holding(run_name, epoch)
        if kept is not None:
            return HandOverOutcome(True, outcome.message if outcome.published else kept.message, kept.version)
        if outcome.published and outcome.version is not None:
            return HandOverOutcome(False, f"published version {outcome.version.version} at epoch "
                                          f"{outcome.version.epoch}, short of epoch {epoch}", outcome.version)
        return HandOverOutcome(False, outcome.message, outcome.version)

    def _holding(self, run_name: str, epoch: int) -> HandOverOutcome | None:
        latest = self.storage.versions.get_version(run_name)
        if latest is not None and latest.epoch >= epoch:
            return HandOverOutcome(True, f"version {latest.version} holds epoch {latest.epoch}", latest)
        return None
