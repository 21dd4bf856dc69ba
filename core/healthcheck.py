"""``vsearch-healthcheck ADDRESS [--service NAME]``: asks a process's gRPC health service and
exits 0 when it answers SERVING, 1 otherwise (not serving, unreachable, or past ``--timeout-s``).

For container health checks (``docker-compose.yml``) where a native gRPC probe is not available;
Kubernetes uses its own ``grpc`` probes (``deploy/k8s``). The empty service name is the process as
a whole; ``vectorsearch.v1.SearchService`` on the server is SERVING only while every shard answers.
"""

from __future__ import annotations

import argparse
import sys

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc


def check(address: str, service: str = "", timeout_s: float = 2.0) -> bool:
    """Whether ``address`` answers SERVING for ``service`` within ``timeout_s``."""
    with grpc.insecure_channel(address) as channel:
        try:
            reply = health_pb2_grpc.HealthStub(channel).Check(
                health_pb2.HealthCheckRequest(service=service), timeout=timeout_s
            )
        except grpc.RpcError:
            return False
    return bool(reply.status == health_pb2.HealthCheckResponse.SERVING)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="vsearch-healthcheck", description=__doc__.split("\n\n")[0])
    parser.add_argument("address", help="HOST:PORT of a server or shard")
    parser.add_argument("--service", default="", help="health service name (default: the process)")
    parser.add_argument("--timeout-s", type=float, default=2.0)
    args = parser.parse_args(argv)
    ok = check(args.address, args.service, args.timeout_s)
    if not ok:
        print(f"{args.address}: not serving", file=sys.stderr)
    return 0 if ok else 1


if __name__ == "__main__":
    raise SystemExit(main())
