"""The one authentication and authorization interceptor of the public server.

For every call: the rule of its method (``server/auth/roles.py``; a method without one is refused,
fail closed), the caller's key from ``authorization: Bearer <key>`` resolved by the key store
(UNAUTHENTICATED: none, unknown, revoked; every key passes while the store is open), the rule's
role and scope checked (PERMISSION_DENIED), then the request's collection. The handler then runs
with the caller's ``core.principal`` bound (``core.principal.current()``) for the whole call:
for response streams while their generator is iterated, and for client streams each message's
collection is checked as the handler reads it. gRPC health is open (no key needed).

Order in ``server/main.py``: after ``core.logs.RequestInterceptor`` (so refusals are logged with
the request id, which the audit log also records) and the metrics interceptor (refusals are
counted by status code), before the rate limiter, which sees only admitted calls and reads the
principal.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterator
from typing import Any, NoReturn, Protocol

import grpc

from core import interceptors, logs, status
from core.errors import DomainError, PermissionDenied
from core.principal import Principal, bind
from core.status import MalformedRequest
from server.auth import roles
from server.auth.audit import AuditLog
from server.auth.keys import bearer_token, key_id_of
from server.auth.roles import Rule, Scope

log = logging.getLogger("server.auth")


class Authenticator(Protocol):
    def authenticate(self, key: str | None) -> Principal: ...


def _code(context: grpc.ServicerContext, failed: bool) -> grpc.StatusCode:
    code = getattr(context, "code", lambda: None)()
    if isinstance(code, grpc.StatusCode):
        return code
    return grpc.StatusCode.UNKNOWN if failed else grpc.StatusCode.OK


def _abort(context: grpc.ServicerContext, exc: DomainError) -> NoReturn:
    code = status.to_code(exc)
    assert code is not None
    context.abort(code, str(exc))


class AuthInterceptor(grpc.ServerInterceptor):  # type: ignore[type-arg]
    """See the module doc. ``keys`` resolves keys (``server.auth.keys.KeyStore``); ``audit``
    receives a line per call whose rule says ``audit``; ``rules`` defaults to ``roles.RULES``."""

    def __init__(
        self, keys: Authenticator, audit: AuditLog | None = None, rules: dict[str, Rule] | None = None
    ) -> None:
        self.keys = keys
        self.audit = audit
        self.rules = roles.RULES if rules is None else rules

    def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], grpc.RpcMethodHandler[Any, Any] | None],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler[Any, Any] | None:
        handler = continuation(handler_call_details)
        if handler is None:
            return None
        method = handler_call_details.method
        rule = self.rules.get(method)
        if rule is not None and rule.scope is Scope.OPEN:
            return handler
        audited = rule is not None and rule.audit and self.audit is not None
        if rule is not None and not audited and not getattr(self.keys, "enforced", True):
            # Open mode (no keys): every caller is core.principal.OPEN, the context variable's
            # default, so an unaudited call needs no wrapper (the default configuration's cost).
            return handler
        call = _Call(self, method, rule)
        return interceptors.rewrap(
            handler, lambda behavior, ins, outs: (call.streamed if outs else call.unary)(behavior, ins)
        )


class _Call:
    """The wrappers of one method's behavior."""

    def __init__(self, owner: AuthInterceptor, method: str, rule: Rule | None) -> None:
        self.owner = owner
        self.method = method
        self.rule = rule

    # ------------------------------------------------------------------ admission
    def _authenticate(self, context: grpc.ServicerContext) -> Principal:
        """The caller's principal, or the call aborted UNAUTHENTICATED (PERMISSION_DENIED for a
        method without a rule)."""
        try:
            if self.rule is None:
                log.error("no role rule for %s: refused (add it to server/auth/roles.py)", self.method)
                raise PermissionDenied(f"{roles.method_name(self.method)} is not open to API keys")
            return self.owner.keys.authenticate(bearer_token(context.invocation_metadata()))
        except DomainError as exc:
            _abort(context, exc)

    def _authorize(self, principal: Principal, request: Any, streaming: bool, context: grpc.ServicerContext) -> None:
        """Aborts the call PERMISSION_DENIED unless the rule allows it to ``principal`` (a client
        stream's messages are checked as they are read: :meth:`_checked`)."""
        assert self.rule is not None
        try:
            roles.check_call(principal, self.method, self.rule)
            if self.rule.scope is Scope.COLLECTION and not streaming and not isinstance(request, MalformedRequest):
                roles.check_collection(principal, self.method, self.rule.collection(request))
        except DomainError as exc:
            _abort(context, exc)

    def _checked(self, requests: Iterator[Any], principal: Principal) -> Iterator[Any]:
        """A client stream whose messages' collections are checked as the handler reads them (an
        empty name keeps the previous one; the servicer refuses a stream that starts without)."""
        rule = self.rule
        assert rule is not None
        current = ""
        for request in requests:
            if principal.collections is not None and not isinstance(request, MalformedRequest):
                current = rule.collection(request) or current
                if current:
                    roles.check_collection(principal, self.method, current)
            yield request

    def _audit(
        self, request: Any, context: grpc.ServicerContext, principal: Principal | None, started: float, failed: bool
    ) -> None:
        audit = self.owner.audit
        if audit is None or self.rule is None or not self.rule.audit:
            return
        if principal is not None:
            key_id: str | None = principal.key_id
        else:  # refused: the id the presented key claims, if it has the form of a key
            try:
                token = bearer_token(context.invocation_metadata())
            except DomainError:
                token = None
            key_id = key_id_of(token) if token else None
        if isinstance(request, MalformedRequest) or request is None:
            summary: dict[str, Any] = {"malformed": True} if request is not None else {}
        else:
            try:
                summary = self.rule.summary(request)
            except Exception:  # a summary must never fail the call
                log.exception("audit summary of %s failed", self.method)
                summary = {}
        audit.write(
            key_id=key_id,
            peer=context.peer(),
            method=self.method,
            request=summary,
            outcome=_code(context, failed).name,
            request_id=logs.request_id(),
            duration_ms=(time.perf_counter() - started) * 1000,
        )

    # ------------------------------------------------------------------ wrappers
    def unary(self, behavior: Callable[[Any, grpc.ServicerContext], Any], streaming: bool) -> Any:
        def call(request: Any, context: grpc.ServicerContext) -> Any:
            started = time.perf_counter()
            principal: Principal | None = None
            failed = True
            try:
                principal = self._authenticate(context)
                self._authorize(principal, request, streaming, context)
                if streaming and self.rule is not None and self.rule.scope is Scope.COLLECTION:
                    request = self._checked(request, principal)
                with bind(principal):
                    try:
                        reply = behavior(request, context)
                    except PermissionDenied as exc:  # a stream message's collection, past a handler that let it out
                        context.abort(grpc.StatusCode.PERMISSION_DENIED, str(exc))
                failed = False
                return reply
            finally:
                self._audit(None if streaming else request, context, principal, started, failed)

        return call

    def streamed(self, behavior: Callable[[Any, grpc.ServicerContext], Iterator[Any]], streaming: bool) -> Any:
        def call(request: Any, context: grpc.ServicerContext) -> Iterator[Any]:
            started = time.perf_counter()
            principal: Principal | None = None
            failed = True
            try:
                principal = self._authenticate(context)
                self._authorize(principal, request, streaming, context)
                if streaming and self.rule is not None and self.rule.scope is Scope.COLLECTION:
                    request = self._checked(request, principal)
                with bind(principal):  # held while the handler's generator runs, not just its call
                    try:
                        yield from behavior(request, context)
                    except PermissionDenied as exc:
                        context.abort(grpc.StatusCode.PERMISSION_DENIED, str(exc))
                failed = False
            finally:
                self._audit(None if streaming else request, context, principal, started, failed)

        return call
