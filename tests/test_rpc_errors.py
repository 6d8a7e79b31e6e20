"""The server's RPC error interceptor, on a real gRPC server on loopback: request errors reach the client with
their status code and reason, bugs become INTERNAL without their text, and every failure is logged."""

import logging
from concurrent import futures

import grpc
import pytest

from coordinator.rpc_errors import RpcErrorInterceptor
from coordinator.service import RequestError
from coordinator.servicer import CoordinatorServicer
from coordinator.storage import UnknownRunError
from nomoat_proto import coordinator_pb2 as pb
from nomoat_proto import coordinator_pb2_grpc as pb_grpc
from swarm.sample_wire import CHUNK_SAMPLES

SECRET = "/srv/nomoat/coordinator.db: disk I/O error"


class FailingService:
    """Stands in for CoordinatorService: each method fails the way a real request or bug would."""

    def status(self, run_name, include_archived=False, credentials=None):
        raise UnknownRunError(f"no run named '{run_name}'")

    def leaderboard(self, run_name, include_unverified):
        raise RuntimeError(SECRET)

    def mark_release(self, run_name, version, release):
        raise RequestError(f"{run_name} has no version {version}", not_found=True)

    def launch(self, spec_json, join_policy="open", private=False):
        raise RequestError("invalid run spec: lr: must be positive")

    def pull(self, run_name, version, offsets, chunk_bytes):
        raise RequestError(f"negative offset for {sorted(offsets)}")
        yield  # a generator, as the real one is

    def data_slice(self, run_name, data_slice, worker_id=""):
        return BrokenSlice(["a text"] * (CHUNK_SAMPLES + 10))


class BrokenSlice(list):
    """A data slice whose reading fails after its first chunk was sent: a bug in the middle of a stream."""

    def __iter__(self):
        for index, sample in enumerate(super().__iter__()):
            if index == CHUNK_SAMPLES + 5:
                raise KeyError(SECRET)
            yield sample


@pytest.fixture(scope="module")
def stub():
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=4), interceptors=[RpcErrorInterceptor()])
    pb_grpc.add_CoordinatorServicer_to_server(CoordinatorServicer(FailingService()), server)
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
        yield pb_grpc.CoordinatorStub(channel)
    server.stop(grace=0).wait()


@pytest.fixture
def logged(caplog):
    """Records of the nomoat loggers (configure_logging, if a CLI test ran first, stopped their propagation)."""
    root = logging.getLogger("nomoat")
    propagate, root.propagate = root.propagate, True
    caplog.set_level(logging.INFO, logger="nomoat")
    yield caplog
    root.propagate = propagate


def _failure(call):
    with pytest.raises(grpc.RpcError) as error:
        result = call()
        if not hasattr(result, "ListFields"):  # a stream: the error comes while reading it
            list(result)
    return error.value


def test_an_unknown_run_is_not_found_with_the_reason_and_logged(stub, logged):
    error = _failure(lambda: stub.GetStatus(pb.StatusRequest(run_name="nope"), timeout=10))
    assert error.code() == grpc.StatusCode.NOT_FOUND and error.details() == "no run named 'nope'"
    [record] = [r for r in logged.records if r.name == "nomoat.coordinator.rpc_errors"]
    message = record.getMessage()
    assert record.levelno == logging.WARNING and record.exc_info is None
    assert "/nomoat.v1.Coordinator/GetStatus" in message and "127.0.0.1" in message
    assert "NOT_FOUND: no run named 'nope'" in message


@pytest.mark.parametrize("call, code, reason", [
    (lambda stub: stub.MarkRelease(pb.ReleaseRequest(run_name="r", version=7), timeout=10),
     grpc.StatusCode.NOT_FOUND, "r has no version 7"),
    (lambda stub: stub.LaunchRun(pb.LaunchRunRequest(spec_json="{}"), timeout=10),
     grpc.StatusCode.INVALID_ARGUMENT, "invalid run spec: lr: must be positive"),
    (lambda stub: stub.PullAdapter(pb.PullRequest(run_name="r", offsets={"f": -1}), timeout=10),
     grpc.StatusCode.INVALID_ARGUMENT, "negative offset for ['f']"),
])
def test_request_errors_keep_their_reason(stub, logged, call, code, reason):
    error = _failure(lambda: call(stub))
    assert error.code() == code and error.details() == reason
    assert any(f"{code.name}: {reason}" in r.getMessage() for r in logged.records)


@pytest.mark.parametrize("call", [
    lambda stub: stub.GetLeaderboard(pb.LeaderboardRequest(run_name="r"), timeout=10),
    lambda stub: stub.StreamDataSlice(pb.DataSliceRequest(run_name="r"), timeout=10),
])
def test_a_bug_is_internal_without_its_text_and_logged_with_its_traceback(stub, logged, call):
    error = _failure(lambda: call(stub))
    assert error.code() == grpc.StatusCode.INTERNAL
    assert SECRET not in error.details() and "internal error" in error.details()
    incident = error.details().rsplit(" ", 1)[-1].rstrip(")")
    [record] = [r for r in logged.records if r.name == "nomoat.coordinator.rpc_errors"]
    assert record.levelno == logging.ERROR and record.exc_info is not None
    assert SECRET in logged.text and incident in record.getMessage()
