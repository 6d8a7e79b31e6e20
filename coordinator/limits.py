"""How much the coordinator accepts from anyone: message sizes, concurrency, stream lifetimes, request rates and
the bounds of requests and responses. One dataclass, part of ``CoordinatorConfig``; ``swarm coordinator
--limit NAME=VALUE`` changes a field.

The defaults are sized for a public coordinator: a worker's normal traffic (a Join, a data slice, a receipt
batch every few seconds) and a pull of a multi-GB adapter over a slow link stay far inside them, while one
address cannot take every worker thread, flood the RPCs, or make a response too large for everyone.

Usage::

    limits = RpcLimits(rate_per_s=20.0)                       # validated on construction
    limits = RpcLimits.with_overrides(["stream_idle_s=30"])   # what --limit does
"""

from __future__ import annotations

from dataclasses import dataclass, fields, replace
from typing import Any

MIB = 1024 * 1024


class LimitsError(ValueError):
    """A limit that cannot be used (unknown name, not a number, out of range)."""


@dataclass(frozen=True)
class RpcLimits:
    # transport
    max_receive_bytes: int = 4 * MIB  # largest request message: a full receipt batch (512 x ~5 KiB) fits
    worker_threads: int = 16  # the gRPC server's thread pool
    max_concurrent_rpcs: int = 64  # RPCs running or queued for a thread; beyond: RESOURCE_EXHAUSTED at once
    max_streams: int = 8  # streaming RPCs (data slices, pulls) at once; the other threads stay for unary calls
    max_streams_per_address: int = 4  # streaming RPCs at once from one client address
    stream_idle_s: float = 120.0  # a stream whose client took no message for this long is cancelled
    stream_max_s: float = 4 * 3600.0  # any stream ends after this long (a 10 GB pull at 1 MB/s takes ~3 h)
    connection_idle_s: float = 600.0  # a connection with no RPC for this long is closed
    keepalive_s: float = 60.0  # the server pings a connection this often, and drops it when a ping goes unanswered
    # per client address: a token bucket over every RPC
    rate_per_s: float = 50.0  # sustained RPCs per second (a worker sends about one every few seconds)
    rate_burst: int = 500  # RPCs in a burst
    # requests and responses
    max_receipts_per_batch: int = 512  # receipts in one SubmitReceipts
    max_spec_bytes: int = 64 * 1024  # a LaunchRun's spec JSON
    max_leaderboard_rows: int = 1000  # contributors in one leaderboard answer; the rest are counted, not sent

    def __post_init__(self) -> None:
        for item in fields(self):
            value = getattr(self, item.name)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 < value < float("inf"):
                raise LimitsError(f"limit {item.name} must be a positive finite number, got {value!r}")
        if self.max_streams >= self.worker_threads:
            raise LimitsError(f"max_streams ({self.max_streams}) must stay below worker_threads "
                              f"({self.worker_threads}): threads must remain for unary calls")
        if self.max_streams_per_address > self.max_streams:
            raise LimitsError(f"max_streams_per_address ({self.max_streams_per_address}) exceeds max_streams "
                              f"({self.max_streams})")
        if self.max_concurrent_rpcs < self.worker_threads:
            raise LimitsError(f"max_concurrent_rpcs ({self.max_concurrent_rpcs}) is below worker_threads "
                              f"({self.worker_threads})")
        if self.rate_burst < 1 or self.max_receive_bytes < self.max_spec_bytes + 1024:
            raise LimitsError("rate_burst must be >= 1 and max_receive_bytes must hold a spec of max_spec_bytes")

    @classmethod
    def with_overrides(cls, assignments: list[str], base: "RpcLimits | None" = None) -> "RpcLimits":
        """``base`` (default: the defaults) with each ``NAME=VALUE`` applied; ``LimitsError`` names a bad one."""
        kinds = {item.name: item.type for item in fields(cls)}
        changes: dict[str, Any] = {}
        for assignment in assignments:
            name, sep, text = assignment.partition("=")
            name = name.strip().replace("-", "_")
            if not sep or name not in kinds:
                raise LimitsError(f"unknown limit {assignment!r}; known: {', '.join(kinds)}")
            try:
                changes[name] = int(text) if kinds[name] == "int" else float(text)
            except ValueError:
                raise LimitsError(f"limit {name} needs a{'n integer' if kinds[name] == 'int' else ' number'}, "
                                  f"got {text!r}") from None
        return replace(base or cls(), **changes)
