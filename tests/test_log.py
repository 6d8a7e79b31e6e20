"""Logging is configured by entry points only: importing nomoat leaves the application's logging alone."""

import logging
import os
import re
import subprocess
import sys


def test_importing_the_library_configures_no_logging():
    script = ("import logging, swarm.log, swarm.spec, swarm.stop_signals\n"
              "root = logging.getLogger('nomoat')\n"
              "print(len(root.handlers), root.level, root.propagate)")
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == ["0", "0", "True"]


def test_configure_logging_takes_the_level_from_the_environment_once(monkeypatch, capsys):
    from swarm.log import configure_logging, get_logger

    root = logging.getLogger("nomoat")
    saved = (list(root.handlers), root.level, root.propagate)
    try:
        monkeypatch.setenv("NOMOAT_LOGLEVEL", "warning")
        configure_logging()
        configure_logging()
        ours = [handler for handler in root.handlers if type(handler).__module__ == "swarm.log"]
        assert root.level == logging.WARNING and len(ours) == 1  # configuring again adds no second handler
        get_logger("tests.test_log").info("hidden")
        get_logger("tests.test_log").warning("shown %d", 1)
        err = capsys.readouterr().err  # the handler writes to the sys.stderr of the moment, captured here
        assert "hidden" not in err and "[nomoat.tests.test_log] shown 1" in err
    finally:
        root.handlers[:], root.level, root.propagate = saved[0], saved[1], saved[2]


QUIET_SCRIPT = """
import logging, sys, warnings
from pathlib import Path
import hivemind.utils.logging as hivemind_logging
import transformers  # noqa: F401 (adds its own handler to its logger)
from swarm.log import configure_logging, get_logger, quiet_libraries

configure_logging()
quiet_libraries(Path(sys.argv[1]) if sys.argv[1] != "-" else None, verbose=sys.argv[2] == "verbose")
hivemind_logging.get_logger("hivemind.optim.optimizer").info("Transitioning to epoch 3")
hivemind_logging.get_logger("hivemind.averaging.matchmaking").warning(
    "It is recommended to use request_timeout smaller than min_matchmaking_time. Otherwise, deadlocks")
hivemind_logging.get_logger("hivemind.averaging.averager").warning("Averaging failed: a real problem")
logging.getLogger("transformers.modeling_utils").info("transformers chatter")
logging.getLogger("transformers.modeling_utils").warning("transformers says something that matters")
warnings.warn("`is_gradient_checkpointing` is deprecated and will be removed in v6.", FutureWarning)
get_logger("worker.donate").info("joined run demo")
"""


def _quiet(tmp_path, log_file: str, mode: str) -> str:
    result = subprocess.run([sys.executable, "-c", QUIET_SCRIPT, log_file, mode], capture_output=True, text=True,
                            timeout=120, env={**os.environ, "HIVEMIND_LOGLEVEL": "INFO", "NOMOAT_LOGLEVEL": "INFO"})
    assert result.returncode == 0, result.stderr
    assert result.stdout == ""
    return result.stderr


def test_library_logs_go_to_the_log_file_and_only_their_warnings_to_the_terminal(tmp_path):
    log_file = tmp_path / "logs" / "donate.log"
    terminal = _quiet(tmp_path, str(log_file), "quiet")
    lines = terminal.splitlines()
    assert len(lines) == 3, terminal
    assert "[hivemind.averaging.averager] Averaging failed: a real problem" in lines[0]
    assert "[transformers.modeling_utils] transformers says something that matters" in lines[1]
    assert "[nomoat.worker.donate] joined run demo" in lines[2]
    written = log_file.read_text()
    for shown in ("Transitioning to epoch 3", "request_timeout smaller than min_matchmaking_time",
                  "Averaging failed", "transformers says", "`is_gradient_checkpointing` is deprecated",
                  "[nomoat.worker.donate] joined run demo"):
        assert shown in written, shown
    assert "transformers chatter" not in written  # transformers' own level (WARNING) still applies


def test_verbose_shows_the_library_logs_on_the_terminal(tmp_path):
    terminal = _quiet(tmp_path, "-", "verbose")
    for shown in ("Transitioning to epoch 3", "request_timeout smaller than min_matchmaking_time",
                  "Averaging failed", "`is_gradient_checkpointing` is deprecated", "joined run demo"):
        assert shown in terminal, shown
    assert not any(line.startswith("Dec ") or "[INFO]" in line for line in terminal.splitlines())  # one format


def test_donate_shows_no_library_chatter_and_writes_it_to_the_log_file(tmp_path):
    """A real donor against a real coordinator: its terminal holds nomoat's lines only (no hivemind INFO, no
    matchmaking "deadlocks" warning, no FutureWarning); --log-file holds hivemind's lines too."""
    from coordinator.server import Coordinator, CoordinatorConfig
    from swarm.spec import RunSpec

    config = CoordinatorConfig(data_dir=tmp_path / "coordinator", port=0, publish=False)
    with Coordinator(config) as coordinator:
        coordinator.runs.launch(RunSpec(name="quiet", data_slices=1, batch_size_per_step=4, target_batch_size=8))
        env = {**os.environ, "XDG_CONFIG_HOME": str(tmp_path / "config"), "XDG_CACHE_HOME": str(tmp_path / "cache"),
               "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1", "HIVEMIND_LOGLEVEL": "INFO"}
        env.pop("NOMOAT_VERBOSE", None)
        result = subprocess.run(
            [sys.executable, "-m", "nomoat_cli", "donate", "-c", coordinator.address, "--run", "quiet",
             "--identity", str(tmp_path / "worker.key"), "--no-progress", "--max-steps", "12",
             "--log-file", str(tmp_path / "donate.log")], capture_output=True, text=True, env=env, timeout=240)
    assert result.returncode == 0, result.stderr
    assert "trained 12 steps" in result.stdout
    records = re.findall(r"^\d\d:\d\d:\d\d (\w+) \[([\w.]+)\]", result.stderr, re.MULTILINE)
    assert ("INFO", "nomoat.worker.donate") in records, result.stderr
    # only nomoat's lines below ERROR (an error and its traceback would be shown: none is expected)
    assert all(name.startswith("nomoat.") for level, name in records if level in ("INFO", "WARN", "WARNING")), \
        result.stderr
    for hidden in ("FutureWarning", "deadlocks", "Transitioning to epoch", "[INFO]", "[WARN]",
                   # issue 14's exit noise: hivemind's tracker tasks, its DHT's dead-sender requests and grace
                   "Traceback", "Task was destroyed", "Event loop is closed", "did not shut down"):
        assert hidden not in result.stderr, hidden
    written = (tmp_path / "donate.log").read_text()
    assert "[nomoat.worker.donate] joined run quiet" in written
    assert "[hivemind." in written and "Transitioning to epoch" in written
