"""Only authorized peers in a run's swarm: coordinator-signed access tokens (forged, expired, tampered, of another
run), the DHT authorizer on real loopback DHTs (strangers can neither store nor read; a revoked peer is refused at
once; an expired token stops working), the per-run peer gate, and real hivemind averagers behind the gate (an
intruder cannot join two authorized peers' group, get their state, or serve them its own)."""

from __future__ import annotations

import time

import hivemind
import pytest
import torch
from hivemind.averaging import DecentralizedAverager

from swarm.dht import start_dht, visible_addresses
from swarm.gated_averager import GatedAveragerMixin, gate_averager_class
from swarm.identity import load_or_create_identity
from swarm.peer_access import (
    AccessTokenError,
    SwarmAuthorizer,
    issue_access_token,
    push_access_token,
    push_revoked,
    token_from_bytes,
    token_to_bytes,
    verify_access_token,
)
from swarm.peer_gate import PeerGate, access_validators, publish_access_token

RUN, OTHER = "demo", "other"


@pytest.fixture(scope="module")
def keys(tmp_path_factory):
    folder = tmp_path_factory.mktemp("keys")
    return {name: load_or_create_identity(folder / f"{name}.key")
            for name in ("coordinator", "alice", "bob", "mallory", "impostor", "carol", "dave", "eve")}


# tokens

def test_a_token_binds_run_peer_and_expiry(keys):
    coordinator, alice = keys["coordinator"], keys["alice"]
    token = issue_access_token(coordinator, RUN, alice.public_key_der, lifetime_s=60, now=1000.0)
    claims = verify_access_token(token, coordinator.public_key_der, run=RUN, now=1010.0)
    assert (claims.run, claims.peer_id, claims.coordinator) == (RUN, alice.peer_id, coordinator.peer_id)
    assert claims.expires_at == 1060.0
    assert verify_access_token(token_from_bytes(token_to_bytes(token)), coordinator.public_key_der, now=1010.0)


def test_expired_foreign_tampered_and_other_run_tokens_are_refused(keys):
    coordinator, alice, impostor = keys["coordinator"], keys["alice"], keys["impostor"]
    token = issue_access_token(coordinator, RUN, alice.public_key_der, lifetime_s=60, now=1000.0)
    with pytest.raises(AccessTokenError, match="expired"):
        verify_access_token(token, coordinator.public_key_der, now=1060.0)
    with pytest.raises(AccessTokenError, match="of run"):
        verify_access_token(token, coordinator.public_key_der, run=OTHER, now=1010.0)
    forged = issue_access_token(impostor, RUN, alice.public_key_der, lifetime_s=60, now=1000.0)
    with pytest.raises(AccessTokenError, match="not signed"):
        verify_access_token(forged, coordinator.public_key_der, now=1010.0)
    for field, value in [("username", token.username.replace(RUN, OTHER)), ("expiration_time", "99999999999.0"),
                         ("public_key", issue_access_token(coordinator, RUN, impostor.public_key_der).public_key)]:
        tampered = token_from_bytes(token_to_bytes(token))
        setattr(tampered, field, value)
        with pytest.raises(AccessTokenError, match="not signed"):
            verify_access_token(tampered, coordinator.public_key_der, now=1010.0)
    for junk in (b"", b"\xff" * 10, b"x" * 5000, "text"):
        with pytest.raises(AccessTokenError):
            token_from_bytes(junk)


# the DHT authorizer

def _worker_dht(coordinator_dht, identity, authority, run=RUN, lifetime_s=60.0, **kwargs):
    token = issue_access_token(authority, run, identity.public_key_der, lifetime_s=lifetime_s)
    authorizer = SwarmAuthorizer(identity.as_hivemind_key(), authority.public_key_der, token=token)
    if kwargs:  # hivemind's own options, e.g. for a peer that the swarm will not answer
        return hivemind.DHT(initial_peers=visible_addresses(coordinator_dht), start=True,
                            identity_path=str(identity.path), authorizer=authorizer, **kwargs), token
    return start_dht(visible_addresses(coordinator_dht), identity_path=str(identity.path),
                     authorizer=authorizer), token


@pytest.fixture(scope="module")
def coordinator_dht(keys):
    coordinator = keys["coordinator"]
    dht = start_dht(identity_path=str(coordinator.path),
                    authorizer=SwarmAuthorizer(coordinator.as_hivemind_key(), coordinator.public_key_der,
                                               issuer=coordinator))
    dht.add_validators(access_validators(coordinator.as_hivemind_key()))
    yield dht
    dht.shutdown()


def _publish(dht, identity, token, run: str = RUN) -> None:
    """Publish a token, retrying while a freshly started peer's routing table still names dead peers."""
    for _ in range(5):
        if publish_access_token(dht, run, token, identity.as_hivemind_key(), float(token.expiration_time)):
            return
        time.sleep(0.5)
    raise AssertionError("could not publish the access token")


def _stored(dht, key: str, value: bytes) -> None:
    assert dht.store(key, value, expiration_time=time.time() + 60)


def test_strangers_cannot_store_or_read_through_the_authorized_dht(keys, coordinator_dht):
    alice, _ = _worker_dht(coordinator_dht, keys["alice"], keys["coordinator"])
    with pytest.raises(RuntimeError, match="bootstrap failed"):
        hivemind.DHT(initial_peers=visible_addresses(coordinator_dht), start=True,
                     identity_path=str(keys["mallory"].path))
    # a stranger, and a peer with a token the coordinator did not sign
    mallory = hivemind.DHT(initial_peers=visible_addresses(coordinator_dht), start=True,
                           identity_path=str(keys["mallory"].path), ensure_bootstrap_success=False)
    impostor, _ = _worker_dht(coordinator_dht, keys["impostor"], keys["impostor"], ensure_bootstrap_success=False)
    try:
        _stored(alice, "by-alice", b"a")
        assert coordinator_dht.get("by-alice", latest=True).value == b"a"
        for intruder, name in [(mallory, "by-mallory"), (impostor, "by-impostor")]:
            intruder.store(name, b"m", expiration_time=time.time() + 60)  # at most into its own storage
            assert coordinator_dht.get(name, latest=True) is None
            assert alice.get(name, latest=True) is None
            assert intruder.get("by-alice", latest=True) is None
    finally:
        for dht in (mallory, impostor, alice):
            dht.shutdown()


def test_a_revoked_peer_is_refused_at_once(keys, coordinator_dht):
    bob, _ = _worker_dht(coordinator_dht, keys["bob"], keys["coordinator"])
    try:
        _stored(bob, "bob-1", b"1")
        assert coordinator_dht.get("bob-1", latest=True).value == b"1"
        push_revoked(coordinator_dht, {(RUN, keys["bob"].peer_id)})
        bob.store("bob-2", b"2", expiration_time=time.time() + 60)
        assert coordinator_dht.get("bob-2", latest=True) is None
    finally:
        push_revoked(coordinator_dht, set())
        bob.shutdown()


def test_a_renewed_token_pushed_into_the_dht_process_keeps_working(keys, coordinator_dht):
    bob, token = _worker_dht(coordinator_dht, keys["bob"], keys["coordinator"], lifetime_s=4.0)
    try:
        with pytest.raises(AccessTokenError, match="another peer"):  # a token of someone else is not taken
            push_access_token(bob, issue_access_token(keys["coordinator"], RUN, keys["alice"].public_key_der))
        push_access_token(bob, issue_access_token(keys["coordinator"], RUN, keys["bob"].public_key_der, 60))
        time.sleep(max(0.0, float(token.expiration_time) - time.time()) + 0.5)  # the first token has expired
        _stored(bob, "renewed", b"3")
        assert coordinator_dht.get("renewed", latest=True).value == b"3"
    finally:
        bob.shutdown()


def test_an_expired_token_stops_working(keys, coordinator_dht):
    bob, token = _worker_dht(coordinator_dht, keys["bob"], keys["coordinator"], lifetime_s=4.0)
    try:
        _stored(bob, "early", b"1")
        assert coordinator_dht.get("early", latest=True).value == b"1"
        gate = PeerGate(coordinator_dht, RUN, keys["coordinator"].public_key_der, refresh_s=0.0)
        assert publish_access_token(bob, RUN, token, keys["bob"].as_hivemind_key(),
                                    expires_at=float(token.expiration_time))
        assert gate.allows(keys["bob"].peer_id)
        time.sleep(max(0.0, float(token.expiration_time) - time.time()) + 0.5)
        bob.store("late", b"2", expiration_time=time.time() + 60)
        assert coordinator_dht.get("late", latest=True) is None
        assert not gate.allows(keys["bob"].peer_id)
    finally:
        bob.shutdown()


# the peer gate and gated averagers

def test_the_gate_allows_published_tokens_of_its_run_and_the_coordinator(keys, coordinator_dht):
    coordinator = keys["coordinator"]
    alice, alice_token = _worker_dht(coordinator_dht, keys["alice"], coordinator)
    mallory, mallory_token = _worker_dht(coordinator_dht, keys["mallory"], coordinator, run=OTHER)
    try:
        for dht, identity, token, run in [(alice, keys["alice"], alice_token, RUN),
                                          (mallory, keys["mallory"], mallory_token, OTHER)]:
            assert publish_access_token(dht, run, token, identity.as_hivemind_key(),
                                        expires_at=float(token.expiration_time))
        # mallory also publishes its (other run's) token under this run's key: still not of this run
        publish_access_token(mallory, RUN, mallory_token, keys["mallory"].as_hivemind_key(),
                             expires_at=float(mallory_token.expiration_time))
        gate = PeerGate(alice, RUN, coordinator.public_key_der)
        assert gate.allows(keys["alice"].peer_id)
        assert gate.allows(coordinator.peer_id)  # always, published or not
        assert not gate.allows(keys["mallory"].peer_id)
        assert set(gate.authorized_peers()) == {keys["alice"].peer_id}
        assert PeerGate(alice, OTHER, coordinator.public_key_der).allows(keys["mallory"].peer_id)
    finally:
        alice.shutdown()
        mallory.shutdown()


class MarkedAverager(DecentralizedAverager):
    """A plain averager of one tensor (the intruder's), so that the gated ones are checked against hivemind's
    own behaviour under the same RPC names."""


def _averager(cls, dht, value: float, prefix: str = "gated-test", **kwargs):
    return cls([torch.full((4,), value)], dht=dht, prefix=prefix, target_group_size=3, min_group_size=2,
               min_matchmaking_time=3.0, request_timeout=1.0, start=True, **kwargs)


def test_an_unauthorized_peer_cannot_average_with_or_download_from_authorized_peers(keys, coordinator_dht):
    coordinator = keys["coordinator"]
    carol, carol_token = _worker_dht(coordinator_dht, keys["carol"], coordinator)
    dave, dave_token = _worker_dht(coordinator_dht, keys["dave"], coordinator)
    # in the DHT (with a token of another run of the coordinator) but not authorized in this run
    eve, eve_token = _worker_dht(coordinator_dht, keys["eve"], coordinator, run=OTHER)
    averagers = []
    try:
        _publish(carol, keys["carol"], carol_token)
        _publish(dave, keys["dave"], dave_token)
        _publish(eve, keys["eve"], eve_token, run=OTHER)
        gated = [gate_averager_class(MarkedAverager, PeerGate(dht, RUN, coordinator.public_key_der))
                 for dht in (carol, dave)]
        assert all(cls.__name__ == "MarkedAverager" and issubclass(cls, GatedAveragerMixin) for cls in gated)
        averagers = [_averager(gated[0], carol, 1.0), _averager(gated[1], dave, 3.0),
                     _averager(MarkedAverager, eve, 1000.0)]
        for averager in averagers:
            averager.allow_state_sharing = True
        averagers[2].state_sharing_priority = 100.0  # eve offers its state first

        futures = [averager.step(gather=name, wait=False, timeout=15, allow_retries=False)
                   for averager, name in zip(averagers, ("carol", "dave", "eve"))]
        gathered = [_result(future) for future in futures]
        assert gathered[0] is not None and sorted(gathered[0].values()) == ["carol", "dave"]  # 2 peers
        assert gathered[1] is not None and sorted(gathered[1].values()) == ["carol", "dave"]
        assert gathered[2] is None  # the intruder's round failed
        for averager in averagers[:2]:
            with averager.get_tensors() as tensors:
                assert torch.allclose(tensors[0], torch.full((4,), 2.0))  # the exact mean of carol and dave

        assert averagers[2].load_state_from_peers(timeout=10) is None  # nobody serves eve
        loaded = averagers[0].load_state_from_peers(timeout=10)  # skips eve's offer, takes dave's
        assert loaded is not None and torch.allclose(loaded[1][0], torch.full((4,), 2.0))
    finally:
        for averager in averagers:
            averager.shutdown()
        for dht in (carol, dave, eve):
            dht.shutdown()


def _result(future):
    try:
        return future.result(timeout=30)
    except Exception:
        return None


# through a real coordinator: tokens on Join and renewal, the ban rule, bans by hand, the publisher's download

@pytest.fixture(scope="module")
def coordinator(tmp_path_factory):
    from coordinator.server import Coordinator, CoordinatorConfig
    from swarm.client import CoordinatorClient
    from swarm.spec import RobustnessSpec, RunSpec

    config = CoordinatorConfig(data_dir=tmp_path_factory.mktemp("coord"), port=0, publish=False,
                               access_token_lifetime_s=60.0)
    with Coordinator(config) as running:
        with CoordinatorClient(running.operator_endpoint()) as client:
            client.launch_run(RunSpec(name=RUN, data_slices=2, robustness=RobustnessSpec(ban_after_reports=3)))
        yield running


def _client(coordinator, operator: bool = False):
    from swarm.client import CoordinatorClient

    return CoordinatorClient(coordinator.operator_endpoint() if operator else coordinator.address)


def test_join_grants_a_token_and_two_reporters_are_needed_to_ban(keys, coordinator, tmp_path):
    from swarm.client import CoordinatorError

    workers = {name: load_or_create_identity(tmp_path / f"{name}.key") for name in ("ann", "ben", "cat", "max")}
    with _client(coordinator) as client:
        joined = {name: client.join(identity, run_name=RUN) for name, identity in workers.items()}
        grant = joined["ann"].access
        assert grant.authority_public_key == coordinator.identity.public_key_der
        assert 19.0 <= grant.renew_after_s <= 21.0  # a third of the 60 s lifetime
        claims = verify_access_token(token_from_bytes(grant.access_token), grant.authority_public_key, run=RUN)
        assert claims.peer_id == workers["ann"].peer_id and claims.expires_at == pytest.approx(grant.expires_at)

        # ann's token gets her into the coordinator's DHT
        ann_dht = start_dht(coordinator.initial_peers, identity_path=str(workers["ann"].path),
                            authorizer=SwarmAuthorizer(workers["ann"].as_hivemind_key(), grant.authority_public_key,
                                                       token=token_from_bytes(grant.access_token)))
        try:
            _stored(ann_dht, "ann", b"1")
            assert coordinator.dht.get("ann", latest=True).value == b"1"
        finally:
            ann_dht.shutdown()

        bad = workers["max"].peer_id
        ann, ben, cat = (joined[name].worker_id for name in ("ann", "ben", "cat"))
        first = client.report_peers(ann, workers["ann"], [(bad, 5, "norm bound"), (workers["ann"].peer_id, 9, "me"),
                                                          (coordinator.identity.peer_id, 9, "coordinator")])
        assert (first.accepted, list(first.banned)) == (1, [])  # one reporter is not enough, however many refusals
        assert client.report_peers(ann, workers["ann"], [(bad, 5, "again")]).banned == []
        assert client.renew_access(joined["max"].worker_id, workers["max"]).access_token
        second = client.report_peers(ben, workers["ben"], [(bad, 1, "non-finite")])
        assert list(second.banned) == [bad]

        with pytest.raises(CoordinatorError, match="banned"):
            client.renew_access(joined["max"].worker_id, workers["max"])
        with pytest.raises(CoordinatorError, match="banned"):
            client.join(workers["max"], run_name=RUN)
        with pytest.raises(CoordinatorError, match="refused"):  # signed by someone else
            client.renew_access(cat, workers["ann"])
        # the coordinator's DHT refuses the banned peer at once, though its token has not expired
        max_token = token_from_bytes(joined["max"].access.access_token)
        with pytest.raises(RuntimeError, match="bootstrap failed"):
            start_dht(coordinator.initial_peers, identity_path=str(workers["max"].path),
                      authorizer=SwarmAuthorizer(workers["max"].as_hivemind_key(), grant.authority_public_key,
                                                 token=max_token))
        (run,) = client.status(RUN).runs
        assert [(ban.peer_id, ban.banned_by) for ban in run.banned_peers] == [(bad, "reports")]

        client.leave(cat, workers["cat"])
        with pytest.raises(CoordinatorError, match="left"):
            client.renew_access(cat, workers["cat"])


def test_the_operator_bans_and_unbans_by_hand(coordinator, tmp_path):
    from swarm.client import CoordinatorError

    dan = load_or_create_identity(tmp_path / "dan.key")
    with _client(coordinator) as client:
        joined = client.join(dan, run_name=RUN)
        with pytest.raises(CoordinatorError, match="operator"):
            client.ban_peer(RUN, dan.peer_id)
        with _client(coordinator, operator=True) as operator:
            assert operator.ban_peer(RUN, dan.peer_id, "spam").banned_by == "operator"
            with pytest.raises(CoordinatorError, match="banned"):
                client.renew_access(joined.worker_id, dan)
            operator.unban_peer(RUN, dan.peer_id)
        assert client.renew_access(joined.worker_id, dan).access_token
        assert client.join(dan, run_name=RUN).access.access_token


def test_the_coordinator_downloads_state_from_gated_workers(coordinator, tmp_path):
    from hivemind.optim.state_averager import TrainingStateAverager

    from swarm.dht import shard_state_prefix
    from swarm.state_download import download_state

    eli = load_or_create_identity(tmp_path / "eli.key")
    with _client(coordinator) as client:
        grant = client.join(eli, run_name=RUN).access
    token = token_from_bytes(grant.access_token)
    dht = start_dht(coordinator.initial_peers, identity_path=str(eli.path),
                    authorizer=SwarmAuthorizer(eli.as_hivemind_key(), grant.authority_public_key, token=token))
    averager = None
    try:
        _publish(dht, eli, token)
        gated = gate_averager_class(TrainingStateAverager, PeerGate(dht, RUN, grant.authority_public_key))
        params = [torch.nn.Parameter(torch.full((3,), 7.0))]
        averager = gated(dht=dht, optimizer=lambda p: torch.optim.SGD(p, lr=0.1), params=params,
                         prefix=shard_state_prefix("demo/shard0"), allow_state_sharing=True, start=True)
        averager.local_epoch = 2
        state = download_state(coordinator.dht, "demo/shard0", eli.peer_id, num_parameters=1, timeout=30)
        assert state.epoch == 2 and torch.equal(state.parameters[0], torch.full((3,), 7.0))
    finally:
        if averager is not None:
            averager.shutdown()
        dht.shutdown()


def test_a_ban_reaches_the_workers_gates_in_seconds_not_at_token_expiry(coordinator, tmp_path):
    from swarm.peer_gate import REVOCATION_CHECK_S

    eve, fay = (load_or_create_identity(tmp_path / f"{name}.key") for name in ("eve", "fay"))
    dhts = []
    try:
        with _client(coordinator) as client, _client(coordinator, operator=True) as operator:
            grants = {}
            for identity in (eve, fay):
                grant = client.join(identity, run_name=RUN).access
                token = token_from_bytes(grant.access_token)
                dht = start_dht(coordinator.initial_peers, identity_path=str(identity.path),
                                authorizer=SwarmAuthorizer(identity.as_hivemind_key(), grant.authority_public_key,
                                                           token=token))
                dhts.append(dht)
                assert publish_access_token(dht, RUN, token, identity.as_hivemind_key(), expires_at=grant.expires_at)
                grants[identity.peer_id] = grant
            gate = PeerGate(dhts[0], RUN, coordinator.identity.public_key_der)
            assert gate.allows(fay.peer_id)

            operator.ban_peer(RUN, fay.peer_id, "caught poisoning")
            banned_at = time.monotonic()
            while gate.allows(fay.peer_id):
                assert time.monotonic() - banned_at < REVOCATION_CHECK_S + 15, "the ban never reached the gate"
                time.sleep(0.5)
            assert grants[fay.peer_id].expires_at > time.time() + 20  # long before fay's token would expire
            assert gate.allows(eve.peer_id) and fay.peer_id not in gate.authorized_peers()

            operator.unban_peer(RUN, fay.peer_id)  # a newer list without fay: her unexpired token counts again
            unbanned_at = time.monotonic()
            while not gate.allows(fay.peer_id):
                assert time.monotonic() - unbanned_at < REVOCATION_CHECK_S + 15, "the unban never reached the gate"
                time.sleep(0.5)
    finally:
        for dht in dhts:
            dht.shutdown()


def test_revocation_lists_are_checked_like_tokens(keys):
    from swarm.revocations import RevocationError, sign_revocations, verify_revocations

    coordinator, impostor = keys["coordinator"], keys["impostor"]
    signed = sign_revocations(coordinator, RUN, {"QmBad", "QmWorse"}, now=5.0)
    listed = verify_revocations(signed, coordinator.public_key_der, RUN)
    assert (listed.peer_ids, listed.issued_at) == (frozenset({"QmBad", "QmWorse"}), 5.0)
    with pytest.raises(RevocationError, match="not signed"):
        verify_revocations(sign_revocations(impostor, RUN, {"QmAlice"}), coordinator.public_key_der, RUN)
    with pytest.raises(RevocationError, match="of run"):
        verify_revocations(signed, coordinator.public_key_der, OTHER)
    with pytest.raises(RevocationError, match="not signed"):
        verify_revocations(signed.replace(b"QmBad", b"QmGud"), coordinator.public_key_der, RUN)
    for junk in (b"", b"{}", b"x" * (2 << 20), "text", None):
        with pytest.raises(RevocationError):
            verify_revocations(junk, coordinator.public_key_der, RUN)


def test_hostile_reports_bans_and_renewals_are_refused_and_count_nothing(coordinator, tmp_path):
    from swarm.client import CoordinatorError

    gus, hal = (load_or_create_identity(tmp_path / f"{name}.key") for name in ("gus", "hal"))
    with _client(coordinator) as client, _client(coordinator, operator=True) as operator:
        worker = client.join(gus, run_name=RUN).worker_id
        target = hal.peer_id
        hostile = {
            "too many peers": [(target, 1, "x")] * 65,
            "a zero count": [(target, 0, "x")],
            "a negative count": [(target, -5, "x")],
            "an absurd count": [(target, 10**7, "x")],
            "a long reason": [(target, 1, "r" * 201)],
            "control characters": [(target, 1, "bad\x1b[2Jreason")],
            "not a peer ID": [("../../etc/passwd", 1, "x")],
        }
        for what, reports in hostile.items():
            with pytest.raises(CoordinatorError, match="INVALID_ARGUMENT|at most|refusals|printable|peer"):
                client.report_peers(worker, gus, reports)
            assert coordinator.storage.bans.tally(RUN, target).total == 0, what
        with pytest.raises(CoordinatorError):  # a report signed by another key than the worker's
            client.report_peers(worker, hal, [(target, 1, "x")])
        with pytest.raises(CoordinatorError):  # renewal of a worker that does not exist
            client.renew_access("w" * 32, gus)
        for peer, reason in (("not a peer", ""), (target, "r" * 201), (target, "\x00")):
            with pytest.raises(CoordinatorError):
                operator.ban_peer(RUN, peer, reason)
        with pytest.raises(CoordinatorError, match="NOT_FOUND|no run"):
            operator.ban_peer("no-such-run", target)
        assert target not in {ban.peer_id for ban in coordinator.storage.bans.list_bans(RUN)}
