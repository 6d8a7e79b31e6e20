from pathlib import Path

from proto.generate import generate

REPO = Path(__file__).resolve().parent.parent


def test_committed_stubs_match_regenerated(tmp_path):
    written = generate(tmp_path)
    assert {path.name for path in written} == {"coordinator_pb2.py", "coordinator_pb2_grpc.py"}
    for path in written:
        committed = REPO / "proto" / path.name
        assert committed.read_text() == path.read_text(), f"{committed} is stale: run python -m proto.generate"
