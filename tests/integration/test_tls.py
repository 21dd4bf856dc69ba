"""TLS on the public port, mutual TLS between the server and its shards, certificate reload
(#18): real certificates made by ``python -m core.devcerts``, real processes, real sockets on
127.0.0.1."""

from __future__ import annotations

import asyncio
import os
import shutil
import signal
import socket
import ssl
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import grpc
import numpy as np
import pytest
from cryptography import x509
from vectorsearch_client import AsyncClient, Client, Unavailable

from testkit.clusterproc import ClusterProcess
from testkit.procutil import REPO, tree_env
from testkit.serverproc import SingleNodeProcess
from testkit.shard_client import ShardClient
from testkit.shardproc import ShardProcess

DIM = 8
SEED = 18


def devcerts(out: Path) -> Path:
    """A development CA and certificates in ``out``, made by the real command."""
    subprocess.run(
        [sys.executable, "-m", "core.devcerts", "--out", str(out), "--hosts", "127.0.0.1,localhost"],
        cwd=REPO,
        env=tree_env(REPO),
        check=True,
        capture_output=True,
    )
    return out


@pytest.fixture(scope="module")
def cluster_ca(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return devcerts(tmp_path_factory.mktemp("cluster-ca"))


@pytest.fixture(scope="module")
def other_ca(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return devcerts(tmp_path_factory.mktemp("other-ca"))


def vectors(n: int) -> np.ndarray:
    return np.random.default_rng(SEED).standard_normal((n, DIM)).astype(np.float32)


def upsert_and_search(client: Client, collection: str = "tls") -> None:
    """Creates ``collection``, writes 50 seeded vectors, and finds each of three itself first."""
    data = vectors(50)
    client.create_collection(collection, DIM, "l2")
    assert client.upsert(collection, [f"v{i}" for i in range(len(data))], data) == len(data)
    for i in (0, 17, 49):
        hits = client.search(collection, data[i], k=3, require_all_shards=True)
        assert hits[0].id == f"v{i}" and not hits.partial


def refused(address: str, **tls: object) -> Unavailable:
    """The error of a call from a client with ``tls`` options: it must be UNAVAILABLE (no handshake)."""
    with Client(address, timeout=5, max_attempts=1, **tls) as client, pytest.raises(Unavailable) as caught:  # type: ignore[arg-type]
        client.list_collections()
    return caught.value


async def async_collections(address: str, ca: Path) -> list[str]:
    client = AsyncClient(address, tls_ca=ca)
    try:
        return [c.name for c in await client.list_collections()]
    finally:
        await client.close()


def peer_certificate(address: str) -> x509.Certificate:
    """The certificate a new TLS connection to ``address`` is shown (unverified; ALPN h2 as gRPC)."""
    host, port = address.rsplit(":", 1)
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    context.set_alpn_protocols(["h2"])
    with socket.create_connection((host, int(port)), timeout=5) as sock, context.wrap_socket(sock) as tls:
        der = tls.getpeercert(binary_form=True)
    assert der is not None
    return x509.load_der_x509_certificate(der)


def certificate(path: Path) -> x509.Certificate:
    return x509.load_pem_x509_certificate(path.read_bytes())


def eventually(check: Callable[[], bool], timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, "condition not reached in time"
        time.sleep(0.1)


def client_credentials(ca_dir: Path, cert_dir: Path | None = None) -> grpc.ChannelCredentials:
    """Trusting ``ca_dir``'s CA, presenting ``cert_dir``'s cluster client certificate (if any)."""
    if cert_dir is None:
        return grpc.ssl_channel_credentials((ca_dir / "ca.pem").read_bytes())
    return grpc.ssl_channel_credentials(
        (ca_dir / "ca.pem").read_bytes(),
        (cert_dir / "client-key.pem").read_bytes(),
        (cert_dir / "client.pem").read_bytes(),
    )


def shard_tls_args(ca: Path) -> list[str]:
    return ["--tls-cert", str(ca / "shard.pem"), "--tls-key", str(ca / "shard-key.pem"), "--tls-ca", str(ca / "ca.pem")]


def server_to_shard_args(ca: Path) -> list[str]:
    return [
        "--shard-tls-ca",
        str(ca / "ca.pem"),
        "--shard-tls-cert",
        str(ca / "client.pem"),
        "--shard-tls-key",
        str(ca / "client-key.pem"),
    ]


def shard_call_code(address: str, credentials: grpc.ChannelCredentials | None) -> grpc.StatusCode:
    client = ShardClient(address, timeout=5, credentials=credentials)
    try:
        client.drop_collection("absent")
    except grpc.RpcError as exc:
        return exc.code()
    finally:
        client.close()
    return grpc.StatusCode.OK


# ---------------------------------------------------------------------------- the public port
def test_tls_server_serves_clients_that_trust_its_ca_only(tmp_path: Path, cluster_ca: Path, other_ca: Path) -> None:
    server = SingleNodeProcess(
        tmp_path / "node", "--tls-cert", str(cluster_ca / "server.pem"), "--tls-key", str(cluster_ca / "server-key.pem")
    )
    address = server.start()
    try:
        with Client(address, tls_ca=cluster_ca / "ca.pem") as client:
            upsert_and_search(client)
        with Client(address, root_certificates=(cluster_ca / "ca.pem").read_bytes(), tls_server_name="localhost") as c:
            assert [col.name for col in c.list_collections()] == ["tls"]
        assert asyncio.run(async_collections(address, cluster_ca / "ca.pem")) == ["tls"]
        refused(address)  # plain text: no TLS handshake
        refused(address, tls_ca=other_ca / "ca.pem")  # the server's certificate is not signed by that CA
        assert peer_certificate(address) == certificate(cluster_ca / "server.pem")
    finally:
        server.stop()


def test_public_port_with_client_ca_requires_a_client_certificate(
    tmp_path: Path, cluster_ca: Path, other_ca: Path
) -> None:
    server = SingleNodeProcess(
        tmp_path / "node",
        "--tls-cert",
        str(cluster_ca / "server.pem"),
        "--tls-key",
        str(cluster_ca / "server-key.pem"),
        "--tls-client-ca",
        str(cluster_ca / "ca.pem"),
    )
    address = server.start()
    try:
        ca = cluster_ca / "ca.pem"
        with Client(address, tls_ca=ca, tls_cert=cluster_ca / "client.pem", tls_key=cluster_ca / "client-key.pem") as c:
            assert c.list_collections() == []
        refused(address, tls_ca=ca)  # no client certificate
        refused(address, tls_ca=ca, tls_cert=other_ca / "client.pem", tls_key=other_ca / "client-key.pem")
    finally:
        server.stop()


def test_bad_tls_flags_refuse_to_start(tmp_path: Path, cluster_ca: Path) -> None:
    server = ["server", "--local-shard", str(tmp_path / "s"), "--database-url", f"sqlite:///{tmp_path / 'm.db'}"]
    shard = ["shard", "--data-dir", str(tmp_path / "d")]
    cert = str(cluster_ca / "server.pem")
    cases = [
        [*server, "--tls-cert", cert],  # no key
        [*server, "--tls-cert", cert, "--tls-key", str(cluster_ca / "shard-key.pem")],  # another certificate's key
        [*server, "--tls-cert", cert, "--tls-key", str(tmp_path / "missing.pem")],
        [*server, "--shard-tls-ca", str(cluster_ca / "ca.pem")],  # no client certificate for the shards
        [*shard, "--tls-cert", str(cluster_ca / "shard.pem"), "--tls-key", str(cluster_ca / "shard-key.pem")],  # no CA
    ]
    for argv in cases:
        run = subprocess.run(
            [sys.executable, "-m", *argv, "--listen", "127.0.0.1:0"],
            cwd=REPO,
            env=tree_env(REPO),
            capture_output=True,
            text=True,
            timeout=60,
        )
        output = run.stdout + run.stderr
        assert run.returncode == 2 and "refusing to start" in output, (argv, output[-2000:])


# ---------------------------------------------------------------------------- server -> shard
def test_shard_takes_only_mutual_tls_and_the_server_reaches_it(
    tmp_path: Path, cluster_ca: Path, other_ca: Path
) -> None:
    shard = ShardProcess(
        tmp_path / "shard-0", *shard_tls_args(cluster_ca), credentials=client_credentials(cluster_ca, cluster_ca)
    )
    shard.start()
    server: SingleNodeProcess | None = None
    try:
        address = shard.address
        assert "mutual TLS" in shard.log_tail()
        unavailable = grpc.StatusCode.UNAVAILABLE
        assert shard_call_code(address, None) == unavailable  # plain text
        assert shard_call_code(address, client_credentials(cluster_ca)) == unavailable  # no client certificate
        # a client certificate from another CA (the shard's own certificate is trusted)
        other = grpc.ssl_channel_credentials(
            (cluster_ca / "ca.pem").read_bytes(),
            (other_ca / "client-key.pem").read_bytes(),
            (other_ca / "client.pem").read_bytes(),
        )
        assert shard_call_code(address, other) == unavailable
        assert shard_call_code(address, client_credentials(other_ca, other_ca)) == unavailable  # all of another CA
        assert shard_call_code(address, client_credentials(cluster_ca, cluster_ca)) == grpc.StatusCode.OK

        # the server, with the cluster client certificate: a full write and search through it
        server = SingleNodeProcess(
            tmp_path / "server",
            "--register-shard",
            f"s0={address}",
            *server_to_shard_args(cluster_ca),
            local_shard=False,
        )
        with Client(server.start()) as client:
            upsert_and_search(client)
            assert [s.healthy for s in client.cluster_status().shards] == [True]
        assert shard.client is not None and shard.client.stats("tls").count == 50  # the items are on the shard
    finally:
        if server is not None:
            server.stop()
        shard.stop()


def test_a_server_without_the_client_certificate_does_not_reach_a_tls_shard(tmp_path: Path, cluster_ca: Path) -> None:
    shard = ShardProcess(
        tmp_path / "shard-0", *shard_tls_args(cluster_ca), credentials=client_credentials(cluster_ca, cluster_ca)
    )
    shard.start()
    server = SingleNodeProcess(tmp_path / "server", "--register-shard", f"s0={shard.address}", local_shard=False)
    try:
        with Client(server.start(), timeout=5, max_attempts=1) as client:
            with pytest.raises(Unavailable):
                client.create_collection("tls", DIM, "l2")
            assert [s.healthy for s in client.cluster_status().shards] == [False]
    finally:
        server.stop()
        shard.stop()


def test_shard_warns_when_it_listens_beyond_loopback_without_tls(tmp_path: Path) -> None:
    shard = ShardProcess(tmp_path / "open", "--listen", "0.0.0.0:0")  # the later --listen wins
    shard.start()
    try:
        assert "WARNING" in shard.log_tail() and "without TLS" in shard.log_tail()
    finally:
        shard.stop()
    quiet = ShardProcess(tmp_path / "loopback")
    quiet.start()
    try:
        assert "without TLS" not in quiet.log_tail()
    finally:
        quiet.stop()


# ---------------------------------------------------------------------------- reload
def test_server_certificate_is_reloaded_without_a_restart(tmp_path: Path, cluster_ca: Path, other_ca: Path) -> None:
    live = tmp_path / "live"
    live.mkdir()
    for name in ("server.pem", "server-key.pem"):
        shutil.copy(cluster_ca / name, live / name)
    server = SingleNodeProcess(
        tmp_path / "node", "--tls-cert", str(live / "server.pem"), "--tls-key", str(live / "server-key.pem")
    )
    address = server.start()
    try:
        old, new = certificate(cluster_ca / "server.pem"), certificate(other_ca / "server.pem")
        assert peer_certificate(address) == old
        with Client(address, tls_ca=cluster_ca / "ca.pem") as client:
            upsert_and_search(client)
            # replace both files, renamed into place (key first), as a certificate manager does
            for name in ("server-key.pem", "server.pem"):
                shutil.copy(other_ca / name, live / f".{name}.tmp")
                os.replace(live / f".{name}.tmp", live / name)
            eventually(lambda: peer_certificate(address) == new)
            # new connections see the new certificate: trusting only the new CA works, the old fails
            with Client(address, tls_ca=other_ca / "ca.pem") as fresh:
                assert [c.name for c in fresh.list_collections()] == ["tls"]
            refused(address, tls_ca=cluster_ca / "ca.pem")
            # the established connection goes on
            assert client.search("tls", vectors(1)[0], k=1)[0].id == "v0"

        # a half-written certificate is not taken: the current one stays, with a warning
        good = (live / "server.pem").read_bytes()
        (live / "server.pem").write_bytes(good[: len(good) // 2])
        assert peer_certificate(address) == new
        eventually(lambda: "not reloaded, keeping the old certificate" in server.log_tail(20000))
        (live / "server.pem").write_bytes(good)
        assert peer_certificate(address) == new

        # SIGHUP re-reads the files (back to the first pair here, written in place)
        (live / "server-key.pem").write_bytes((cluster_ca / "server-key.pem").read_bytes())
        (live / "server.pem").write_bytes((cluster_ca / "server.pem").read_bytes())
        assert server.proc is not None
        server.proc.send_signal(signal.SIGHUP)
        eventually(lambda: "SIGHUP: re-reading the TLS files" in server.log_tail(20000))
        eventually(lambda: peer_certificate(address) == old)
        with Client(address, tls_ca=cluster_ca / "ca.pem") as client:
            assert client.list_collections()
    finally:
        server.stop()


# ---------------------------------------------------------------------------- the local cluster
def test_local_cluster_with_tls(tmp_path: Path) -> None:
    certs = tmp_path / "certs"
    cluster = ClusterProcess(tmp_path / "cluster", "--tls", str(certs), shards=2)
    cluster.start()
    try:
        assert (certs / "ca.pem").is_file() and (certs / "client.pem").is_file()  # made by --tls
        with Client(cluster.address, tls_ca=certs / "ca.pem") as client:
            upsert_and_search(client, "images")
        for i in range(2):  # the shards take only mutual TLS
            shard_address = (tmp_path / "cluster" / f"shard-{i}.ready").read_text()
            assert shard_call_code(shard_address, None) == grpc.StatusCode.UNAVAILABLE
            assert shard_call_code(shard_address, client_credentials(certs)) == grpc.StatusCode.UNAVAILABLE
            assert shard_call_code(shard_address, client_credentials(certs, certs)) == grpc.StatusCode.OK

        def vsearch(*argv: str) -> subprocess.CompletedProcess[str]:
            command = [sys.executable, "-m", "cli.main", "--address", cluster.address, *argv]
            return subprocess.run(command, cwd=REPO, env=tree_env(REPO), capture_output=True, text=True, timeout=60)

        status = vsearch("--tls-ca", str(certs / "ca.pem"), "status", "--json")
        assert status.returncode == 0, status.stderr
        assert '"images"' in status.stdout
        plain = vsearch("status")
        assert plain.returncode == 2 and "--tls-ca" in plain.stderr
    finally:
        cluster.stop()
