"""A donor's live progress: one line that says what its training does and when it ends.

On a terminal it is one ``rich`` live line, refreshed twice a second, with log lines printed above it; when stderr
is not a terminal (a log file, a test, a service) it is a plain log line every ``plain_every_s``. Both read::

    run demo | shard 0 epoch 14 | 9.8 samples/s | loss 5.219 | 2 peers | 1,240 samples | ends in 0:35 (max-seconds)

"ends in" counts down to whichever limit (``--max-seconds``, ``--max-steps``, ``--max-epochs``) comes first at
the current pace; "data pass 2" appears once the worker's data slice has been read through once.

Usage::

    display = ProgressDisplay("demo", max_seconds=600).start()
    display.update(ProgressSnapshot(steps=12, samples=48, elapsed_s=5.0, loss=5.2, peers=2, epochs={0: 3}))
    display.close()
"""

from __future__ import annotations

import math
import sys
import time
from dataclasses import dataclass, field
from typing import Any

from swarm.log import get_logger

logger = get_logger(__name__)

PLAIN_EVERY_S = 10.0


@dataclass(frozen=True)
class ProgressSnapshot:
    """Where the training stands."""

    steps: int = 0  # local steps taken
    samples: int = 0  # samples trained on
    elapsed_s: float = 0.0  # since training began
    loss: float = math.nan  # of the last step
    peers: int = 0  # peers hivemind's progress tracker sees on the run (this one included)
    epochs: dict[int, int] = field(default_factory=dict)  # each trained shard's swarm epoch
    data_pass: int = 0  # full passes over this worker's data slice so far


def format_duration(seconds: float) -> str:
    """``75`` -> "1:15"; ``3700`` -> "1:01:40"."""
    seconds = max(0, int(round(seconds)))
    hours, rest = divmod(seconds, 3600)
    minutes, secs = divmod(rest, 60)
    return f"{hours}:{minutes:02d}:{secs:02d}" if hours else f"{minutes}:{secs:02d}"


class ProgressDisplay:
    """The live line of one donor (see the module docstring). ``enabled=False`` shows nothing."""

    def __init__(self, run: str, *, max_steps: int | None = None, max_seconds: float | None = None,
                 max_epochs: int | None = None, enabled: bool = True, live: bool | None = None,
                 plain_every_s: float = PLAIN_EVERY_S):
        self.run = run
        self.max_steps, self.max_seconds, self.max_epochs = max_steps, max_seconds, max_epochs
        self.enabled = enabled
        self.live = sys.stderr.isatty() if live is None else live
        self.plain_every_s = plain_every_s
        self._live: Any = None  # rich.live.Live, imported only on a terminal
        self._last_plain = -math.inf
        self._first_epoch: tuple[float, int] | None = None  # (elapsed, lowest epoch) when the epochs were first seen

    def start(self) -> "ProgressDisplay":
        if self.enabled and self.live:
            from rich.console import Console
            from rich.live import Live
            from rich.text import Text

            self._live = Live(Text(f"run {self.run} | starting"), console=Console(stderr=True),
                              refresh_per_second=2, transient=False)
            self._live.start()
        return self

    def update(self, snapshot: ProgressSnapshot) -> None:
        if not self.enabled:
            return
        line = self.describe(snapshot)
        if self._live is not None:
            from rich.text import Text

            self._live.update(Text(line))
        elif time.monotonic() - self._last_plain >= self.plain_every_s:
            self._last_plain = time.monotonic()
            logger.info("progress: %s", line)

    def close(self) -> None:
        if self._live is not None:
            self._live.stop()
            self._live = None

    def describe(self, snapshot: ProgressSnapshot) -> str:
        """The line itself."""
        parts = [f"run {self.run}"]
        if snapshot.epochs:
            shards = sorted(snapshot.epochs)
            if len(shards) == 1:
                parts.append(f"shard {shards[0]} epoch {snapshot.epochs[shards[0]]}")
            else:
                parts.append(f"shards {','.join(map(str, shards))} epochs "
                             f"{','.join(str(snapshot.epochs[shard]) for shard in shards)}")
        if snapshot.elapsed_s > 0:
            parts.append(f"{snapshot.samples / snapshot.elapsed_s:.1f} samples/s")
        if not math.isnan(snapshot.loss):
            parts.append(f"loss {snapshot.loss:.3f}")
        parts.append(f"{snapshot.peers} peer{'s' if snapshot.peers != 1 else ''}")
        parts.append(f"{snapshot.samples:,} samples")
        if snapshot.data_pass > 0:
            parts.append(f"data pass {snapshot.data_pass + 1}")
        eta = self.eta(snapshot)
        if eta is not None:
            parts.append(f"ends in {format_duration(eta[0])} ({eta[1]})")
        return " | ".join(parts)

    def eta(self, snapshot: ProgressSnapshot) -> tuple[float, str] | None:
        """Seconds until the first limit is reached at the current pace, and its flag name (None: no limit, or
        no pace known yet)."""
        candidates: list[tuple[float, str]] = []
        if self.max_seconds is not None:
            candidates.append((self.max_seconds - snapshot.elapsed_s, "max-seconds"))
        if self.max_steps is not None and snapshot.steps > 0 and snapshot.elapsed_s > 0:
            per_step = snapshot.elapsed_s / snapshot.steps
            candidates.append(((self.max_steps - snapshot.steps) * per_step, "max-steps"))
        if self.max_epochs is not None and snapshot.epochs:
            lowest = min(snapshot.epochs.values())
            if self._first_epoch is None:
                self._first_epoch = (snapshot.elapsed_s, lowest)
            since, first = self._first_epoch
            if lowest > first and snapshot.elapsed_s > since:
                per_epoch = (snapshot.elapsed_s - since) / (lowest - first)
                candidates.append(((self.max_epochs - lowest) * per_epoch, "max-epochs"))
        if not candidates:
            return None
        seconds, which = min(candidates)
        return max(0.0, seconds), which
