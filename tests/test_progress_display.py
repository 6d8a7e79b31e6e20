"""The donor's progress line: what it says and when it says it ends."""

from __future__ import annotations

import logging

from worker.progress_display import ProgressDisplay, ProgressSnapshot, format_duration


def test_the_line_names_what_it_shows():
    display = ProgressDisplay("demo", live=False)
    line = display.describe(ProgressSnapshot(steps=10, samples=40, elapsed_s=4.0, loss=5.21875, peers=2,
                                             epochs={0: 14}, data_pass=1))
    assert line == "run demo | shard 0 epoch 14 | 10.0 samples/s | loss 5.219 | 2 peers | 40 samples | data pass 2"
    two = display.describe(ProgressSnapshot(samples=1234, elapsed_s=1.0, peers=1, epochs={1: 3, 0: 4}))
    assert "shards 0,1 epochs 4,3" in two and "1 peer |" in two and "1,234 samples" in two


def test_it_ends_with_the_first_limit_at_the_current_pace():
    display = ProgressDisplay("demo", max_steps=100, max_seconds=60, live=False)
    # 10 steps in 5 s: 90 steps left take 45 s, before the 55 s left of --max-seconds
    assert display.eta(ProgressSnapshot(steps=10, elapsed_s=5.0)) == (45.0, "max-steps")
    assert display.eta(ProgressSnapshot(steps=10, elapsed_s=40.0)) == (20.0, "max-seconds")
    epochs = ProgressDisplay("demo", max_epochs=10, live=False)
    assert epochs.eta(ProgressSnapshot(elapsed_s=2.0, epochs={0: 2, 1: 3})) is None  # no pace yet
    # the slowest shard went from epoch 2 to 4 in 10 s: 6 epochs more take 30 s
    assert epochs.eta(ProgressSnapshot(elapsed_s=12.0, epochs={0: 4, 1: 5})) == (30.0, "max-epochs")
    assert "ends in 0:30 (max-epochs)" in epochs.describe(ProgressSnapshot(elapsed_s=12.0, epochs={0: 4}))
    assert ProgressDisplay("demo", live=False).eta(ProgressSnapshot(steps=5, elapsed_s=1.0)) is None
    assert format_duration(75) == "1:15" and format_duration(3700) == "1:01:40" and format_duration(-3) == "0:00"


class _Lines(logging.Handler):
    def __init__(self):
        super().__init__(logging.INFO)
        self.lines: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.lines.append(record.getMessage())


def test_off_a_terminal_it_logs_a_plain_line_now_and_then():
    # a handler of its own: the nomoat logger does not propagate once an entry point configured logging
    logger = logging.getLogger("nomoat.worker.progress_display")
    handler, level = _Lines(), logger.level
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    try:
        display = ProgressDisplay("demo", live=False, plain_every_s=3600).start()
        for step in range(1, 4):
            display.update(ProgressSnapshot(steps=step, samples=4 * step, elapsed_s=step, epochs={0: step}))
        display.close()
        ProgressDisplay("demo", live=False, enabled=False).update(ProgressSnapshot())  # --no-progress: nothing
    finally:
        logger.removeHandler(handler)
        logger.setLevel(level)
    assert handler.lines == ["progress: run demo | shard 0 epoch 1 | 4.0 samples/s | 0 peers | 4 samples"]
