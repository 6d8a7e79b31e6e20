"""A worker's membership of its run's swarm: the access token of its Join in its DHT, kept fresh, and reports of
the peers its averagers refused.

- ``authorizer_of(assignment, identity)``: the DHT authorizer holding the Join's token (``swarm.peer_access``).
- ``SwarmMembership.start()`` publishes the token under the run's access key (so peers' gates let this worker
  in), renews it with the coordinator every ``renew_after_s`` (a third of its lifetime), pushes each renewed
  token into the DHT process and the DHT record, and every ``report_every_s`` reports the refusals that the shard
  optimizers' ``drain_rejections()`` return (optimizers without that method are skipped).

Usage::

    dht = start_dht(peers, identity_path=identity.path, authorizer=authorizer_of(assignment, identity))
    membership = SwarmMembership(dht, assignment, identity, lambda: CoordinatorClient(endpoint))
    membership.publish()                      # before the averagers start
    ...                                       # make the optimizers
    membership.start()
    membership.watch(optimizers.values())
    ...
    membership.stop()
"""

from __future__ import annotations

from collections import Counter
from typing import Callable, Iterable

import hivemind

from nomoat_proto import coordinator_pb2 as pb
from swarm.background import BackgroundLoop
from swarm.client import CoordinatorClient
from swarm.identity import Identity
from swarm.log import get_logger
from swarm.peer_access import SwarmAuthorizer, push_access_token, token_from_bytes
from swarm.peer_gate import PeerGate, publish_access_token

logger = get_logger(__name__)

REPORT_EVERY_S = 5.0
MIN_RENEW_S = 5.0


def authorizer_of(assignment: pb.Assignment, identity: Identity) -> SwarmAuthorizer:
    """The DHT authorizer of a worker, holding the access token of its Join (AccessTokenError if the coordinator
    sent none or a bad one)."""
    grant = assignment.access
    return SwarmAuthorizer(identity.as_hivemind_key(), grant.authority_public_key,
                           token=token_from_bytes(grant.access_token))


def gate_of(dht: hivemind.DHT, assignment: pb.Assignment) -> PeerGate:
    """The gate of the worker's run: the peers its averagers may deal with."""
    return PeerGate(dht, assignment.run_name, assignment.access.authority_public_key)


class SwarmMembership:
    def __init__(self, dht: hivemind.DHT, assignment: pb.Assignment, identity: Identity,
                 connect: Callable[[], CoordinatorClient], report_every_s: float = REPORT_EVERY_S):
        self.dht, self.identity, self.connect = dht, identity, connect
        self.run, self.worker_id = assignment.run_name, assignment.worker_id
        self.grant = assignment.access
        self.report_every_s = report_every_s
        self._optimizers: list[object] = []
        # a failed renewal is retried at the next interval: the token lasts three of them
        self._loops = [BackgroundLoop("access-renewal", max(MIN_RENEW_S, self.grant.renew_after_s or MIN_RENEW_S),
                                      self.renew),
                       BackgroundLoop("peer-reports", report_every_s, self.report)]

    def publish(self) -> None:
        """Publish the current token in the run's access record (before the averagers start)."""
        self._publish()

    def start(self) -> "SwarmMembership":
        """Start renewing and reporting (after hivemind forked its processes: the passes open gRPC channels)."""
        for loop in self._loops:
            loop.start()
        return self

    def watch(self, optimizers: Iterable[object]) -> None:
        """Report what these optimizers' averagers refused (each one that has ``drain_rejections``)."""
        self._optimizers = list(optimizers)

    def stop(self, timeout: float = 10.0) -> None:
        for loop in self._loops:
            loop.stop(timeout)

    def _publish(self) -> None:
        token = token_from_bytes(self.grant.access_token)
        if not publish_access_token(self.dht, self.run, token, self.identity.as_hivemind_key(),
                                    self.grant.expires_at):
            logger.warning("could not publish the access token in the DHT yet; peers may refuse this worker")

    def renew(self) -> None:
        """Renew the token now: with the coordinator, in the DHT process, in the DHT record."""
        with self.connect() as client:
            grant = client.renew_access(self.worker_id, self.identity)
        push_access_token(self.dht, token_from_bytes(grant.access_token))
        self.grant = grant
        self._publish()
        logger.debug("access token renewed until %.0f", grant.expires_at)

    def report(self) -> None:
        """Report the refusals drained from the optimizers since the last report."""
        counts: Counter[tuple[str, str]] = Counter()
        for optimizer in self._optimizers:
            drain = getattr(optimizer, "drain_rejections", None)
            if drain is None:
                continue
            for peer_id, reason in drain():
                counts[(str(peer_id), str(reason)[:200])] += 1
        if not counts:
            return
        reports = [(peer, count, reason) for (peer, reason), count in sorted(counts.items())][:64]
        with self.connect() as client:
            response = client.report_peers(self.worker_id, self.identity, reports)
        logger.info("reported %d refused peer(s); banned: %s", response.accepted, list(response.banned) or "none")
