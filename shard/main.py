"""Shard server process: ``python -m shard --data-dir DIR --listen HOST:PORT``.

Every flag has an environment-variable equivalent (``VS_SHARD_<FLAG>``, e.g.
``VS_SHARD_DATA_DIR``). The process recovers every collection before it listens; gRPC health
reports SERVING only after that. SIGTERM/SIGINT drain in-flight requests, fsync and close the
logs. A collection that cannot be recovered safely stops the process with exit code 2.
"""

from __future__ import annotations

import argparse
import logging
import os
import signal
import threading
from collections.abc import Callable
from concurrent import futures
from pathlib import Path

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection
from prometheus_client import REGISTRY

from core import logs, metrics, tls, tracing
from core.errors import CorruptionError
from core.metrics import MetricsInterceptor
from shard import blas, heap
from shard.collection import Collection, CollectionOptions
from shard.local import LocalShard
from shard.metrics import RecallProbe, ShardCollector
from shard.registry import Registry
from shard.service import ShardServicer
from shard.wal import FsyncPolicy, WalOptions
from vsproto.handlers import add_servicer
from vsproto.v1 import shard_service_pb2

log = logging.getLogger("shard")
DEFAULTS = CollectionOptions()
"""The collection options' defaults, which the flags below default to."""
SERVICE_NAME = shard_service_pb2.DESCRIPTOR.services_by_name["ShardService"].full_name


def _env(name: str, default: str) -> str:
    return os.environ.get(f"VS_SHARD_{name.upper()}", default)


def _default(option: str) -> str:
    """``VS_SHARD_<OPTION>``, else the ``CollectionOptions`` field's own default."""
    return _env(option, str(getattr(DEFAULTS, option)))


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    cpus = os.cpu_count() or 1
    p = argparse.ArgumentParser(prog="python -m shard", description=__doc__.split("\n")[0])
    p.add_argument("--data-dir", default=_env("data_dir", "./data/shard-0"), help="where collections live")
    p.add_argument(
        "--listen",
        default=_env("listen", "127.0.0.1:7001"),
        help="host:port (port 0 = any); loopback by default: the shard port is internal, not a way in "
        "(listen elsewhere only with --tls-* or on a private network)",
    )
    p.add_argument("--ready-file", default=_env("ready_file", ""), help="write the bound host:port here once serving")
    p.add_argument(
        "--fsync",
        choices=[f.value for f in FsyncPolicy],
        default=_env("fsync", "always"),
        help="always: ack after fsync (default); interval: fsync every --fsync-interval-ms",
    )
    p.add_argument("--fsync-interval-ms", type=float, default=float(_env("fsync_interval_ms", "50")))
    p.add_argument("--wal-segment-mb", type=int, default=int(_env("wal_segment_mb", "64")))
    p.add_argument("--max-message-mb", type=int, default=int(_env("max_message_mb", "64")))
    p.add_argument("--workers", type=int, default=int(_env("workers", str(max(8, 4 * cpus)))))
    p.add_argument("--compact-delta-items", type=int, default=int(_default("compact_delta_items")))
    p.add_argument("--compact-age-s", type=float, default=float(_default("compact_age_s")))
    p.add_argument(
        "--checkpoint-rows",
        type=int,
        default=int(_default("checkpoint_rows")),
        help="a background fold also snapshots the graph and truncates the log once this many rows (or a quarter "
        "of the graph) were folded since the newest snapshot (0: every fold)",
    )
    p.add_argument(
        "--checkpoint-age-s",
        type=float,
        default=float(_default("checkpoint_age_s")),
        help="... or once the published graph has gone this long without a snapshot",
    )
    p.add_argument(
        "--fold-step-rows",
        type=int,
        default=int(_default("fold_step_rows")),
        help="a fold that adds to the searched graph's index publishes a graph every this many rows (or a "
        "32nd of the graph, if more), so fewer rows are searched exactly while it runs and their memory "
        "goes early (0: one graph at the end)",
    )
    p.add_argument("--rebuild-deleted-ratio", type=float, default=float(_default("rebuild_deleted_ratio")))
    p.add_argument("--build-threads", type=int, default=int(_env("build_threads", str(cpus))))
    p.add_argument(
        "--compact-nice",
        type=int,
        default=int(_default("compact_nice")),
        help="added to the nice value of the background compaction and its build threads, so searches "
        "and writes run first while a fold takes the cores (0: same priority)",
    )
    p.add_argument("--search-threads", type=int, default=int(_env("search_threads", str(cpus))))
    p.add_argument("--log-level", default=_env("log_level", "INFO"))
    p.add_argument("--tls-cert", default=_env("tls_cert", ""), help="PEM certificate of this shard (mutual TLS)")
    p.add_argument("--tls-key", default=_env("tls_key", ""), help="PEM private key of --tls-cert")
    p.add_argument(
        "--tls-ca",
        default=_env("tls_ca", ""),
        help="PEM CA that signs the cluster client certificate: with --tls-cert/--tls-key, only clients "
        "presenting a certificate it signed get in (the files are reloaded when they change and on SIGHUP)",
    )
    logs.add_arguments(p, _env)
    tracing.add_arguments(p, _env)
    add_metrics_arguments(p, _env)
    return p.parse_args(argv)


def add_metrics_arguments(p: argparse.ArgumentParser, env: Callable[[str, str], str]) -> None:
    """``--metrics-listen`` and the recall probe's flags (the server's ``--local-shard`` takes
    them too)."""
    p.add_argument(
        "--metrics-listen",
        default=env("metrics_listen", ""),
        metavar="HOST:PORT",
        help="serve Prometheus metrics over HTTP here (port 0 = any; the bound address is logged and written "
        "to <ready-file>.metrics); empty (default): no metrics",
    )
    p.add_argument(
        "--recall-probe-interval-s",
        type=float,
        default=float(env("recall_probe_interval_s", "0")),
        help="every this many seconds, measure each collection's recall@k against exact search (0: never)",
    )
    p.add_argument("--recall-probe-samples", type=int, default=int(env("recall_probe_samples", "64")))
    p.add_argument("--recall-probe-k", type=int, default=int(env("recall_probe_k", "10")))


def start_metrics(args: argparse.Namespace, registries: Callable[[], list[Registry]]) -> RecallProbe | None:
    """Registers the collection gauges of ``registries()`` and serves the metrics endpoint
    (when ``--metrics-listen``), and starts the recall probe (when its interval is set)."""

    def collections() -> list[Collection]:
        return [c for r in registries() for c in r.collections()]

    if args.metrics_listen:
        REGISTRY.register(ShardCollector(collections))
    probe = None
    if args.recall_probe_interval_s > 0:
        probe = RecallProbe(collections, args.recall_probe_interval_s, args.recall_probe_samples, args.recall_probe_k)
        probe.start()
    return probe


def options_from_env() -> CollectionOptions:
    """The collection options of this command's defaults and ``VS_SHARD_*`` environment, for a
    process that owns shards without shard flags of its own (the single-node server)."""
    return options_from_args(parse_args([]))


def options_from_args(args: argparse.Namespace) -> CollectionOptions:
    return CollectionOptions(
        wal=WalOptions(
            fsync=FsyncPolicy(args.fsync),
            fsync_interval_s=args.fsync_interval_ms / 1000.0,
            segment_bytes=args.wal_segment_mb << 20,
        ),
        compact_delta_items=args.compact_delta_items,
        compact_age_s=args.compact_age_s,
        checkpoint_rows=args.checkpoint_rows,
        checkpoint_age_s=args.checkpoint_age_s,
        fold_step_rows=args.fold_step_rows,
        rebuild_deleted_ratio=args.rebuild_deleted_ratio,
        build_threads=args.build_threads,
        search_threads=args.search_threads,
        compact_nice=args.compact_nice,
    )


def build_server(
    registry: Registry,
    listen: str,
    workers: int,
    max_message_mb: int,
    metrics: bool = False,
    request_context: bool = False,
    certificates: tls.ReloadingCertificates | None = None,
) -> tuple[grpc.Server, int, health.HealthServicer]:
    """``request_context``: request ids and trace spans per call (JSON logs or tracing on); off,
    a shard call pays for no interceptor (it is the server's second hop). ``certificates``: TLS
    (mutual when they name a client CA), else plain text."""
    limit = max_message_mb << 20
    server = grpc.server(
        futures.ThreadPoolExecutor(max_workers=workers, thread_name_prefix="rpc"),
        options=[("grpc.max_receive_message_length", limit), ("grpc.max_send_message_length", limit)],
        interceptors=[
            *([logs.RequestInterceptor()] if request_context else []),
            *([MetricsInterceptor()] if metrics else []),
        ],
    )
    add_servicer(
        server, ShardServicer(LocalShard(registry)), shard_service_pb2.DESCRIPTOR.services_by_name["ShardService"]
    )
    health_servicer = health.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
    reflection.enable_server_reflection(
        [SERVICE_NAME, health_pb2.DESCRIPTOR.services_by_name["Health"].full_name, reflection.SERVICE_NAME], server
    )
    port = tls.add_port(server, listen, certificates)
    if port == 0:
        raise SystemExit(f"cannot listen on {listen}")
    return server, port, health_servicer


def main(argv: list[str] | None = None) -> int:
    heap.limit_arenas()  # before any thread starts (shard/heap.py)
    blas.limit_threads()  # one-query products on the caller's thread alone (shard/blas.py)
    args = parse_args(argv)
    logs.setup(args.log_level, args.log_format)
    try:
        certificates = tls.server_certificates(
            args.tls_cert, args.tls_key, args.tls_ca, what="shard", require_ca=True, ca_flag="--tls-ca"
        )
    except tls.TLSConfigError as exc:
        log.error("refusing to start: %s", exc)
        return 2
    host = args.listen.rsplit(":", 1)[0]
    if certificates is None and not tls.is_loopback(host):
        log.warning(
            "listening on %s without TLS: anyone who reaches this port can read and write every collection; "
            "use --tls-cert/--tls-key/--tls-ca (mutual TLS) or keep the port on a private network",
            args.listen,
        )
    tracer_provider = tracing.configure(args, "vectorsearch-shard")
    registry = Registry(Path(args.data_dir), options_from_args(args))
    try:
        registry.open()
    except CorruptionError as exc:
        log.error("refusing to start: %s", exc)
        return 2
    server, port, health_servicer = build_server(
        registry,
        args.listen,
        args.workers,
        args.max_message_mb,
        metrics=bool(args.metrics_listen),
        request_context=args.log_format == "json" or tracer_provider is not None,
        certificates=certificates,
    )
    tls.reload_on_sighup([certificates] if certificates else [])
    probe = start_metrics(args, lambda: [registry])
    if args.metrics_listen:
        metrics.write_address(args.ready_file, metrics.serve(args.metrics_listen))
    server.start()
    for name in ("", SERVICE_NAME):
        health_servicer.set(name, health_pb2.HealthCheckResponse.SERVING)
    address = f"{host}:{port}"
    if args.ready_file:
        tmp = Path(args.ready_file + ".tmp")
        tmp.write_text(address)
        tmp.replace(args.ready_file)
    log.info(
        "shard serving on %s (data %s, fsync %s, %s)",
        address,
        args.data_dir,
        args.fsync,
        "mutual TLS" if certificates else "plain text",
    )

    stopping = threading.Event()

    def on_signal(signum: int, _frame: object) -> None:
        log.info("signal %d: draining", signum)
        stopping.set()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    stopping.wait()
    health_servicer.enter_graceful_shutdown()
    server.stop(grace=5).wait()
    if probe is not None:
        probe.stop()
    registry.close()
    if tracer_provider is not None:
        tracer_provider.shutdown()
    log.info("shard stopped cleanly")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
