import importlib.util
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent


def _generator():
    """proto/ is deliberately no Python package (the name would clash with proto-plus): load its script by path."""
    spec = importlib.util.spec_from_file_location("nomoat_proto_generate", REPO / "proto" / "generate.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_committed_stubs_match_regenerated(tmp_path):
    written = _generator().generate(tmp_path)
    assert {path.name for path in written} == {"coordinator_pb2.py", "coordinator_pb2.pyi", "coordinator_pb2_grpc.py"}
    for path in written:
        committed = REPO / "nomoat_proto" / path.name
        assert committed.read_text() == path.read_text(), f"{committed} is stale: run python proto/generate.py"


def test_stubs_import_under_their_own_package_name():
    from nomoat_proto import coordinator_pb2, coordinator_pb2_grpc

    assert coordinator_pb2.DESCRIPTOR.name == "nomoat_proto/coordinator.proto"
    assert coordinator_pb2_grpc.nomoat__proto_dot_coordinator__pb2 is coordinator_pb2
