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

from coordinator.access import AccessPolicy, Credentials, PermissionDenied, Unauthenticated
from coordinator.hand_over import HandOverOutcome, HandOvers
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
    PeerBanRecord,
    RunSettings,
    Storage,
    UnknownRunError,
    UnknownVersionError,
    UnknownWorkerError,
    VersionRecord,
    WorkerRecord,
)
from swarm.adapter_files import CHUNK_BYTES, FileDigest, describe_files
from swarm.data import data_slice
from swarm.samples import TrainingSample
from coordinator.swarm_access import Grant, SwarmAccess
from swarm.join_proof import (
    Proof,
    hand_over_statement,
    join_statement,
    leave_statement,
    renew_statement,
    report_statement,
)
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
    grant: Grant | None = None  # the worker's swarm access token; None without SwarmAccess (tests of other parts)


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
    settings: RunSettings = field(default_factory=RunSettings)
    shards: list[ShardState] = field(default_factory=list)
    versions: list[VersionRecord] = field(default_factory=list)
    rejected: list[RejectedSnapshotRecord] = field(default_factory=list)
    bans: list[PeerBanRecord] = field(default_factory=list)


@dataclass(frozen=True)
class PullHeader:
    """What a pull sends before the files: the version, its signed manifest, and the files' sizes and hashes."""

    record: VersionRecord
    manifest: SignedManifest | None  # None only for versions published before signed manifests
    files: list[FileDigest]


class CoordinatorService:
    def __init__(self, storage: Storage, runs: RunRuntimes, publisher: Publisher, ledger: Ledger,
                 initial_peers: list[str], retention: Retention | None = None, limits: RpcLimits | None = None,
                 access: AccessPolicy | None = None, swarm: SwarmAccess | None = None, publishes: bool = True):
        self.storage, self.runs, self.publisher, self.ledger = storage, runs, publisher, ledger
        # False (swarm coordinator --no-publish): workers' hand-overs are declined; PublishNow still works
        self.hand_overs = HandOvers(publisher, storage) if publishes else None
        self.limits = limits or RpcLimits()
        self.retention = retention  # None: versions are never collected, pulls need no lease
        self.initial_peers = initial_peers
        self._access = access  # None: only for tests of other parts; Join and Leave are then refused
        self.swarm = swarm  # None: only for tests of other parts; Joins then carry no access token

    @property
    def access(self) -> AccessPolicy:
        if self._access is None:
            raise RequestError("this coordinator has no access policy: it cannot check Joins and Leaves")
        return self._access

    def _runtime(self, run_name: str) -> RunRuntime:
        check_run_name(run_name)
        try:
            if self.storage.runs.settings(run_name).state == "removed":
                raise RequestError(f"run '{run_name}' was removed by the operator", not_found=True)
            return self.runs.get(run_name)
        except UnknownRunError as exc:
            raise RequestError(str(exc), not_found=True) from None
        except RunUnavailableError as exc:
            raise RequestError(str(exc)) from None

    def launch(self, spec_json: str, join_policy: str = "open", private: bool = False) -> RunRuntime:
        spec = parse_spec_json(spec_json, self.limits.max_spec_bytes)
        try:
            settings = RunSettings(join_policy=join_policy, private=private)
            runtime = self.runs.launch(spec, settings)
        except (SpecError, LaunchError, RunUnavailableError, ValueError) as exc:  # unavailable: an existing run
            raise RequestError(str(exc)) from None
        stored = self.storage.runs.settings(spec.name)
        if (stored.join_policy, stored.private) != (settings.join_policy, settings.private):  # a relaunch
            raise RequestError(f"run '{spec.name}' already exists with join policy {stored.join_policy}"
                               f"{' and private reads' if stored.private else ''}")
        return runtime

    def _joinable_run(self, run_name: str) -> str:
        """The run a Join goes to: the named one, else the operator's default run."""
        if run_name:
            return run_name
        default = self.storage.runs.default_run()
        if default is not None:
            return default
        settings = self.storage.runs.all_settings()
        open_runs = [f"{name} ({s.join_policy})" for name, s in settings.items()
                     if s.state == "active" and not s.private]  # a private run's name is not told to anyone
        raise RequestError("name the run to join (--run): this coordinator has no default run; runs open to join: "
                           + (", ".join(open_runs) or "none"))

    def join(self, run_name: str, peer_id: str, display_name: str, max_shards: int, device: str,
             proof: Proof | None = None, credentials: Credentials = Credentials()) -> AssignmentPlan:
        signed_name, signed_device = display_name, device  # as the worker signed them, before cleaning
        run_name, display_name, device = check_join(run_name, peer_id, display_name, max_shards, device)
        named = run_name
        run_name = self._joinable_run(run_name)
        settings = self.storage.runs.settings(run_name)  # UnknownRunError: NOT_FOUND
        if settings.state != "active":
            raise RequestError(f"run '{run_name}' is {settings.state}: it takes no new workers")
        if settings.join_policy == "token":
            self.access.require_join_token(run_name, credentials, f"joining run '{run_name}'")
        # the worker signs the run name it sent (empty for the default run)
        statement = join_statement(coordinator=self.access.coordinator_id, run=named, peer_id=peer_id,
                                   display_name=signed_name, max_shards=max_shards, device=signed_device,
                                   timestamp=proof.timestamp if proof else 0.0)
        self.access.require_proof(proof, peer_id, statement, "Join")
        if self.swarm is not None:
            self.swarm.require_not_banned(run_name, peer_id, "Join")
        runtime = self._runtime(run_name)
        spec = runtime.spec
        live = self.storage.runs.live_workers(run_name, LIVE_WINDOW_S)
        shard_load = Counter(shard for worker in live for shard in worker.shards)
        wanted = spec.shards if max_shards <= 0 else min(max_shards, spec.shards)
        shards = sorted(sorted(range(spec.shards), key=lambda shard: (shard_load[shard], shard))[:wanted])
        slice_load = Counter(worker.data_slice for worker in live)
        chosen_slice = min(range(spec.data_slices), key=lambda index: (slice_load[index], index))
        worker = self.storage.runs.register_worker(run_name, peer_id, display_name, shards, chosen_slice, device)
        samples = len(data_slice(runtime.split.train, spec.data_slices, chosen_slice))
        assert proof is not None  # require_proof refused an unsigned Join
        grant = self.swarm.grant(run_name, proof.public_key) if self.swarm is not None else None
        return AssignmentPlan(worker, runtime, self.initial_peers, samples, grant)

    def _signed_worker(self, worker_id: str, proof: Proof | None, statement_of, what: str) -> WorkerRecord:
        """The live registration ``worker_id`` whose key signed ``statement_of(worker)``, in an active run."""
        check_worker_id(worker_id)
        try:
            worker = self.storage.runs.get_worker(worker_id)
        except UnknownWorkerError as exc:
            raise RequestError(str(exc), not_found=True) from None
        self.access.require_proof(proof, worker.peer_id, statement_of(worker), what)
        if worker.left:
            raise PermissionDenied(f"{what} refused: worker {worker_id} has left the run")
        state = self.storage.runs.settings(worker.run_name).state
        if state != "active":
            raise PermissionDenied(f"{what} refused: run '{worker.run_name}' is {state}")
        return worker

    def gated_swarm(self) -> SwarmAccess:
        if self.swarm is None:
            raise RequestError("this coordinator does not gate its swarm (no SwarmAccess)")
        return self.swarm

    def renew_access(self, worker_id: str, proof: Proof | None) -> Grant:
        """A fresh access token for the live registration ``worker_id`` (signed by its key), unless its peer is
        banned from the run."""
        timestamp = proof.timestamp if proof else 0.0
        worker = self._signed_worker(worker_id, proof, lambda w: renew_statement(
            coordinator=self.access.coordinator_id, worker_id=worker_id, peer_id=w.peer_id, timestamp=timestamp),
            "RenewAccessToken")
        swarm = self.gated_swarm()
        swarm.require_not_banned(worker.run_name, worker.peer_id, "RenewAccessToken")
        assert proof is not None
        return swarm.grant(worker.run_name, proof.public_key)

    def hand_over(self, worker_id: str, epoch: int, proof: Proof | None) -> HandOverOutcome:
        """Snapshot the run of the live registration ``worker_id`` (signed by its key) now, while the worker still
        serves its final state at ``epoch`` (coordinator.hand_over)."""
        timestamp = proof.timestamp if proof else 0.0
        worker = self._signed_worker(worker_id, proof, lambda w: hand_over_statement(
            coordinator=self.access.coordinator_id, worker_id=worker_id, peer_id=w.peer_id, epoch=epoch,
            timestamp=timestamp), "HandOverState")
        if epoch < 0:
            raise RequestError(f"epoch must be >= 0, got {epoch}")
        if self.hand_overs is None:
            return HandOverOutcome(False, "this coordinator publishes no versions (--no-publish)")
        return self.hand_overs.take(worker.run_name, epoch)

    def report_peers(self, worker_id: str, reports: list[tuple[str, int, str]],
                     proof: Proof | None) -> tuple[int, list[str]]:
        """Count the refusals a live, unbanned worker's averagers saw; the peers banned as a result."""
        timestamp = proof.timestamp if proof else 0.0
        worker = self._signed_worker(worker_id, proof, lambda w: report_statement(
            coordinator=self.access.coordinator_id, worker_id=worker_id, peer_id=w.peer_id, reports=reports,
            timestamp=timestamp), "ReportPeers")
        swarm = self.gated_swarm()
        swarm.require_not_banned(worker.run_name, worker.peer_id, "ReportPeers")
        return swarm.report(worker.run_name, worker.peer_id, reports)

    def data_slice(self, run_name: str, index: int, worker_id: str = "") -> list[TrainingSample]:
        """The samples of data slice ``index``, for the live registration ``worker_id`` that was assigned it."""
        if not worker_id:
            raise Unauthenticated("StreamDataSlice needs the worker_id of your Join")
        try:
            worker = self.storage.runs.get_worker(worker_id)
        except UnknownWorkerError:
            raise PermissionDenied(f"StreamDataSlice: no worker {worker_id[:32]!r} joined this coordinator") from None
        if worker.run_name != run_name or worker.left or worker.data_slice != index:
            raise PermissionDenied(f"StreamDataSlice: worker {worker_id} is not a live registration of run "
                                   f"'{run_name}' assigned data slice {index}")
        runtime = self._runtime(run_name)
        if not 0 <= index < runtime.spec.data_slices:
            raise RequestError(f"data slice {index} is outside 0..{runtime.spec.data_slices - 1}")
        return data_slice(runtime.split.train, runtime.spec.data_slices, index)

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

    def default_run(self, credentials: Credentials = Credentials()) -> str:
        """The operator's default run, as far as the caller may know it ("" for none, or a private one)."""
        name = self.storage.runs.default_run()
        if name is None or not self.access.may_read(self.storage.runs.settings(name), name, credentials):
            return ""
        return name

    def leave(self, worker_id: str, proof: Proof | None = None) -> None:
        """End the registration, if ``proof`` is the Leave signed by the key of the worker that joined."""
        check_worker_id(worker_id)
        try:
            worker = self.storage.runs.get_worker(worker_id)
        except UnknownWorkerError as exc:
            raise RequestError(str(exc), not_found=True) from None
        statement = leave_statement(coordinator=self.access.coordinator_id, worker_id=worker_id,
                                    peer_id=worker.peer_id, timestamp=proof.timestamp if proof else 0.0)
        self.access.require_proof(proof, worker.peer_id, statement, "Leave")
        self.storage.runs.mark_worker_left(worker_id)

    def status(self, run_name: str = "", include_archived: bool = False,
               credentials: Credentials = Credentials()) -> list[RunState]:
        """Every run (or the named one), served or not: an unavailable run is listed with the reason. Without a
        name, archived and removed runs only with ``include_archived``, and private runs only for callers that
        may read them."""
        if run_name:
            name = check_run_name(run_name)
            return [self._state(self.storage.runs.get_run(name), self.storage.runs.settings(name))]
        settings = self.storage.runs.all_settings()
        hidden = () if include_archived else ("archived", "removed")
        may_read = self.access.may_read if self._access is not None else lambda s, name, c: not s.private
        return [self._state(record, settings[record.name]) for record in self.storage.runs.list_runs()
                if settings[record.name].state not in hidden
                and may_read(settings[record.name], record.name, credentials)]

    def _state(self, record: RunRecord, settings: RunSettings) -> RunState:
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
        # only work the swarm's signed records confirmed is shown as trained (unverified receipts may be forged)
        samples = self.storage.ledger.samples_by_shard(record.name, verified_only=True)
        epochs = self.storage.ledger.latest_epoch_by_shard(record.name, verified_only=True)
        shards = [
            ShardState(shard, sum(shard in worker.shards for worker in live), epochs.get(shard, 0),
                       samples.get(shard, 0))
            for shard in range(spec.shards if spec else 0)
        ]
        versions = self.storage.versions
        trained = self.storage.ledger.distinct_samples(record.name, verified_only=True)  # not once per shard
        return RunState(record, spec, len(live), trained, unavailable, settings, shards,
                        versions.list_versions(record.name), versions.rejected_snapshots(record.name),
                        self.storage.bans.list_bans(record.name))

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
        chunk_bytes = max(check_chunk_bytes(chunk_bytes, MAX_CHUNK_BYTES) or CHUNK_BYTES, MIN_CHUNK_BYTES)
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
