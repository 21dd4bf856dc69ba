"""OpenTelemetry tracing (issue #17): spans for the public RPC, planning, fan-out, per-shard
search, merge and metadata join, with the W3C ``traceparent`` carried in gRPC metadata from the
server to its shards.

Off by default: :func:`span` then returns one shared no-op context manager and the client side
injects nothing, so the hot path costs a global read. :func:`configure` turns it on for a
process: OTLP over gRPC to ``--otlp-endpoint`` (or the standard ``OTEL_EXPORTER_OTLP_ENDPOINT``),
or a JSON-lines file of finished spans (``--trace-file``, for tests and debugging). Tests install
their own provider with :func:`install` (e.g. over an ``InMemorySpanExporter``).

Server side: ``core.logs.RequestInterceptor`` opens the SERVER span of each call with
:func:`server_span`, under the caller's context extracted from the metadata. Client side:
``shard/remote.py`` wraps a shard call in :func:`client_span` and sends :func:`inject`'s pairs.
The span context lives in a ``ContextVar``; the fan-out pool runs its tasks in a copy of the
caller's context (router/fanout.py), so per-shard spans are children of the fan-out span.
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import json
import logging
import os
import threading
from collections.abc import Callable, Iterator, Sequence
from typing import Any, TypeVar

from opentelemetry import context as otel_context
from opentelemetry import trace
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

log = logging.getLogger(__name__)

_PROPAGATOR = TraceContextTextMapPropagator()
_NOOP = contextlib.nullcontext()
_tracer: trace.Tracer = trace.NoOpTracer()
enabled = False


def install(provider: Any) -> None:
    """Traces this process's spans with ``provider`` (an SDK ``TracerProvider``); None: off."""
    global _tracer, enabled
    if provider is None:
        _tracer, enabled = trace.NoOpTracer(), False
    else:
        _tracer, enabled = provider.get_tracer("vectorsearch"), True


def span(name: str, **attributes: Any) -> contextlib.AbstractContextManager[Any]:
    """An INTERNAL span around a step (a shared no-op when tracing is off)."""
    if not enabled:
        return _NOOP
    return _tracer.start_as_current_span(name, attributes=attributes or None)


F = TypeVar("F", bound=Callable[..., Any])


def traced(name: str) -> Callable[[F], F]:
    """Runs the decorated function inside an INTERNAL span ``name`` (nothing more when off)."""

    def decorate(function: F) -> F:
        @functools.wraps(function)
        def wrapper(*args: Any, **kwargs: Any) -> Any:
            if not enabled:
                return function(*args, **kwargs)
            with _tracer.start_as_current_span(name):
                return function(*args, **kwargs)

        return wrapper  # type: ignore[return-value]

    return decorate


def client_span(name: str, **attributes: Any) -> contextlib.AbstractContextManager[Any]:
    """A CLIENT span around an outgoing call (a shared no-op when tracing is off)."""
    if not enabled:
        return _NOOP
    return _tracer.start_as_current_span(name, kind=trace.SpanKind.CLIENT, attributes=attributes or None)


def inject(metadata: Sequence[tuple[str, str]]) -> Sequence[tuple[str, str]]:
    """``metadata`` plus the ``traceparent`` of the current span (unchanged when there is none)."""
    if not enabled:
        return metadata
    carrier: dict[str, str] = {}
    _PROPAGATOR.inject(carrier)
    return (*metadata, *carrier.items()) if carrier else metadata


@contextlib.contextmanager
def server_span(method: str, metadata: Sequence[tuple[str, Any]]) -> Iterator[None]:
    """The SERVER span of a served call, child of the caller's ``traceparent`` when it sent one.
    With tracing off, an incoming ``traceparent`` is still made current (no span is recorded),
    so this process's logs carry the caller's trace id."""
    carrier = {k: v for k, v in metadata if k in ("traceparent", "tracestate") and isinstance(v, str)}
    parent = _PROPAGATOR.extract(carrier) if carrier else None
    if not enabled:
        if parent is None:
            yield
            return
        token = otel_context.attach(parent)
        try:
            yield
        finally:
            otel_context.detach(token)
        return
    with _tracer.start_as_current_span(method.lstrip("/"), context=parent, kind=trace.SpanKind.SERVER) as current:
        current.set_attribute("rpc.system", "grpc")
        current.set_attribute("rpc.method", method)
        yield


def current_ids() -> tuple[str, str] | None:
    """(trace id, span id) in hex of the current span, None outside one."""
    ctx = trace.get_current_span().get_span_context()
    if not ctx.is_valid:
        return None
    return f"{ctx.trace_id:032x}", f"{ctx.span_id:016x}"


# ---------------------------------------------------------------------------- configuration
def add_arguments(p: argparse.ArgumentParser, env: Callable[[str, str], str]) -> None:
    p.add_argument(
        "--otlp-endpoint",
        default=env("otlp_endpoint", os.environ.get("OTEL_EXPORTER_OTLP_ENDPOINT", "")),
        metavar="HOST:PORT",
        help="export OpenTelemetry traces over OTLP/gRPC to this collector (default: "
        "$OTEL_EXPORTER_OTLP_ENDPOINT; empty: no tracing)",
    )
    p.add_argument(
        "--trace-file",
        default=env("trace_file", ""),
        metavar="PATH",
        help="append every finished span to this file as a JSON line (debugging and tests; empty: off)",
    )


def configure(args: argparse.Namespace, service: str) -> Any:
    """Turns tracing on when ``--otlp-endpoint`` or ``--trace-file`` is set; returns the
    provider (shut it down at exit to flush) or None."""
    if not args.otlp_endpoint and not args.trace_file:
        return None
    from opentelemetry.sdk.resources import Resource
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import BatchSpanProcessor, SimpleSpanProcessor

    provider = TracerProvider(resource=Resource.create({"service.name": service}))
    if args.otlp_endpoint:
        from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter

        provider.add_span_processor(BatchSpanProcessor(OTLPSpanExporter(endpoint=args.otlp_endpoint, insecure=True)))
    if args.trace_file:
        provider.add_span_processor(SimpleSpanProcessor(_file_exporter(args.trace_file)))
    install(provider)
    trace.set_tracer_provider(provider)
    log.info("tracing on: %s", ", ".join(x for x in (args.otlp_endpoint, args.trace_file) if x))
    return provider


def _plain(value: Any) -> Any:
    return value if isinstance(value, str | int | float | bool) else str(value)


def _file_exporter(path: str) -> Any:
    """A span exporter appending one JSON object a span: name, ids, parent, kind, attributes."""
    from opentelemetry.sdk.trace.export import SpanExporter, SpanExportResult

    lock = threading.Lock()

    class FileExporter(SpanExporter):
        def export(self, spans: Sequence[Any]) -> SpanExportResult:
            lines = [
                json.dumps(
                    {
                        "name": s.name,
                        "trace_id": f"{s.context.trace_id:032x}",
                        "span_id": f"{s.context.span_id:016x}",
                        "parent_id": f"{s.parent.span_id:016x}" if s.parent is not None else None,
                        "kind": s.kind.name,
                        "attributes": {k: _plain(v) for k, v in (s.attributes or {}).items()},
                    }
                )
                for s in spans
            ]
            with lock, open(path, "a", encoding="utf-8") as out:
                out.write("".join(line + "\n" for line in lines))
            return SpanExportResult.SUCCESS

    return FileExporter()
