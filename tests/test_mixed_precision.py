"""Peers of different precisions train one run together, through the real CLI and hivemind on loopback: an fp32
donor and a bf16 donor (CPU) check the same base model fingerprint, average gradients with each other in sync
mode, record their precision in their signed receipts, and the final state is handed over as a version."""

import json

from coordinator.storage import Storage
from swarm.local_swarm import LocalSwarm
from tests.test_end_to_end import cli

RUN = "mixed"


def test_an_fp32_and_a_bf16_donor_average_with_each_other(tmp_path):
    with LocalSwarm(tmp_path) as local:
        address = local.start_coordinator()
        cli("launch", "-c", address, "--operator-token-file", str(local.operator_token_file),
            "--name", RUN, "--base-model", "tiny", "--dataset", "sample", "--shards", "1",
            "--batch-size-per-step", "8", "--target-batch-size", "128", "--lr", "0.003", "--data-slices", "2",
            "--publish-interval-s", "3600", "--averaging-matchmaking-time", "2",
            "--averaging-averaging-timeout", "20", "--averaging-progress-refresh-s", "0.5")
        for index, precision in enumerate(("fp32", "bf16")):
            local.start_worker(address, RUN, index, ["--precision", precision, "--max-epochs", "3",
                                                     "--wait-for-peers", "2"])
        codes = local.wait_workers(timeout=300)
        logs = [local.log(f"worker{index}.log") for index in range(2)]
        assert codes == [0, 0], logs[0][-3000:] + logs[1][-3000:]
        for log, precision in zip(logs, ("fp32", "bf16")):
            assert f"training in {precision}" in log, log[-3000:]
            assert "Averaged gradients with 2 peers" in log, log[-3000:]
        assert any("the coordinator keeps the final state" in log for log in logs), logs[0][-2000:]
    with Storage(f"sqlite:///{tmp_path / 'coordinator' / 'coordinator.db'}") as storage:
        receipts = storage.ledger.list_receipts(RUN)
        versions = storage.versions.list_versions(RUN)
    assert {json.loads(receipt.payload)["precision"] for receipt in receipts} == {"fp32", "bf16"}
    assert versions and versions[-1].eval_loss < versions[-1].base_eval_loss
