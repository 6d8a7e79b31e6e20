"""nomoat's shared core: run specs, model and data loading, adapter layout, DHT records, the coordinator client.

The Python pull API lives here too, so users can fetch a published adapter without the CLI::

    import swarm
    pulled = swarm.pull("127.0.0.1:50051", "demo", out=Path("adapter"))

It is imported on first use (torch, PEFT and gRPC are heavy), so ``import swarm.spec`` stays light. ``swarm.pull``
is the ``swarm.pull`` module itself, made callable: it stays the same object however it was first imported.
"""

from __future__ import annotations

import importlib
from typing import Any

__version__ = "0.1.0"

_LAZY = {"pull": ("swarm.pull", None), "PullError": ("swarm.pull", "PullError"),
         "PulledVersion": ("swarm.pull", "PulledVersion")}

__all__ = ["PullError", "PulledVersion", "pull", "__version__"]


def __getattr__(name: str) -> Any:
    if name not in _LAZY:
        raise AttributeError(f"module 'swarm' has no attribute {name!r}")
    module_name, attribute = _LAZY[name]
    module = importlib.import_module(module_name)
    return module if attribute is None else getattr(module, attribute)
