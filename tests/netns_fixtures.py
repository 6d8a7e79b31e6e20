"""pytest fixtures of the multi-host harness (``tests/netns.py``): import them into a test module with
``from netns_fixtures import network  # noqa: F401``."""

from __future__ import annotations

import pytest

from netns import Network, NetworkUnavailable, iptables_unavailable_reason, unavailable_reason

NETNS_SKIP = unavailable_reason()
IPTABLES_SKIP = iptables_unavailable_reason()
needs_netns = pytest.mark.skipif(NETNS_SKIP is not None, reason=f"multi-host harness unavailable: {NETNS_SKIP}")
needs_iptables = pytest.mark.skipif(IPTABLES_SKIP is not None, reason=f"{IPTABLES_SKIP}")


@pytest.fixture
def network(request: pytest.FixtureRequest):
    """A fresh simulated network for one test, torn down (processes killed, namespaces deleted) afterwards,
    whether the test passed or not."""
    try:
        net = Network(tag=request.node.name.replace("test_", "")[:6].replace("_", ""))
    except NetworkUnavailable as exc:
        pytest.skip(f"multi-host harness unavailable: {exc}")
    request.addfinalizer(net.close)
    return net


def cli(*args: str, timeout: float = 300) -> "subprocess.CompletedProcess":
    """Run ``swarm <args>`` from the test process (which reaches the hosts over the bridge); fail on error."""
    import subprocess
    import sys

    result = subprocess.run([sys.executable, "-m", "nomoat_cli", *args], capture_output=True, text=True,
                            timeout=timeout)
    assert result.returncode == 0, f"swarm {' '.join(args)}:\n{result.stdout}\n{result.stderr}"
    return result


def wait_for(condition, timeout: float, message, every: float = 0.5) -> None:
    """Poll ``condition`` until true; fail with ``message()`` (e.g. the logs) after ``timeout`` seconds."""
    import time

    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, message()
        time.sleep(every)


def worker_totals(log: str) -> tuple[str, int]:
    """(peer ID, samples it says it trained on shard 0) from a finished worker's log."""
    import re

    peer = re.search(r"joined run \S+ as (\w+)", log).group(1)
    return peer, int(re.search(r"samples per shard: 0=(\d+)", log).group(1))
