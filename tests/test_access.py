"""Roles and credentials against a real coordinator's gRPC server on loopback: operator RPCs need the operator
token, Joins and Leaves are signed by the worker's key (no replay, no stale or foreign signatures), token runs need
a valid join token, private runs are read only with a credential, an empty run name is refused without a default
run, and the operator administers runs. Every refusal leaves the coordinator up and its data unchanged."""

from __future__ import annotations

import logging
import stat
import time

from pathlib import Path

import grpc
import pytest
from typer.testing import CliRunner

from coordinator import access as access_module
from coordinator.access import METHOD_ROLES, load_or_create_operator_token
from coordinator.publisher import PublishPolicy, ShardSnapshot
from coordinator.server import Coordinator, CoordinatorConfig
from nomoat_cli.app import app
from nomoat_proto import coordinator_pb2 as pb
from nomoat_proto import coordinator_pb2_grpc as pb_grpc
from swarm.client import CoordinatorClient, CoordinatorError, Endpoint
from swarm.credentials import read_operator_token
from swarm.identity import load_or_create_identity
from swarm.join_proof import hand_over_statement, join_statement, leave_statement, sign_statement
from swarm.pull import pull
from swarm.spec import RunSpec
from tests.coordinator_process import coordinator_process, db_snapshot, wait_until  # noqa: F401 (fixture)
from worker.donate import DonateConfig

runner = CliRunner()
OPEN, TOKEN, PRIVATE = "open-run", "token-run", "private-run"


@pytest.fixture(scope="module")
def coordinator(tmp_path_factory):
    config = CoordinatorConfig(data_dir=tmp_path_factory.mktemp("coord"), port=0, publish=False,
                               # these tests publish made-up adapters, worse than the base model
                               publish_policy=PublishPolicy(max_eval_regression=1e9, max_base_regression=1e9))
    with Coordinator(config) as running:
        with operator(running) as client:
            client.launch_run(RunSpec(name=OPEN, data_slices=2))
            client.launch_run(RunSpec(name=TOKEN, data_slices=2), join_policy="token")
            client.launch_run(RunSpec(name=PRIVATE, data_slices=2), join_policy="token", private=True)
        yield running


@pytest.fixture(scope="module")
def keys(tmp_path_factory):
    folder = tmp_path_factory.mktemp("keys")
    return {name: load_or_create_identity(folder / f"{name}.key") for name in ("alice", "mallory")}


def operator_token(coordinator) -> str:
    return read_operator_token(coordinator.operator_token_file)


def operator(coordinator) -> CoordinatorClient:
    return CoordinatorClient(coordinator.operator_endpoint())


def call(coordinator, method: str, request, operator_token: str | None = None, join_token: str | None = None):
    """One RPC through a raw stub (an attacker's client), presenting exactly the credentials given."""
    metadata = Endpoint(coordinator.address, operator_token=operator_token, join_token=join_token).metadata()
    with grpc.insecure_channel(coordinator.address) as channel:
        result = getattr(pb_grpc.CoordinatorStub(channel), method)(request, timeout=30, metadata=metadata)
        return list(result) if not hasattr(result, "ListFields") else result


def refused(coordinator, method: str, request, **credentials) -> grpc.RpcError:
    with pytest.raises(grpc.RpcError) as error:
        call(coordinator, method, request, **credentials)
    return error.value


def db_rows(coordinator) -> dict[str, list[tuple]]:
    return db_snapshot(coordinator.config.data_dir)


def still_serving(coordinator) -> None:
    assert call(coordinator, "GetStatus", pb.StatusRequest(run_name=OPEN)).runs[0].run_name == OPEN


def signed_join(coordinator, identity, run: str, name: str = "alice", *, peer_id: str | None = None,
                timestamp: float | None = None, coordinator_id: str | None = None) -> pb.JoinRequest:
    """A Join as a worker signs it, or as an attacker would forge one (another peer ID, time or coordinator)."""
    peer_id = peer_id or identity.peer_id
    timestamp = time.time() if timestamp is None else timestamp
    statement = join_statement(coordinator=coordinator_id or coordinator.identity.peer_id, run=run, peer_id=peer_id,
                               display_name=name, max_shards=0, device="cpu", timestamp=timestamp)
    proof = sign_statement(identity, statement, timestamp)
    return pb.JoinRequest(run_name=run, peer_id=peer_id, display_name=name, device="cpu",
                          public_key=proof.public_key, signature=proof.signature, timestamp=timestamp)


def signed_leave(coordinator, identity, worker_id: str, peer_id: str) -> pb.LeaveRequest:
    now = time.time()
    statement = leave_statement(coordinator=coordinator.identity.peer_id, worker_id=worker_id, peer_id=peer_id,
                                timestamp=now)
    proof = sign_statement(identity, statement, now)
    return pb.LeaveRequest(worker_id=worker_id, public_key=proof.public_key, signature=proof.signature,
                           timestamp=now)


def signed_hand_over(coordinator, identity, worker_id: str, peer_id: str, epoch: int) -> pb.HandOverRequest:
    now = time.time()
    statement = hand_over_statement(coordinator=coordinator.identity.peer_id, worker_id=worker_id, peer_id=peer_id,
                                    epoch=epoch, timestamp=now)
    proof = sign_statement(identity, statement, now)
    return pb.HandOverRequest(worker_id=worker_id, epoch=epoch, public_key=proof.public_key,
                              signature=proof.signature, timestamp=now)


def new_token(coordinator, run: str, label: str = "") -> str:
    with operator(coordinator) as client:
        return client.create_join_token(run, label).token


# The operator credential

def test_the_operator_token_file_is_made_once_with_mode_0600(tmp_path):
    path = tmp_path / "operator.token"
    token = load_or_create_operator_token(path)
    assert len(token) >= 40 and stat.S_IMODE(path.stat().st_mode) == 0o600
    assert load_or_create_operator_token(path) == token == read_operator_token(path)
    assert [p.name for p in tmp_path.iterdir()] == ["operator.token"]  # no partial file left
    path.chmod(0o644)
    with pytest.raises(PermissionError, match="chmod 600"):
        load_or_create_operator_token(path)


def test_every_rpc_of_the_service_has_a_role():
    methods = set(pb.DESCRIPTOR.services_by_name["Coordinator"].methods_by_name)
    assert methods == set(METHOD_ROLES)


def test_an_rpc_missing_from_the_table_is_refused(coordinator, monkeypatch):
    monkeypatch.delitem(access_module.METHOD_ROLES, "GetStatus")
    error = refused(coordinator, "GetStatus", pb.StatusRequest(), operator_token=operator_token(coordinator))
    assert error.code() == grpc.StatusCode.PERMISSION_DENIED and "not open to any caller" in error.details()


OPERATOR_CALLS = [
    ("LaunchRun", lambda: pb.LaunchRunRequest(spec_json=RunSpec(name="sneaky", data_slices=2).to_json())),
    ("PublishNow", lambda: pb.PublishRequest(run_name=OPEN)),
    ("MarkRelease", lambda: pb.ReleaseRequest(run_name=OPEN, version=1, release=False)),
    ("CreateJoinToken", lambda: pb.CreateJoinTokenRequest(run_name=TOKEN, label="mine")),
    ("ListJoinTokens", lambda: pb.ListJoinTokensRequest(run_name=TOKEN)),
    ("RevokeJoinToken", lambda: pb.RevokeJoinTokenRequest(token_id=1)),
    ("SetRunState", lambda: pb.RunStateRequest(run_name=OPEN, state="removed", force=True)),
    ("SetDefaultRun", lambda: pb.DefaultRunRequest(run_name=OPEN)),
]


@pytest.mark.parametrize("method, request_of", OPERATOR_CALLS, ids=[m for m, _ in OPERATOR_CALLS])
def test_operator_rpcs_without_or_with_a_wrong_token_are_refused_and_change_nothing(coordinator, method,
                                                                                     request_of):
    volunteer_token = new_token(coordinator, TOKEN)
    before = db_rows(coordinator)
    missing = refused(coordinator, method, request_of())
    assert missing.code() == grpc.StatusCode.UNAUTHENTICATED
    assert "operator token" in missing.details() and "--operator-token-file" in missing.details()
    wrong = refused(coordinator, method, request_of(), operator_token="not-the-operator-token")
    assert wrong.code() == grpc.StatusCode.PERMISSION_DENIED and "operator token is wrong" in wrong.details()
    volunteer = refused(coordinator, method, request_of(), join_token=volunteer_token)
    assert volunteer.code() == grpc.StatusCode.UNAUTHENTICATED  # a volunteer's token is no operator token
    assert db_rows(coordinator) == before
    still_serving(coordinator)


def publish_first_version(coordinator, run: str) -> None:
    """Version 1 of ``run`` (LoRA values just off the initial ones), as the publisher stores a swarm's snapshot."""
    if coordinator.storage.versions.get_version(run, 1) is not None:
        return
    runtime = coordinator.runs.get(run)
    tensors = {name: tensor + 0.01 for name, tensor in runtime.initial_lora.items()}
    snapshots = [ShardSnapshot(shard, 1, "peer", {name: tensors[name] for name in names}, ("peer",))
                 for shard, names in enumerate(runtime.shard_names)]
    assert coordinator.publisher.publish_snapshots(runtime, snapshots).published


def test_the_operator_launches_publishes_and_releases(coordinator):
    publish_first_version(coordinator, OPEN)
    with operator(coordinator) as client:
        assert client.mark_release(OPEN, 1).release
        launched = client.launch_run(RunSpec(name="by-operator", data_slices=2))
        assert launched.run_name == "by-operator"
        assert client.publish_now(OPEN).message  # runs (no peers here), refused by nothing but the swarm


def test_anonymous_unmark_of_a_release_is_refused_and_retention_keeps_it(coordinator):
    test_the_operator_launches_publishes_and_releases(coordinator)
    before = db_rows(coordinator)
    error = refused(coordinator, "MarkRelease", pb.ReleaseRequest(run_name=OPEN, version=1, release=False))
    assert error.code() == grpc.StatusCode.UNAUTHENTICATED
    coordinator.retention.keep_versions = 0
    try:
        coordinator.retention.collect(OPEN)
    finally:
        coordinator.retention.keep_versions = 10
    record = coordinator.storage.versions.get_version(OPEN, 1)
    assert record.release and record.collected_at is None
    assert Path(record.path).is_dir()
    assert db_rows(coordinator)["adapter_versions"] == before["adapter_versions"]


# Signed Join and Leave

def test_a_signed_join_works_and_the_client_signs_by_itself(coordinator, keys):
    with CoordinatorClient(coordinator.address) as client:
        assignment = client.join(keys["alice"], OPEN, "alice")
        assert assignment.run_name == OPEN
        assert client.data_slice(OPEN, assignment.data_slice, assignment.worker_id)
        assert client.leave(assignment.worker_id, keys["alice"]).ok
    assert coordinator.storage.runs.get_worker(assignment.worker_id).left


def test_renaming_a_contributor_with_its_peer_id_is_refused(coordinator, keys):
    alice, mallory = keys["alice"], keys["mallory"]
    call(coordinator, "Join", signed_join(coordinator, alice, OPEN, "alice"))
    before = db_rows(coordinator)
    unsigned = pb.JoinRequest(run_name=OPEN, peer_id=alice.peer_id, display_name="\x1b[31mpwned")
    error = refused(coordinator, "Join", unsigned)
    assert error.code() == grpc.StatusCode.UNAUTHENTICATED and "signed" in error.details()
    forged = signed_join(coordinator, mallory, OPEN, "pwned", peer_id=alice.peer_id)  # mallory's key, alice's ID
    error = refused(coordinator, "Join", forged)
    assert error.code() == grpc.StatusCode.PERMISSION_DENIED and "signed by the key of" in error.details()
    assert db_rows(coordinator) == before
    still_serving(coordinator)


def test_a_replayed_stale_foreign_or_altered_join_is_refused(coordinator, keys):
    alice = keys["alice"]
    request = signed_join(coordinator, alice, OPEN, "alice")
    call(coordinator, "Join", request)
    before = db_rows(coordinator)
    replay = refused(coordinator, "Join", request)
    assert replay.code() == grpc.StatusCode.PERMISSION_DENIED and "replay" in replay.details()
    stale = refused(coordinator, "Join", signed_join(coordinator, alice, OPEN, timestamp=time.time() - 300))
    assert stale.code() == grpc.StatusCode.PERMISSION_DENIED and "120 s" in stale.details()
    future = refused(coordinator, "Join", signed_join(coordinator, alice, OPEN, timestamp=time.time() + 300))
    assert future.code() == grpc.StatusCode.PERMISSION_DENIED
    foreign_request = signed_join(coordinator, alice, OPEN, coordinator_id=keys["mallory"].peer_id)
    foreign = refused(coordinator, "Join", foreign_request)
    assert foreign.code() == grpc.StatusCode.PERMISSION_DENIED and "signature does not match" in foreign.details()
    altered = signed_join(coordinator, alice, OPEN, "alice")
    altered.display_name = "someone else"
    assert refused(coordinator, "Join", altered).code() == grpc.StatusCode.PERMISSION_DENIED
    assert db_rows(coordinator) == before


def test_leaving_on_behalf_of_another_worker_is_refused(coordinator, keys):
    alice, mallory = keys["alice"], keys["mallory"]
    assignment = call(coordinator, "Join", signed_join(coordinator, alice, OPEN, "alice"))
    before = db_rows(coordinator)
    error = refused(coordinator, "Leave", pb.LeaveRequest(worker_id=assignment.worker_id))
    assert error.code() == grpc.StatusCode.UNAUTHENTICATED
    error = refused(coordinator, "Leave", signed_leave(coordinator, mallory, assignment.worker_id, mallory.peer_id))
    assert error.code() == grpc.StatusCode.PERMISSION_DENIED
    error = refused(coordinator, "Leave", signed_leave(coordinator, mallory, assignment.worker_id, alice.peer_id))
    assert error.code() == grpc.StatusCode.PERMISSION_DENIED
    assert db_rows(coordinator) == before and not coordinator.storage.runs.get_worker(assignment.worker_id).left
    assert call(coordinator, "Leave", signed_leave(coordinator, alice, assignment.worker_id, alice.peer_id)).ok


def test_a_hand_over_is_taken_only_from_the_worker_itself(coordinator, keys):
    alice, mallory = keys["alice"], keys["mallory"]
    assignment = call(coordinator, "Join", signed_join(coordinator, alice, OPEN, "alice"))
    versions_before = coordinator.storage.versions.list_versions(OPEN)
    error = refused(coordinator, "HandOverState", pb.HandOverRequest(worker_id=assignment.worker_id, epoch=3))
    assert error.code() == grpc.StatusCode.UNAUTHENTICATED
    forged = signed_hand_over(coordinator, mallory, assignment.worker_id, alice.peer_id, 3)
    assert refused(coordinator, "HandOverState", forged).code() == grpc.StatusCode.PERMISSION_DENIED
    altered = signed_hand_over(coordinator, alice, assignment.worker_id, alice.peer_id, 3)
    altered.epoch = 4  # the signature binds the epoch
    assert refused(coordinator, "HandOverState", altered).code() == grpc.StatusCode.PERMISSION_DENIED
    negative = refused(coordinator, "HandOverState", signed_hand_over(coordinator, alice, assignment.worker_id,
                                                                      alice.peer_id, -1))
    assert negative.code() == grpc.StatusCode.INVALID_ARGUMENT and "epoch must be >= 0" in negative.details()
    # the worker's own hand-over is answered: this coordinator publishes nothing (--no-publish), and says so
    reply = call(coordinator, "HandOverState", signed_hand_over(coordinator, alice, assignment.worker_id,
                                                                alice.peer_id, 3))
    assert not reply.kept and "publishes no versions" in reply.message
    assert coordinator.storage.versions.list_versions(OPEN) == versions_before
    call(coordinator, "Leave", signed_leave(coordinator, alice, assignment.worker_id, alice.peer_id))
    gone = refused(coordinator, "HandOverState", signed_hand_over(coordinator, alice, assignment.worker_id,
                                                                  alice.peer_id, 3))
    assert gone.code() == grpc.StatusCode.PERMISSION_DENIED and "has left" in gone.details()


def test_a_data_slice_is_served_only_to_the_worker_assigned_it(coordinator, keys):
    assignment = call(coordinator, "Join", signed_join(coordinator, keys["alice"], OPEN, "alice"))
    other = 1 - assignment.data_slice
    error = refused(coordinator, "StreamDataSlice", pb.DataSliceRequest(run_name=OPEN, data_slice=other))
    assert error.code() == grpc.StatusCode.UNAUTHENTICATED and "worker_id" in error.details()
    for request in (pb.DataSliceRequest(run_name=OPEN, data_slice=other, worker_id=assignment.worker_id),
                    pb.DataSliceRequest(run_name=TOKEN, data_slice=assignment.data_slice,
                                        worker_id=assignment.worker_id),
                    pb.DataSliceRequest(run_name=OPEN, data_slice=0, worker_id="f" * 32)):
        assert refused(coordinator, "StreamDataSlice", request).code() == grpc.StatusCode.PERMISSION_DENIED
    served = call(coordinator, "StreamDataSlice", pb.DataSliceRequest(
        run_name=OPEN, data_slice=assignment.data_slice, worker_id=assignment.worker_id))
    assert sum(len(chunk.texts) for chunk in served) == assignment.slice_samples


# No implicit run

def test_joining_with_an_empty_run_name_needs_a_default_run(coordinator, keys):
    with operator(coordinator) as client:
        client.set_default_run("")
        client.launch_run(RunSpec(name="zz-newest", data_slices=2))  # the newest run, which anyone used to get
    before = db_rows(coordinator)
    error = refused(coordinator, "Join", signed_join(coordinator, keys["alice"], ""))
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "no default run" in error.details() and f"{OPEN} (open)" in error.details()
    assert f"{TOKEN} (token)" in error.details() and PRIVATE not in error.details()  # private names stay private
    assert db_rows(coordinator) == before
    with operator(coordinator) as client:
        assert client.set_default_run(OPEN).default_run == OPEN
        with CoordinatorClient(coordinator.address) as volunteer:
            assert volunteer.coordinator_info().default_run == OPEN
            assert volunteer.join(keys["alice"], "", "alice").run_name == OPEN
        client.set_default_run("")


# Join tokens

def test_a_token_run_needs_a_valid_join_token(coordinator, keys):
    alice = keys["alice"]
    before = db_rows(coordinator)
    missing = refused(coordinator, "Join", signed_join(coordinator, alice, TOKEN))
    assert missing.code() == grpc.StatusCode.UNAUTHENTICATED and "join token of run 'token-run'" in missing.details()
    wrong = refused(coordinator, "Join", signed_join(coordinator, alice, TOKEN), join_token="guessed")
    assert wrong.code() == grpc.StatusCode.PERMISSION_DENIED
    of_other_run = new_token(coordinator, PRIVATE)
    assert refused(coordinator, "Join", signed_join(coordinator, alice, TOKEN),
                   join_token=of_other_run).code() == grpc.StatusCode.PERMISSION_DENIED
    assert db_rows(coordinator)["workers"] == before["workers"]

    token = new_token(coordinator, TOKEN, label="alice's laptop")
    assert call(coordinator, "Join", signed_join(coordinator, alice, TOKEN), join_token=token).run_name == TOKEN
    with CoordinatorClient(Endpoint(coordinator.address, join_token=token)) as client:  # what swarm donate does
        assert client.join(alice, TOKEN, "alice").run_name == TOKEN
    with operator(coordinator) as client:
        listed = client.list_join_tokens(TOKEN)
        [entry] = [t for t in listed if t.label == "alice's laptop"]
        assert token not in repr(listed) and not entry.revoked_at
        client.revoke_join_token(entry.token_id)
    revoked = refused(coordinator, "Join", signed_join(coordinator, alice, TOKEN), join_token=token)
    assert revoked.code() == grpc.StatusCode.PERMISSION_DENIED and "revoked" in revoked.details()
    stored = db_rows(coordinator)["join_tokens"]
    assert not any(token in repr(row) for row in stored)  # only its hash is kept


# Private runs

def test_a_private_run_is_read_only_with_a_credential(coordinator, tmp_path):
    reads = [("GetStatus", pb.StatusRequest(run_name=PRIVATE)),
             ("GetLeaderboard", pb.LeaderboardRequest(run_name=PRIVATE)),
             ("GetVersion", pb.VersionRequest(run_name=PRIVATE)),
             ("PullAdapter", pb.PullRequest(run_name=PRIVATE))]
    for method, request in reads:
        assert refused(coordinator, method, request).code() == grpc.StatusCode.UNAUTHENTICATED, method
        assert refused(coordinator, method, request, join_token="guessed").code() == \
            grpc.StatusCode.PERMISSION_DENIED, method
    assert PRIVATE not in [run.run_name for run in call(coordinator, "GetStatus", pb.StatusRequest()).runs]
    token = new_token(coordinator, PRIVATE)
    [state] = call(coordinator, "GetStatus", pb.StatusRequest(run_name=PRIVATE), join_token=token).runs
    assert (state.private, state.join_policy, state.state) == (True, "token", "active")
    assert call(coordinator, "GetLeaderboard", pb.LeaderboardRequest(run_name=PRIVATE), join_token=token)
    everything = call(coordinator, "GetStatus", pb.StatusRequest(), operator_token=operator_token(coordinator))
    assert PRIVATE in [run.run_name for run in everything.runs]
    publish_first_version(coordinator, PRIVATE)
    with pytest.raises(CoordinatorError, match="is private"):
        pull(coordinator.address, PRIVATE, tmp_path / "anonymous")
    assert not (tmp_path / "anonymous").exists()
    assert pull(Endpoint(coordinator.address, join_token=token), PRIVATE, tmp_path / "adapter").version == 1
    result = runner.invoke(app, ["pull", "-c", coordinator.address, "--run", PRIVATE, "--out", str(tmp_path / "cli"),
                                 "--join-token", token])
    assert result.exit_code == 0, result.output
    # a public run stays public
    assert call(coordinator, "GetLeaderboard", pb.LeaderboardRequest(run_name=OPEN)).run_name == OPEN


# Run administration

def test_the_operator_stops_archives_and_removes_runs(coordinator, keys):
    with operator(coordinator) as client:
        for name in ("to-stop", "to-remove", "broken"):
            client.launch_run(RunSpec(name=name, data_slices=2))
        assert client.set_run_state("to-stop", "stopped").state == "stopped"
        error = refused(coordinator, "Join", signed_join(coordinator, keys["alice"], "to-stop"))
        assert error.code() == grpc.StatusCode.INVALID_ARGUMENT and "is stopped" in error.details()
        states = {run.run_name: run.state for run in client.status().runs}
        assert states["to-stop"] == "stopped" and states[OPEN] == "active"

        client.set_run_state("to-stop", "archived")
        assert "to-stop" not in [run.run_name for run in client.status().runs]
        assert "to-stop" in [run.run_name for run in client.status(include_archived=True).runs]

        with pytest.raises(CoordinatorError, match="is healthy"):
            client.set_run_state("to-remove", "removed")
        assert client.set_run_state("to-remove", "removed", force=True).state == "removed"
        coordinator.runs.forget("broken", "its base model changed")  # what a failed load leaves
        assert client.set_run_state("broken", "removed").state == "removed"
        names = [run.run_name for run in client.status().runs]
        assert "broken" not in names and "to-remove" not in names
        with pytest.raises(CoordinatorError, match="was removed"):
            client.leaderboard("broken")
        with pytest.raises(CoordinatorError, match="was removed"):
            client.set_run_state("broken", "active")
        with pytest.raises(CoordinatorError, match="removed by the operator"):  # relaunching it changes nothing
            client.launch_run(RunSpec(name="broken", data_slices=2))
        assert coordinator.storage.runs.settings("broken").state == "removed"


def test_a_private_default_run_is_named_only_to_who_may_read_it(coordinator):
    with operator(coordinator) as client:
        client.set_default_run(PRIVATE)
        try:
            assert client.coordinator_info().default_run == PRIVATE
            with CoordinatorClient(coordinator.address) as anonymous:
                assert anonymous.coordinator_info().default_run == ""
        finally:
            client.set_default_run("")


def test_refusals_are_logged_without_the_token(coordinator, caplog):
    root = logging.getLogger("nomoat")
    propagate, root.propagate = root.propagate, True
    caplog.set_level(logging.INFO, logger="nomoat")
    try:
        refused(coordinator, "LaunchRun", pb.LaunchRunRequest(spec_json="{}"), operator_token="wrong-secret-value")
    finally:
        root.propagate = propagate
    messages = {r.getMessage() for r in caplog.records if r.name == "nomoat.coordinator.rpc_errors"}
    assert len(messages) == 1  # (a handler the CLI tests configured may record it twice)
    [message] = messages
    assert "LaunchRun" in message and "PERMISSION_DENIED" in message and "127.0.0.1" in message
    assert "wrong-secret-value" not in caplog.text and operator_token(coordinator) not in caplog.text


# The CLI

def test_the_cli_reads_the_operator_token_and_mints_tokens(coordinator, monkeypatch):
    address = coordinator.address
    result = runner.invoke(app, ["launch", "-c", address, "--name", "cli-run", "--data-slices", "2"])
    assert result.exit_code == 2 and "needs the operator token" in result.output
    token_file = str(coordinator.operator_token_file)
    result = runner.invoke(app, ["launch", "-c", address, "--name", "cli-run", "--data-slices", "2",
                                 "--join-policy", "token", "--operator-token-file", token_file])
    assert result.exit_code == 0, result.output
    assert "join policy token" in result.output
    monkeypatch.setenv("NOMOAT_OPERATOR_TOKEN_FILE", token_file)
    created = runner.invoke(app, ["token", "create", "-c", address, "--run", "cli-run", "--label", "bob"])
    assert created.exit_code == 0, created.output
    token = created.output.strip().splitlines()[-1]
    assert "not shown again" in created.output and len(token) >= 40
    listed = runner.invoke(app, ["token", "list", "-c", address, "--run", "cli-run"])
    assert "'bob'" in listed.output and "valid" in listed.output and token not in listed.output
    token_id = [line for line in listed.output.splitlines() if "'bob'" in line][0].split()[0]
    assert runner.invoke(app, ["token", "revoke", "-c", address, token_id]).exit_code == 0
    assert "revoked" in runner.invoke(app, ["token", "list", "-c", address, "--run", "cli-run"]).output
    monkeypatch.delenv("NOMOAT_OPERATOR_TOKEN_FILE")
    monkeypatch.setenv("NOMOAT_OPERATOR_TOKEN", operator_token(coordinator))
    result = runner.invoke(app, ["run", "stop", "-c", address, "cli-run"])
    assert result.exit_code == 0 and "is stopped" in result.output
    status = runner.invoke(app, ["status", "-c", address, "--run", "cli-run"])
    assert "run cli-run [stopped, join token]" in status.output
    # (the in-process coordinator's own log lines come out here too: check the command's last line)
    assert runner.invoke(app, ["run", "default", "-c", address, OPEN]).output.splitlines()[-1] == f"default run: {OPEN}"
    assert runner.invoke(app, ["run", "default", "-c", address]).output.splitlines()[-1] == "default run: none"


def test_private_reads_from_the_cli_take_a_join_token(coordinator):
    result = runner.invoke(app, ["leaderboard", "-c", coordinator.address, "--run", PRIVATE])
    assert result.exit_code == 2 and "is private" in result.output
    token = new_token(coordinator, PRIVATE)
    result = runner.invoke(app, ["leaderboard", "-c", coordinator.address, "--run", PRIVATE, "--join-token", token])
    assert result.exit_code == 0, result.output



# A real coordinator process

def test_a_coordinator_process_tells_where_its_token_is_and_refuses_anonymous_administration(coordinator_process):
    token_file = coordinator_process.data_dir / "operator.token"
    token = read_operator_token(token_file)
    shown = f"operator token file (launch, publish, release, tokens, run administration): {token_file}"
    wait_until(lambda: shown in coordinator_process.log(), 30, coordinator_process.log())
    assert token not in coordinator_process.log()
    before = coordinator_process.db_snapshot()
    with CoordinatorClient(coordinator_process.address) as anonymous:
        for attempt in (lambda: anonymous.launch_run(RunSpec(name="sneaky", data_slices=2)),
                        lambda: anonymous.publish_now("sneaky"), lambda: anonymous.mark_release("sneaky", 1, False),
                        lambda: anonymous.set_default_run("sneaky")):
            with pytest.raises(CoordinatorError, match="needs the operator token"):
                attempt()
    with CoordinatorClient(Endpoint(coordinator_process.address, operator_token="guess")) as guesser:
        with pytest.raises(CoordinatorError, match="operator token is wrong"):
            guesser.launch_run(RunSpec(name="sneaky", data_slices=2))
    assert coordinator_process.alive() and coordinator_process.db_snapshot() == before
    assert token not in coordinator_process.log()
    with CoordinatorClient(Endpoint(coordinator_process.address, operator_token=token)) as client:
        assert client.launch_run(RunSpec(name="proper", data_slices=2)).run_name == "proper"


def test_a_donor_presents_its_join_token():
    assert DonateConfig(coordinator="h:1", join_token="t").endpoint() == Endpoint("h:1", join_token="t")
    assert DonateConfig(coordinator="h:1").endpoint() == Endpoint("h:1")
