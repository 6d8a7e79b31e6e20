"""Logging is configured by entry points only: importing nomoat leaves the application's logging alone."""

import logging
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
