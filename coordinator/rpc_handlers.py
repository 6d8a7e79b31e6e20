"""What the coordinator's server interceptors share: wrapping the behaviour of a gRPC method handler.

Usage::

    def intercept_service(self, continuation, handler_call_details):
        handler = continuation(handler_call_details)
        return None if handler is None else wrap_behavior(handler, self._unary, self._stream)
"""

from __future__ import annotations

from typing import Any, Callable

Wrapper = Callable[[Callable], Callable]


def wrap_behavior(handler: Any, unary: Wrapper, stream: Wrapper) -> Any:
    """``handler`` (a ``grpc.RpcMethodHandler``) with its behaviour wrapped: by ``unary`` when the method answers
    with one response, by ``stream`` when it streams its responses."""
    if handler.unary_unary:
        return handler._replace(unary_unary=unary(handler.unary_unary))
    if handler.stream_unary:
        return handler._replace(stream_unary=unary(handler.stream_unary))
    if handler.unary_stream:
        return handler._replace(unary_stream=stream(handler.unary_stream))
    return handler._replace(stream_stream=stream(handler.stream_stream))
