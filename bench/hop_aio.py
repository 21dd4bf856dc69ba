"""The cost of one gRPC hop, threaded server vs ``grpc.aio`` (issue #19 item 6, bench/results/hop.md).

Two child processes serve ``ShardService.Search`` with a servicer that only reads the packed query
(``np.frombuffer``) and returns an empty ``SearchResponse``: one on ``grpc.server`` with a pool of
8 threads, one on ``grpc.aio.server`` (``async def``). One client thread calls each with one
384-d packed query at a time, ``--calls`` per pass, ``--rounds`` rounds alternating the servers
and their order. Prints QPS and the server's CPU milliseconds per call (``/proc/PID/stat``, all
threads) per pass, as JSON.

    python bench/hop_aio.py --calls 2000 --rounds 4
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import socket
import subprocess
import sys
import time
from concurrent import futures
from pathlib import Path
from typing import Any

import grpc
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from vsproto.v1 import shard_service_pb2 as pb
from vsproto.v1 import shard_service_pb2_grpc as pb_grpc

KINDS = ("sync", "aio")


def answer(request: pb.SearchRequest) -> pb.SearchResponse:
    np.frombuffer(request.queries.packed, dtype="<f4")
    return pb.SearchResponse()


class SyncServicer(pb_grpc.ShardServiceServicer):
    def Search(self, request: pb.SearchRequest, context: grpc.ServicerContext) -> Any:
        return answer(request)


class AioServicer(pb_grpc.ShardServiceServicer):
    async def Search(self, request: pb.SearchRequest, context: Any) -> Any:
        return answer(request)


def serve(kind: str, port: int) -> None:
    """Serves until stdin closes (the parent went away)."""
    if kind == "sync":
        server = grpc.server(futures.ThreadPoolExecutor(max_workers=8))
        pb_grpc.add_ShardServiceServicer_to_server(SyncServicer(), server)
        server.add_insecure_port(f"127.0.0.1:{port}")
        server.start()
        sys.stdin.read()
        server.stop(0)
        return

    async def main() -> None:
        server = grpc.aio.server()
        pb_grpc.add_ShardServiceServicer_to_server(AioServicer(), server)
        server.add_insecure_port(f"127.0.0.1:{port}")
        await server.start()
        await asyncio.get_running_loop().run_in_executor(None, sys.stdin.read)
        await server.stop(0)

    asyncio.run(main())


def cpu_s(pid: int) -> float:
    fields = (Path("/proc") / str(pid) / "stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--calls", type=int, default=2000)
    p.add_argument("--rounds", type=int, default=4)
    p.add_argument("--serve", nargs=2, metavar=("KIND", "PORT"), help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.serve:
        serve(args.serve[0], int(args.serve[1]))
        return
    ports = {kind: free_port() for kind in KINDS}
    procs = {
        kind: subprocess.Popen([sys.executable, __file__, "--serve", kind, str(port)], stdin=subprocess.PIPE)
        for kind, port in ports.items()
    }
    try:
        stubs = {}
        for kind, port in ports.items():
            channel = grpc.insecure_channel(f"127.0.0.1:{port}")
            grpc.channel_ready_future(channel).result(timeout=30)
            stubs[kind] = pb_grpc.ShardServiceStub(channel)
        request = pb.SearchRequest(collection="c", k=10, ef=64)
        request.queries.packed = np.zeros(384, dtype=np.float32).tobytes()
        request.queries.dimension, request.queries.rows = 384, 1
        for stub in stubs.values():
            for _ in range(300):
                stub.Search(request)
        passes: dict[str, list[dict[str, float]]] = {kind: [] for kind in KINDS}
        for r in range(args.rounds):
            for kind in KINDS if r % 2 == 0 else KINDS[::-1]:
                before, start = cpu_s(procs[kind].pid), time.perf_counter()
                for _ in range(args.calls):
                    stubs[kind].Search(request)
                elapsed = time.perf_counter() - start
                used = cpu_s(procs[kind].pid) - before
                passes[kind].append(
                    {"qps": round(args.calls / elapsed), "server_cpu_ms": round(1000 * used / args.calls, 3)}
                )
        print(json.dumps({"command": " ".join(sys.argv), "passes": passes}, indent=1))
    finally:
        for proc in procs.values():
            assert proc.stdin is not None
            proc.stdin.close()
            proc.wait(timeout=10)


if __name__ == "__main__":
    main()
