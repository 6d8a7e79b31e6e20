"""How the coordinator's gRPC server reports errors: one interceptor for every RPC.

Every failed RPC is logged with its method, peer, status code and reason. A request the service refuses (a
``RequestError``, an unknown run) fails with the fitting status code and the service's own message, which tells
the client what to fix. Any other exception is a bug on our side: it is logged with its traceback and the
client gets INTERNAL with a generic message and an incident id to quote, never the exception's text (it may
hold paths, SQL or other internals).

Usage::

    server = grpc.server(executor, interceptors=[RpcErrorInterceptor()])
"""

from __future__ import annotations

import uuid
from typing import Any, Callable, NoReturn

import grpc

from coordinator.access import AccessError
from coordinator.request_checks import RequestError
from coordinator.rpc_handlers import wrap_behavior
from coordinator.storage import UnknownRunError
from swarm.log import get_logger

logger = get_logger(__name__)


def expected_status(exc: Exception) -> grpc.StatusCode | None:
    """The status code of a request error the client should see as it is; None for anything else (a bug)."""
    if isinstance(exc, RequestError):
        return grpc.StatusCode.NOT_FOUND if exc.not_found else grpc.StatusCode.INVALID_ARGUMENT
    if isinstance(exc, AccessError):  # UNAUTHENTICATED or PERMISSION_DENIED
        return exc.status
    if isinstance(exc, UnknownRunError):
        return grpc.StatusCode.NOT_FOUND
    return None


class RpcErrorInterceptor(grpc.ServerInterceptor):
    """Logs every failed RPC and turns the exceptions of a handler into status codes (see the module doc)."""

    def intercept_service(self, continuation: Callable[[grpc.HandlerCallDetails], Any],
                          handler_call_details: grpc.HandlerCallDetails) -> Any:
        handler = continuation(handler_call_details)
        if handler is None:  # an unknown method: gRPC answers UNIMPLEMENTED itself
            return None
        method = handler_call_details.method
        return wrap_behavior(handler, lambda behavior: self._unary(method, behavior),
                             lambda behavior: self._stream(method, behavior))

    def _unary(self, method: str, behavior: Callable) -> Callable:
        def call(request: Any, context: grpc.ServicerContext) -> Any:
            try:
                response = behavior(request, context)
            except Exception as exc:
                self._fail(method, context, exc)
            self._log_status(method, context)
            return response

        return call

    def _stream(self, method: str, behavior: Callable) -> Callable:
        def call(request: Any, context: grpc.ServicerContext) -> Any:
            try:
                yield from behavior(request, context)
            except Exception as exc:
                self._fail(method, context, exc)
            self._log_status(method, context)

        return call

    def _fail(self, method: str, context: grpc.ServicerContext, exc: Exception) -> NoReturn:
        """Abort the RPC for ``exc``."""
        code = context.code()
        if code not in (None, grpc.StatusCode.OK):  # the handler aborted with a status of its own
            self._log(method, context, code, context.details())
            raise exc
        code = expected_status(exc)
        if code is not None:
            reason = str(exc)
            self._log(method, context, code, reason)
        else:
            incident = uuid.uuid4().hex[:12]
            code, reason = grpc.StatusCode.INTERNAL, f"internal error in the coordinator (incident {incident})"
            logger.exception("rpc %s from %s failed: %s: %s", method, context.peer(), code.name, reason)
        context.abort(code, reason)
        raise AssertionError("grpc's abort returned")  # it raises; this tells type checkers so

    def _log_status(self, method: str, context: grpc.ServicerContext) -> None:
        code = context.code()
        if code not in (None, grpc.StatusCode.OK):  # set by the handler without raising
            self._log(method, context, code, context.details())

    @staticmethod
    def _log(method: str, context: grpc.ServicerContext, code: grpc.StatusCode, reason: Any) -> None:
        if isinstance(reason, bytes):
            reason = reason.decode(errors="replace")
        logger.warning("rpc %s from %s failed: %s: %s", method, context.peer(), code.name, reason)
