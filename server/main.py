"""Public API server: ``python -m server --database-url URL --listen HOST:PORT``.

Reads the shard topology from the metadata database (see router/topology.py; register shards
with ``--register-shard ID=HOST:PORT`` or through the database), serves SearchService and
AdminService plus gRPC health and reflection, behind API keys once any exist (docs/api-keys.md).
Stateless: run as many as you like against one
database. Every flag has a ``VS_SERVER_<FLAG>`` environment variable. SIGTERM drains.

gRPC health: ``""`` (the process) and ``vectorsearch.v1.AdminService`` are SERVING while the
process serves; ``vectorsearch.v1.SearchService`` is SERVING only while the topology has shards
and every shard answered the last probe (every ``--health-interval-s``), NOT_SERVING otherwise
(point readiness checks at it). AdminService.ClusterStatus names each shard's state.
"""

from __future__ import annotations

import argparse
import logging
import os
import signal
import socket
import threading
import time
import uuid
from concurrent import futures
from pathlib import Path
from typing import TYPE_CHECKING

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from core import logs, metrics, tls, tracing
from core.dirlock import DirectoryLock, DirectoryLocked
from core.errors import CorruptionError
from core.metrics import MetricsInterceptor
from router.fanout import LOCAL_PREFIX, Router
from router.rebalance import RebalanceOptions, Rebalancer
from router.topology import JOINING, ShardInfo, Topology, TopologyStore, make_engine
from server import auth, ratelimit
from server.auth.audit import AuditLog
from server.auth.interceptor import AuthInterceptor
from server.auth.keys import KeyStore
from server.engine import Engine, EngineOptions
from server.fetch import FetchPolicy, UriFetcher
from server.media import MediaEngine
from server.metadata import MetadataStore
from server.service import DEFAULT_MAX_STREAMS, AdminServicer, SearchServicer
from shard import blas, heap
from shard.api import ShardApi
from shard.local import LocalShard
from shard.main import add_metrics_arguments, start_metrics
from shard.metrics import RecallProbe
from shard.registry import Registry
from shard.remote import RemoteShard
from vsproto.handlers import add_servicer
from vsproto.v1 import admin_service_pb2, search_service_pb2

if TYPE_CHECKING:
    from server.embedding import TritonEmbedder

log = logging.getLogger("server")
SEARCH = search_service_pb2.DESCRIPTOR.services_by_name["SearchService"].full_name
ADMIN = admin_service_pb2.DESCRIPTOR.services_by_name["AdminService"].full_name


DEFAULT_COALESCE_IN_FLIGHT = max(1, (os.cpu_count() or 1) // 2)
"""Default ``--shard-search-coalesce``: 1 on 2 cores measured +26% QPS at 8 clients against 1 shard
(2: +6%); a batch of a few rows runs on one native thread, so larger machines keep more calls
in flight."""


def _env(name: str, default: str) -> str:
    return os.environ.get(f"VS_SERVER_{name.upper()}", default)


def add_arguments(p: argparse.ArgumentParser) -> None:
    cpus = os.cpu_count() or 1
    p.add_argument(
        "--database-url",
        default=_env("database_url", "sqlite:///./data/meta.db"),
        help="SQLAlchemy URL: sqlite:///path (embedded default) or postgresql+psycopg://...",
    )
    p.add_argument("--listen", default=_env("listen", "127.0.0.1:7000"))
    p.add_argument("--ready-file", default=_env("ready_file", ""), help="write the bound host:port here once serving")
    p.add_argument(
        "--register-shard",
        action="append",
        default=[],
        metavar="ID=HOST:PORT",
        help="add or update a shard in the topology before serving (repeatable)",
    )
    p.add_argument("--request-timeout-s", type=float, default=float(_env("request_timeout_s", "10")))
    p.add_argument(
        "--allow-list-max",
        type=int,
        default=int(_env("allow_list_max", "20000")),
        help="filtered search: never send an allow-list of more ids than this",
    )
    p.add_argument(
        "--allow-list-small",
        type=int,
        default=int(_env("allow_list_small", "2000")),
        help="filtered search: up to this many matching items, always search exactly among them",
    )
    p.add_argument(
        "--allow-list-selectivity",
        type=float,
        default=float(_env("allow_list_selectivity", "0.02")),
        help="filtered search: also search exactly among them when at most this share of items match",
    )
    p.add_argument(
        "--local-shard",
        default=_env("local_shard", ""),
        metavar="DIR",
        help="single-node shape: own a shard with its data in DIR, in this process (no second hop)",
    )
    p.add_argument("--local-shard-id", default=_env("local_shard_id", "local-0"))
    p.add_argument(
        "--shard-search-coalesce",
        type=int,
        default=int(_env("shard_search_coalesce", str(DEFAULT_COALESCE_IN_FLIGHT))),
        metavar="N",
        help="searches in flight to one shard process before concurrent ones are batched into one call "
        "(shard/coalesce.py); 0: never batch; default: half the cores, at least 1 (bench/results/hop.md)",
    )
    p.add_argument("--max-message-mb", type=int, default=int(_env("max_message_mb", "64")))
    p.add_argument("--workers", type=int, default=int(_env("workers", str(max(8, 4 * cpus)))))
    p.add_argument("--log-level", default=_env("log_level", "INFO"))
    logs.add_arguments(p, _env)
    tracing.add_arguments(p, _env)
    p.add_argument(
        "--max-streams",
        type=int,
        default=int(_env("max_streams", str(DEFAULT_MAX_STREAMS))),
        help="client streams (UpsertStream) served at once; more are RESOURCE_EXHAUSTED",
    )
    ratelimit.add_arguments(p, _env)  # --rate-limit-*, --max-concurrent-requests (docs/rate-limits.md)
    p.add_argument(
        "--health-interval-s",
        type=float,
        default=float(_env("health_interval_s", "2")),
        help="how often every shard is probed for the SearchService health status",
    )
    p.add_argument(
        "--repair-after-s",
        type=float,
        default=float(_env("repair_after_s", "60")),
        help="repair the index rows of a write whose commit has not followed its shard write after this long",
    )
    p.add_argument("--repair-interval-s", type=float, default=float(_env("repair_interval_s", "10")))
    p.add_argument(
        "--triton-url",
        default=_env("triton_url", ""),
        help="host:port of Triton's gRPC endpoint serving clip_text and clip_image (search and ingestion "
        "by text and image); empty: those calls are FAILED_PRECONDITION",
    )
    p.add_argument(
        "--embedding-cache",
        default=_env("embedding_cache", ""),
        help="embedding cache: empty for an in-process LRU, redis://HOST:PORT/DB for Redis, off for none",
    )
    p.add_argument(
        "--embed-max-in-flight",
        type=int,
        default=int(_env("embed_max_in_flight", "64")),
        help="Triton requests in flight from this server; past it callers wait briefly, then RESOURCE_EXHAUSTED",
    )
    p.add_argument(
        "--allow-file-root",
        action="append",
        default=[d for d in _env("allow_file_root", "").split(os.pathsep) if d],
        help="a directory whose files ingestion may read by file:// URI (repeatable); none by default",
    )
    p.add_argument(
        "--allow-http-fetch",
        action="store_true",
        default=_env("allow_http_fetch", "") in ("1", "true", "yes"),
        help="let ingestion fetch http(s):// URIs named by clients (off by default)",
    )
    p.add_argument("--health-probe-timeout-s", type=float, default=float(_env("health_probe_timeout_s", "1")))
    p.add_argument(
        "--topology-refresh-s",
        type=float,
        default=float(_env("topology_refresh_s", "2")),
        help="how often the topology is re-read (a shard refusing a stale ring triggers a read at once)",
    )
    p.add_argument(
        "--rebalance-target-dead-s",
        type=float,
        default=float(_env("rebalance_target_dead_s", "60")),
        help="a rebalance whose target does not answer this long is aborted (before its write switch)",
    )
    p.add_argument(
        "--rebalance-lease-s",
        type=float,
        default=float(_env("rebalance_lease_s", "10")),
        help="how long a coordinating server's lease on a running rebalance lasts without renewal "
        "(another server takes over after it expires)",
    )
    # --metrics-listen (this process's endpoint) and the recall probe of the --local-shard
    add_metrics_arguments(p, _env)
    tls.add_server_arguments(p, _env)  # --tls-cert/-key/-client-ca, --shard-tls-ca/-cert/-key
    auth.add_arguments(p, _env)  # --admin-key-file, --audit-log


class ServerProcess:
    """The running server: engine, gRPC server, topology refresher."""

    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.certificates = tls.server_from_args(args)  # before any channel to a shard is opened
        self.tracer_provider = tracing.configure(args, "vectorsearch-server")
        engine = make_engine(args.database_url)
        self.topology = TopologyStore(engine)
        self.topology.migrate()
        self.metadata = MetadataStore(engine)
        self.metadata.migrate()
        for entry in args.register_shard:
            shard_id, _, address = entry.partition("=")
            self._register(shard_id, address)
        self.local: dict[str, LocalShard] = {}
        self.registries: list[Registry] = []
        self.shard_lock: DirectoryLock | None = None
        if args.local_shard:
            # single-node shape: this process owns a shard and calls it without a second hop
            Path(args.local_shard).mkdir(parents=True, exist_ok=True)
            # no other server or embedded client (vectorsearch_client.open) may have it open
            self.shard_lock = DirectoryLock(Path(args.local_shard))
            from shard.main import options_from_env  # the VS_SHARD_* settings (compaction, threads, ...)

            registry = Registry(Path(args.local_shard), options_from_env())
            registry.open()
            self.registries.append(registry)
            self.local[args.local_shard_id] = LocalShard(registry)
            self.topology.put_shard(args.local_shard_id, f"{LOCAL_PREFIX}{Path(args.local_shard).resolve()}")
        current = self.topology.load()
        self.ring_version = current.ring_version
        self._swap_lock = threading.Lock()
        self._handles: dict[str, tuple[str, ShardApi]] = {}
        self._last_reload = 0.0
        self.engine = Engine(
            self.metadata,
            Router.connect(current, self.local, self.reroute, self.args.shard_search_coalesce),
            EngineOptions(
                timeout_s=args.request_timeout_s,
                allow_list_max=args.allow_list_max,
                allow_list_small=args.allow_list_small,
                allow_list_selectivity=args.allow_list_selectivity,
                max_reply_bytes=args.max_message_mb << 20,
            ),
        )
        self.embedder = make_embedder(args)
        fetcher = UriFetcher(FetchPolicy(tuple(Path(d) for d in args.allow_file_root), args.allow_http_fetch))
        self.media = MediaEngine(self.engine, self.embedder, fetcher)
        limit = args.max_message_mb << 20
        self.keys = KeyStore(engine, bootstrap_key=auth.bootstrap_key(args))
        self.audit = AuditLog.open(args.audit_log)
        self.server = grpc.server(
            # one thread per stream slot on top of the workers for unary calls: idle streams can
            # never starve Search or Health (threads are started only when needed)
            futures.ThreadPoolExecutor(max_workers=args.workers + args.max_streams, thread_name_prefix="rpc"),
            options=[("grpc.max_receive_message_length", limit), ("grpc.max_send_message_length", limit)],
            # request ids first (also on refused calls), metrics (refusals counted by code), then API
            # keys, which bind the Principal the rate limiter reads
            interceptors=[
                logs.RequestInterceptor(),
                *([MetricsInterceptor()] if args.metrics_listen else []),
                AuthInterceptor(self.keys, self.audit),
                ratelimit.RateLimitInterceptor(
                    ratelimit.RateLimits.from_args(args), keys_enforced=lambda: self.keys.enforced
                ),
            ],
        )
        add_servicer(
            self.server,
            SearchServicer(self.engine, args.max_streams, self.media),
            search_service_pb2.DESCRIPTOR.services_by_name["SearchService"],
        )
        self.rebalancer = Rebalancer(
            self.topology,
            self._coordinator_handles,
            f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}",
            RebalanceOptions(lease_ttl_s=args.rebalance_lease_s, target_dead_after_s=args.rebalance_target_dead_s),
        )
        add_servicer(
            self.server,
            AdminServicer(self.topology, self.engine, rebalancer=self.rebalancer, keys=self.keys),
            admin_service_pb2.DESCRIPTOR.services_by_name["AdminService"],
        )
        self.health = health.HealthServicer()
        health_pb2_grpc.add_HealthServicer_to_server(self.health, self.server)
        reflection.enable_server_reflection(
            [SEARCH, ADMIN, health_pb2.DESCRIPTOR.services_by_name["Health"].full_name, reflection.SERVICE_NAME],
            self.server,
        )
        self.port = tls.add_port(self.server, args.listen, self.certificates)
        if self.port == 0:
            raise SystemExit(f"cannot listen on {args.listen}")
        self.address = f"{args.listen.rsplit(':', 1)[0]}:{self.port}"
        self._stop = threading.Event()
        self._refresher = threading.Thread(target=self._refresh_loop, name="topology", daemon=True)
        self._health_problem: str | None = None
        self.probe: RecallProbe | None = None

    def start(self) -> None:
        self.probe = start_metrics(self.args, lambda: self.registries)
        self.keys.start()  # logs a WARNING when no keys are configured (open)
        if self.args.metrics_listen:
            metrics.write_address(self.args.ready_file, metrics.serve(self.args.metrics_listen))
        self.server.start()
        tls.reload_on_sighup([self.certificates] if self.certificates else [])
        for name in ("", ADMIN):
            self.health.set(name, health_pb2.HealthCheckResponse.SERVING)
        self._update_search_health()
        self._refresher.start()
        self.rebalancer.start()
        threading.Thread(target=self._health_loop, name="health", daemon=True).start()
        # SQL index rows of writes that failed between their shard write and their commit
        # (Engine.repair_index): once at start, then every --repair-interval-s
        threading.Thread(
            target=self.engine.repair_index_until,
            args=(self._stop, self.args.repair_after_s, self.args.repair_interval_s),
            name="index-repair",
            daemon=True,
        ).start()
        if self.args.ready_file:
            tmp = Path(self.args.ready_file + ".tmp")
            tmp.write_text(self.address)
            tmp.replace(self.args.ready_file)
        log.info(
            "server serving on %s (%d shards, ring v%d)",
            self.address,
            len(self.engine.router.shards),
            self.ring_version,
        )

    def _update_search_health(self) -> None:
        """SearchService is SERVING only while the topology has shards and every one of them
        answered the last probe; otherwise NOT_SERVING, with the reason logged once per change.
        The process itself ("") and AdminService stay SERVING: adding or repairing shards goes
        through them."""
        router = self.engine.router
        if not router.shards:
            problem = "no shards in the topology"
        else:
            failed = router.probe(self.args.health_probe_timeout_s)
            problem = "; ".join(f"{s}: {reason}" for s, reason in failed.items())
        serving = health_pb2.HealthCheckResponse.NOT_SERVING if problem else health_pb2.HealthCheckResponse.SERVING
        self.health.set(SEARCH, serving)
        if problem != self._health_problem:
            if problem:
                log.warning("SearchService NOT_SERVING: %s", problem)
            else:
                log.info("SearchService SERVING: every shard answers")
            self._health_problem = problem

    def _health_loop(self) -> None:
        while not self._stop.wait(self.args.health_interval_s):
            try:
                self._update_search_health()
            except Exception:
                log.exception("health probe failed")

    def _register(self, shard_id: str, address: str) -> None:
        """``--register-shard``: a known shard follows its new address; a new one joins the ring
        at once while no collection exists, and otherwise is registered as joining (a
        rebalance moves its share to it: ``vsearch admin rebalance``), never as an owner of ids
        it does not hold."""
        current = self.topology.load()
        if (
            any(s.shard_id == shard_id for s in current.shards)
            or not current.ring().shards
            or not self.metadata.list_collections()
        ):
            self.topology.put_shard(shard_id, address)
        else:
            self.topology.add_joining(ShardInfo(shard_id, address, 1.0, JOINING))
            log.warning(
                "shard %s registered as joining: the cluster holds collections, so it owns no ids until a "
                "rebalance moves its share to it (vsearch admin rebalance)",
                shard_id,
            )

    def _reload(self) -> None:
        """Reads the topology and swaps in a new router when its version changed."""
        with self._swap_lock:
            self._last_reload = time.monotonic()
            current = self.topology.load()
            if current.ring_version == self.ring_version:
                return
            old = self.engine.router
            self.engine.router = Router.connect(current, self.local, self.reroute, self.args.shard_search_coalesce)
            self.ring_version = current.ring_version
            threading.Timer(30.0, old.close).start()  # let in-flight calls finish
            log.info("topology changed: ring v%d, %d shards", current.ring_version, len(current.shards))

    def reroute(self) -> Router:
        """The router after reloading the topology (at most every 10 ms): a shard refused a
        call of this one as stale (``WrongRoute``)."""
        if time.monotonic() - self._last_reload >= 0.01:
            self._reload()
        return self.engine.router

    def _coordinator_handles(self, topology: Topology) -> dict[str, ShardApi]:
        """Handles for the rebalance coordinator: every shard, unchecked by ring version."""
        with self._swap_lock:
            handles = self._handles
            for shard in topology.shards:
                cached = handles.get(shard.shard_id)
                if cached is not None and cached[0] == shard.address:
                    continue
                if cached is not None:
                    cached[1].close()
                if shard.address.startswith(LOCAL_PREFIX):
                    handle: ShardApi = self.local[shard.shard_id]
                else:
                    handle = RemoteShard(shard.address)
                handles[shard.shard_id] = (shard.address, handle)
            return {s: h for s, (_, h) in handles.items()}

    def _refresh_loop(self) -> None:
        while not self._stop.wait(self.args.topology_refresh_s):
            try:
                self._reload()
            except Exception:
                log.exception("topology refresh failed; keeping ring v%d", self.ring_version)

    def stop(self) -> None:
        self._stop.set()
        self.rebalancer.stop()
        self.health.enter_graceful_shutdown()
        self.server.stop(grace=5).wait()
        self.keys.stop()
        if self.audit is not None:
            self.audit.close()
        self.engine.router.close()
        if self.probe is not None:
            self.probe.stop()
        for registry in self.registries:
            registry.close()  # fsyncs and closes the logs of the in-process shard
        if self.shard_lock is not None:
            self.shard_lock.release()
        if self.embedder is not None:
            self.embedder.close()
        if self.tracer_provider is not None:
            self.tracer_provider.shutdown()  # flushes the spans still batched


def make_embedder(args: argparse.Namespace) -> TritonEmbedder | None:
    """The Triton client of ``--triton-url`` with the ``--embedding-cache``, or None. Connects
    lazily: a Triton that is down makes text and image calls UNAVAILABLE, not the start fail."""
    if not args.triton_url:
        return None
    from server.embedding import TritonEmbedder, make_cache

    log.info("embedding: Triton at %s, cache %s", args.triton_url, args.embedding_cache or "in-process LRU")
    return TritonEmbedder(
        args.triton_url, cache=make_cache(args.embedding_cache or None), max_in_flight=args.embed_max_in_flight
    )


def wait_for_signal() -> None:
    stopping = threading.Event()

    def on_signal(signum: int, _frame: object) -> None:
        log.info("signal %d: draining", signum)
        stopping.set()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    stopping.wait()


def main(argv: list[str] | None = None) -> int:
    heap.limit_arenas()  # before any thread starts (shard/heap.py)
    blas.limit_threads()  # one-query products on the caller's thread alone (shard/blas.py)
    parser = argparse.ArgumentParser(prog="python -m server", description=__doc__.split("\n")[0])
    add_arguments(parser)
    args = parser.parse_args(argv)
    logs.setup(args.log_level, args.log_format)
    try:
        process = ServerProcess(args)
    except (CorruptionError, tls.TLSConfigError, DirectoryLocked) as exc:
        log.error("refusing to start: %s", exc)
        return 2
    process.start()
    wait_for_signal()
    process.stop()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
