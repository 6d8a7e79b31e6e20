"""Which hivemind progress records a peer may believe: the rules every side applies to ``<shard>_progress``.

hivemind's ProgressTracker takes every record in the DHT at its word: the highest epoch any peer claims becomes
the swarm's epoch, so one peer claiming epoch 10**6 makes every honest worker jump there and download state
again and again. A record is believed here only if

- it is signed by the key of the peer it names (its owner subkey derives to its ``peer_id``): nobody speaks for
  another peer;
- its numbers are finite and in range (no inf samples/s, no negative counts);
- its epoch is at most ``max_epoch_lead`` beyond the (lower) median epoch of the records, so a minority of liars
  cannot move the swarm's epoch.

Usage::

    kept, dropped = filter_progress(records, max_epoch_lead=2, own_epoch=7, own_peer_id=dht.peer_id.to_base58())
    tracker = TrustedProgressTracker(dht=dht, prefix=run_id, target_batch_size=256, start=True, max_epoch_lead=2)
"""

from __future__ import annotations

import asyncio
import math
import statistics
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from cryptography.hazmat.primitives import serialization
from hivemind.dht.crypto import RSASignatureValidator
from hivemind.optim.progress_tracker import GlobalTrainingProgress, LocalTrainingProgress, ProgressTracker
from hivemind.p2p import PeerID

from swarm.identity import peer_id_of_public_key
from swarm.log import get_logger

logger = get_logger(__name__)

MAX_EPOCH = 2**31 - 1  # the highest epoch a receipt may claim (swarm.receipts.FIELD_BOUNDS)
MAX_SAMPLES = 2**40
MAX_SAMPLES_PER_SECOND = 1e7  # far beyond any worker; an absurd figure is a lie, not a measurement


@dataclass(frozen=True)
class SignedProgress:
    """One progress record with the peer ID of the key that signed it (None: unsigned or unreadable owner)."""

    signer: str | None
    progress: LocalTrainingProgress

    @property
    def peer_id(self) -> str:
        return PeerID(self.progress.peer_id).to_base58()


def owner_peer_id(subkey: object) -> str | None:
    """The peer ID of the RSA key that owns (signed) a DHT record, from its ``[owner:ssh-rsa ...]`` subkey."""
    if not isinstance(subkey, bytes):
        return None
    found = RSASignatureValidator._PUBLIC_KEY_RE.findall(subkey)
    if len(found) != 1:
        return None
    try:
        key = serialization.load_ssh_public_key(found[0])
        der = key.public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
    except (ValueError, TypeError):
        return None
    return peer_id_of_public_key(der)


def parse_signed_progress(entries: Mapping[Any, Any]) -> list[tuple[SignedProgress | None, Any]]:
    """(record, subkey) for each entry of a ``<shard>_progress`` dictionary; record None when it cannot be read
    (expired or malformed). ``entries`` maps subkeys to hivemind ValueWithExpiration."""
    parsed: list[tuple[SignedProgress | None, Any]] = []
    for subkey, entry in entries.items():
        try:
            progress = LocalTrainingProgress.parse_obj(getattr(entry, "value", None))
            PeerID(progress.peer_id).to_base58()
        except Exception:
            parsed.append((None, subkey))
            continue
        parsed.append((SignedProgress(owner_peer_id(subkey), progress), subkey))
    return parsed


def implausible(record: SignedProgress) -> str | None:
    """Why a record cannot be believed on its own (unsigned by the peer it names, numbers out of range), or None."""
    if record.signer is None:
        return "it is not signed by an RSA key"
    if record.signer != record.peer_id:
        return f"it names peer {record.peer_id} but is signed by the key of {record.signer}"
    progress = record.progress
    rate = progress.samples_per_second
    if not isinstance(rate, (int, float)) or not math.isfinite(rate) or not 0 <= rate <= MAX_SAMPLES_PER_SECOND:
        return f"samples/s is {rate!r}"
    if not 0 <= progress.epoch <= MAX_EPOCH:
        return f"epoch is {progress.epoch}"
    if not 0 <= progress.samples_accumulated <= MAX_SAMPLES:
        return f"samples accumulated is {progress.samples_accumulated}"
    if not math.isfinite(progress.time):
        return f"time is {progress.time!r}"
    return None


def epoch_bound(epochs: Iterable[int], max_epoch_lead: int) -> int | None:
    """The highest epoch believable given these (trusted) epochs: their lower median plus ``max_epoch_lead``;
    None without any epoch. The lower median: with two honest peers and two liars, the honest epoch is used."""
    values = sorted(epochs)
    if not values:
        return None
    return int(statistics.median_low(values)) + max_epoch_lead


def filter_progress(records: Sequence[SignedProgress], max_epoch_lead: int, own_epoch: int | None = None,
                    own_peer_id: str | None = None) -> tuple[list[SignedProgress], list[tuple[SignedProgress, str]]]:
    """(kept, [(dropped, why)]): records that are signed by the peer they name, in range, and at most
    ``max_epoch_lead`` epochs beyond the median epoch of those records. ``own_epoch``, this peer's local epoch,
    counts in the median once: in place of this peer's own record (``own_peer_id``) when that is among
    ``records``. Counted twice, a worker that rejoined two epochs behind two peers would out-vote them and never
    follow them again."""
    kept, dropped = [], []
    for record in records:
        why = implausible(record)
        if why:
            dropped.append((record, why))
        else:
            kept.append(record)
    if own_epoch is None:
        epochs = [record.progress.epoch for record in kept]
    else:
        epochs = [record.progress.epoch for record in kept if record.peer_id != own_peer_id] + [own_epoch]
    bound = epoch_bound(epochs, max_epoch_lead)
    if bound is not None:
        for record in [record for record in kept if record.progress.epoch > bound]:
            kept.remove(record)
            dropped.append((record, f"it claims epoch {record.progress.epoch}, beyond {bound} (the median epoch of "
                                    f"the shard's peers plus {max_epoch_lead})"))
    return kept, dropped


class WarnOnce:
    """Logs each (peer, reason) once: progress records are re-read every few seconds, a liar's every time.
    Bounded: after ``limit`` distinct reasons it starts over."""

    def __init__(self, limit: int = 10_000) -> None:
        self._seen: set[tuple[str, ...]] = set()
        self._limit = limit

    def __call__(self, key: tuple[str, ...], message: str, *args: object) -> None:
        if key in self._seen:
            return
        if len(self._seen) >= self._limit:
            self._seen.clear()
        self._seen.add(key)
        logger.warning(message, *args)


class TrustedProgressTracker(ProgressTracker):
    """hivemind's ProgressTracker that believes only the records ``filter_progress`` keeps (its own local
    progress counts in the median), so a peer claiming a far-ahead epoch, speaking for another peer or sending
    inf samples/s moves nobody's epoch. With ``peer_allowed`` (a run's ``PeerGate.allows``), records of peers
    without the run's access token are ignored too (they would make the swarm step early or late).

    Example::

        tracker = TrustedProgressTracker(dht=dht, prefix="demo_shard0", target_batch_size=256, start=True,
                                         max_epoch_lead=2, private_key=identity.as_hivemind_key())
    """

    def __init__(self, *args: Any, max_epoch_lead: int = 2, peer_allowed: Callable[[str], bool] | None = None,
                 **kwargs: Any) -> None:
        # set before hivemind's __init__, which parses the swarm's records
        self.max_epoch_lead, self.peer_allowed = max_epoch_lead, peer_allowed
        self._warn = WarnOnce()
        super().__init__(*args, **kwargs)

    def run(self) -> None:
        """hivemind's ``run``, then the loop's leftover tasks are cancelled and awaited before the thread ends.
        hivemind leaves them pending at shutdown (its cancelled progress store, a DHT read it stopped waiting
        for), and when the loop is garbage-collected asyncio logs "Task was destroyed but it is pending!"."""
        loop = asyncio.new_event_loop()
        asyncio.set_event_loop(loop)
        try:
            loop.run_until_complete(asyncio.gather(self._progress_reporter(), self._progress_fetcher()))
        finally:
            leftover = asyncio.all_tasks(loop)
            for task in leftover:
                task.cancel()
            loop.run_until_complete(asyncio.gather(*leftover, return_exceptions=True))
            self.shutdown_complete.set()

    def _parse_swarm_progress_data(self, metadata: Any) -> GlobalTrainingProgress:
        if isinstance(metadata, dict) and metadata:
            metadata = self._trusted_entries(metadata)
        return super()._parse_swarm_progress_data(metadata)

    def _trusted_entries(self, metadata: dict) -> dict:
        parsed = parse_signed_progress(metadata)
        readable = [(record, subkey) for record, subkey in parsed if record is not None]
        if self.peer_allowed is not None:  # a gated swarm: only the run's authorized peers' records count
            for record, _ in readable:
                if not self.peer_allowed(record.peer_id):
                    self._warn((record.peer_id, "unauthorized"), "%s: ignoring the progress record of %s: it "
                               "holds no access token of the run", self.prefix, record.peer_id)
            readable = [(record, subkey) for record, subkey in readable if self.peer_allowed(record.peer_id)]
        own = getattr(self, "local_progress", None)
        kept, dropped = filter_progress([record for record, _ in readable], self.max_epoch_lead,
                                        own.epoch if own is not None else None,
                                        PeerID(own.peer_id).to_base58() if own is not None else None)
        for record, why in dropped:
            self._warn((record.peer_id, why), "%s: ignoring the progress record of %s: %s", self.prefix,
                       record.peer_id, why)
        kept_ids = {id(record) for record in kept}
        return {subkey: metadata[subkey] for record, subkey in readable if id(record) in kept_ids}
