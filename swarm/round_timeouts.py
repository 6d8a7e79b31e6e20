"""How long an averaging round may take, from its payload and the slowest link the run is sized for.

hivemind cancels an all-reduce after ``averaging_timeout`` and the peer then steps alone: with a fixed 30 s, an
fp32 round of an 8B model's all-module LoRA (168 MB) at 10 Mbit/s (over 2 minutes) would silently never average.
In a butterfly all-reduce each peer sends at most its whole vector once (its parts to the other reducers) and
once more (its own part, averaged, back to them): at most ``2 x payload`` leaves each peer's uplink per round.
The timeouts allow twice that at ``spec.averaging.link_mbit``, and never less than the spec's own timeout.

Usage::

    timeouts = round_timeouts(parameter_count, spec.averaging)
    hivemind.Optimizer(..., averaging_timeout=timeouts.averaging, next_chunk_timeout=timeouts.next_chunk)
"""

from __future__ import annotations

from dataclasses import dataclass

from swarm.spec import AveragingSpec

BYTES_PER_ELEMENT = {"none": 4, "fp16": 2, "8bit": 1}
SAFETY = 2.0  # a home uplink shared with other traffic, TCP slow start, the reducers' own CPU time


@dataclass(frozen=True)
class RoundTimeouts:
    averaging: float  # seconds before an all-reduce is abandoned (matchmaking included)
    next_chunk: float  # seconds to wait for a peer's next part of the stream
    transfer: float  # estimated seconds for one round's bytes over the link


def round_bytes(parameter_count: int, compression: str) -> int:
    """Bytes one peer sends per round at most: its vector out and its averaged part back (2x the payload)."""
    return 2 * parameter_count * BYTES_PER_ELEMENT[compression]


def round_timeouts(parameter_count: int, averaging: AveragingSpec) -> RoundTimeouts:
    """Timeouts for a round of ``parameter_count`` averaged values under ``averaging`` (its compression and
    ``link_mbit``): the spec's ``averaging_timeout`` or matchmaking plus twice the transfer, whichever is longer."""
    transfer = round_bytes(parameter_count, averaging.compression) * 8 / (averaging.link_mbit * 1e6)
    averaging_timeout = max(averaging.averaging_timeout, averaging.matchmaking_time + SAFETY * transfer)
    return RoundTimeouts(averaging=averaging_timeout, next_chunk=max(averaging.averaging_timeout, SAFETY * transfer),
                         transfer=transfer)

