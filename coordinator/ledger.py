"""The contribution ledger's rules: which signed receipts the coordinator accepts, and how each accepted one is
cross-checked against what the swarm itself published on the DHT (hivemind's progress records).

Plain functions over ``Storage``; the gRPC servicer and the progress watcher call them.

Usage::

    ledger = Ledger(storage, runs, refresh_shard=watcher.poll_shard)
    results = ledger.submit([signed_receipt, ...])    # [SubmitResult(receipt_id, "accepted", ""), ...]
    ledger.recheck_unverified()                      # upgrade receipts as DHT evidence arrives
"""

from __future__ import annotations

import base64
import statistics
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from typing import Callable, Sequence

from coordinator.runtime import RunRuntimes, RunUnavailableError
from coordinator.storage import (
    ObservationRecord,
    OverlappingReceiptError,
    PeerContext,
    ReceiptConflictError,
    ReceiptRecord,
    Storage,
    StorageError,
    UnknownRunError,
)
from swarm.log import get_logger
from swarm.receipts import Receipt, ReceiptError, SignedReceipt, verify_receipt

logger = get_logger(__name__)

ACCEPTED, DUPLICATE, REJECTED = "accepted", "duplicate", "rejected"


@dataclass(frozen=True)
class LedgerPolicy:
    """What the coordinator accepts as plausible, and what counts as evidence."""

    clock_skew_s: float = 120.0  # a receipt may end at most this far in the coordinator's future
    compute_slack_s: float = 2.0  # compute_seconds may exceed the receipt's wall interval by this much
    max_samples_per_second: float = 50_000.0  # absolute ceiling on a receipt's wall-clock throughput
    # hivemind's samples/s is an EMA that starts low (its first interval includes waiting for peers), so the
    # factors are generous: a receipt is disputed above 6x the peer's DHT figure and refused above 10x
    throughput_factor: float = 6.0  # cross-check: claimed throughput may exceed the DHT's figure by this factor
    reject_factor: float = 10.0  # on receipt: claimed samples may exceed the measured throughput by this factor
    reference_receipts: int = 3  # verified receipts a peer needs before its own median throughput is its reference
    # a peer without that history is held to the run's median verified throughput, or to this ceiling when it is
    # higher (a new fast worker is not refused for being faster than the run's median)
    new_peer_samples_per_second: float = 200.0
    max_rate_over_run: float = 10.0  # a peer's own reference is capped at this multiple of the run's reference
    epoch_slack: int = 1  # a receipt may claim this many epochs beyond the highest the swarm published
    evidence_window_s: float = 30.0  # DHT observations this close to the interval count as evidence of it
    recheck_for_s: float = 900.0  # unverified receipts are cross-checked again for this long


@dataclass(frozen=True)
class SubmitResult:
    receipt_id: str
    status: str  # accepted | duplicate | rejected
    message: str = ""
    verification: str = ""  # for accepted/duplicate: unverified | verified | disputed


def _utc(unix_time: float) -> datetime:
    return datetime.fromtimestamp(unix_time, tz=timezone.utc)


def _wall_seconds(receipt: ReceiptRecord | Receipt) -> float:
    if isinstance(receipt, Receipt):
        return max(receipt.ended_at - receipt.started_at, 1e-3)
    return max((receipt.ended_at - receipt.started_at).total_seconds(), 1e-3)


def classify(receipt: ReceiptRecord, observations: Sequence[ObservationRecord],
             policy: LedgerPolicy, trusted_rate: float | None = None) -> tuple[str, str]:
    """(status, reason) of a receipt given the DHT observations of its peer and shard around its interval.

    The peer's own DHT records are its own word: they confirm the epochs it reached, but the throughput they
    state counts only up to ``trusted_rate`` (see ``Ledger.trusted_rate``), so a key cannot vouch for itself."""
    if not observations:
        return "unverified", "no progress record of this peer on this shard in the DHT during the interval"
    epochs = [observation.epoch for observation in observations]
    before = [o.epoch for o in observations if o.last_seen < receipt.started_at]
    after = [o.epoch for o in observations if o.first_seen > receipt.ended_at]
    if before and receipt.epoch < max(before) - policy.epoch_slack:
        return "disputed", (f"claims epoch {receipt.epoch}, but the peer's DHT records already showed epoch "
                            f"{max(before)} before the interval")
    if receipt.epoch > max(epochs) + policy.epoch_slack:
        if after:  # seen after the interval, still short of the epoch it claims to have reached
            return "disputed", (f"claims epoch {receipt.epoch}; the peer's DHT records show at most epoch "
                                f"{max(epochs)}, even after the interval")
        return "unverified", f"claims epoch {receipt.epoch}; the DHT shows epoch {max(epochs)} so far"
    observed_rate = max(observation.samples_per_second for observation in observations)
    if trusted_rate is not None:
        observed_rate = min(observed_rate, trusted_rate)
    claimed_rate = receipt.samples / _wall_seconds(receipt)
    if observed_rate > 0 and claimed_rate > observed_rate * policy.throughput_factor:
        return "disputed", (f"claims {claimed_rate:.1f} samples/s; the peer's DHT records show at most "
                            f"{observed_rate:.1f}")
    if not all(observation.key_bound for observation in observations):
        return "unverified", "the peer's DHT records are not signed by its identity key"
    return "verified", f"matches the peer's DHT records (epochs {min(epochs)}-{max(epochs)})"


def classify_gap(receipt: ReceiptRecord, before: ObservationRecord | None, after: Sequence[ObservationRecord],
                 policy: LedgerPolicy, trusted_rate: float) -> tuple[str, str]:
    """(status, reason) of a receipt for work done while the coordinator saw nothing of the shard (it was away):
    judged by the peer's own signed records on either side of the gap, ``before`` (its last one) and ``after``
    (its records since). Verified once a record after the gap shows the peer at the epoch it claims or beyond,
    and the claimed throughput is within what the peer is trusted with; never disputed on epochs alone, since a
    peer may have left during the gap and come back from an older version."""
    if not after:
        return "unverified", "the coordinator saw no progress of the shard during the interval; waiting for the " \
                             "peer's records after it"
    reached = max(observation.epoch for observation in after)
    if receipt.epoch > reached + policy.epoch_slack:
        return "unverified", (f"claims epoch {receipt.epoch}, made while the coordinator saw nothing of the shard; "
                              f"the peer's records since show epoch {reached}")
    claimed_rate = receipt.samples / _wall_seconds(receipt)
    if claimed_rate > trusted_rate * policy.throughput_factor:
        return "disputed", (f"claims {claimed_rate:.1f} samples/s while the coordinator was away; the peer is "
                            f"trusted with {trusted_rate:.1f}")
    if not all(observation.key_bound for observation in [*after, *([before] if before else [])]):
        return "unverified", "the peer's DHT records are not signed by its identity key"
    since = f"epoch {before.epoch} before the gap, " if before is not None else ""
    return "verified", f"made while the coordinator was away; the peer's records show {since}epoch {reached} after it"


class Ledger:
    def __init__(self, storage: Storage, runs: RunRuntimes, policy: LedgerPolicy | None = None,
                 refresh_shard: Callable[[str, int], int] = lambda run, shard: 0,
                 clock: Callable[[], datetime] = lambda: datetime.now(timezone.utc)):
        self.storage, self.runs = storage, runs
        self.policy = policy or LedgerPolicy()
        self.refresh_shard = refresh_shard  # read the shard's DHT progress now; returns peers seen (watcher's poll)
        self.clock = clock

    def submit(self, receipts: Sequence[SignedReceipt]) -> list[SubmitResult]:
        """One result per receipt, in order: a receipt that cannot be taken is refused alone, never its batch."""
        results = []
        for signed in receipts:
            try:
                results.append(self._submit_one(signed))
            except Exception:  # a bug or a storage failure on one receipt: logged, reported, the rest go on
                receipt_id = _receipt_id_of(signed)
                logger.exception("receipt %s could not be processed", receipt_id or "(unreadable)")
                results.append(SubmitResult(receipt_id, REJECTED, "internal error while checking this receipt; "
                                                                   "it was not counted"))
        return results

    def _submit_one(self, signed: SignedReceipt) -> SubmitResult:
        try:
            receipt = verify_receipt(signed)
        except ReceiptError as exc:
            return SubmitResult(_receipt_id_of(signed), REJECTED, str(exc))
        window = self._evidence_window(_utc(receipt.started_at), _utc(receipt.ended_at))
        context = self.storage.ledger.peer_context(receipt.run, receipt.peer_id, receipt.shard, *window)
        try:
            worker_id = self._check_plausible(receipt, context)
        except ReceiptError as exc:
            return SubmitResult(receipt.receipt_id, REJECTED, f"receipt {receipt.receipt_id} refused: {exc}")
        record = ReceiptRecord(
            receipt_id=receipt.receipt_id, run_name=receipt.run, shard=receipt.shard, peer_id=receipt.peer_id,
            worker_id=worker_id, epoch=receipt.epoch, steps=receipt.steps, samples=receipt.samples,
            tokens=receipt.tokens, compute_seconds=receipt.compute_seconds, loss=receipt.loss,
            started_at=_utc(receipt.started_at), ended_at=_utc(receipt.ended_at), received_at=self.clock(),
            payload=signed.payload.decode(), public_key=base64.b64encode(signed.public_key).decode(),
            signature=base64.b64encode(signed.signature).decode(), status="unverified", status_reason="",
            checked_at=None,
        )
        status, reason = self._classify(record, context.observations)
        try:
            stored, created = self.storage.ledger.add_receipt(
                ReceiptRecord(**{**record.__dict__, "status": status, "status_reason": reason}))
        except (ReceiptConflictError, OverlappingReceiptError) as exc:
            return SubmitResult(receipt.receipt_id, REJECTED, str(exc))
        except (ValueError, StorageError) as exc:
            return SubmitResult(receipt.receipt_id, REJECTED, f"receipt {receipt.receipt_id} refused: {exc}")
        return SubmitResult(receipt.receipt_id, ACCEPTED if created else DUPLICATE, stored.status_reason,
                            stored.status)

    def _check_plausible(self, receipt: Receipt, context: PeerContext) -> str | None:
        """The id of the worker registration the receipt belongs to; ``ReceiptError`` if it is implausible."""
        policy = self.policy
        try:
            spec = self.runs.get(receipt.run).spec
        except UnknownRunError:
            raise ReceiptError(f"no run named {receipt.run!r}") from None
        except RunUnavailableError as exc:
            raise ReceiptError(str(exc)) from None
        if not 0 <= receipt.shard < spec.shards:
            raise ReceiptError(f"run {receipt.run!r} has no shard {receipt.shard}")
        for name in ("epoch", "steps", "samples", "tokens"):
            if getattr(receipt, name) < 0:
                raise ReceiptError(f"{name} must be >= 0, got {getattr(receipt, name)}")
        if receipt.compute_seconds < 0:
            raise ReceiptError(f"compute_seconds must be >= 0, got {receipt.compute_seconds}")
        registrations = context.registrations
        if not registrations:
            raise ReceiptError(f"peer {receipt.peer_id} never joined run {receipt.run!r}")
        worker = next((w for w in registrations if receipt.shard in w.shards), None)
        if worker is None:
            raise ReceiptError(f"peer {receipt.peer_id} was never assigned shard {receipt.shard}")
        now = self.clock().timestamp()
        if receipt.ended_at <= receipt.started_at:
            raise ReceiptError("the interval must end after it starts")
        if receipt.ended_at > now + policy.clock_skew_s:
            raise ReceiptError(f"the interval ends {receipt.ended_at - now:.0f}s in the future")
        if receipt.started_at < min(w.joined_at for w in registrations).timestamp() - policy.clock_skew_s:
            raise ReceiptError("the interval starts before the peer joined the run")
        wall = _wall_seconds(receipt)
        if receipt.compute_seconds > wall + policy.compute_slack_s:
            raise ReceiptError(f"{receipt.compute_seconds:.1f}s of compute in a {wall:.1f}s interval")
        if receipt.samples > spec.batch_size_per_step * max(receipt.steps, 0):
            raise ReceiptError(f"{receipt.samples} samples in {receipt.steps} steps of at most "
                               f"{spec.batch_size_per_step}")
        rate = receipt.samples / wall
        if rate > policy.max_samples_per_second:
            raise ReceiptError(f"{rate:.0f} samples/s is beyond any worker (limit {policy.max_samples_per_second:.0f})")
        reference = self._reference_rate(receipt, context)
        allowed = reference * policy.reject_factor * wall + 2 * spec.batch_size_per_step
        if receipt.samples > allowed:
            raise ReceiptError(f"{receipt.samples} samples in {wall:.1f}s is far beyond the peer's measured "
                               f"throughput of {reference:.1f} samples/s")
        highest = self._highest_epoch(receipt, context.highest_epoch)
        # only what the coordinator saw while the work was done refutes it: after a gap (the coordinator was away,
        # or everybody left and the run went on from a version) the swarm's later epochs can be lower
        if receipt.epoch > highest + policy.epoch_slack and self._watched(receipt.run, receipt.shard,
                                                                          _utc(receipt.started_at),
                                                                          _utc(receipt.ended_at)):
            raise ReceiptError(f"epoch {receipt.epoch} of shard {receipt.shard} was never reached (the swarm "
                               f"published epoch {highest} at most)")
        return worker.worker_id

    def _watched(self, run_name: str, shard: int, started: datetime, ended: datetime) -> bool:
        """Whether the coordinator saw the shard's progress records while ``[started, ended]`` went on."""
        return bool(self.storage.ledger.observations(run_name, shard, start=started, end=ended))

    def _reference_rate(self, receipt: Receipt, context: PeerContext) -> float:
        """The throughput a receipt is held to on arrival: the peer's DHT figure around the interval when there is
        one, never above what the ledger trusts the peer with (``trusted_rate``)."""
        trusted = self.trusted_rate(receipt.run, receipt.shard, receipt.peer_id)
        rates = [observation.samples_per_second for observation in context.observations
                 if observation.samples_per_second > 0]
        return min(max(rates), trusted) if rates else trusted

    def trusted_rate(self, run_name: str, shard: int, peer_id: str) -> float:
        """Samples per second the ledger credits ``peer_id`` with on ``shard`` at most (before the factors).

        Only verified receipts count as history. A peer with ``reference_receipts`` verified receipts is held to
        its own median when that is higher than the run's reference, capped at ``max_rate_over_run`` times it; any
        other peer (a new key) to the run's reference: the median over the other peers of their verified medians, or
        ``new_peer_samples_per_second`` when that is higher or the run has none. A key's first receipts never
        set its own reference."""
        policy = self.policy
        rates = self.storage.ledger.verified_rates(run_name, shard)
        others = [statistics.median(values) for peer, values in rates.items() if peer != peer_id and values]
        run_reference = max(statistics.median(others) if others else 0.0, policy.new_peer_samples_per_second)
        own = rates.get(peer_id, ())
        if len(own) >= policy.reference_receipts:
            return min(max(statistics.median(own), run_reference), run_reference * policy.max_rate_over_run)
        return run_reference

    def _highest_epoch(self, receipt: Receipt, highest: int | None) -> float:
        """The highest epoch the shard's swarm has published; infinite when the coordinator cannot tell (it sees
        no progress record of the shard right now, e.g. just after a restart), so nothing is refused blindly."""
        if highest is not None and receipt.epoch <= highest + self.policy.epoch_slack:
            return highest
        try:
            seen_now = self.refresh_shard(receipt.run, receipt.shard)
        except Exception as exc:  # the DHT being slow must not lose a receipt
            logger.warning("could not read shard %d of %s from the DHT: %s", receipt.shard, receipt.run, exc)
            seen_now = 0
        highest = self.storage.ledger.highest_observed_epoch(receipt.run, receipt.shard)
        return highest if seen_now and highest is not None else float("inf")

    def _evidence_window(self, started: datetime, ended: datetime) -> tuple[datetime, datetime]:
        """DHT observations seen within this window count as evidence about a receipt's interval."""
        window = timedelta(seconds=self.policy.evidence_window_s)
        return started - window, ended + window

    def _evidence(self, receipt: ReceiptRecord) -> list[ObservationRecord]:
        start, end = self._evidence_window(receipt.started_at, receipt.ended_at)
        return self.storage.ledger.observations(receipt.run_name, receipt.shard, receipt.peer_id, start=start, end=end)

    def _classify(self, receipt: ReceiptRecord, around: Sequence[ObservationRecord]) -> tuple[str, str]:
        """(status, reason): against the peer's observations ``around`` the interval or, when the coordinator saw
        nothing of the shard during it (it was away), against the peer's own records on either side of the gap."""
        trusted = self.trusted_rate(receipt.run_name, receipt.shard, receipt.peer_id)
        if around or self._watched(receipt.run_name, receipt.shard, receipt.started_at, receipt.ended_at):
            return classify(receipt, around, self.policy, trusted)
        run, shard, peer = receipt.run_name, receipt.shard, receipt.peer_id
        before = [o for o in self.storage.ledger.observations(run, shard, peer, end=receipt.started_at)
                  if o.last_seen < receipt.started_at]
        after = [o for o in self.storage.ledger.observations(run, shard, peer, start=receipt.ended_at)
                 if o.first_seen > receipt.ended_at]
        return classify_gap(receipt, max(before, key=lambda o: o.last_seen) if before else None, after, self.policy,
                            trusted)

    def recheck_unverified(self, run_name: str) -> int:
        """Cross-check the run's recent unverified receipts again; returns how many changed status."""
        since = self.clock() - timedelta(seconds=self.policy.recheck_for_s)
        changed = 0
        for receipt in self.storage.ledger.list_receipts(run_name, status="unverified", received_since=since):
            status, reason = self._classify(receipt, self._evidence(receipt))
            if status != receipt.status:
                self.storage.ledger.set_receipt_status(receipt.receipt_id, status, reason)
                changed += 1
                if status == "disputed":
                    logger.warning("receipt %s of %s disputed: %s", receipt.receipt_id, receipt.peer_id, reason)
        return changed


def _receipt_id_of(signed: SignedReceipt) -> str:
    try:
        return Receipt.from_payload(signed.payload).receipt_id
    except ReceiptError:
        return ""
