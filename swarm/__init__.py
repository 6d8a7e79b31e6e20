"""nomoat's shared core: run specs, model and data loading, adapter layout, DHT records, the CLI.

The Python pull API lives here too (``swarm.pull``) so users can fetch a published adapter without the CLI.
"""

__version__ = "0.1.0"

from swarm.pull import PullError, PulledVersion, pull  # noqa: E402  (the Python API: swarm.pull(...))

__all__ = ["PullError", "PulledVersion", "pull", "__version__"]
