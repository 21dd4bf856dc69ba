"""``vsearch-healthcheck ADDRESS [--service NAME]``: asks a process's gRPC health service and
exits 0 when it answers SERVING, 1 otherwise (not serving, unreachable, or past ``--timeout-s``).

For container health checks (``docker-compose.yml``) where a native gRPC probe is not available;
Kubernetes uses its own ``grpc`` probes (``deploy/k8s``). The empty service name is the process as
a whole; ``vectorsearch.v1.SearchService`` on the server is SERVING only while every shard answers.
Against a TLS port: ``--tls-ca`` (the PEM CA to trust) and, for a shard's mutual TLS, the cluster
client certificate ``--tls-cert``/``--tls-key`` (docs/tls.md).
"""

from __future__ import annotations

import argparse
import sys

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from core import tls


def check(
    address: str, service: str = "", timeout_s: float = 2.0, credentials: grpc.ChannelCredentials | None = None
) -> bool:
    """Whether ``address`` answers SERVING for ``service`` within ``timeout_s`` (over TLS with
    ``credentials``)."""
    channel = grpc.insecure_channel(address) if credentials is None else grpc.secure_channel(address, credentials)
    with channel:
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
    parser.add_argument("--tls-ca", default="", help="PEM CA: connect over TLS trusting it")
    parser.add_argument("--tls-cert", default="", help="PEM client certificate (a shard's mutual TLS)")
    parser.add_argument("--tls-key", default="", help="its private key")
    args = parser.parse_args(argv)
    credentials = None
    if args.tls_ca:
        read = tls.read_pem
        credentials = grpc.ssl_channel_credentials(
            read(args.tls_ca),
            read(args.tls_key) if args.tls_key else None,
            read(args.tls_cert) if args.tls_cert else None,
        )
    ok = check(args.address, args.service, args.timeout_s, credentials)
    if not ok:
        print(f"{args.address}: not serving", file=sys.stderr)
    return 0 if ok else 1


if __name__ == "__main__":
    raise SystemExit(main())
