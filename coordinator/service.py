"""The coordinator's logic as plain functions over storage, the runs' runtimes, store and publisher; the gRPC
servicer only translates messages to and from these calls.

Errors a client caused raise ``RequestError`` (mapped to INVALID_ARGUMENT / NOT_FOUND by the servicer). Every
field of a request is checked first (``coordinator.request_checks``), within the bounds of ``RpcLimits``.
"""

from __future__ import annotations

from collections import Counter
from contextlib import ExitStack
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Iterator

from coordinator.ledger import Ledger, SubmitResult
from coordinator.limits import RpcLimits
from coordinator.publisher import PublishOutcome, Publisher
from coordinator.request_checks import (
    RequestError,
    check_batch_size,
    check_chunk_bytes,
    check_join,
    check_offsets,
    check_run_name,
    check_worker_id,
    clean_display_name,
    check_version,
    parse_spec_json,
)
from coordinator.retention import Retention, RetentionError
from coordinator.runtime import LaunchError, RunRuntime, RunRuntimes, RunUnavailableError
from coordinator.storage import (
    LeaderboardRow,
    RejectedSnapshotRecord,
    RunRecord,
    Storage,
    UnknownRunError,
    UnknownVersionError,
    UnknownWorkerError,
    VersionRecord,
    WorkerRecord,
)
from swarm.adapter_files import CHUNK_BYTES, FileDigest, describe_files
from swarm.data import data_slice
from swarm.manifest import ManifestError, SignedManifest, read_signed_manifest
from swarm.receipts import SignedReceipt
from swarm.spec import RunSpec, SpecError

LIVE_WINDOW_S = 60.0
MIN_CHUNK_BYTES, MAX_CHUNK_BYTES = 4 * 1024, 4 * 1024 * 1024


@dataclass(frozen=True)
class AssignmentPlan:
    worker: WorkerRecord
    runtime: RunRuntime
    initial_peers: list[str]
    slice_samples: int


@dataclass
class ShardState:
    shard: int
    live_workers: int = 0
    epoch: int = 0
    samples: int = 0


@dataclass
class RunState:
    record: RunRecord
    spec: RunSpec | None  # None only when the stored spec itself cannot be read
    live_workers: int
    samples_trained: int
    unavailable: str = ""  # why the run cannot be served on this coordinator; "" while it is served
    shards: list[ShardState] = field(default_factory=list)
    versions: list[VersionRecord] = field(default_factory=list)
    rejected: list[RejectedSnapshotRecord] = field(default_factory=list)


@dataclass(frozen=True)
class PullHeader:
    """What a pull sends before the files: the version, its signed manifest, and the files' sizes and hashes."""

    record: VersionRecord
    manifest: SignedManifest | None  # None only for versions published before signed manifests
    files: list[FileDigest]


class CoordinatorService:
    def __init__(self, storage: Storage, runs: RunRuntimes, publisher: Publisher, ledger: Ledger,
                 initial_peers: list[str], retention: Retention | None = None, limits: RpcLimits | None = None):
        self.storage, self.runs, self.publisher, self.ledger = storage, runs, publisher, ledger
        self.limits = limits or RpcLimits()
        self.retention = retention  # None: versions are never collected, pulls need no lease
        self.initial_peers = initial_peers

    def _runtime(self, run_name: str) -> RunRuntime:
        check_run_name(run_name)
        try:
            return self.runs.get(run_name)
        except UnknownRunError as exc:
            raise RequestError(str(exc), not_found=True) from None
        except RunUnavailableError as exc:
            raise RequestError(str(exc)) from None

    def launch(self, spec_json: str) -> RunRuntime:
        spec = parse_spec_json(spec_json, self.limits.max_spec_bytes)
        try:
            runtime = self.runs.launch(spec)
        except (SpecError, LaunchError, ValueError) as exc:
            raise RequestError(str(exc)) from None
        return runtime

    def join(self, run_name: str, peer_id: str, display_name: str, max_shards: int, device: str) -> AssignmentPlan:
        run_name, display_name, device = check_join(run_name, peer_id, display_name, max_shards, device)
        if not run_name:
            newest = self.storage.runs.newest_run()
            if newest is None:
                raise RequestError("no run has been launched on this coordinator yet", not_found=True)
            run_name = newest.name
        runtime = self._runtime(run_name)
        spec = runtime.spec
        live = self.storage.runs.live_workers(run_name, LIVE_WINDOW_S)
        shard_load = Counter(shard for worker in live for shard in worker.shards)
        wanted = spec.shards if max_shards <= 0 else min(max_shards, spec.shards)
        shards = sorted(sorted(range(spec.shards), key=lambda shard: (shard_load[shard], shard))[:wanted])
        slice_load = Counter(worker.data_slice for worker in live)
        chosen_slice = min(range(spec.data_slices), key=lambda index: (slice_load[index], index))
        worker = self.storage.runs.register_worker(run_name, peer_id, display_name, shards,
                                              chosen_slice, device)
        samples = len(data_slice(runtime.split.train, spec.data_slices, chosen_slice))
        return AssignmentPlan(worker, runtime, self.initial_peers, samples)

    def data_slice(self, run_name: str, index: int, batch: int = 256) -> Iterator[list[str]]:
        runtime = self._runtime(run_name)
        if not 0 <= index < runtime.spec.data_slices:
            raise RequestError(f"data slice {index} is outside 0..{runtime.spec.data_slices - 1}")
        texts = data_slice(runtime.split.train, runtime.spec.data_slices, index)
        for start in range(0, len(texts), batch):
            yield texts[start : start + batch]

    def submit_receipts(self, receipts: list[SignedReceipt]) -> list[SubmitResult]:
        check_batch_size(len(receipts), self.limits.max_receipts_per_batch)
        return self.ledger.submit(receipts)

    def leaderboard(self, run_name: str, include_unverified: bool = False) -> tuple[list[LeaderboardRow], int, int]:
        """The run's top contributors (at most ``max_leaderboard_rows``), the total counted samples their shares
        refer to, and how many contributors were left out."""
        self._runtime(run_name)
        rows = [row for row in self.storage.ledger.leaderboard(run_name, include_unverified) if row.samples > 0]
        # names stored before they were cleaned on Join are cleaned on the way out
        shown = [replace(row, display_name=clean_display_name(row.display_name, row.peer_id))
                 for row in rows[: self.limits.max_leaderboard_rows]]
        return shown, sum(row.samples for row in rows), len(rows) - len(shown)

    def leave(self, worker_id: str) -> None:
        check_worker_id(worker_id)
        try:
            self.storage.runs.mark_worker_left(worker_id)
        except UnknownWorkerError as exc:
            raise RequestError(str(exc), not_found=True) from None

    def status(self, run_name: str = "") -> list[RunState]:
        """Every run (or the named one), served or not: an unavailable run is listed with the reason."""
        try:
            records = [self.storage.runs.get_run(check_run_name(run_name))] if run_name else self.storage.runs.list_runs()
        except UnknownRunError as exc:
            raise RequestError(str(exc), not_found=True) from None
        return [self._state(record) for record in records]

    def _state(self, record: RunRecord) -> RunState:
        unavailable = ""
        try:
            spec: RunSpec | None = self.runs.get(record.name).spec
        except RunUnavailableError as exc:
            unavailable = str(exc)
            try:
                spec = RunSpec.from_json(record.spec_json)
            except SpecError:
                spec = None
        live = self.storage.runs.live_workers(record.name, LIVE_WINDOW_S)
        samples = self.storage.ledger.samples_by_shard(record.name)
        epochs = self.storage.ledger.latest_epoch_by_shard(record.name)
        shards = [
            ShardState(shard, sum(shard in worker.shards for worker in live), epochs.get(shard, 0),
                       samples.get(shard, 0))
            for shard in range(spec.shards if spec else 0)
        ]
        return RunState(record, spec, len(live), sum(samples.values()), unavailable, shards,
                        self.storage.versions.list_versions(record.name), self.storage.versions.rejected_snapshots(record.name))

    def publish_now(self, run_name: str) -> PublishOutcome:
        self._runtime(run_name)
        return self.publisher.publish(run_name)

    def _served_version(self, run_name: str, version: int) -> VersionRecord:
        self._runtime(run_name)
        check_version(version)
        record = self.storage.versions.get_version(run_name, version or None)
        if record is None:
            which = f"version {version}" if version else "any version"
            raise RequestError(f"run '{run_name}' has not published {which}", not_found=True)
        if record.collected_at is not None:
            raise RequestError(f"version {record.version} of '{run_name}' was removed by retention (the coordinator "
                               f"keeps only the newest versions, releases and stacking parents); pull a newer "
                               f"version", not_found=True)
        return record

    def version_manifest(self, run_name: str, version: int = 0) -> PullHeader:
        """A version's record, signed manifest (as stored beside its files) and files, without the files."""
        return self._header(self._served_version(run_name, version))

    @staticmethod
    def _header(record: VersionRecord) -> PullHeader:
        run_name, path = record.run_name, Path(record.path)
        signed = None
        if record.manifest is not None:
            try:
                signed = read_signed_manifest(path)
            except ManifestError as exc:
                raise RequestError(f"version {record.version} of '{run_name}': {exc}") from None
        try:
            files = describe_files(path)
        except OSError as exc:
            raise RequestError(f"version {record.version} of '{run_name}' is missing from the store: {exc}") from None
        return PullHeader(record, signed, files)

    def mark_release(self, run_name: str, version: int, release: bool = True) -> VersionRecord:
        self._runtime(run_name)
        check_version(version)
        try:
            return self.storage.versions.set_release(run_name, version, release)
        except UnknownVersionError as exc:
            raise RequestError(str(exc), not_found=True) from None
        except ValueError as exc:
            raise RequestError(str(exc)) from None

    def pull(self, run_name: str, version: int = 0, offsets: dict[str, int] | None = None,
             chunk_bytes: int = 0) -> Iterator[PullHeader | tuple[str, int, bytes]]:
        """The PullHeader, then (file, offset, bytes) chunks of every file from ``offsets[file]`` on (a resumed
        download). Retention leaves the version alone until the stream ends."""
        offsets = check_offsets(offsets or {})
        chunk_bytes = min(max(check_chunk_bytes(chunk_bytes, MAX_CHUNK_BYTES) or CHUNK_BYTES, MIN_CHUNK_BYTES),
                          MAX_CHUNK_BYTES)
        record = self._served_version(run_name, version)
        with ExitStack() as held:
            try:
                if self.retention is not None:
                    held.enter_context(self.retention.lease(run_name, record.version))
            except RetentionError as exc:
                raise RequestError(str(exc), not_found=True) from None
            header = self._header(record)
            yield header
            path = Path(header.record.path)
            for entry in header.files:
                start = min(offsets.get(entry.name, 0), entry.size)
                with (path / entry.name).open("rb") as handle:
                    handle.seek(start)
                    offset = start
                    while block := handle.read(chunk_bytes):
                        yield entry.name, offset, block
                        offset += len(block)
