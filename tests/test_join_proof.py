"""Signed Join and Leave statements (``swarm.join_proof``): what a proof binds, and the replay guard's memory."""

import pytest

from swarm.identity import load_or_create_identity
from swarm.join_proof import ProofError, ReplayGuard, join_statement, leave_statement, sign_statement, verify_proof

T = 1_800_000_000.0


@pytest.fixture(scope="module")
def alice(tmp_path_factory):
    return load_or_create_identity(tmp_path_factory.mktemp("keys") / "alice.key")


def statement(**overrides):
    values = dict(coordinator="QmCoordinator", run="demo", peer_id="QmAlice", display_name="alice", max_shards=0,
                  device="cpu", timestamp=T) | overrides
    return join_statement(**values)


def test_a_proof_binds_every_field_the_time_and_the_key(alice, tmp_path):
    signed = statement(peer_id=alice.peer_id)
    proof = sign_statement(alice, signed, T)
    verify_proof(proof, alice.peer_id, signed, now=T + 119)
    for changed in (dict(run="other"), dict(display_name="bob"), dict(max_shards=1), dict(device="cuda"),
                    dict(coordinator="QmElsewhere"), dict(timestamp=T + 1)):
        with pytest.raises(ProofError, match="signature does not match"):
            verify_proof(proof, alice.peer_id, statement(peer_id=alice.peer_id, **changed), now=T)
    with pytest.raises(ProofError, match="120 s"):
        verify_proof(proof, alice.peer_id, signed, now=T + 121)
    with pytest.raises(ProofError, match="signed by the key of"):
        verify_proof(proof, load_or_create_identity(tmp_path / "bob.key").peer_id, signed, now=T)
    leave = leave_statement(coordinator="QmCoordinator", worker_id="w" * 32, peer_id=alice.peer_id, timestamp=T)
    assert leave != signed and b"nomoat.leave.v1" in leave and b"nomoat.join.v1" in signed


def test_the_replay_guard_remembers_a_window_and_a_bounded_number():
    guard = ReplayGuard(window_s=10, capacity=3)
    guard.check_fresh(b"one", now=0)
    with pytest.raises(ProofError, match="replay"):
        guard.check_fresh(b"one", now=9)
    guard.check_fresh(b"one", now=11)  # forgotten after the window (its timestamp is stale by then anyway)
    for signature in (b"two", b"three", b"four"):
        guard.check_fresh(signature, now=12)
    assert len(guard._seen) == 3  # the oldest was dropped to stay within capacity
