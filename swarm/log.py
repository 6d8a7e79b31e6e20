"""The one logging helper of nomoat. Level from the NOMOAT_LOGLEVEL environment variable (default INFO).

Usage::

    from swarm.log import get_logger
    logger = get_logger(__name__)
    logger.info("published version %d", version)
"""

from __future__ import annotations

import logging
import os

_ROOT_NAME = "nomoat"
_configured = False


def _configure_root() -> None:
    global _configured
    if _configured:
        return
    root = logging.getLogger(_ROOT_NAME)
    level_name = os.environ.get("NOMOAT_LOGLEVEL", "INFO").upper()
    root.setLevel(getattr(logging, level_name, logging.INFO))
    handler = logging.StreamHandler()
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s [%(name)s] %(message)s", "%H:%M:%S"))
    root.addHandler(handler)
    root.propagate = False
    _configured = True


def get_logger(module_name: str) -> logging.Logger:
    """A logger under the ``nomoat`` root, e.g. ``nomoat.coordinator.publisher`` for that module."""
    _configure_root()
    short = module_name if not module_name.startswith("__") else "main"
    return logging.getLogger(f"{_ROOT_NAME}.{short}")
