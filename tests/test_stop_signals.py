"""The first SIGINT or SIGTERM asks a process to stop cleanly and says which arrived; only after Ctrl-C does it
offer a second Ctrl-C to abort (a SIGTERM from a supervisor is not a key press)."""

from __future__ import annotations

import subprocess
import sys

import pytest

SCRIPT = """
import os, signal, sys, threading
from swarm.log import configure_logging
from swarm.stop_signals import install_stop_signals
configure_logging()
stop = threading.Event()
install_stop_signals(stop)
os.kill(os.getpid(), getattr(signal, sys.argv[1]))
assert stop.wait(5)
print("stopped")
"""


@pytest.mark.parametrize("name, expected, unexpected", [("SIGTERM", "SIGTERM received", "Ctrl-C"),
                                                         ("SIGINT", "press Ctrl-C again to abort", "SIGINT")])
def test_the_stop_message_names_the_signal_and_offers_abort_only_after_ctrl_c(name, expected, unexpected):
    result = subprocess.run([sys.executable, "-c", SCRIPT, name], capture_output=True, text=True, timeout=60)
    output = result.stdout + result.stderr
    assert result.returncode == 0 and "stopped" in result.stdout, output
    assert expected in output and unexpected not in output, output


CHILD_SCRIPT = """
import os, signal, sys, threading, time
from swarm.stop_signals import ctrl_c_pressed, install_stop_signals, reinstall_stop_signals
stop = threading.Event()
install_stop_signals(stop)
child = os.fork()
if child == 0:  # like hivemind's DHT and averager processes: forked after the handler was installed
    time.sleep(30)
    os._exit(3)
os.kill(child, signal.SIGINT)  # a terminal's Ctrl-C reaches the whole process group: the child ignores it
time.sleep(0.5)
assert os.waitpid(child, os.WNOHANG) == (0, 0), "the child died of SIGINT"
os.kill(child, signal.SIGTERM)  # terminate(): the child ends, as without the handler
_, status = os.waitpid(child, 0)
assert os.WIFSIGNALED(status) and os.WTERMSIG(status) == signal.SIGTERM, status
assert not stop.is_set()
signal.signal(signal.SIGINT, signal.SIG_IGN)  # what hivemind does in this process as it starts an averager
assert reinstall_stop_signals() and not reinstall_stop_signals()
os.kill(os.getpid(), signal.SIGINT)
assert stop.wait(5) and ctrl_c_pressed()
print("ok")
"""


def test_forked_children_ignore_ctrl_c_and_end_on_sigterm_and_the_handler_survives_hivemind():
    result = subprocess.run([sys.executable, "-c", CHILD_SCRIPT], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0 and result.stdout == "ok\n", result.stdout + result.stderr
