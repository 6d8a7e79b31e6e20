"""The contribution ledger: signed receipts accepted, refused and cross-checked by the coordinator's rules,
through a real gRPC server and a real database; and the worker's outbox surviving a coordinator that is down.

The DHT side of the cross-check is fed here by recording observations in storage, exactly what the progress
watcher does with hivemind's records (the watcher itself runs in the swarm tests)."""

from __future__ import annotations

import base64
import tempfile
import time
from concurrent import futures
from dataclasses import replace
from datetime import datetime, timezone
from pathlib import Path

import grpc
import pytest

from coordinator.dataset_vault import DatasetVault
from coordinator.ledger import Ledger, LedgerPolicy, classify
from coordinator.rpc_errors import RpcErrorInterceptor
from coordinator.runtime import RunRuntimes
from coordinator.servicer import CoordinatorServicer
from coordinator.service import CoordinatorService
from coordinator.storage import ObservationRecord, ReceiptRecord, Storage
from nomoat_proto import coordinator_pb2_grpc as pb_grpc
from swarm.client import CoordinatorClient, CoordinatorError
from swarm.identity import load_or_create_identity
from swarm.local_swarm import free_port
from swarm.receipts import Receipt, SignedReceipt, sign_receipt
from swarm.spec import RunSpec
from tests.storage_contract import get_receipt
from worker.outbox import Outbox, OutboxSender

RUN = "ledger"
BATCH = 8


class Server:
    """A real coordinator gRPC server over a storage file, restartable on the same port."""

    def __init__(self, db_url: str, port: int):
        self.storage = Storage(db_url)
        self.runs = RunRuntimes(self.storage, DatasetVault(Path(tempfile.mkdtemp(prefix="nomoat-datasets-"))))
        # the DHT view the ledger refreshes on demand is what the progress watcher recorded in storage
        self.ledger = Ledger(self.storage, self.runs,
                             refresh_shard=lambda run, shard: len(self.storage.ledger.observations(run, shard)))
        service = CoordinatorService(self.storage, self.runs, publisher=None, ledger=self.ledger,
                                     initial_peers=[])
        self.server = grpc.server(futures.ThreadPoolExecutor(max_workers=16), interceptors=[RpcErrorInterceptor()])
        pb_grpc.add_CoordinatorServicer_to_server(CoordinatorServicer(service), self.server)
        assert self.server.add_insecure_port(f"127.0.0.1:{port}") == port
        self.address = f"127.0.0.1:{port}"
        self.server.start()

    def stop(self) -> None:
        self.server.stop(grace=0).wait()
        self.storage.close()


@pytest.fixture(scope="module")
def spec() -> RunSpec:
    return RunSpec(name=RUN, base_model="tiny", dataset="sample", shards=2, batch_size_per_step=BATCH,
                   target_batch_size=64)


@pytest.fixture
def server(tmp_path, spec):
    server = Server(f"sqlite:///{tmp_path / 'coordinator.db'}", free_port())
    server.runs.launch(spec)
    yield server
    server.stop()


@pytest.fixture
def alice(tmp_path):
    return load_or_create_identity(tmp_path / "alice.key")


@pytest.fixture
def mallory(tmp_path):
    return load_or_create_identity(tmp_path / "mallory.key")


def _join(server: Server, identity, shards=(0, 1)) -> None:
    server.storage.runs.register_worker(RUN, identity.peer_id, identity.path.stem, shards, 0, "cpu")


def _receipt(identity, start: float, seconds: float = 10.0, **overrides) -> Receipt:
    values = dict(run=RUN, shard=0, peer_id=identity.peer_id, epoch=0, steps=4, samples=4 * BATCH, tokens=1000,
                  compute_seconds=seconds * 0.8, loss=4.5, started_at=start, ended_at=start + seconds)
    return Receipt.new(**(values | overrides))


def _submit(server: Server, *signed: SignedReceipt):
    with CoordinatorClient(server.address) as client:
        return client.submit_receipts(list(signed))


def _samples(server: Server) -> dict[int, int]:
    return server.storage.ledger.samples_by_shard(RUN)


def test_signed_receipts_are_accepted_once_and_resending_is_idempotent(server, alice):
    _join(server, alice)
    now = time.time()
    first, second = (sign_receipt(_receipt(alice, now - 30 + 10 * i), alice) for i in range(2))
    results = _submit(server, first, second)
    assert [r.status for r in results] == ["accepted", "accepted"]
    assert [r.verification for r in results] == ["unverified", "unverified"]  # the DHT has not seen alice
    replay = _submit(server, first, second, first)
    assert [r.status for r in replay] == ["duplicate"] * 3
    assert _samples(server) == {0: 2 * 4 * BATCH}
    stored = get_receipt(server.storage, results[0].receipt_id)
    assert stored.peer_id == alice.peer_id and stored.payload.encode() == first.payload
    assert base64.b64decode(stored.signature) == first.signature  # the evidence is kept, re-verifiable


def test_forged_and_tampered_receipts_are_rejected_and_nothing_is_stored(server, alice, mallory):
    _join(server, alice)
    _join(server, mallory)
    start = time.time() - 20
    honest = sign_receipt(_receipt(alice, start), alice)
    _submit(server, honest)
    # mallory signs a receipt that names alice as its peer
    forged_receipt = _receipt(alice, start + 10)
    forged = SignedReceipt(forged_receipt.payload(), mallory.public_key_der, mallory.sign(forged_receipt.payload()))
    # alice's real signature over a payload mallory inflated
    inflated = replace(_receipt(alice, start + 10), samples=10 * BATCH, steps=10)
    tampered = SignedReceipt(inflated.payload(), alice.public_key_der, honest.signature)
    # alice's own receipt id reused for different content: a replay with altered numbers
    altered = sign_receipt(replace(Receipt.from_payload(honest.payload), samples=BATCH, steps=1), alice)
    garbage = SignedReceipt(b"{not json", alice.public_key_der, b"x")
    results = _submit(server, forged, tampered, altered, garbage)
    assert [r.status for r in results] == ["rejected"] * 4
    assert "signed by the key of " + mallory.peer_id in results[0].message
    assert "signature does not match" in results[1].message
    assert "different content" in results[2].message
    assert "not JSON" in results[3].message
    assert _samples(server) == {0: 4 * BATCH}


@pytest.mark.parametrize("overrides, expected", [
    (dict(samples=-8), "samples must be within 0.."),
    (dict(epoch=2**62), "epoch must be within 0..2.14748e+09, got 4.61169e+18"),
    (dict(started_at=1e300), "started_at must be within 0..7.3e+09"),
    (dict(receipt_id="x" * 10_000), "at most 4096 are accepted"),
    (dict(receipt_id="bad id\x1b[31m"), "receipt_id is malformed"),
    (dict(run="ledger\n"), "run is malformed"),
    (dict(shard=5), "has no shard 5"),
    (dict(run="nope"), "no run named 'nope'"),
    (dict(samples=40 * BATCH, steps=4), "samples in 4 steps"),
    (dict(compute_seconds=60.0), "of compute in a 10.0s interval"),
])
def test_implausible_receipts_are_refused_with_the_reason(server, alice, overrides, expected):
    _join(server, alice)
    server.storage.ledger.record_observation(RUN, 0, alice.peer_id, 2, 3.0, 16, True)  # the swarm is at epoch 2
    start = time.time() - 20
    receipt_id = overrides.pop("receipt_id", None)
    receipt = _receipt(alice, start, **overrides)
    if receipt_id is not None:
        receipt = replace(receipt, receipt_id=receipt_id)
    good = sign_receipt(_receipt(alice, start - 15), alice)
    [result, good_result] = _submit(server, sign_receipt(receipt, alice), good)  # refused alone, not its batch
    assert result.status == "rejected" and expected in result.message, result.message
    assert good_result.status == "accepted", good_result.message
    assert _samples(server) == {0: 4 * BATCH}


def test_an_epoch_the_swarm_was_seen_short_of_during_the_interval_is_refused(server, alice):
    _join(server, alice)
    start = time.time() - 10
    server.storage.ledger.record_observation(RUN, 0, alice.peer_id, 2, 3.0, 16, True)  # seen at epoch 2 meanwhile
    [result] = _submit(server, sign_receipt(_receipt(alice, start, seconds=10.5, epoch=7), alice))
    assert result.status == "rejected" and "epoch 7 of shard 0 was never reached" in result.message
    assert _samples(server) == {}


def test_work_done_while_the_coordinator_was_away_is_judged_by_the_peers_records_after_the_gap(server, alice):
    """The coordinator saw shard 0 at epoch 2, then nothing (it was down) while alice trained; it comes back and
    sees alice at epoch 12. Her receipts from the gap are kept, not refused: the one up to epoch 9 becomes verified
    by her later record, the one claiming epoch 40 stays unverified, and throughput beyond her trust is disputed."""
    ledger = Ledger(server.storage, server.runs, LedgerPolicy(evidence_window_s=0.2),
                    refresh_shard=lambda run, shard: len(server.storage.ledger.observations(run, shard)))
    _join(server, alice)
    server.storage.ledger.record_observation(RUN, 0, alice.peer_id, 2, 3.0, 16, True)
    start = time.time() + 0.5  # the gap: nothing observed of the shard from here on
    time.sleep(2.0)
    gap = [sign_receipt(_receipt(alice, start, seconds=0.4, epoch=9, steps=1, samples=BATCH), alice),
           sign_receipt(_receipt(alice, start + 0.5, seconds=0.4, epoch=40, steps=1, samples=BATCH), alice),
           sign_receipt(_receipt(alice, start + 1.0, seconds=0.4, epoch=9, steps=200, samples=200 * BATCH), alice)]
    results = ledger.submit(gap)
    assert [(r.status, r.verification) for r in results[:2]] == [("accepted", "unverified")] * 2, results
    assert "far beyond" in results[2].message  # the arrival check caps it at the trusted rate already
    server.storage.ledger.record_observation(RUN, 0, alice.peer_id, 12, 3.0, 16, True)  # back: alice at 12
    assert ledger.recheck_unverified(RUN) == 1
    statuses = {r.epoch: (r.status, r.status_reason) for r in server.storage.ledger.list_receipts(RUN)}
    assert statuses[9][0] == "verified" and "epoch 2 before the gap, epoch 12 after it" in statuses[9][1]
    assert statuses[40][0] == "unverified"


def test_a_coordinator_blind_to_the_dht_accepts_high_epochs_unverified(server, alice):
    _join(server, alice)  # no progress record of the shard is visible (as right after a restart)
    [result] = _submit(server, sign_receipt(_receipt(alice, time.time() - 20, epoch=7), alice))
    assert (result.status, result.verification) == ("accepted", "unverified")


def test_refused_peers_times_and_overlaps(server, alice, mallory):
    _join(server, alice, shards=(0,))
    now = time.time()
    results = _submit(
        server,
        sign_receipt(_receipt(mallory, now - 20), mallory),  # never joined
        sign_receipt(_receipt(alice, now - 20, shard=1), alice),  # not assigned shard 1
        sign_receipt(_receipt(alice, now + 600), alice),  # in the future
        sign_receipt(_receipt(alice, now - 30), alice),  # fine: 30..20 s ago
        sign_receipt(_receipt(alice, now - 25), alice),  # overlaps the previous one: double counting
    )
    assert [r.status for r in results] == ["rejected", "rejected", "rejected", "accepted", "rejected"]
    assert "never joined" in results[0].message and "never assigned shard 1" in results[1].message
    assert "in the future" in results[2].message and "already claims" in results[4].message
    assert _samples(server) == {0: 4 * BATCH}


def test_samples_beyond_measured_throughput_are_refused(server, alice):
    _join(server, alice)
    # the DHT shows alice at 3.2 samples/s; 10 s at 10x that is 320 samples (plus two batches of slack)
    server.storage.ledger.record_observation(RUN, 0, alice.peer_id, 0, 3.2, 16, True)
    start = time.time() - 20
    ok = sign_receipt(_receipt(alice, start, steps=4, samples=32), alice)
    too_many = sign_receipt(_receipt(alice, start + 10, steps=50, samples=400), alice)
    results = _submit(server, ok, too_many)
    assert [r.status for r in results] == ["accepted", "rejected"]
    assert "far beyond the peer's measured throughput of 3.2 samples/s" in results[1].message


def _observation(epoch, first, last, rate=4.0, bound=True):
    return ObservationRecord(RUN, 0, "peer", epoch, rate, 8, bound, first, last)


def test_cross_check_marks_verified_unverified_and_disputed(server, alice):
    policy = LedgerPolicy()
    t = lambda seconds: datetime.fromtimestamp(1_000_000 + seconds, tz=timezone.utc)  # noqa: E731
    base = dict(receipt_id="r", run_name=RUN, shard=0, peer_id="peer", worker_id=None, steps=4, tokens=0,
                compute_seconds=8.0, loss=1.0, started_at=t(0), ended_at=t(10), received_at=t(11), payload="",
                public_key="", signature="", status="unverified", status_reason="", checked_at=None)
    receipt = ReceiptRecord(epoch=3, samples=32, **base)
    during = [_observation(2, t(-5), t(4)), _observation(3, t(5), t(12))]
    assert classify(receipt, during, policy)[0] == "verified"
    assert classify(receipt, [], policy)[0] == "unverified"
    assert classify(receipt, [_observation(3, t(5), t(12), bound=False)], policy)[0] == "unverified"
    # claims 32 samples in 10 s (3.2/s): far above a peer the DHT shows at 0.5 samples/s
    status, reason = classify(receipt, [_observation(3, t(5), t(12), rate=0.5)], policy)
    assert status == "disputed" and "at most 0.5" in reason
    # claims epoch 6, seen afterwards still at epoch 3
    status, reason = classify(ReceiptRecord(epoch=6, samples=32, **base), [_observation(3, t(5), t(20))] +
                              [_observation(3, t(15), t(20))], policy)
    assert status == "disputed" and "even after the interval" in reason
    # claims epoch 6, nothing seen after the interval yet: not decided
    assert classify(ReceiptRecord(epoch=6, samples=32, **base), during, policy)[0] == "unverified"
    # claims epoch 0, but the peer was already at epoch 5 before the interval
    status, _ = classify(ReceiptRecord(epoch=0, samples=32, **base), [_observation(5, t(-20), t(-2))], policy)
    assert status == "disputed"


def test_receipts_become_verified_when_the_dht_catches_up_and_the_leaderboard_counts_them(server, alice, mallory):
    _join(server, alice)
    _join(server, mallory)
    now = time.time()
    _submit(server, *(sign_receipt(_receipt(alice, now - 30 + 10 * i, epoch=1), alice) for i in range(3)))
    _submit(server, sign_receipt(_receipt(mallory, now - 30, epoch=1), mallory))
    with CoordinatorClient(server.address) as client:
        assert list(client.leaderboard(RUN).entries) == []  # nothing verified yet
        everything = client.leaderboard(RUN, include_unverified=True)
    assert [(e.display_name, e.samples) for e in everything.entries] == [("alice", 96), ("mallory", 32)]
    assert everything.total_samples == 128 and everything.entries[0].share == pytest.approx(0.75)

    server.storage.ledger.record_observation(RUN, 0, alice.peer_id, 1, 3.5, 8, True)  # what the watcher records
    assert server.ledger.recheck_unverified(RUN) == 3
    with CoordinatorClient(server.address) as client:
        board = client.leaderboard(RUN)
        with pytest.raises(CoordinatorError, match="no run named 'nope'"):
            client.leaderboard("nope")
    [entry] = board.entries
    assert (entry.peer_id, entry.samples, entry.verified_samples, entry.receipts) == (alice.peer_id, 96, 96, 3)
    assert entry.share == 1.0 and entry.compute_hours == pytest.approx(3 * 8.0 / 3600)
    assert datetime.fromisoformat(entry.last_seen).timestamp() == pytest.approx(now, abs=1e-3)


def test_outbox_keeps_receipts_while_the_coordinator_is_down_and_drains_after_restart(tmp_path, spec, alice):
    port = free_port()
    url = f"sqlite:///{tmp_path / 'coordinator.db'}"
    server = Server(url, port)
    server.runs.launch(spec)
    _join(server, alice)
    outbox = Outbox(tmp_path / "outbox.sqlite", server.address)
    sender = OutboxSender(outbox, lambda: CoordinatorClient(server.address, timeout=5.0), interval_s=0.2).start()
    start = time.time() - 100  # 12 receipts of 10 s, ending within the allowed clock skew
    expected = 0
    try:
        for index in range(5):
            outbox.put(sign_receipt(_receipt(alice, start + 10 * index), alice))
            expected += 4 * BATCH
        sender.kick()
        deadline = time.monotonic() + 30
        while outbox.count() and time.monotonic() < deadline:
            time.sleep(0.1)
        assert outbox.count() == 0
        server.stop()  # the coordinator goes away; the worker keeps producing receipts
        for index in range(5, 12):
            outbox.put(sign_receipt(_receipt(alice, start + 10 * index), alice))
            expected += 4 * BATCH
        time.sleep(1.0)
        assert outbox.count() == 7  # nothing lost, nothing dropped
        server = Server(url, port)  # restarted on the same database and port
        deadline = time.monotonic() + 30
        while outbox.count() and time.monotonic() < deadline:
            time.sleep(0.1)
        assert outbox.count() == 0 and outbox.rejected() == []
        assert sender.stop(drain_timeout_s=5) == 0
        assert _samples(server) == {0: expected}
        assert len(server.storage.ledger.list_receipts(RUN)) == 12
    finally:
        server.stop()
        outbox.close()


def test_outbox_sets_rejected_receipts_aside_with_the_reason(server, alice, tmp_path):
    _join(server, alice)
    outbox = Outbox(tmp_path / "outbox.sqlite", server.address)
    outbox.put(sign_receipt(_receipt(alice, time.time() - 20, shard=5), alice))
    outbox.put(sign_receipt(_receipt(alice, time.time() - 40), alice))
    sender = OutboxSender(outbox, lambda: CoordinatorClient(server.address))
    assert sender.drain_once()
    assert outbox.count() == 0
    [(receipt_id, reason)] = outbox.rejected()
    assert "has no shard 5" in reason
    assert _samples(server) == {0: 4 * BATCH}
    outbox.close()


def test_outbox_persists_across_reopening(tmp_path, alice):
    path = tmp_path / "outbox.sqlite"
    outbox = Outbox(path, "127.0.0.1:1")
    signed = sign_receipt(_receipt(alice, time.time() - 20), alice)
    outbox.put(signed)
    outbox.put(signed)  # putting the same receipt twice queues it once
    outbox.close()
    again = Outbox(path, "127.0.0.1:1")
    assert again.pending() == [signed]
    assert Outbox(path, "elsewhere:1").count() == 0  # receipts are kept per coordinator
    again.close()


def test_many_concurrent_workers_lose_and_double_count_nothing(db_url, spec, tmp_path):
    """12 workers submit at once over gRPC, each resending some of its receipts; every receipt counts once."""
    server = Server(db_url, free_port())
    server.runs.launch(spec)
    identities = [load_or_create_identity(tmp_path / f"worker{index}.key") for index in range(12)]
    for identity in identities:
        _join(server, identity)
    start = time.time() - 100

    def work(identity) -> int:
        receipts = [sign_receipt(_receipt(identity, start + 4 * index, seconds=4.0, shard=index % 2,
                                          samples=BATCH * (1 + index % 4), steps=4), identity) for index in range(16)]
        accepted = 0
        with CoordinatorClient(server.address) as client:
            for index, signed in enumerate(receipts):
                batch = [signed] + ([receipts[index - 1]] if index else [])  # a resend rides along
                results = client.submit_receipts(batch)
                accepted += sum(result.status == "accepted" for result in results)
                assert all(result.status in ("accepted", "duplicate") for result in results), results
        return accepted

    try:
        with futures.ThreadPoolExecutor(len(identities)) as pool:
            accepted = list(pool.map(work, identities))
        per_worker = {0: sum(BATCH * (1 + i % 4) for i in range(0, 16, 2)),
                      1: sum(BATCH * (1 + i % 4) for i in range(1, 16, 2))}
        assert accepted == [16] * 12
        assert _samples(server) == {shard: 12 * total for shard, total in per_worker.items()}
        assert len(server.storage.ledger.list_receipts(RUN)) == 12 * 16
    finally:
        server.stop()
