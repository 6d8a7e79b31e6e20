"""Who is in a run's swarm, on the coordinator's side: access tokens for Joins and renewals, peer reports, bans.

- A Join (and each renewal) gets a token (``swarm.peer_access``) that binds the run and the worker's identity key,
  valid ``lifetime_s``; workers renew it after a third of that.
- Workers report peers whose contributions their averagers refused. A peer that at least two distinct workers
  reported, ``spec.robustness.ban_after_reports`` refusals within the last hour, is banned from the run; so is
  one the operator bans by hand. A banned peer's token is not renewed, it cannot rejoin, and the coordinator's DHT
  authorizer refuses it at once (``push_revoked``), and the run's workers' peer gates within seconds (the signed
  revocation list it publishes in the DHT).

Usage::

    access = SwarmAccess(storage, runs, identity, lifetime_s=600, dht=coordinator_dht)
    grant = access.grant("demo", worker_public_key_der)     # Grant(token, expires_at, renew_after_s)
    access.require_not_banned("demo", peer_id)              # PermissionDenied
    accepted, banned = access.report("demo", reporter_peer_id, [("QmBad...", 3, "norm bound")])
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone

import hivemind
from hivemind.proto.auth_pb2 import AccessToken

from coordinator.access import PermissionDenied
from coordinator.request_checks import RequestError, check_peer_id, check_run_name, quoted
from coordinator.runtime import RunRuntimes, RunUnavailableError
from coordinator.storage import PeerBanRecord, Storage
from swarm.identity import Identity
from swarm.log import get_logger
from swarm.peer_access import DEFAULT_LIFETIME_S, issue_access_token, push_revoked
from swarm.peer_gate import publish_revocations
from swarm.revocations import sign_revocations

logger = get_logger(__name__)

MAX_REPORTS = 64  # peers in one ReportPeers
MAX_REPORT_COUNT = 1_000_000
MAX_REASON_CHARS = 200
REPORT_WINDOW_S = 3600.0  # refusals reported within this long count toward a ban
REVOCATIONS_TTL_S = 86400.0  # a run's published revocation list lives this long in the DHT
REVOCATIONS_REPUBLISH_S = 3600.0  # and is published again this often (and at each change and start)


@dataclass(frozen=True)
class Grant:
    token: AccessToken
    expires_at: float
    renew_after_s: float


class SwarmAccess:
    """Tokens, reports and bans of every run of one coordinator. Thread-safe."""

    def __init__(self, storage: Storage, runs: RunRuntimes, identity: Identity,
                 lifetime_s: float = DEFAULT_LIFETIME_S, dht: hivemind.DHT | None = None):
        if not lifetime_s > 0:
            raise ValueError(f"the access token lifetime must be positive, not {lifetime_s}")
        self.storage, self.runs, self.identity = storage, runs, identity
        self.lifetime_s, self.dht = lifetime_s, dht
        self._lock = threading.Lock()  # one ban decision at a time
        self._published_at = -float("inf")  # monotonic time of the last push_revoked

    def grant(self, run_name: str, public_key_der: bytes) -> Grant:
        token = issue_access_token(self.identity, run_name, public_key_der, self.lifetime_s)
        return Grant(token, float(token.expiration_time), self.lifetime_s / 3)

    def require_not_banned(self, run_name: str, peer_id: str, what: str) -> None:
        if self.storage.bans.is_banned(run_name, peer_id):
            raise PermissionDenied(f"{what} refused: peer {peer_id[:16]}... is banned from run '{run_name}'")

    def report(self, run_name: str, reporter: str, reports: list[tuple[str, int, str]]) -> tuple[int, list[str]]:
        """Count ``(peer_id, count, reason)`` refusals that ``reporter`` (a verified worker of the run) saw; ban
        peers that now meet the run's rule. Reports of itself or of the coordinator are not counted."""
        checked = check_reports(reports)
        threshold = self._ban_threshold(run_name)
        accepted, banned = 0, []
        with self._lock:
            for peer_id, count, reason in checked:
                if peer_id in (reporter, self.identity.peer_id):
                    continue
                self.storage.bans.add_report(run_name, peer_id, reporter, count, reason)
                accepted += 1
                tally = self.storage.bans.tally(run_name, peer_id, since=self._report_window_start())
                if (tally.reporters >= 2 and tally.total >= threshold
                        and not self.storage.bans.is_banned(run_name, peer_id)):
                    self.storage.bans.ban(run_name, peer_id, f"{tally.total} refused contributions reported by "
                                          f"{tally.reporters} peers (last: {reason or 'no reason given'})",
                                          banned_by="reports")
                    banned.append(peer_id)
                    logger.warning("run %s: banned peer %s (%d refusals reported by %d peers)", run_name, peer_id,
                                   tally.total, tally.reporters)
        if banned:
            self.push_revoked(run_name)
        return accepted, banned

    def _report_window_start(self) -> datetime:
        """Only recent reports count toward a ban: an honest peer whose part is refused now and then (a large but
        honest gradient) never adds up to one over a long run, while an attacker refused every round does fast."""
        return datetime.now(timezone.utc) - timedelta(seconds=REPORT_WINDOW_S)

    def ban(self, run_name: str, peer_id: str, reason: str = "") -> PeerBanRecord:
        """The operator bans ``peer_id`` from the run."""
        check_run_name(run_name)
        check_peer_id(peer_id)
        if len(reason) > MAX_REASON_CHARS or not reason.isprintable():
            raise RequestError(f"a ban reason has at most {MAX_REASON_CHARS} printable characters")
        record = self.storage.bans.ban(run_name, peer_id, reason or "banned by the operator",
                                       banned_by="operator")  # UnknownRunError: NOT_FOUND
        logger.warning("run %s: the operator banned peer %s", run_name, peer_id)
        self.push_revoked(run_name)
        return record

    def unban(self, run_name: str, peer_id: str) -> bool:
        check_run_name(run_name)
        check_peer_id(peer_id)
        lifted = self.storage.bans.unban(run_name, peer_id)
        if lifted:
            logger.info("run %s: the operator lifted the ban of peer %s", run_name, peer_id)
            self.push_revoked(run_name)  # its list, even if now empty
        return lifted

    def push_revoked(self, changed_run: str | None = None) -> None:
        """Make the coordinator's DHT refuse every banned peer (in its run) from now on, and publish the signed
        revocation list of every run with bans, and of ``changed_run`` (whose last ban may just have been lifted),
        which the workers' peer gates read (they stop dealing with a banned peer within seconds, not when its
        token expires)."""
        if self.dht is None:
            return
        bans = self.storage.bans.list_bans()
        push_revoked(self.dht, {(ban.run_name, ban.peer_id) for ban in bans})
        banned: dict[str, set[str]] = {changed_run: set()} if changed_run is not None else {}
        for ban in bans:
            banned.setdefault(ban.run_name, set()).add(ban.peer_id)
        expires_at = time.time() + REVOCATIONS_TTL_S
        for run_name, peer_ids in banned.items():
            signed = sign_revocations(self.identity, run_name, peer_ids)
            if not publish_revocations(self.dht, run_name, signed, self.identity.as_hivemind_key(), expires_at):
                logger.warning("run %s: the revocation list could not be stored in the DHT yet", run_name)
        self._published_at = time.monotonic()

    def republish_if_due(self) -> None:
        """Publish the revocation lists again before they expire in the DHT (the housekeeping loop calls this)."""
        if time.monotonic() - self._published_at >= REVOCATIONS_REPUBLISH_S:
            self.push_revoked()

    def _ban_threshold(self, run_name: str) -> int:
        try:
            return self.runs.get(run_name).spec.robustness.ban_after_reports
        except RunUnavailableError as exc:
            raise RequestError(str(exc)) from None


def check_reports(reports: list[tuple[str, int, str]]) -> list[tuple[str, int, str]]:
    """Reports from the network: at most ``MAX_REPORTS``, real peer IDs, counts 1..1e6, short printable reasons."""
    if len(reports) > MAX_REPORTS:
        raise RequestError(f"at most {MAX_REPORTS} peers per report, got {len(reports)}")
    checked = []
    for peer_id, count, reason in reports:
        check_peer_id(peer_id)
        if not 1 <= count <= MAX_REPORT_COUNT:
            raise RequestError(f"a report counts 1..{MAX_REPORT_COUNT} refusals, got {count}")
        if len(reason) > MAX_REASON_CHARS or not reason.isprintable():
            raise RequestError(f"report reason {quoted(reason)} is not up to {MAX_REASON_CHARS} printable "
                               f"characters")
        checked.append((peer_id, int(count), reason))
    return checked
