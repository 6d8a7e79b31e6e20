"""Clean stops on Ctrl-C and SIGTERM, for every long-running nomoat process (the coordinator and workers).

hivemind's main process ignores SIGINT once its averagers run, so the processes install their own handling: the
first signal sets an event the main loop watches (finish the current step, report, leave cleanly); a second
Ctrl-C aborts with KeyboardInterrupt.

Usage::

    stop = threading.Event()
    install_stop_signals(stop)
    while not stop.wait(0.5):
        ...
"""

from __future__ import annotations

import signal
import threading

from swarm.log import get_logger

logger = get_logger(__name__)


def install_stop_signals(stop: threading.Event) -> None:
    """SIGINT and SIGTERM set ``stop``; a signal after that raises KeyboardInterrupt. Main thread only."""
    def handler(signum, frame):
        if stop.is_set():
            raise KeyboardInterrupt
        if signum == signal.SIGINT:
            logger.info("stopping cleanly (press Ctrl-C again to abort)")
        else:
            logger.info("stopping cleanly (%s received)", signal.Signals(signum).name)
        stop.set()

    signal.signal(signal.SIGINT, handler)
    signal.signal(signal.SIGTERM, handler)
