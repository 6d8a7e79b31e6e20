"""No orphans: a small watchdog process that ends every process descended from its parent once the parent dies.

hivemind runs its DHT, its libp2p daemon and each averager in processes of their own. When a coordinator or a
worker is killed (SIGKILL, OOM killer, a closed terminal), nothing tells those processes to stop: they keep
running and holding their ports. The reaper is started by the entry points (``swarm coordinator``, ``swarm
donate``): it remembers its parent's descendants every half second and, as soon as the parent is gone, terminates
them (SIGTERM, then SIGKILL after a grace period) and exits. A parent that shuts down cleanly releases it first
(``Reaper.release``), so the reaper never touches processes of a parent that is still running. (A child started
in the last half second before the parent dies is not known yet; what the known ones started is.)

Usage::

    reaper = start_reaper()      # in the entry point, before hivemind starts anything
    ...
    reaper.release()             # on a clean exit: the reaper ends without touching anything
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


class Reaper:
    def __init__(self, process: subprocess.Popen):
        self.process = process

    @property
    def pid(self) -> int:
        return self.process.pid

    def release(self) -> None:
        """End the reaper without it ending anything (the parent shut down cleanly and is still alive)."""
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=GRACE_S + 5)
            except subprocess.TimeoutExpired:
                self.process.kill()


def start_reaper() -> Reaper:
    """Start the watchdog for this process (see the module docstring)."""
    process = subprocess.Popen([sys.executable, "-m", "swarm.reaper", str(os.getpid())],
                               stdin=subprocess.DEVNULL, start_new_session=True)
    return Reaper(process)


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


def watch(parent_pid: int) -> None:
    """Track ``parent_pid``'s descendants until it dies, then end them; SIGTERM releases the reaper instead."""
    own_pid = os.getpid()
    released = False

    def release(*_):
        nonlocal released
        released = True

    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is for the parent; the reaper outlives it to clean up
    signal.signal(signal.SIGTERM, release)
    try:
        parent = psutil.Process(parent_pid)
    except psutil.Error:
        return
    known: dict[int, psutil.Process] = {}
    while os.getppid() == parent_pid and parent.is_running():
        if released:
            return
        known.update(_descendants(parent, own_pid))
        known = {pid: process for pid, process in known.items() if process.is_running()}
        time.sleep(POLL_S)
    for process in list(known.values()):  # what they started since the last look (a DHT's libp2p daemon)
        known.update(_descendants(process, own_pid))
    end_processes(list(known.values()))


if __name__ == "__main__":
    watch(int(sys.argv[1]))
