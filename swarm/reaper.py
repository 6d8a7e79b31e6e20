"""No orphans: a small watchdog process that ends every process descended from its parent once the parent dies.

hivemind runs its DHT, its libp2p daemon and each averager in processes of their own. When a coordinator or a
worker is killed (SIGKILL, OOM killer, a closed terminal), nothing tells those processes to stop: they keep
running and holding their ports. The reaper is started by the entry points (``swarm coordinator``, ``swarm
donate``): it remembers its parent's descendants every half second and, as soon as the parent is gone, however
it ended, terminates whatever of them is still running (SIGTERM, then SIGKILL after a grace period) and exits.
It never touches anything while its parent runs. (A child started in the last half second before the parent dies
is not known yet; what the known ones started is.)

Usage::

    start_reaper()      # in the entry point, before hivemind starts anything
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import psutil

POLL_S = 0.5
GRACE_S = 3.0


def start_reaper() -> subprocess.Popen:
    """Start the watchdog for this process (see the module docstring)."""
    return subprocess.Popen([sys.executable, "-m", "swarm.reaper", str(os.getpid())], stdin=subprocess.DEVNULL,
                            start_new_session=True)


def _descendants(parent: psutil.Process, own_pid: int) -> dict[int, psutil.Process]:
    try:
        return {child.pid: child for child in parent.children(recursive=True) if child.pid != own_pid}
    except psutil.Error:
        return {}


def end_processes(processes: list[psutil.Process], grace_s: float = GRACE_S) -> None:
    """SIGTERM every process still alive (psutil checks it is the same process, not a reused pid), then
    SIGKILL what is left after ``grace_s``."""
    alive = []
    for process in processes:
        try:
            process.terminate()
            alive.append(process)
        except psutil.Error:
            pass
    _, left = psutil.wait_procs(alive, timeout=grace_s)
    for process in left:
        try:
            process.kill()
        except psutil.Error:
            pass


def kill_descendants() -> None:
    """SIGKILL every process this one started, and theirs (the reaper included), at once: for a process that
    aborts. Ended one by one, hivemind's processes log tracebacks as they find each other gone."""
    try:
        processes = psutil.Process().children(recursive=True)
    except psutil.Error:
        return
    for process in processes:
        try:
            process.kill()
        except psutil.Error:
            pass


def watch(parent_pid: int) -> None:
    """Track ``parent_pid``'s descendants until it ends, then end those still running."""
    own_pid = os.getpid()
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is for the parent; the reaper outlives it to clean up
    try:
        parent = psutil.Process(parent_pid)
    except psutil.Error:
        return
    known: dict[int, psutil.Process] = {}
    while os.getppid() == parent_pid and parent.is_running():
        known.update(_descendants(parent, own_pid))
        known = {pid: process for pid, process in known.items() if process.is_running()}
        time.sleep(POLL_S)
    for process in list(known.values()):  # what they started since the last look (a DHT's libp2p daemon)
        known.update(_descendants(process, own_pid))
    end_processes(list(known.values()))


if __name__ == "__main__":
    watch(int(sys.argv[1]))
