"""Forged progress records change no one's credit: real hivemind peer processes (tests/fake_peer.py) publish
records signed with their own keys, naming a victim, pulsing epoch 10**9, claiming inf samples/s or backing
an attacker's fabricated receipts; a real coordinator's progress watcher and ledger read them."""

from __future__ import annotations

import subprocess
import sys
import time

import pytest

from coordinator.publisher import PublishPolicy
from coordinator.server import Coordinator, CoordinatorConfig
from swarm.dht import read_shard_progress
from swarm.receipts import Receipt, sign_receipt
from swarm.identity import load_or_create_identity
from swarm.spec import RunSpec
from tests.fake_peer import access_options
from tests.test_snapshot_trust import _first_line

SPEC = RunSpec(name="credit", data_slices=2, batch_size_per_step=8, target_batch_size=64)
RUN_ID = SPEC.shard_run_id(0)


def _peer(coordinator, folder, name: str, *options: str) -> subprocess.Popen:
    process = subprocess.Popen([sys.executable, "-m", "tests.fake_peer", "--initial-peer",
                                coordinator.initial_peers[0], "--run-id", RUN_ID, "--identity",
                                str(folder / f"{name}.key"),
                                *access_options(coordinator.identity, folder / f"{name}.key", SPEC.name), *options],
                               stdout=subprocess.PIPE, text=True)
    return process


def _receipt(identity, start: float, seconds: float, samples: int, epoch: int):
    steps = -(-samples // SPEC.batch_size_per_step)
    return sign_receipt(Receipt.new(run=SPEC.name, shard=0, peer_id=identity.peer_id, epoch=epoch, steps=steps,
                                    samples=samples, tokens=samples * 10, compute_seconds=seconds * 0.5, loss=4.0,
                                    started_at=start, ended_at=start + seconds), identity)


@pytest.fixture(scope="module")
def forged(tmp_path_factory):
    """A coordinator whose run has honest peers at epoch 3 and an attacker whose processes publish forged
    records: one names the victim, one (its own) pulses epoch 10**9 with inf samples/s via a second key, and
    one backs its fabricated receipts with 20,000 samples/s."""
    folder = tmp_path_factory.mktemp("credit")
    coordinator = Coordinator(CoordinatorConfig(data_dir=folder / "coord", port=0, publish=False,
                                                publish_policy=PublishPolicy())).start()
    coordinator.runs.launch(SPEC)
    ids = {name: load_or_create_identity(folder / f"{name}.key")
           for name in ("victim", "honest", "attacker", "pulser", "newcomer", "infinite")}
    for name in ids:
        coordinator.storage.runs.register_worker(SPEC.name, ids[name].peer_id, name, [0], 0, "cpu")
    victim = ids["victim"].peer_id
    processes = [
        _peer(coordinator, folder, "victim", "--progress-epoch", "3", "--samples-per-second", "3.0"),
        _peer(coordinator, folder, "honest", "--progress-epoch", "3", "--samples-per-second", "3.0"),
        # signed by the attacker's key, naming the victim at epoch 10**9 with inf samples/s
        _peer(coordinator, folder, "forger", "--progress-epoch", str(10**9), "--progress-peer", victim,
              "--samples-per-second", "inf"),
        _peer(coordinator, folder, "pulser", "--progress-epoch", str(10**9), "--samples-per-second", "3.0"),
        _peer(coordinator, folder, "attacker", "--progress-epoch", "3", "--samples-per-second", "20000"),
        _peer(coordinator, folder, "newcomer", "--progress-epoch", "3", "--samples-per-second", "40000"),
        _peer(coordinator, folder, "infinite", "--progress-epoch", "3", "--samples-per-second", "inf"),
    ]
    try:
        for process in processes:
            assert _first_line(process, timeout=90)
        deadline = time.monotonic() + 30
        while len(read_shard_progress(coordinator.dht, RUN_ID)) < 5:
            assert time.monotonic() < deadline, read_shard_progress(coordinator.dht, RUN_ID)
            time.sleep(0.3)
        yield coordinator, ids
    finally:
        for process in processes:
            process.terminate()
        for process in processes:
            process.wait(timeout=30)
        coordinator.stop()


def test_forged_records_are_skipped_and_never_fail_the_watcher(forged, caplog):
    coordinator, ids = forged
    records = {record.peer_id: record for record in read_shard_progress(coordinator.dht, RUN_ID)}
    # the victim-naming record (signed by the forger) is not the victim's: the victim's own record is at epoch 3
    assert records[ids["victim"].peer_id].progress.epoch == 3
    coordinator.watcher.poll_all()  # raises nothing, logs nothing as failed
    assert "progress watcher pass failed" not in caplog.text
    observations = coordinator.storage.ledger.observations(SPEC.name, 0)
    assert {o.peer_id: o.epoch for o in observations if o.peer_id == ids["victim"].peer_id} == {
        ids["victim"].peer_id: 3}
    assert coordinator.storage.ledger.highest_observed_epoch(SPEC.name, 0) == 3  # the 10**9 pulse is not counted
    assert all(o.samples_per_second < 1e6 for o in observations)
    seen = {o.peer_id for o in observations}
    assert ids["infinite"].peer_id not in seen and ids["pulser"].peer_id not in seen  # inf samples/s; epoch 10**9
    assert {ids["victim"].peer_id, ids["honest"].peer_id, ids["attacker"].peer_id} <= seen


def test_forged_records_change_no_ones_credit(forged):
    coordinator, ids = forged
    coordinator.watcher.poll_all()
    now = time.time()
    # honest work: 3 samples/s, matching the peers' own records
    honest = [_receipt(ids[name], now - 40 + 10 * i, 10.0, 32, epoch=3) for name in ("victim", "honest")
              for i in range(3)]
    results = coordinator.ledger.submit(honest)
    assert [r.verification for r in results] == ["verified"] * 6, [r.message for r in results]
    # the attacker's own records claim 20,000 samples/s: its 144,000-sample receipt is refused, not verified
    [fabricated] = coordinator.ledger.submit([_receipt(ids["attacker"], now - 20, 10.0, 144_000, epoch=3)])
    assert fabricated.status == "rejected" and "far beyond" in fabricated.message
    # a receipt the ceiling allows is still disputed: its own records do not vouch for 1,500 samples/s
    [inflated] = coordinator.ledger.submit([_receipt(ids["attacker"], now - 40, 10.0, 15_000, epoch=3)])
    assert inflated.verification == "disputed", inflated.message
    # a new key's first receipts do not set its own reference: each inflated one is refused
    first = coordinator.ledger.submit([_receipt(ids["newcomer"], now - 60 + 10 * i, 10.0, 400_000, epoch=3)
                                       for i in range(4)])
    assert [r.status for r in first] == ["rejected"] * 4
    coordinator.ledger.recheck_unverified(SPEC.name)
    board = {row.peer_id: row.samples for row in coordinator.storage.ledger.leaderboard(SPEC.name) if row.samples}
    assert board == {ids["victim"].peer_id: 96, ids["honest"].peer_id: 96}
    contributors = coordinator.storage.ledger.contributors_between(
        SPEC.name, None, coordinator.storage.runs.get_run(SPEC.name).created_at.replace(year=2200),
        verified_only=True)
    assert contributors == sorted([ids["victim"].peer_id, ids["honest"].peer_id])
