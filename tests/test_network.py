"""The swarm across simulated hosts (tests/netns.py): each process in its own network namespace with its own
address on a bridge, links capped with tbf, one worker behind NAT that can only dial out (hivemind client
mode). Checks the harness itself first (isolation, caps, NAT, cuts, cleanup), then a real swarm on it."""

import ipaddress
import subprocess

from peft import PeftModel

from netns import NetSwarm, Network, send_bytes, start_sink
from netns_fixtures import cli, needs_iptables, needs_netns, network, wait_for, worker_totals  # noqa: F401
from swarm.client import CoordinatorClient
from swarm.model import build_tiny_model

pytestmark = needs_netns


def _namespaces() -> str:
    return subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout


@needs_iptables
def test_harness_hosts_caps_nat_cut_and_cleanup():
    with Network(tag="harness") as net:
        public = net.add_host("public")
        capped = net.add_host("capped", rate_mbit=10)
        hidden = net.add_host("hidden", nat=True)
        sinks = [start_sink(host, 9000) for host in (public, capped, hidden)]
        try:
            assert public.address != capped.address
            assert all(ipaddress.ip_address(h.address) in net.subnet for h in (public, capped))
            assert ipaddress.ip_address(hidden.address) not in net.subnet  # behind its router
            # 2 MB over a 10 Mbit/s link takes >= 1.6 s each way; uncapped it is near instant
            assert send_bytes(public, capped.address, 9000, 2_000_000) > 1.4
            assert send_bytes(capped, public.address, 9000, 2_000_000) > 1.4
            assert send_bytes(hidden, public.address, 9000, 2_000_000) < 1.0
            # the NAT'ed host dials out, but nobody can dial it
            assert send_bytes(public, hidden.address, 9000, 100, timeout=2) is None
            net.cut(public)
            assert send_bytes(capped, public.address, 9000, 100, timeout=2) is None
            assert send_bytes(public, capped.address, 9000, 100, timeout=2) is None
            net.reconnect(public)
            assert send_bytes(capped, public.address, 9000, 100) is not None
        finally:
            for sink in sinks:
                sink.kill()
        names = list(net.namespaces)
        assert all(name in _namespaces() for name in names)
        lingering = start_sink(public, 9001)  # a process left running in a host is killed by close()
    assert lingering.wait(timeout=10) != 0
    assert not any(name in _namespaces() for name in names)


RUN = "netswarm"


@needs_iptables
def test_swarm_with_a_natted_client_mode_worker_trains_publishes_and_credits_exactly(network, tmp_path):
    coordinator = network.add_host("coord", rate_mbit=200)
    public = network.add_host("public", rate_mbit=50)
    hidden = network.add_host("hidden", rate_mbit=20, nat=True)
    with NetSwarm(network, tmp_path) as swarm:
        address = swarm.start_coordinator_on(coordinator, ["--no-publish"])
        assert address.startswith(coordinator.address)
        assert swarm.fingerprint, "a coordinator off loopback serves TLS and prints its certificate's fingerprint"
        cli("launch", "-c", address, *swarm.trust, "--operator-token-file", str(swarm.operator_token_file),
            "--name", RUN, "--base-model", "tiny", "--dataset", "sample", "--shards", "1",
            "--batch-size-per-step", "8", "--target-batch-size", "128", "--lr", "0.01", "--data-slices", "2",
            "--averaging-matchmaking-time", "2", "--averaging-averaging-timeout", "20",
            "--averaging-progress-refresh-s", "0.5")
        common = ["--max-epochs", "3", "--wait-for-peers", "2", "--drain-timeout", "60", "--linger", "15"]
        swarm.start_worker_on(public, address, RUN, 0, common)
        swarm.start_worker_on(hidden, address, RUN, 1, common)
        logs = lambda: swarm.log("worker0.log")[-3000:] + swarm.log("worker1.log")[-3000:]  # noqa: E731
        wait_for(lambda: all("samples per shard" in swarm.log(f"worker{i}.log") for i in range(2))
                 or any(p.poll() not in (None, 0) for p in swarm.workers), 200, logs)
        with CoordinatorClient(swarm.operator_endpoint()) as client:  # the public worker still lingers
            published = client.publish_now(RUN)
        assert published.published, published.message
        codes = swarm.wait_workers(timeout=120)
        assert codes == [0, 0], logs()
        assert all("stopped by max_epochs" in swarm.log(f"worker{i}.log") for i in range(2)), logs()
        trained = dict(worker_totals(swarm.log(f"worker{i}.log")) for i in range(2))
        hidden_log = swarm.log("worker1.log")
        # the NAT'ed worker averaged with the public one, through connections it opened itself
        assert "Averaged gradients with 2 peers" in hidden_log, hidden_log[-3000:]
        with CoordinatorClient(swarm.endpoint) as client:
            board = client.leaderboard(RUN, include_unverified=True)
        assert {entry.peer_id: entry.samples for entry in board.entries} == trained
        assert all(samples > 0 for samples in trained.values())
        out = tmp_path / "adapter"
        cli("pull", "-c", address, *swarm.trust, "--run", RUN, "--out", str(out))
        model = PeftModel.from_pretrained(build_tiny_model(), str(out))
        assert any("lora_" in name for name, _ in model.named_parameters())
        assert published.version.epoch >= 3 and published.version.eval_loss < published.version.base_eval_loss
