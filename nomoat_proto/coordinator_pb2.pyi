from google.protobuf.internal import containers as _containers
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class LaunchRunRequest(_message.Message):
    __slots__ = ("spec_json", "join_policy", "private")
    SPEC_JSON_FIELD_NUMBER: _ClassVar[int]
    JOIN_POLICY_FIELD_NUMBER: _ClassVar[int]
    PRIVATE_FIELD_NUMBER: _ClassVar[int]
    spec_json: str
    join_policy: str
    private: bool
    def __init__(self, spec_json: _Optional[str] = ..., join_policy: _Optional[str] = ..., private: _Optional[bool] = ...) -> None: ...

class LaunchRunResponse(_message.Message):
    __slots__ = ("run_name", "spec_hash", "base_model_fingerprint", "dataset_digest", "train_samples", "eval_samples")
    RUN_NAME_FIELD_NUMBER: _ClassVar[int]
    SPEC_HASH_FIELD_NUMBER: _ClassVar[int]
    BASE_MODEL_FINGERPRINT_FIELD_NUMBER: _ClassVar[int]
    DATASET_DIGEST_FIELD_NUMBER: _ClassVar[int]
    TRAIN_SAMPLES_FIELD_NUMBER: _ClassVar[int]
    EVAL_SAMPLES_FIELD_NUMBER: _ClassVar[int]
    run_name: str
    spec_hash: str
    base_model_fingerprint: str
    dataset_digest: str
    train_samples: int
    eval_samples: int
    def __init__(self, run_name: _Optional[str] = ..., spec_hash: _Optional[str] = ..., base_model_fingerprint: _Optional[str] = ..., dataset_digest: _Optional[str] = ..., train_samples: _Optional[int] = ..., eval_samples: _Optional[int] = ...) -> None: ...

class JoinRequest(_message.Message):
    __slots__ = ("run_name", "peer_id", "display_name", "max_shards", "device", "public_key", "signature", "timestamp")
    RUN_NAME_FIELD_NUMBER: _ClassVar[int]
    PEER_ID_FIELD_NUMBER: _ClassVar[int]
    DISPLAY_NAME_FIELD_NUMBER: _ClassVar[int]
    MAX_SHARDS_FIELD_NUMBER: _ClassVar[int]
    DEVICE_FIELD_NUMBER: _ClassVar[int]
    PUBLIC_KEY_FIELD_NUMBER: _ClassVar[int]
    SIGNATURE_FIELD_NUMBER: _ClassVar[int]
    TIMESTAMP_FIELD_NUMBER: _ClassVar[int]
    run_name: str
    peer_id: str
    display_name: str
    max_shards: int
    device: str
    public_key: bytes
    signature: bytes
    timestamp: float
    def __init__(self, run_name: _Optional[str] = ..., peer_id: _Optional[str] = ..., display_name: _Optional[str] = ..., max_shards: _Optional[int] = ..., device: _Optional[str] = ..., public_key: _Optional[bytes] = ..., signature: _Optional[bytes] = ..., timestamp: _Optional[float] = ...) -> None: ...

class Assignment(_message.Message):
    __slots__ = ("worker_id", "run_name", "spec_json", "spec_hash", "base_model_fingerprint", "shards", "initial_peers", "data_slice", "data_slices", "slice_samples", "report_interval_s", "base_model_revision", "access")
    WORKER_ID_FIELD_NUMBER: _ClassVar[int]
    RUN_NAME_FIELD_NUMBER: _ClassVar[int]
    SPEC_JSON_FIELD_NUMBER: _ClassVar[int]
    SPEC_HASH_FIELD_NUMBER: _ClassVar[int]
    BASE_MODEL_FINGERPRINT_FIELD_NUMBER: _ClassVar[int]
    SHARDS_FIELD_NUMBER: _ClassVar[int]
    INITIAL_PEERS_FIELD_NUMBER: _ClassVar[int]
    DATA_SLICE_FIELD_NUMBER: _ClassVar[int]
    DATA_SLICES_FIELD_NUMBER: _ClassVar[int]
    SLICE_SAMPLES_FIELD_NUMBER: _ClassVar[int]
    REPORT_INTERVAL_S_FIELD_NUMBER: _ClassVar[int]
    BASE_MODEL_REVISION_FIELD_NUMBER: _ClassVar[int]
    ACCESS_FIELD_NUMBER: _ClassVar[int]
    worker_id: str
    run_name: str
    spec_json: str
    spec_hash: str
    base_model_fingerprint: str
    shards: _containers.RepeatedScalarFieldContainer[int]
    initial_peers: _containers.RepeatedScalarFieldContainer[str]
    data_slice: int
    data_slices: int
    slice_samples: int
    report_interval_s: float
    base_model_revision: str
    access: AccessGrant
    def __init__(self, worker_id: _Optional[str] = ..., run_name: _Optional[str] = ..., spec_json: _Optional[str] = ..., spec_hash: _Optional[str] = ..., base_model_fingerprint: _Optional[str] = ..., shards: _Optional[_Iterable[int]] = ..., initial_peers: _Optional[_Iterable[str]] = ..., data_slice: _Optional[int] = ..., data_slices: _Optional[int] = ..., slice_samples: _Optional[int] = ..., report_interval_s: _Optional[float] = ..., base_model_revision: _Optional[str] = ..., access: _Optional[_Union[AccessGrant, _Mapping]] = ...) -> None: ...

class AccessGrant(_message.Message):
    __slots__ = ("access_token", "authority_public_key", "expires_at", "renew_after_s")
    ACCESS_TOKEN_FIELD_NUMBER: _ClassVar[int]
    AUTHORITY_PUBLIC_KEY_FIELD_NUMBER: _ClassVar[int]
    EXPIRES_AT_FIELD_NUMBER: _ClassVar[int]
    RENEW_AFTER_S_FIELD_NUMBER: _ClassVar[int]
    access_token: bytes
    authority_public_key: bytes
    expires_at: float
    renew_after_s: float
    def __init__(self, access_token: _Optional[bytes] = ..., authority_public_key: _Optional[bytes] = ..., expires_at: _Optional[float] = ..., renew_after_s: _Optional[float] = ...) -> None: ...

class RenewAccessRequest(_message.Message):
    __slots__ = ("worker_id", "public_key", "signature", "timestamp")
    WORKER_ID_FIELD_NUMBER: _ClassVar[int]
    PUBLIC_KEY_FIELD_NUMBER: _ClassVar[int]
    SIGNATURE_FIELD_NUMBER: _ClassVar[int]
    TIMESTAMP_FIELD_NUMBER: _ClassVar[int]
    worker_id: str
    public_key: bytes
    signature: bytes
    timestamp: float
    def __init__(self, worker_id: _Optional[str] = ..., public_key: _Optional[bytes] = ..., signature: _Optional[bytes] = ..., timestamp: _Optional[float] = ...) -> None: ...

class PeerReport(_message.Message):
    __slots__ = ("peer_id", "count", "reason")
    PEER_ID_FIELD_NUMBER: _ClassVar[int]
    COUNT_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    peer_id: str
    count: int
    reason: str
    def __init__(self, peer_id: _Optional[str] = ..., count: _Optional[int] = ..., reason: _Optional[str] = ...) -> None: ...

class PeerReportRequest(_message.Message):
    __slots__ = ("worker_id", "reports", "public_key", "signature", "timestamp")
    WORKER_ID_FIELD_NUMBER: _ClassVar[int]
    REPORTS_FIELD_NUMBER: _ClassVar[int]
    PUBLIC_KEY_FIELD_NUMBER: _ClassVar[int]
    SIGNATURE_FIELD_NUMBER: _ClassVar[int]
    TIMESTAMP_FIELD_NUMBER: _ClassVar[int]
    worker_id: str
    reports: _containers.RepeatedCompositeFieldContainer[PeerReport]
    public_key: bytes
    signature: bytes
    timestamp: float
    def __init__(self, worker_id: _Optional[str] = ..., reports: _Optional[_Iterable[_Union[PeerReport, _Mapping]]] = ..., public_key: _Optional[bytes] = ..., signature: _Optional[bytes] = ..., timestamp: _Optional[float] = ...) -> None: ...

class PeerReportResponse(_message.Message):
    __slots__ = ("accepted", "banned")
    ACCEPTED_FIELD_NUMBER: _ClassVar[int]
    BANNED_FIELD_NUMBER: _ClassVar[int]
    accepted: int
    banned: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, accepted: _Optional[int] = ..., banned: _Optional[_Iterable[str]] = ...) -> None: ...

class BanPeerRequest(_message.Message):
    __slots__ = ("run_name", "peer_id", "reason")
    RUN_NAME_FIELD_NUMBER: _ClassVar[int]
    PEER_ID_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    run_name: str
    peer_id: str
    reason: str
    def __init__(self, run_name: _Optional[str] = ..., peer_id: _Optional[str] = ..., reason: _Optional[str] = ...) -> None: ...

class PeerBanInfo(_message.Message):
    __slots__ = ("run_name", "peer_id", "reason", "banned_by", "banned_at")
    RUN_NAME_FIELD_NUMBER: _ClassVar[int]
    PEER_ID_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    BANNED_BY_FIELD_NUMBER: _ClassVar[int]
    BANNED_AT_FIELD_NUMBER: _ClassVar[int]
    run_name: str
    peer_id: str
    reason: str
    banned_by: str
    banned_at: str
    def __init__(self, run_name: _Optional[str] = ..., peer_id: _Optional[str] = ..., reason: _Optional[str] = ..., banned_by: _Optional[str] = ..., banned_at: _Optional[str] = ...) -> None: ...

class DataSliceRequest(_message.Message):
    __slots__ = ("run_name", "data_slice", "worker_id")
    RUN_NAME_FIELD_NUMBER: _ClassVar[int]
    DATA_SLICE_FIELD_NUMBER: _ClassVar[int]
    WORKER_ID_FIELD_NUMBER: _ClassVar[int]
    run_name: str
    data_slice: int
    worker_id: str
    def __init__(self, run_name: _Optional[str] = ..., data_slice: _Optional[int] = ..., worker_id: _Optional[str] = ...) -> None: ...

class DataChunk(_message.Message):
    __slots__ = ("texts", "samples")
    TEXTS_FIELD_NUMBER: _ClassVar[int]
    SAMPLES_FIELD_NUMBER: _ClassVar[int]
    texts: _containers.RepeatedScalarFieldContainer[str]
    samples: _containers.RepeatedCompositeFieldContainer[FormattedSample]
    def __init__(self, texts: _Optional[_Iterable[str]] = ..., samples: _Optional[_Iterable[_Union[FormattedSample, _Mapping]]] = ...) -> None: ...

class FormattedSample(_message.Message):
    __slots__ = ("segments",)
    SEGMENTS_FIELD_NUMBER: _ClassVar[int]
    segments: _containers.RepeatedCompositeFieldContainer[SampleSegment]
    def __init__(self, segments: _Optional[_Iterable[_Union[SampleSegment, _Mapping]]] = ...) -> None: ...

class SampleSegment(_message.Message):
    __slots__ = ("text", "trainable")
    TEXT_FIELD_NUMBER: _ClassVar[int]
    TRAINABLE_FIELD_NUMBER: _ClassVar[int]
    text: str
    trainable: bool
    def __init__(self, text: _Optional[str] = ..., trainable: _Optional[bool] = ...) -> None: ...

class SignedReceipt(_message.Message):
    __slots__ = ("payload", "public_key", "signature")
    PAYLOAD_FIELD_NUMBER: _ClassVar[int]
    PUBLIC_KEY_FIELD_NUMBER: _ClassVar[int]
    SIGNATURE_FIELD_NUMBER: _ClassVar[int]
    payload: bytes
    public_key: bytes
    signature: bytes
    def __init__(self, payload: _Optional[bytes] = ..., public_key: _Optional[bytes] = ..., signature: _Optional[bytes] = ...) -> None: ...

class ReceiptBatch(_message.Message):
    __slots__ = ("receipts",)
    RECEIPTS_FIELD_NUMBER: _ClassVar[int]
    receipts: _containers.RepeatedCompositeFieldContainer[SignedReceipt]
    def __init__(self, receipts: _Optional[_Iterable[_Union[SignedReceipt, _Mapping]]] = ...) -> None: ...

class ReceiptResult(_message.Message):
    __slots__ = ("receipt_id", "status", "message", "verification")
    RECEIPT_ID_FIELD_NUMBER: _ClassVar[int]
    STATUS_FIELD_NUMBER: _ClassVar[int]
    MESSAGE_FIELD_NUMBER: _ClassVar[int]
    VERIFICATION_FIELD_NUMBER: _ClassVar[int]
    receipt_id: str
    status: str
    message: str
    verification: str
    def __init__(self, receipt_id: _Optional[str] = ..., status: _Optional[str] = ..., message: _Optional[str] = ..., verification: _Optional[str] = ...) -> None: ...

class ReceiptResults(_message.Message):
    __slots__ = ("results",)
    RESULTS_FIELD_NUMBER: _ClassVar[int]
    results: _containers.RepeatedCompositeFieldContainer[ReceiptResult]
    def __init__(self, results: _Optional[_Iterable[_Union[ReceiptResult, _Mapping]]] = ...) -> None: ...

class LeaderboardRequest(_message.Message):
    __slots__ = ("run_name", "include_unverified")
    RUN_NAME_FIELD_NUMBER: _ClassVar[int]
    INCLUDE_UNVERIFIED_FIELD_NUMBER: _ClassVar[int]
    run_name: str
    include_unverified: bool
    def __init__(self, run_name: _Optional[str] = ..., include_unverified: _Optional[bool] = ...) -> None: ...

class LeaderboardEntry(_message.Message):
    __slots__ = ("peer_id", "display_name", "samples", "verified_samples", "compute_hours", "share", "last_seen", "receipts", "disputed_receipts")
    PEER_ID_FIELD_NUMBER: _ClassVar[int]
    DISPLAY_NAME_FIELD_NUMBER: _ClassVar[int]
    SAMPLES_FIELD_NUMBER: _ClassVar[int]
    VERIFIED_SAMPLES_FIELD_NUMBER: _ClassVar[int]
    COMPUTE_HOURS_FIELD_NUMBER: _ClassVar[int]
    SHARE_FIELD_NUMBER: _ClassVar[int]
    LAST_SEEN_FIELD_NUMBER: _ClassVar[int]
    RECEIPTS_FIELD_NUMBER: _ClassVar[int]
    DISPUTED_RECEIPTS_FIELD_NUMBER: _ClassVar[int]
    peer_id: str
    display_name: str
    samples: int
    verified_samples: int
    compute_hours: float
    share: float
    last_seen: str
    receipts: int
    disputed_receipts: int
    def __init__(self, peer_id: _Optional[str] = ..., display_name: _Optional[str] = ..., samples: _Optional[int] = ..., verified_samples: _Optional[int] = ..., compute_hours: _Optional[float] = ..., share: _Optional[float] = ..., last_seen: _Optional[str] = ..., receipts: _Optional[int] = ..., disputed_receipts: _Optional[int] = ...) -> None: ...

class Leaderboard(_message.Message):
    __slots__ = ("run_name", "include_unverified", "total_samples", "entries", "omitted_entries")
    RUN_NAME_FIELD_NUMBER: _ClassVar[int]
    INCLUDE_UNVERIFIED_FIELD_NUMBER: _ClassVar[int]
    TOTAL_SAMPLES_FIELD_NUMBER: _ClassVar[int]
    ENTRIES_FIELD_NUMBER: _ClassVar[int]
    OMITTED_ENTRIES_FIELD_NUMBER: _ClassVar[int]
    run_name: str
    include_unverified: bool
    total_samples: int
    entries: _containers.RepeatedCompositeFieldContainer[LeaderboardEntry]
    omitted_entries: int
    def __init__(self, run_name: _Optional[str] = ..., include_unverified: _Optional[bool] = ..., total_samples: _Optional[int] = ..., entries: _Optional[_Iterable[_Union[LeaderboardEntry, _Mapping]]] = ..., omitted_entries: _Optional[int] = ...) -> None: ...

class HandOverRequest(_message.Message):
    __slots__ = ("worker_id", "epoch", "public_key", "signature", "timestamp")
    WORKER_ID_FIELD_NUMBER: _ClassVar[int]
    EPOCH_FIELD_NUMBER: _ClassVar[int]
    PUBLIC_KEY_FIELD_NUMBER: _ClassVar[int]
    SIGNATURE_FIELD_NUMBER: _ClassVar[int]
    TIMESTAMP_FIELD_NUMBER: _ClassVar[int]
    worker_id: str
    epoch: int
    public_key: bytes
    signature: bytes
    timestamp: float
    def __init__(self, worker_id: _Optional[str] = ..., epoch: _Optional[int] = ..., public_key: _Optional[bytes] = ..., signature: _Optional[bytes] = ..., timestamp: _Optional[float] = ...) -> None: ...

class HandOverResponse(_message.Message):
    __slots__ = ("kept", "message", "version", "retry_after_s")
    KEPT_FIELD_NUMBER: _ClassVar[int]
    MESSAGE_FIELD_NUMBER: _ClassVar[int]
    VERSION_FIELD_NUMBER: _ClassVar[int]
    RETRY_AFTER_S_FIELD_NUMBER: _ClassVar[int]
    kept: bool
    message: str
    version: VersionInfo
    retry_after_s: float
    def __init__(self, kept: _Optional[bool] = ..., message: _Optional[str] = ..., version: _Optional[_Union[VersionInfo, _Mapping]] = ..., retry_after_s: _Optional[float] = ...) -> None: ...

class LeaveRequest(_message.Message):
    __slots__ = ("worker_id", "public_key", "signature", "timestamp")
    WORKER_ID_FIELD_NUMBER: _ClassVar[int]
    PUBLIC_KEY_FIELD_NUMBER: _ClassVar[int]
    SIGNATURE_FIELD_NUMBER: _ClassVar[int]
    TIMESTAMP_FIELD_NUMBER: _ClassVar[int]
    worker_id: str
    public_key: bytes
    signature: bytes
    timestamp: float
    def __init__(self, worker_id: _Optional[str] = ..., public_key: _Optional[bytes] = ..., signature: _Optional[bytes] = ..., timestamp: _Optional[float] = ...) -> None: ...

class LeaveResponse(_message.Message):
    __slots__ = ("ok", "message")
    OK_FIELD_NUMBER: _ClassVar[int]
    MESSAGE_FIELD_NUMBER: _ClassVar[int]
    ok: bool
    message: str
    def __init__(self, ok: _Optional[bool] = ..., message: _Optional[str] = ...) -> None: ...

class StatusRequest(_message.Message):
    __slots__ = ("run_name", "include_archived")
    RUN_NAME_FIELD_NUMBER: _ClassVar[int]
    INCLUDE_ARCHIVED_FIELD_NUMBER: _ClassVar[int]
    run_name: str
    include_archived: bool
    def __init__(self, run_name: _Optional[str] = ..., include_archived: _Optional[bool] = ...) -> None: ...

class ShardStatus(_message.Message):
    __slots__ = ("shard", "live_workers", "epoch", "samples")
    SHARD_FIELD_NUMBER: _ClassVar[int]
    LIVE_WORKERS_FIELD_NUMBER: _ClassVar[int]
    EPOCH_FIELD_NUMBER: _ClassVar[int]
    SAMPLES_FIELD_NUMBER: _ClassVar[int]
    shard: int
    live_workers: int
    epoch: int
    samples: int
    def __init__(self, shard: _Optional[int] = ..., live_workers: _Optional[int] = ..., epoch: _Optional[int] = ..., samples: _Optional[int] = ...) -> None: ...

class VersionInfo(_message.Message):
    __slots__ = ("run_name", "version", "sha256", "epoch", "samples", "eval_loss", "base_eval_loss", "created_at", "contributors", "release", "collected", "chain")
    RUN_NAME_FIELD_NUMBER: _ClassVar[int]
    VERSION_FIELD_NUMBER: _ClassVar[int]
    SHA256_FIELD_NUMBER: _ClassVar[int]
    EPOCH_FIELD_NUMBER: _ClassVar[int]
    SAMPLES_FIELD_NUMBER: _ClassVar[int]
    EVAL_LOSS_FIELD_NUMBER: _ClassVar[int]
    BASE_EVAL_LOSS_FIELD_NUMBER: _ClassVar[int]
    CREATED_AT_FIELD_NUMBER: _ClassVar[int]
    CONTRIBUTORS_FIELD_NUMBER: _ClassVar[int]
    RELEASE_FIELD_NUMBER: _ClassVar[int]
    COLLECTED_FIELD_NUMBER: _ClassVar[int]
    CHAIN_FIELD_NUMBER: _ClassVar[int]
    run_name: str
    version: int
    sha256: str
    epoch: int
    samples: int
    eval_loss: float
    base_eval_loss: float
    created_at: str
    contributors: _containers.RepeatedScalarFieldContainer[str]
    release: bool
    collected: bool
    chain: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, run_name: _Optional[str] = ..., version: _Optional[int] = ..., sha256: _Optional[str] = ..., epoch: _Optional[int] = ..., samples: _Optional[int] = ..., eval_loss: _Optional[float] = ..., base_eval_loss: _Optional[float] = ..., created_at: _Optional[str] = ..., contributors: _Optional[_Iterable[str]] = ..., release: _Optional[bool] = ..., collected: _Optional[bool] = ..., chain: _Optional[_Iterable[str]] = ...) -> None: ...

class RejectedSnapshot(_message.Message):
    __slots__ = ("attempted_at", "epoch", "eval_loss", "reason")
    ATTEMPTED_AT_FIELD_NUMBER: _ClassVar[int]
    EPOCH_FIELD_NUMBER: _ClassVar[int]
    EVAL_LOSS_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    attempted_at: str
    epoch: int
    eval_loss: float
    reason: str
    def __init__(self, attempted_at: _Optional[str] = ..., epoch: _Optional[int] = ..., eval_loss: _Optional[float] = ..., reason: _Optional[str] = ...) -> None: ...

class RunStatus(_message.Message):
    __slots__ = ("run_name", "spec_hash", "base_model", "dataset", "shards", "created_at", "samples_trained", "shard_status", "versions", "live_workers", "rejected_snapshots", "parent", "unavailable", "state", "join_policy", "private", "banned_peers")
    RUN_NAME_FIELD_NUMBER: _ClassVar[int]
    SPEC_HASH_FIELD_NUMBER: _ClassVar[int]
    BASE_MODEL_FIELD_NUMBER: _ClassVar[int]
    DATASET_FIELD_NUMBER: _ClassVar[int]
    SHARDS_FIELD_NUMBER: _ClassVar[int]
    CREATED_AT_FIELD_NUMBER: _ClassVar[int]
    SAMPLES_TRAINED_FIELD_NUMBER: _ClassVar[int]
    SHARD_STATUS_FIELD_NUMBER: _ClassVar[int]
    VERSIONS_FIELD_NUMBER: _ClassVar[int]
    LIVE_WORKERS_FIELD_NUMBER: _ClassVar[int]
    REJECTED_SNAPSHOTS_FIELD_NUMBER: _ClassVar[int]
    PARENT_FIELD_NUMBER: _ClassVar[int]
    UNAVAILABLE_FIELD_NUMBER: _ClassVar[int]
    STATE_FIELD_NUMBER: _ClassVar[int]
    JOIN_POLICY_FIELD_NUMBER: _ClassVar[int]
    PRIVATE_FIELD_NUMBER: _ClassVar[int]
    BANNED_PEERS_FIELD_NUMBER: _ClassVar[int]
    run_name: str
    spec_hash: str
    base_model: str
    dataset: str
    shards: int
    created_at: str
    samples_trained: int
    shard_status: _containers.RepeatedCompositeFieldContainer[ShardStatus]
    versions: _containers.RepeatedCompositeFieldContainer[VersionInfo]
    live_workers: int
    rejected_snapshots: _containers.RepeatedCompositeFieldContainer[RejectedSnapshot]
    parent: str
    unavailable: str
    state: str
    join_policy: str
    private: bool
    banned_peers: _containers.RepeatedCompositeFieldContainer[PeerBanInfo]
    def __init__(self, run_name: _Optional[str] = ..., spec_hash: _Optional[str] = ..., base_model: _Optional[str] = ..., dataset: _Optional[str] = ..., shards: _Optional[int] = ..., created_at: _Optional[str] = ..., samples_trained: _Optional[int] = ..., shard_status: _Optional[_Iterable[_Union[ShardStatus, _Mapping]]] = ..., versions: _Optional[_Iterable[_Union[VersionInfo, _Mapping]]] = ..., live_workers: _Optional[int] = ..., rejected_snapshots: _Optional[_Iterable[_Union[RejectedSnapshot, _Mapping]]] = ..., parent: _Optional[str] = ..., unavailable: _Optional[str] = ..., state: _Optional[str] = ..., join_policy: _Optional[str] = ..., private: _Optional[bool] = ..., banned_peers: _Optional[_Iterable[_Union[PeerBanInfo, _Mapping]]] = ...) -> None: ...

class StatusResponse(_message.Message):
    __slots__ = ("runs",)
    RUNS_FIELD_NUMBER: _ClassVar[int]
    runs: _containers.RepeatedCompositeFieldContainer[RunStatus]
    def __init__(self, runs: _Optional[_Iterable[_Union[RunStatus, _Mapping]]] = ...) -> None: ...

class PublishRequest(_message.Message):
    __slots__ = ("run_name",)
    RUN_NAME_FIELD_NUMBER: _ClassVar[int]
    run_name: str
    def __init__(self, run_name: _Optional[str] = ...) -> None: ...

class PublishResponse(_message.Message):
    __slots__ = ("published", "message", "version")
    PUBLISHED_FIELD_NUMBER: _ClassVar[int]
    MESSAGE_FIELD_NUMBER: _ClassVar[int]
    VERSION_FIELD_NUMBER: _ClassVar[int]
    published: bool
    message: str
    version: VersionInfo
    def __init__(self, published: _Optional[bool] = ..., message: _Optional[str] = ..., version: _Optional[_Union[VersionInfo, _Mapping]] = ...) -> None: ...

class PullRequest(_message.Message):
    __slots__ = ("run_name", "version", "offsets", "chunk_bytes")
    class OffsetsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: int
        def __init__(self, key: _Optional[str] = ..., value: _Optional[int] = ...) -> None: ...
    RUN_NAME_FIELD_NUMBER: _ClassVar[int]
    VERSION_FIELD_NUMBER: _ClassVar[int]
    OFFSETS_FIELD_NUMBER: _ClassVar[int]
    CHUNK_BYTES_FIELD_NUMBER: _ClassVar[int]
    run_name: str
    version: int
    offsets: _containers.ScalarMap[str, int]
    chunk_bytes: int
    def __init__(self, run_name: _Optional[str] = ..., version: _Optional[int] = ..., offsets: _Optional[_Mapping[str, int]] = ..., chunk_bytes: _Optional[int] = ...) -> None: ...

class VersionRequest(_message.Message):
    __slots__ = ("run_name", "version")
    RUN_NAME_FIELD_NUMBER: _ClassVar[int]
    VERSION_FIELD_NUMBER: _ClassVar[int]
    run_name: str
    version: int
    def __init__(self, run_name: _Optional[str] = ..., version: _Optional[int] = ...) -> None: ...

class VersionManifest(_message.Message):
    __slots__ = ("version", "manifest", "signature_json")
    VERSION_FIELD_NUMBER: _ClassVar[int]
    MANIFEST_FIELD_NUMBER: _ClassVar[int]
    SIGNATURE_JSON_FIELD_NUMBER: _ClassVar[int]
    version: VersionInfo
    manifest: bytes
    signature_json: str
    def __init__(self, version: _Optional[_Union[VersionInfo, _Mapping]] = ..., manifest: _Optional[bytes] = ..., signature_json: _Optional[str] = ...) -> None: ...

class ReleaseRequest(_message.Message):
    __slots__ = ("run_name", "version", "release")
    RUN_NAME_FIELD_NUMBER: _ClassVar[int]
    VERSION_FIELD_NUMBER: _ClassVar[int]
    RELEASE_FIELD_NUMBER: _ClassVar[int]
    run_name: str
    version: int
    release: bool
    def __init__(self, run_name: _Optional[str] = ..., version: _Optional[int] = ..., release: _Optional[bool] = ...) -> None: ...

class FileEntry(_message.Message):
    __slots__ = ("name", "size", "sha256")
    NAME_FIELD_NUMBER: _ClassVar[int]
    SIZE_FIELD_NUMBER: _ClassVar[int]
    SHA256_FIELD_NUMBER: _ClassVar[int]
    name: str
    size: int
    sha256: str
    def __init__(self, name: _Optional[str] = ..., size: _Optional[int] = ..., sha256: _Optional[str] = ...) -> None: ...

class PullHeader(_message.Message):
    __slots__ = ("version", "files", "manifest", "signature_json")
    VERSION_FIELD_NUMBER: _ClassVar[int]
    FILES_FIELD_NUMBER: _ClassVar[int]
    MANIFEST_FIELD_NUMBER: _ClassVar[int]
    SIGNATURE_JSON_FIELD_NUMBER: _ClassVar[int]
    version: VersionInfo
    files: _containers.RepeatedCompositeFieldContainer[FileEntry]
    manifest: bytes
    signature_json: str
    def __init__(self, version: _Optional[_Union[VersionInfo, _Mapping]] = ..., files: _Optional[_Iterable[_Union[FileEntry, _Mapping]]] = ..., manifest: _Optional[bytes] = ..., signature_json: _Optional[str] = ...) -> None: ...

class FileChunk(_message.Message):
    __slots__ = ("name", "offset", "data")
    NAME_FIELD_NUMBER: _ClassVar[int]
    OFFSET_FIELD_NUMBER: _ClassVar[int]
    DATA_FIELD_NUMBER: _ClassVar[int]
    name: str
    offset: int
    data: bytes
    def __init__(self, name: _Optional[str] = ..., offset: _Optional[int] = ..., data: _Optional[bytes] = ...) -> None: ...

class PullChunk(_message.Message):
    __slots__ = ("header", "chunk")
    HEADER_FIELD_NUMBER: _ClassVar[int]
    CHUNK_FIELD_NUMBER: _ClassVar[int]
    header: PullHeader
    chunk: FileChunk
    def __init__(self, header: _Optional[_Union[PullHeader, _Mapping]] = ..., chunk: _Optional[_Union[FileChunk, _Mapping]] = ...) -> None: ...

class CoordinatorInfoRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class CoordinatorInfo(_message.Message):
    __slots__ = ("coordinator_id", "default_run")
    COORDINATOR_ID_FIELD_NUMBER: _ClassVar[int]
    DEFAULT_RUN_FIELD_NUMBER: _ClassVar[int]
    coordinator_id: str
    default_run: str
    def __init__(self, coordinator_id: _Optional[str] = ..., default_run: _Optional[str] = ...) -> None: ...

class CreateJoinTokenRequest(_message.Message):
    __slots__ = ("run_name", "label")
    RUN_NAME_FIELD_NUMBER: _ClassVar[int]
    LABEL_FIELD_NUMBER: _ClassVar[int]
    run_name: str
    label: str
    def __init__(self, run_name: _Optional[str] = ..., label: _Optional[str] = ...) -> None: ...

class JoinTokenInfo(_message.Message):
    __slots__ = ("token_id", "run_name", "label", "created_at", "revoked_at")
    TOKEN_ID_FIELD_NUMBER: _ClassVar[int]
    RUN_NAME_FIELD_NUMBER: _ClassVar[int]
    LABEL_FIELD_NUMBER: _ClassVar[int]
    CREATED_AT_FIELD_NUMBER: _ClassVar[int]
    REVOKED_AT_FIELD_NUMBER: _ClassVar[int]
    token_id: int
    run_name: str
    label: str
    created_at: str
    revoked_at: str
    def __init__(self, token_id: _Optional[int] = ..., run_name: _Optional[str] = ..., label: _Optional[str] = ..., created_at: _Optional[str] = ..., revoked_at: _Optional[str] = ...) -> None: ...

class JoinTokenCreated(_message.Message):
    __slots__ = ("info", "token")
    INFO_FIELD_NUMBER: _ClassVar[int]
    TOKEN_FIELD_NUMBER: _ClassVar[int]
    info: JoinTokenInfo
    token: str
    def __init__(self, info: _Optional[_Union[JoinTokenInfo, _Mapping]] = ..., token: _Optional[str] = ...) -> None: ...

class ListJoinTokensRequest(_message.Message):
    __slots__ = ("run_name",)
    RUN_NAME_FIELD_NUMBER: _ClassVar[int]
    run_name: str
    def __init__(self, run_name: _Optional[str] = ...) -> None: ...

class JoinTokenList(_message.Message):
    __slots__ = ("tokens",)
    TOKENS_FIELD_NUMBER: _ClassVar[int]
    tokens: _containers.RepeatedCompositeFieldContainer[JoinTokenInfo]
    def __init__(self, tokens: _Optional[_Iterable[_Union[JoinTokenInfo, _Mapping]]] = ...) -> None: ...

class RevokeJoinTokenRequest(_message.Message):
    __slots__ = ("token_id",)
    TOKEN_ID_FIELD_NUMBER: _ClassVar[int]
    token_id: int
    def __init__(self, token_id: _Optional[int] = ...) -> None: ...

class RunStateRequest(_message.Message):
    __slots__ = ("run_name", "state", "force")
    RUN_NAME_FIELD_NUMBER: _ClassVar[int]
    STATE_FIELD_NUMBER: _ClassVar[int]
    FORCE_FIELD_NUMBER: _ClassVar[int]
    run_name: str
    state: str
    force: bool
    def __init__(self, run_name: _Optional[str] = ..., state: _Optional[str] = ..., force: _Optional[bool] = ...) -> None: ...

class RunStateResponse(_message.Message):
    __slots__ = ("run_name", "state")
    RUN_NAME_FIELD_NUMBER: _ClassVar[int]
    STATE_FIELD_NUMBER: _ClassVar[int]
    run_name: str
    state: str
    def __init__(self, run_name: _Optional[str] = ..., state: _Optional[str] = ...) -> None: ...

class DefaultRunRequest(_message.Message):
    __slots__ = ("run_name",)
    RUN_NAME_FIELD_NUMBER: _ClassVar[int]
    run_name: str
    def __init__(self, run_name: _Optional[str] = ...) -> None: ...
