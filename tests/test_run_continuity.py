"""A run that never loses its progress, through the real CLI, a real coordinator and hivemind on loopback: a
donor that stops hands its final state to the coordinator (a version is published from it at once, with no
periodic publish and no --linger), and the next donor, finding nobody training, starts from that version (its
loss and epochs go on from there, not from the base model) and hands its own final state over in turn."""

import re
import time

from coordinator.storage import Storage
from swarm.client import CoordinatorClient
from swarm.identity import load_or_create_identity
from swarm.local_swarm import LocalSwarm
from tests.test_end_to_end import cli

RUN = "continuity"


def test_a_run_goes_on_from_the_last_donors_final_state(tmp_path):
    with LocalSwarm(tmp_path) as local:
        address = local.start_coordinator()
        cli("launch", "-c", address, "--operator-token-file", str(local.operator_token_file),
            "--name", RUN, "--base-model", "tiny", "--dataset", "sample", "--shards", "1",
            "--batch-size-per-step", "8", "--target-batch-size", "64", "--lr", "0.01",
            "--publish-interval-s", "3600",  # only hand-overs publish
            "--averaging-matchmaking-time", "1", "--averaging-progress-refresh-s", "0.5")
        first = local.start_worker(address, RUN, 0, ["--max-seconds", "15"])
        assert first.wait(timeout=240) == 0, local.log("worker0.log")[-3000:]
        first_log = local.log("worker0.log")
        assert "the coordinator keeps the final state: published version 1" in first_log, first_log[-3000:]
        with CoordinatorClient(address) as client:
            version = max(client.status(RUN).runs[0].versions, key=lambda v: v.version)
        assert version.version == 1 and version.epoch >= 2, version

        second = local.start_worker(address, RUN, 1, ["--max-seconds", "10"])
        assert second.wait(timeout=240) == 0, local.log("worker1.log")[-3000:]
        second_log = local.log("worker1.log")
        assert f"starting from version 1 of run {RUN} (epoch {version.epoch}," in second_log, second_log[-3000:]
        assert "the coordinator keeps the final state: published version 2" in second_log, second_log[-3000:]
        with CoordinatorClient(address) as client:
            latest = max(client.status(RUN).runs[0].versions, key=lambda v: v.version)
        assert latest.version == 2 and latest.epoch > version.epoch
        assert latest.eval_loss < version.base_eval_loss

        # hand-overs start at most one snapshot per run every 10 s: a worker cannot keep the coordinator publishing
        with CoordinatorClient(address) as client:
            caller = load_or_create_identity(tmp_path / "caller.key")
            worker_id = client.join(caller, run_name=RUN).worker_id
            first_ask = client.hand_over(worker_id, caller, epoch=10**6, timeout=60)
            second_ask = client.hand_over(worker_id, caller, epoch=10**6, timeout=60)
        # nobody trains: nothing to snapshot (or, within 10 s of the last donor's hand-over, told to wait)
        assert not first_ask.kept, first_ask
        assert not second_ask.kept and 0 < second_ask.retry_after_s <= 10, second_ask
        assert "was started" in second_ask.message, second_ask

    peers = [re.search(r"joined run \S+ as (\w+)", log).group(1) for log in (first_log, second_log)]
    with Storage(f"sqlite:///{tmp_path / 'coordinator' / 'coordinator.db'}") as storage:
        receipts = {peer: sorted(storage.ledger.list_receipts(RUN, peer_id=peer), key=lambda r: r.started_at)
                    for peer in peers}
    first_receipts, second_receipts = receipts[peers[0]], receipts[peers[1]]
    assert first_receipts and second_receipts
    # the second donor's epochs go on from the version's, and its first loss is the trained one, not the base's
    assert min(r.epoch for r in second_receipts) >= version.epoch
    # (seen: the first donor's receipts 5.09, 4.84, 4.71; the second's first 4.80, its optimizer state starting afresh)
    assert second_receipts[0].loss < first_receipts[0].loss - 0.15, [r.loss for r in first_receipts + second_receipts]
