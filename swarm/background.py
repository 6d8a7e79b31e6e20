"""Background loops: a named daemon thread that calls a function every N seconds until it is stopped.

The coordinator's publisher, progress watcher and housekeeping, and the worker's outbox sender all run this way.
The first call comes one interval after ``start`` (or at once after ``wake``); an exception from the function is
logged and the loop goes on with the next interval, so one bad pass never ends the loop.

Usage::

    loop = BackgroundLoop("progress-watcher", 2.0, watcher.poll_all).start()
    loop.wake()              # run a pass now instead of at the end of the interval
    loop.stop(timeout=10)    # no new pass starts; waits up to 10 s for a running one to finish
"""

from __future__ import annotations

import threading
from typing import Callable

from swarm.log import get_logger

logger = get_logger(__name__)


class BackgroundLoop:
    def __init__(self, name: str, interval_s: float, body: Callable[[], object]):
        if not interval_s > 0:
            raise ValueError(f"background loop {name}: interval_s must be positive, not {interval_s}")
        self.name, self.interval_s, self.body = name, interval_s, body
        self._wake, self._stopping = threading.Event(), threading.Event()
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)

    def start(self) -> "BackgroundLoop":
        self._thread.start()
        return self

    def wake(self) -> None:
        """Run the next pass now (if one is running, the next starts right after it)."""
        self._wake.set()

    def stop(self, timeout: float | None = None) -> None:
        """Start no new pass and wait up to ``timeout`` seconds (None: for ever) for the running one."""
        self._stopping.set()
        self._wake.set()
        if self._thread.is_alive():
            self._thread.join(timeout)

    @property
    def stopping(self) -> bool:
        return self._stopping.is_set()

    def _run(self) -> None:
        while True:
            self._wake.wait(self.interval_s)
            self._wake.clear()
            if self._stopping.is_set():
                return
            try:
                self.body()
            except Exception as exc:  # the loop must outlive one failed pass; the next may succeed
                logger.warning("%s: pass failed: %s: %s", self.name, type(exc).__name__, exc)
