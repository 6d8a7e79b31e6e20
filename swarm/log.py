"""The one logging helper of nomoat. Library modules only call ``get_logger``; entry points (the ``swarm`` CLI,
the processes it spawns, benchmark scripts) call ``configure_logging`` once, so importing nomoat as a library
leaves the application's logging alone.

Usage::

    from swarm.log import get_logger
    logger = get_logger(__name__)
    logger.info("published version %d", version)

    configure_logging()  # in an entry point: level from NOMOAT_LOGLEVEL (default INFO)
"""

from __future__ import annotations

import logging
import os
import sys

ROOT_NAME = "nomoat"
LEVEL_VARIABLE = "NOMOAT_LOGLEVEL"


class _StderrHandler(logging.StreamHandler):
    """Writes to whatever ``sys.stderr`` is when a record is emitted, not the stream of configuration time (test
    runners swap and close it)."""

    @property  # type: ignore[override]
    def stream(self):
        return sys.stderr

    @stream.setter
    def stream(self, value) -> None:  # StreamHandler.__init__ assigns it
        pass


def configure_logging(level: str | None = None) -> logging.Logger:
    """Give the ``nomoat`` root logger a stderr handler and a level (``level``, else $NOMOAT_LOGLEVEL, else
    INFO). Calling it again only updates the level."""
    root = logging.getLogger(ROOT_NAME)
    level_name = (level or os.environ.get(LEVEL_VARIABLE, "INFO")).upper()
    root.setLevel(getattr(logging, level_name, logging.INFO))
    if not any(isinstance(handler, _StderrHandler) for handler in root.handlers):
        handler = _StderrHandler()
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s [%(name)s] %(message)s", "%H:%M:%S"))
        root.addHandler(handler)
        root.propagate = False
    return root


def get_logger(module_name: str) -> logging.Logger:
    """A logger under the ``nomoat`` root, e.g. ``nomoat.coordinator.publisher`` for that module."""
    short = module_name if not module_name.startswith("__") else "main"
    return logging.getLogger(f"{ROOT_NAME}.{short}")
