"""The coordinator's gRPC limits: the server's options and one interceptor that enforces the rest of
``RpcLimits`` on every RPC.

- **Rate**: a token bucket per client address over every RPC; an empty bucket answers RESOURCE_EXHAUSTED.
- **Streams**: at most ``max_streams`` streaming RPCs at once (``max_streams_per_address`` from one address),
  so streams whose clients never read can pin at most that many of the server's threads; the rest stay free
  for unary calls. A stream whose client has not taken a message for ``stream_idle_s``, or that has run for
  ``stream_max_s``, is cancelled, which frees its thread.

Usage::

    server = grpc.server(thread_pool(limits), options=server_options(limits), maximum_concurrent_rpcs=...,
                         interceptors=[RpcLimitsInterceptor(limits), RpcErrorInterceptor()])
"""

from __future__ import annotations

import threading
import time
from collections import Counter
from concurrent import futures
from dataclasses import dataclass, field
from typing import Any, Callable, Iterator, NoReturn

import grpc

from coordinator.limits import RpcLimits
from coordinator.rpc_handlers import wrap_behavior
from swarm.client import MAX_MESSAGE_BYTES
from swarm.log import get_logger

logger = get_logger(__name__)
MAX_TRACKED_ADDRESSES = 10_000  # buckets kept; beyond, full (idle) ones are forgotten first
REFUSAL_LOG_EVERY_S = 10.0  # refusals are logged at most this often per address: a flood must not fill the disk


def server_options(limits: RpcLimits) -> list[tuple[str, int]]:
    """gRPC server options: message sizes, connection idle time, keepalive pings (dead peers are dropped)."""
    keepalive_ms = int(limits.keepalive_s * 1000)
    return [
        ("grpc.max_receive_message_length", limits.max_receive_bytes),
        ("grpc.max_send_message_length", MAX_MESSAGE_BYTES),
        ("grpc.max_connection_idle_ms", int(limits.connection_idle_s * 1000)),
        # a connection lives at most two stream lifetimes: the first, then one more for its last streams to end
        ("grpc.max_connection_age_ms", int(limits.stream_max_s * 1000)),
        ("grpc.max_connection_age_grace_ms", int(limits.stream_max_s * 1000)),
        ("grpc.keepalive_time_ms", keepalive_ms),
        ("grpc.keepalive_timeout_ms", min(20_000, keepalive_ms)),
        ("grpc.keepalive_permit_without_calls", 1),
        ("grpc.http2.min_recv_ping_interval_without_data_ms", 10_000),  # a client pinging faster is dropped
        ("grpc.http2.max_ping_strikes", 3),
    ]


def thread_pool(limits: RpcLimits) -> futures.ThreadPoolExecutor:
    return futures.ThreadPoolExecutor(max_workers=limits.worker_threads, thread_name_prefix="rpc")


def client_address(context: grpc.ServicerContext) -> str:
    """The client's address without its port ("ipv4:127.0.0.1:5000" -> "ipv4:127.0.0.1")."""
    peer = context.peer() or "unknown"
    host, sep, port = peer.rpartition(":")
    return host if sep and port.isdigit() else peer


class TokenBuckets:
    """One token bucket per key: ``rate`` tokens a second up to ``burst``; ``take`` spends one if there is one."""

    def __init__(self, rate: float, burst: int, clock: Callable[[], float] = time.monotonic):
        self.rate, self.burst, self.clock = rate, burst, clock
        self._buckets: dict[str, tuple[float, float]] = {}  # key -> (tokens, at)
        self._lock = threading.Lock()

    def take(self, key: str) -> bool:
        with self._lock:
            now = self.clock()
            tokens, at = self._buckets.get(key, (float(self.burst), now))
            tokens = min(float(self.burst), tokens + (now - at) * self.rate)
            allowed = tokens >= 1.0
            self._buckets[key] = (tokens - 1.0 if allowed else tokens, now)
            if len(self._buckets) > MAX_TRACKED_ADDRESSES:
                self._forget_full(now)
            return allowed

    def _forget_full(self, now: float) -> None:
        refill_s = self.burst / self.rate
        for key, (_, at) in list(self._buckets.items()):
            if now - at >= refill_s:
                del self._buckets[key]
        while len(self._buckets) > MAX_TRACKED_ADDRESSES:  # all busy: drop the oldest
            del self._buckets[next(iter(self._buckets))]


@dataclass
class _Stream:
    address: str
    context: grpc.ServicerContext
    started: float
    progressed: float
    ended: bool = field(default=False)


class StreamSlots:
    """The streaming RPCs running now, per address, with a watchdog that cancels idle or too old ones."""

    def __init__(self, limits: RpcLimits, clock: Callable[[], float] = time.monotonic):
        self.limits, self.clock = limits, clock
        self._streams: set[int] = set()
        self._by_id: dict[int, _Stream] = {}
        self._per_address: Counter[str] = Counter()
        self._lock = threading.Lock()
        self._watchdog: threading.Thread | None = None

    def acquire(self, address: str, context: grpc.ServicerContext) -> _Stream | str:
        """A slot for a new stream, or why there is none."""
        limits = self.limits
        with self._lock:
            if len(self._by_id) >= limits.max_streams:
                return f"the coordinator is serving its maximum of {limits.max_streams} streams; retry later"
            if self._per_address[address] >= limits.max_streams_per_address:
                return (f"at most {limits.max_streams_per_address} streams at once per client address; finish or "
                        f"cancel one first")
            now = self.clock()
            stream = _Stream(address, context, now, now)
            self._by_id[id(stream)] = stream
            self._per_address[address] += 1
            self._start_watchdog()
        return stream

    def release(self, stream: _Stream) -> None:
        with self._lock:
            if stream.ended:
                return
            stream.ended = True
            del self._by_id[id(stream)]
            self._per_address[stream.address] -= 1
            if self._per_address[stream.address] <= 0:
                del self._per_address[stream.address]

    def active(self) -> int:
        with self._lock:
            return len(self._by_id)

    def _start_watchdog(self) -> None:
        if self._watchdog is None:
            self._watchdog = threading.Thread(target=self._watch, name="stream-watchdog", daemon=True)
            self._watchdog.start()

    def _watch(self) -> None:
        period = max(0.1, min(self.limits.stream_idle_s, self.limits.stream_max_s) / 4)
        while True:
            time.sleep(period)
            now = self.clock()
            with self._lock:
                overdue = [(stream, "idle") for stream in self._by_id.values()
                           if now - stream.progressed > self.limits.stream_idle_s]
                overdue += [(stream, "too old") for stream in self._by_id.values()
                            if now - stream.started > self.limits.stream_max_s]
            for stream, why in overdue:
                limit = self.limits.stream_idle_s if why == "idle" else self.limits.stream_max_s
                logger.warning("cancelling a stream from %s: %s (limit %gs)", stream.address, why, limit)
                stream.context.cancel()  # the blocked send returns, the thread is free; release follows
                self.release(stream)


class RpcLimitsInterceptor(grpc.ServerInterceptor):
    """Rate limits every RPC and bounds streams (see the module doc). Place it first, before
    ``RpcErrorInterceptor``: a refused RPC costs one check, and refusals are logged here, at most once per
    address every few seconds, with the number of refusals since the last line."""

    def __init__(self, limits: RpcLimits):
        self.limits = limits
        self.buckets = TokenBuckets(limits.rate_per_s, limits.rate_burst)
        self.streams = StreamSlots(limits)
        self._refusals: dict[str, tuple[float, int]] = {}  # address -> (last logged, refused since)
        self._refusals_lock = threading.Lock()

    def _refuse(self, context: grpc.ServicerContext, address: str, reason: str) -> NoReturn:
        now = time.monotonic()
        with self._refusals_lock:
            logged, count = self._refusals.get(address, (-REFUSAL_LOG_EVERY_S, 0))
            count += 1
            due = now - logged >= REFUSAL_LOG_EVERY_S
            if len(self._refusals) > MAX_TRACKED_ADDRESSES:
                self._refusals.clear()
            self._refusals[address] = (now, 0) if due else (logged, count)
        if due:
            logger.warning("refused %d rpc(s) from %s: RESOURCE_EXHAUSTED: %s", count, address, reason)
        context.abort(grpc.StatusCode.RESOURCE_EXHAUSTED, reason)
        raise AssertionError("grpc's abort returned")  # it raises; this tells type checkers so

    def intercept_service(self, continuation: Callable[[grpc.HandlerCallDetails], Any],
                          handler_call_details: grpc.HandlerCallDetails) -> Any:
        handler = continuation(handler_call_details)
        return None if handler is None else wrap_behavior(handler, self._unary, self._stream)

    def _admit(self, context: grpc.ServicerContext) -> str:
        address = client_address(context)
        if not self.buckets.take(address):
            self._refuse(context, address, f"rate limit: at most {self.limits.rate_per_s:g} requests per second "
                                           f"(bursts of {self.limits.rate_burst}) per client address; slow down "
                                           f"and retry")
        return address

    def _unary(self, behavior: Callable) -> Callable:
        def call(request: Any, context: grpc.ServicerContext) -> Any:
            self._admit(context)
            return behavior(request, context)

        return call

    def _stream(self, behavior: Callable) -> Callable:
        def call(request: Any, context: grpc.ServicerContext) -> Iterator:
            address = self._admit(context)
            stream = self.streams.acquire(address, context)
            if isinstance(stream, str):
                self._refuse(context, address, stream)
            slot = stream
            context.add_callback(lambda: self.streams.release(slot))  # however the RPC ends
            try:
                for message in behavior(request, context):
                    yield message
                    slot.progressed = self.streams.clock()  # the client took the message
            finally:
                self.streams.release(slot)

        return call
