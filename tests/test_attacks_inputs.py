"""Attacks on a coordinator's inputs and resources, from the outside: a real ``swarm coordinator`` process on
loopback and real gRPC clients. Each test sends what an attacker would, checks the refusal (status code and a
clear message), that the coordinator is still up and answering, and that its data is unchanged where it should
be. Request loops are bounded in count and time, and only 127.0.0.1 is targeted."""

from __future__ import annotations

import json
import time
from pathlib import Path
from types import SimpleNamespace

import grpc
import pytest
from typer.testing import CliRunner

from nomoat_cli.app import app
from nomoat_proto import coordinator_pb2 as pb
from nomoat_proto import coordinator_pb2_grpc as pb_grpc
from swarm.client import CHANNEL_OPTIONS
from swarm.credentials import OPERATOR_TOKEN_FILE, read_operator_token
from swarm.identity import Identity, load_or_create_identity
from swarm.join_proof import join_statement, leave_statement, sign_statement
from swarm.receipts import Receipt, SignedReceipt, sign_receipt
from tests.coordinator_process import CoordinatorProcess, wait_until

RUN = "attacked"
BIG_TEXT_LINES, BIG_TEXT_CHARS = 1500, 8000  # a ~12 MB data slice: far more than HTTP/2 windows buffer
IDLE_S = 3.0  # the module's coordinator cancels a stream whose client took nothing for this long
runner = CliRunner()


def operator_metadata(process: CoordinatorProcess) -> tuple[tuple[str, str], ...]:
    """The gRPC metadata of an operator call to ``process``: its operator token."""
    token = read_operator_token(process.data_dir / OPERATOR_TOKEN_FILE)
    return (("authorization", f"Bearer {token}"),)


def launch(process: CoordinatorProcess, spec_json: str, timeout: float = 120.0) -> pb.LaunchRunResponse:
    """Every LaunchRun of this module goes through here: an operator call, with the coordinator's token."""
    with grpc.insecure_channel(process.address, options=CHANNEL_OPTIONS) as channel:
        return pb_grpc.CoordinatorStub(channel).LaunchRun(pb.LaunchRunRequest(spec_json=spec_json), timeout=timeout,
                                                          metadata=operator_metadata(process))


def spec_json(**fields) -> str:
    return json.dumps({"name": RUN, "base_model": "tiny", "dataset": "big.txt", "data_slices": 1, **fields})


@pytest.fixture(scope="module")
def coordinator(tmp_path_factory):
    """One coordinator process for the module, with a run whose data slice is large."""
    root = tmp_path_factory.mktemp("attacks")
    datasets = root / "datasets"
    datasets.mkdir()
    (datasets / "big.txt").write_text("".join(f"{i:06d} " + "x" * BIG_TEXT_CHARS + "\n" for i in range(BIG_TEXT_LINES)))
    process = CoordinatorProcess(root / "coordinator", "--dataset-dir", str(datasets),
                                 "--limit", f"stream_idle_s={IDLE_S}").start()
    try:
        launch(process, spec_json())
        yield process
    finally:
        process.stop()


@pytest.fixture
def stub(coordinator):
    with grpc.insecure_channel(coordinator.address, options=CHANNEL_OPTIONS) as channel:
        yield pb_grpc.CoordinatorStub(channel)


def refusal(call) -> grpc.RpcError:
    with pytest.raises(grpc.RpcError) as error:
        result = call()
        if not hasattr(result, "ListFields"):  # a stream: its status comes while reading it
            list(result)
    return error.value


def assert_still_up(process: CoordinatorProcess, timeout: float = 5.0) -> pb.StatusResponse:
    """The process runs and a fresh client's GetStatus is answered within ``timeout`` seconds."""
    assert process.alive(), process.log()
    with grpc.insecure_channel(process.address, options=CHANNEL_OPTIONS) as channel:
        return pb_grpc.CoordinatorStub(channel).GetStatus(pb.StatusRequest(), timeout=timeout)


def coordinator_id(stub) -> str:
    """The peer ID that signed Joins and Leaves to this coordinator must name (public: anyone may ask)."""
    return stub.GetCoordinatorInfo(pb.CoordinatorInfoRequest(), timeout=10).coordinator_id


def signed_join(stub, identity: Identity, *, run_name: str = RUN, peer_id: str | None = None,
                display_name: str = "", max_shards: int = 0, device: str = "cpu") -> pb.JoinRequest:
    """A JoinRequest with any field values (even hostile ones), signed by ``identity`` over a fresh timestamp and
    this coordinator's id, exactly as ``CoordinatorClient.join`` signs it: a stranger's Join is this, with its own
    key. The fields are signed as sent; the coordinator checks the signature before it cleans them."""
    peer_id = identity.peer_id if peer_id is None else peer_id
    now = time.time()
    statement = join_statement(coordinator=coordinator_id(stub), run=run_name, peer_id=peer_id,
                               display_name=display_name, max_shards=max_shards, device=device, timestamp=now)
    proof = sign_statement(identity, statement, now)
    return pb.JoinRequest(run_name=run_name, peer_id=peer_id, display_name=display_name, max_shards=max_shards,
                          device=device, public_key=proof.public_key, signature=proof.signature,
                          timestamp=proof.timestamp)


def signed_leave(stub, identity: Identity, worker_id: str) -> pb.LeaveRequest:
    """A LeaveRequest for ``worker_id`` (any string), signed by ``identity``."""
    now = time.time()
    statement = leave_statement(coordinator=coordinator_id(stub), worker_id=worker_id, peer_id=identity.peer_id,
                                timestamp=now)
    proof = sign_statement(identity, statement, now)
    return pb.LeaveRequest(worker_id=worker_id, public_key=proof.public_key, signature=proof.signature,
                           timestamp=proof.timestamp)


def join(stub, identity: Identity, **fields) -> pb.Assignment:
    """Join the module's run as ``identity``, with a correctly signed request."""
    return stub.Join(signed_join(stub, identity, **fields), timeout=30)


def slice_request(assignment: pb.Assignment) -> pb.DataSliceRequest:
    """The StreamDataSlice request of the data slice that ``assignment`` gave its worker."""
    return pb.DataSliceRequest(run_name=assignment.run_name, data_slice=assignment.data_slice,
                               worker_id=assignment.worker_id)


def signed_raw(identity, **fields) -> SignedReceipt:
    """A receipt with any field values (even out of range), signed by ``identity``."""
    values = dict(receipt_id="r" * 32, run=RUN, shard=0, peer_id=identity.peer_id, epoch=0, steps=1, samples=4,
                  tokens=100, compute_seconds=1.0, loss=4.0, started_at=time.time() - 2, ended_at=time.time())
    payload = json.dumps({"format": "nomoat.receipt.v1", **values, **fields}, sort_keys=True,
                         separators=(",", ":")).encode()
    return SignedReceipt(payload=payload, public_key=identity.public_key_der, signature=identity.sign(payload))


def submit(stub, *receipts: SignedReceipt) -> list[pb.ReceiptResult]:
    batch = pb.ReceiptBatch(receipts=[pb.SignedReceipt(payload=r.payload, public_key=r.public_key,
                                                       signature=r.signature) for r in receipts])
    return list(stub.SubmitReceipts(batch, timeout=30).results)


def test_streams_that_never_read_cannot_take_every_thread(coordinator, stub, tmp_path):
    # the attacker joins with its own key (anyone can), then opens 16 streams of its slice and never reads them
    assignment = join(stub, load_or_create_identity(tmp_path / "attacker.key"), display_name="hog")
    request = slice_request(assignment)
    streams = [stub.StreamDataSlice(request, timeout=60) for _ in range(16)]
    try:
        time.sleep(1.0)  # every stream has reached the server and is blocked on a client that does not read
        started = time.monotonic()
        status = assert_still_up(coordinator, timeout=5.0)  # another client, while 16 streams are held
        assert [run.run_name for run in status.runs] == [RUN] and time.monotonic() - started < 5.0
        wait_until(lambda: sum(stream.done() for stream in streams) >= 12, 15, "excess streams were not refused")
        refused = [stream for stream in streams if stream.done()]
        assert all(stream.code() == grpc.StatusCode.RESOURCE_EXHAUSTED for stream in refused)
        assert "at most 4 streams at once per client address" in refused[0].details()
        admitted = [stream for stream in streams if not stream.done()]
        assert len(admitted) == 4 and next(admitted[0]).texts  # an admitted stream still delivers
    finally:
        for stream in streams:
            stream.cancel()


def test_an_idle_stream_is_cancelled_and_its_slot_freed(coordinator, stub, tmp_path):
    request = slice_request(join(stub, load_or_create_identity(tmp_path / "attacker.key"), display_name="idler"))
    cancelled = coordinator.log().count("idle (limit")
    held = [stub.StreamDataSlice(request, timeout=60) for _ in range(4)]
    try:
        wait_until(lambda: coordinator.log().count("idle (limit") >= cancelled + 4, 4 * IDLE_S + 5,
                   "idle streams were not cancelled")
        assert "cancelling a stream from ipv4:127.0.0.1: idle (limit 3s)" in coordinator.log()
        for stream in held:  # what the client had buffered, then the cancellation
            assert refusal(lambda: stream).code() == grpc.StatusCode.CANCELLED
        fresh = [stub.StreamDataSlice(request, timeout=60) for _ in range(4)]  # the slots are free again
        assert all(sum(len(chunk.texts) for chunk in stream) == BIG_TEXT_LINES * 9 // 10 for stream in fresh)
    finally:
        for stream in held:
            stream.cancel()
    assert_still_up(coordinator)


def test_huge_display_names_are_refused_or_cut_and_printed_clean(coordinator, stub, tmp_path):
    identity = load_or_create_identity(tmp_path / "attacker.key")
    before, db_size = coordinator.db_snapshot(), (coordinator.data_dir / "coordinator.db").stat().st_size
    for _ in range(3):  # correctly signed, so what refuses it is the request size limit alone
        error = refusal(lambda: join(stub, identity, display_name="A" * 40_000_000))
        assert error.code() == grpc.StatusCode.RESOURCE_EXHAUSTED and "larger than max" in error.details()
    assert coordinator.db_snapshot() == before
    hostile = "\x1b[2J\x1b[31mroot\x1b[0m\n\u202e" + "B" * 3_000_000
    # signed over the name and device as sent; the coordinator checks that, then stores them cleaned
    assignment = join(stub, identity, display_name=hostile, device="\x1b]0;pwned\x07cpu" + "d" * 100_000)
    [worker] = [w for w in coordinator.db_snapshot()["workers"] if assignment.worker_id in w]
    assert "root BBB" in "".join(str(v) for v in worker)
    assert all(len(v) <= 64 and "\x1b" not in v for v in worker if isinstance(v, str))
    assert (coordinator.data_dir / "coordinator.db").stat().st_size - db_size < 1_000_000
    receipt = sign_receipt(Receipt.new(run=RUN, shard=0, peer_id=identity.peer_id, epoch=0, steps=1, samples=4,
                                       tokens=100, compute_seconds=1.0, loss=4.0, started_at=time.time() - 2,
                                       ended_at=time.time()), identity)
    assert [r.status for r in submit(stub, receipt)] == ["accepted"]
    board = stub.GetLeaderboard(pb.LeaderboardRequest(run_name=RUN, include_unverified=True), timeout=10)
    assert [e.display_name for e in board.entries] == ["root " + "B" * 59] and board.omitted_entries == 0
    printed = runner.invoke(app, ["leaderboard", "--run", RUN, "--all", "-c", coordinator.address])
    assert printed.exit_code == 0, printed.output
    assert "root BBB" in printed.output and "\x1b" not in printed.output and "\u202e" not in printed.output
    assert_still_up(coordinator)


@pytest.mark.parametrize("text, reason", [
    ("[" * 100_000 + "]" * 100_000, "at most 65536 are accepted"),
    ("[" * 30_000 + "]" * 30_000, "nests deeper than 32 levels"),
    ('{"name": "x", "lora": ' * 20_000 + "{}" + "}" * 20_000, "at most 65536 are accepted"),
    ("[1, 2]", "must be an object"),
    ("{not json", "not valid JSON"),
])
def test_hostile_spec_json_is_refused_cleanly(coordinator, text, reason):
    before = coordinator.db_snapshot()
    error = refusal(lambda: launch(coordinator, text))
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT and reason in error.details()
    assert coordinator.db_snapshot() == before
    assert_still_up(coordinator)


@pytest.mark.parametrize("fields, reason", [
    ({"name": "demo\n"}, "name"),
    ({"name": "x" * 1000}, "name"),
    ({"name": "infwd", "weight_decay": float("inf")}, "weight_decay"),
    ({"name": "infalpha", "lora": {"alpha": float("inf")}}, "alpha"),
    ({"name": "nanlr", "lr": float("nan")}, "lr"),
])
def test_bad_spec_values_are_refused(coordinator, fields, reason):
    before = coordinator.db_snapshot()
    text = spec_json(**fields)  # json writes Infinity / NaN, as an attacker would send them
    error = refusal(lambda: launch(coordinator, text))
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT and reason in error.details()
    assert len(error.details()) < 2000
    assert coordinator.db_snapshot() == before
    assert_still_up(coordinator)


def test_a_dataset_outside_the_operator_folders_is_never_read_and_its_existence_not_told(coordinator, tmp_path):
    secret = tmp_path / "secret-notes.txt"
    secret.write_text("the operator's password\nanother secret line\n")
    home_secret = Path("~/.config/secret-notes.txt")
    before = coordinator.db_snapshot()
    answers = []
    for dataset in (str(secret), str(home_secret), "../" * 8 + str(secret).lstrip("/"), "/no/such/file.txt"):
        error = refusal(lambda: launch(coordinator, spec_json(name="steal", dataset=dataset)))
        assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert "password" not in error.details() and "secret line" not in error.details()
        answers.append(error.details().replace(dataset, "<name>"))
    assert len(set(answers)) == 1, answers  # an existing file and a missing one get the same answer
    assert "not a file in this coordinator's dataset folders" in answers[0]
    assert coordinator.db_snapshot() == before
    assert_still_up(coordinator)


def test_each_bad_receipt_is_refused_alone_and_the_batch_answered(coordinator, stub, tmp_path):
    identity = load_or_create_identity(tmp_path / "worker.key")
    join(stub, identity, display_name="honest")
    good = sign_receipt(Receipt.new(run=RUN, shard=0, peer_id=identity.peer_id, epoch=0, steps=1, samples=4,
                                    tokens=100, compute_seconds=1.0, loss=4.0, started_at=time.time() - 2,
                                    ended_at=time.time()), identity)
    bad = [signed_raw(identity, receipt_id="b" * 32, started_at=1e300),
           signed_raw(identity, receipt_id="c" * 32, epoch=2**64),
           signed_raw(identity, receipt_id="d" * 10_000),
           signed_raw(identity, receipt_id="e" * 32, epoch=2**62)]
    before = len(coordinator.db_snapshot()["receipts"])
    results = submit(stub, bad[0], good, bad[1], bad[2], bad[3])
    assert [r.status for r in results] == ["rejected", "accepted", "rejected", "rejected", "rejected"]
    assert "started_at must be within" in results[0].message and "epoch must be within" in results[2].message
    assert "at most 4096 are accepted" in results[3].message and "epoch must be within" in results[4].message
    assert len(coordinator.db_snapshot()["receipts"]) == before + 1
    error = refusal(lambda: submit(stub, *[good] * 513))
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT and "at most 512 are accepted" in error.details()
    assert_still_up(coordinator)


@pytest.fixture
def attacker(coordinator, stub, tmp_path):
    """A stranger with its own identity key and a live registration of the module's run (made before the test
    takes its snapshot of the database), and the operator's metadata for the operator RPCs."""
    identity = load_or_create_identity(tmp_path / "peer.key")
    assignment = join(stub, identity, display_name="attacker")
    return SimpleNamespace(identity=identity, assignment=assignment,
                           operator=operator_metadata(coordinator))


@pytest.mark.parametrize("call, code, reason", [
    (lambda s, a: s.Join(signed_join(s, a.identity, max_shards=-5), timeout=10),
     grpc.StatusCode.INVALID_ARGUMENT, "max_shards must be 0 (all shards) or 1..64, got -5"),
    (lambda s, a: s.Join(signed_join(s, a.identity, run_name="demo\n"), timeout=10),
     grpc.StatusCode.NOT_FOUND, "no run named 'demo '"),
    (lambda s, a: s.Join(signed_join(s, a.identity, peer_id="not a peer\x1b[2J" * 1000), timeout=10),
     grpc.StatusCode.INVALID_ARGUMENT, "is not a base58 libp2p peer ID"),
    (lambda s, a: s.GetStatus(pb.StatusRequest(run_name="r" * 1_000_000), timeout=10),
     grpc.StatusCode.NOT_FOUND, "(1000000 characters)"),
    (lambda s, a: s.GetLeaderboard(pb.LeaderboardRequest(run_name=RUN + "\n"), timeout=10),
     grpc.StatusCode.NOT_FOUND, "no run named"),
    # a slice is served only to the live registration it was assigned to, so -1 is refused as not the
    # attacker's slice before its range is looked at
    (lambda s, a: s.StreamDataSlice(pb.DataSliceRequest(run_name=RUN, data_slice=-1,
                                                        worker_id=a.assignment.worker_id), timeout=10),
     grpc.StatusCode.PERMISSION_DENIED, f"of run '{RUN}' assigned data slice -1"),
    (lambda s, a: s.StreamDataSlice(pb.DataSliceRequest(run_name=RUN, data_slice=0,
                                                        worker_id="w\x1b[2J" * 100_000), timeout=10),
     grpc.StatusCode.PERMISSION_DENIED, "StreamDataSlice: no worker"),
    (lambda s, a: s.GetVersion(pb.VersionRequest(run_name=RUN, version=-1), timeout=10),
     grpc.StatusCode.INVALID_ARGUMENT, "version must be 0 (latest)"),
    (lambda s, a: s.PullAdapter(pb.PullRequest(run_name=RUN, offsets={"f": -1}), timeout=10),
     grpc.StatusCode.INVALID_ARGUMENT, "has offset -1"),
    # an operator RPC: even the operator's own out-of-range value is refused
    (lambda s, a: s.MarkRelease(pb.ReleaseRequest(run_name=RUN, version=2**31 - 1), timeout=10,
                                metadata=a.operator),
     grpc.StatusCode.INVALID_ARGUMENT, "version must be 0 (latest)"),
    (lambda s, a: s.Leave(signed_leave(s, a.identity, "w" * 100_000), timeout=10),
     grpc.StatusCode.NOT_FOUND, "no worker with id"),
])
def test_out_of_range_fields_are_refused_without_echoing_them(coordinator, stub, attacker, call, code, reason):
    before = coordinator.db_snapshot()
    error = refusal(lambda: call(stub, attacker))
    assert error.code() == code and reason in error.details(), error.details()
    assert len(error.details()) < 300
    assert coordinator.db_snapshot() == before
    assert_still_up(coordinator)


def test_a_burst_beyond_the_rate_limit_is_refused_then_served_again(tmp_path):
    process = CoordinatorProcess(tmp_path / "coordinator", "--limit", "rate_burst=20", "--limit",
                                 "rate_per_s=4").start()
    try:
        codes = []
        with grpc.insecure_channel(process.address, options=CHANNEL_OPTIONS) as channel:
            stub = pb_grpc.CoordinatorStub(channel)
            deadline = time.monotonic() + 10
            for _ in range(60):  # bounded in count and time
                if time.monotonic() > deadline:
                    break
                try:
                    stub.GetStatus(pb.StatusRequest(), timeout=5)
                    codes.append(grpc.StatusCode.OK)
                except grpc.RpcError as error:
                    codes.append(error.code())
                    last = error
        assert codes[:20] == [grpc.StatusCode.OK] * 20
        assert grpc.StatusCode.RESOURCE_EXHAUSTED in codes and set(codes) <= {grpc.StatusCode.OK,
                                                                           grpc.StatusCode.RESOURCE_EXHAUSTED}
        assert "rate limit: at most 4 requests per second" in last.details()
        refusals = [line for line in process.log().splitlines() if "RESOURCE_EXHAUSTED: rate limit" in line]
        assert 1 <= len(refusals) <= 2  # a flood is logged once per address every few seconds, with its count
        time.sleep(0.6)  # two tokens back
        assert_still_up(process)
    finally:
        process.stop()


def test_the_leaderboard_answer_is_bounded_and_says_how_many_were_left_out(tmp_path):
    process = CoordinatorProcess(tmp_path / "coordinator", "--limit", "max_leaderboard_rows=1").start()
    try:
        launch(process, json.dumps({"name": RUN, "base_model": "tiny", "dataset": "sample"}))
        with grpc.insecure_channel(process.address, options=CHANNEL_OPTIONS) as channel:
            stub = pb_grpc.CoordinatorStub(channel)
            for name in ("first", "second"):
                identity = load_or_create_identity(tmp_path / f"{name}.key")
                join(stub, identity, display_name=name)
                assert [r.status for r in submit(stub, signed_raw(identity, receipt_id=name * 4))] == ["accepted"]
            board = stub.GetLeaderboard(pb.LeaderboardRequest(run_name=RUN, include_unverified=True), timeout=10)
        assert len(board.entries) == 1 and board.omitted_entries == 1 and board.total_samples == 8
        printed = runner.invoke(app, ["leaderboard", "--run", RUN, "--all", "-c", process.address])
        assert "... and 1 more contributor(s)" in printed.output, printed.output
        assert_still_up(process)
    finally:
        process.stop()
