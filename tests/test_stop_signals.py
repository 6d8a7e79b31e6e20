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
