"""The DHT process's end of hivemind's request pipe, made to survive requests whose sender has ended.

Every request to a hivemind DHT (``dht.get``, ``dht.store``, ... from the main process and from each averager's
process) carries an MPFuture, and the MPFuture carries a pipe end that the DHT process fetches from the sender's
``multiprocessing`` resource sharer while it unpickles the request. When the sender ended after sending (an
averager that was just shut down, at every worker's exit), the fetch fails (``FileNotFoundError``,
``ConnectionResetError``, ``EOFError``): hivemind 1.1.12 logs the traceback, sleeps one ``wait_timeout`` (3 s)
and reads on, so a few such requests outlast its 3 s shutdown grace and it kills the DHT "the hard way".
``RequestPipe`` skips such a request instead: nobody waits for its answer.

Usage (in the DHT process, before hivemind's ``run`` reads from it)::

    self._inner_pipe = RequestPipe(self._inner_pipe)
"""

from __future__ import annotations

from multiprocessing.connection import Connection
from multiprocessing.reduction import ForkingPickler
from typing import Any

from swarm.log import get_logger

logger = get_logger(__name__)

SKIPPED = "_skip_request"  # what a skipped request calls: a SwarmDHT method that does nothing


class RequestPipe:
    """Wraps a Connection; ``recv`` returns ``(SKIPPED, [], {})`` for a request whose sender is gone."""

    def __init__(self, pipe: Connection):
        self._pipe = pipe

    def __getattr__(self, name: str) -> Any:  # fileno, poll, send, close: the pipe's own
        return getattr(self._pipe, name)

    def recv(self) -> Any:
        message = self._pipe.recv_bytes()  # a closed pipe still raises here, as before
        try:
            return ForkingPickler.loads(message)
        except (OSError, EOFError) as exc:
            logger.debug("skipped a DHT request whose sender has ended (%s: %s)", type(exc).__name__, exc)
            return SKIPPED, [], {}
