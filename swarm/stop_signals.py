"""Clean stops on Ctrl-C and SIGTERM, for every long-running nomoat process (the coordinator and workers).

The first signal sets an event the main loop watches (finish the current step, report, leave cleanly); a second
one raises KeyboardInterrupt (abort now). Only a Ctrl-C offers that second Ctrl-C: a supervisor's SIGTERM is no
key press.

hivemind replaces SIGINT's handler with SIG_IGN in the main process whenever it starts an averager (its
``DecentralizedAverager.run_in_background``), so a Ctrl-C would then be ignored: call ``reinstall_stop_signals``
once the optimizers exist. Processes forked after ``install_stop_signals`` (hivemind's DHT and averagers) inherit
the handler; there it ignores SIGINT (the parent stops them in order) and lets SIGTERM end the process as usual
(hivemind's ``terminate()`` and ``swarm.reaper`` rely on that). They run in process groups of their own
(``swarm.process_groups``), so a signal to the whole group (a terminal's Ctrl-C) reaches only the parent.

Usage::

    stop = threading.Event()
    install_stop_signals(stop)
    ...                         # start hivemind's optimizers
    reinstall_stop_signals()
    while not stop.wait(0.5):
        ...
"""

from __future__ import annotations

import os
import signal
import threading
from dataclasses import dataclass
from typing import Any, Callable

from swarm.log import get_logger

logger = get_logger(__name__)


@dataclass
class _Installed:
    handler: Callable[[int, Any], None]
    pid: int
    ctrl_c_pressed: bool = False


_installed: _Installed | None = None


def install_stop_signals(stop: threading.Event) -> None:
    """SIGINT and SIGTERM set ``stop``; a signal after that raises KeyboardInterrupt. Main thread only."""
    global _installed

    def handler(signum, frame):
        if os.getpid() != installed.pid:  # a forked child of this process
            if signum == signal.SIGTERM:
                signal.signal(signum, signal.SIG_DFL)
                os.kill(os.getpid(), signum)
            return
        if stop.is_set():
            raise KeyboardInterrupt
        if signum == signal.SIGINT:
            installed.ctrl_c_pressed = True
            logger.info("stopping cleanly (press Ctrl-C again to abort)")
        else:
            logger.info("stopping cleanly (%s received)", signal.Signals(signum).name)
        stop.set()

    installed = _installed = _Installed(handler, os.getpid())
    signal.signal(signal.SIGINT, handler)
    signal.signal(signal.SIGTERM, handler)


def reinstall_stop_signals() -> bool:
    """Put back the handler of ``install_stop_signals`` where something replaced it (hivemind sets SIGINT to
    SIG_IGN when it starts an averager); True if it had been replaced. Nothing happens when it was never
    installed (nomoat used as a library) or in another process than the installer's."""
    if _installed is None or os.getpid() != _installed.pid:
        return False
    replaced = False
    for signum in (signal.SIGINT, signal.SIGTERM):
        if signal.getsignal(signum) is not _installed.handler:
            signal.signal(signum, _installed.handler)
            replaced = True
    return replaced


def ctrl_c_pressed() -> bool:
    """Whether a Ctrl-C reached the handler of ``install_stop_signals`` in this process."""
    return _installed is not None and _installed.ctrl_c_pressed and os.getpid() == _installed.pid
