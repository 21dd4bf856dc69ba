"""TLS for every gRPC port and every channel to a shard: certificates from PEM files, reloaded
when the files change.

Server side (the public port, ``--tls-cert/--tls-key[/--tls-client-ca]``; a shard's port,
``--tls-cert/--tls-key/--tls-ca``): :class:`ReloadingCertificates` holds the PEM files and gives
``grpc.dynamic_ssl_server_credentials`` whose fetcher grpc calls at the start of every new
connection. The fetcher compares the files' ``(mtime_ns, size, inode)`` with what it last saw
(three ``stat`` calls per handshake); when they changed it reads and validates them (the
certificate chain parses, the key parses and matches the first certificate, the client CA
parses) and hands grpc the new configuration: new handshakes use the new files, established
connections keep theirs. :meth:`ReloadingCertificates.reload` (SIGHUP, :func:`reload_on_sighup`)
re-reads them whatever their stat says.

Contract:

* Thread-safe: grpc calls the fetcher from its own threads, concurrently; one lock serialises
  the checks; :meth:`~ReloadingCertificates.reload` may run on any thread.
* Files that do not validate (half written, a new certificate beside the old key, garbage) never
  replace good ones: the old certificate stays in use, a WARNING names the reason, and the files
  are read again when their stat changes next (the rest of the write) or on SIGHUP. At start the
  files must validate (``TLSConfigError``). Write new files by renaming them into place, key
  first, to make the window short; it is harmless either way.
* Never raises into grpc: an unexpected error in the fetcher is logged and the old
  configuration kept.

Client side (server -> shard, mutual TLS): :func:`configure_shard_client` sets, once per process
(at start, before any shard channel exists), the cluster CA and the client certificate every
channel to a shard presents; :func:`shard_channel` is the one function that opens a channel to a
shard (``RemoteShard`` for the router, the rebalance coordinator and the admin probes). It reads
the files when a channel is opened, so channels opened after a rotation use the new files.
Without configuration it opens a plain-text channel, as before.
"""

from __future__ import annotations

import argparse
import hashlib
import logging
import os
import signal
import threading
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc

log = logging.getLogger("tls")


class TLSConfigError(ValueError):
    """Certificate files that cannot be used (missing, unreadable, not matching)."""


def read_pem(path: str | os.PathLike[str]) -> bytes:
    try:
        return Path(path).read_bytes()
    except OSError as exc:
        raise TLSConfigError(f"cannot read {path}: {exc.strerror or exc}") from None


def validate_pair(cert_chain: bytes, key: bytes, ca: bytes | None = None) -> None:
    """Raises ``TLSConfigError`` unless ``cert_chain`` is PEM certificates whose first one
    matches the PEM private ``key``, and ``ca`` (when given) is PEM certificates."""
    from cryptography import x509
    from cryptography.hazmat.primitives import serialization

    try:
        certs = x509.load_pem_x509_certificates(cert_chain)
    except ValueError as exc:
        raise TLSConfigError(f"certificate: {exc}") from None
    try:
        private = serialization.load_pem_private_key(key, password=None)
    except (ValueError, TypeError) as exc:
        raise TLSConfigError(f"private key: {exc}") from None
    public = serialization.PublicFormat.SubjectPublicKeyInfo
    der = serialization.Encoding.DER
    if certs[0].public_key().public_bytes(der, public) != private.public_key().public_bytes(der, public):
        raise TLSConfigError("the private key does not match the certificate")
    if ca is not None:
        try:
            x509.load_pem_x509_certificates(ca)
        except ValueError as exc:
            raise TLSConfigError(f"CA certificates: {exc}") from None


def _stat(paths: Iterable[Path]) -> tuple[tuple[int, int, int], ...]:
    out = []
    for path in paths:
        try:
            st = path.stat()
            out.append((st.st_mtime_ns, st.st_size, st.st_ino))
        except OSError:
            out.append((-1, -1, -1))
    return tuple(out)


class ReloadingCertificates:
    """A server's certificate and key (and, with ``client_ca``, the CA its clients' certificates
    must be signed by: then a client without such a certificate is refused at the handshake),
    from PEM files, reloaded when they change. See the module doc for the contract."""

    def __init__(
        self,
        cert: str | os.PathLike[str],
        key: str | os.PathLike[str],
        client_ca: str | os.PathLike[str] | None = None,
        *,
        what: str = "server",
    ) -> None:
        self.what = what
        self.paths = tuple(Path(p) for p in (cert, key, *([client_ca] if client_ca else [])))
        self.require_client_auth = client_ca is not None
        self._lock = threading.Lock()
        self._seen = _stat(self.paths)
        config, self._digest = self._read()  # at start the files must be good
        self._initial = config
        self._pending: Any = None
        self.reloads = 0  # configurations handed to grpc after the first (for tests and logs)

    def _read(self) -> tuple[Any, str]:
        """The grpc configuration of the files and their digest; TLSConfigError when they do
        not validate."""
        contents = [read_pem(p) for p in self.paths]
        cert, key = contents[0], contents[1]
        ca = contents[2] if len(contents) > 2 else None
        validate_pair(cert, key, ca)
        digest = hashlib.sha256(b"\0".join(contents)).hexdigest()
        return grpc.ssl_server_certificate_configuration([(key, cert)], root_certificates=ca), digest

    def credentials(self) -> grpc.ServerCredentials:
        """Server credentials that take up new files for new connections."""
        return grpc.dynamic_ssl_server_credentials(
            self._initial, self.fetch, require_client_authentication=self.require_client_auth
        )

    def _check(self, force: bool) -> Any:
        """A new configuration when the files changed (or ``force``) and validate, else None.
        Called with the lock held."""
        seen = _stat(self.paths)
        if seen == self._seen and not force:
            return None
        self._seen = seen
        try:
            config, digest = self._read()
        except TLSConfigError as exc:
            log.warning("%s TLS files %s not reloaded, keeping the old certificate: %s", self.what, self._names(), exc)
            return None
        if digest == self._digest:
            return None
        self._digest = digest
        self.reloads += 1
        log.info("%s TLS certificate reloaded from %s", self.what, self._names())
        return config

    def _names(self) -> str:
        return ", ".join(str(p) for p in self.paths)

    def fetch(self) -> Any:
        """grpc's fetcher: the configuration to switch to, or None to keep the current one."""
        try:
            with self._lock:
                if self._pending is not None:
                    pending, self._pending = self._pending, None
                    return pending
                return self._check(force=False)
        except Exception:
            log.exception("%s TLS reload check failed; keeping the old certificate", self.what)
            return None

    def reload(self) -> bool:
        """Re-reads the files now, whatever their stat says (SIGHUP); the next handshake uses
        them when they validate and differ. True when they will be used."""
        with self._lock:
            config = self._check(force=True)
            if config is not None:
                self._pending = config
            return config is not None


def reload_on_sighup(certificates: Sequence[ReloadingCertificates]) -> None:
    """SIGHUP re-reads every one of ``certificates`` (on a thread of its own: a signal handler
    must not wait for a lock a grpc thread holds). Call from the main thread."""
    if not certificates:
        return
    if threading.current_thread() is not threading.main_thread():
        log.debug("not the main thread: no SIGHUP handler; the TLS files are still reloaded when they change")
        return

    def on_sighup(_signum: int, _frame: object) -> None:
        log.info("SIGHUP: re-reading the TLS files")
        threading.Thread(target=lambda: [c.reload() for c in certificates], name="tls-reload", daemon=True).start()

    signal.signal(signal.SIGHUP, on_sighup)


def add_port(server: grpc.Server, address: str, certificates: ReloadingCertificates | None) -> int:
    """``server.add_secure_port`` with ``certificates``' reloading credentials, or
    ``add_insecure_port`` without them. The bound port, 0 when it could not bind."""
    if certificates is None:
        return server.add_insecure_port(address)
    return server.add_secure_port(address, certificates.credentials())


def server_certificates(
    cert: str, key: str, ca: str, *, what: str, require_ca: bool, ca_flag: str
) -> ReloadingCertificates | None:
    """The certificates of a process's ``--tls-*`` flags: None when none is set; TLSConfigError
    when only some are (``ca`` is needed when ``require_ca``) or the files are not usable."""
    if not (cert or key or ca):
        return None
    if not (cert and key):
        raise TLSConfigError(f"{what}: --tls-cert and --tls-key go together")
    if require_ca and not ca:
        raise TLSConfigError(f"{what}: with TLS, {ca_flag} (the CA of the clients' certificates) is required")
    certificates = ReloadingCertificates(cert, key, ca or None, what=what)
    log.info("%s port: TLS with %s%s", what, cert, f", client certificates signed by {ca} required" if ca else "")
    return certificates


# ------------------------------------------------------------------------- server -> shard
@dataclass(frozen=True)
class ShardClientTLS:
    """The cluster's CA (shards' certificates are checked against it) and the client
    certificate and key every channel to a shard presents."""

    ca: str
    cert: str
    key: str

    def credentials(self) -> grpc.ChannelCredentials:
        ca, cert, key = read_pem(self.ca), read_pem(self.cert), read_pem(self.key)
        validate_pair(cert, key, ca)
        return grpc.ssl_channel_credentials(root_certificates=ca, private_key=key, certificate_chain=cert)

    @staticmethod
    def from_flags(ca: str, cert: str, key: str) -> ShardClientTLS | None:
        """None when no flag is set; TLSConfigError when only some are, or the files are bad."""
        if not (ca or cert or key):
            return None
        if not (ca and cert and key):
            raise TLSConfigError("--shard-tls-ca, --shard-tls-cert and --shard-tls-key go together")
        tls = ShardClientTLS(ca, cert, key)
        tls.credentials()  # fail at start, not at the first shard call
        return tls


_shard_client: ShardClientTLS | None = None


def configure_shard_client(tls: ShardClientTLS | None) -> None:
    """Sets how this process's channels to shards authenticate (None: plain text). Call at
    start, before opening any; channels already open keep what they were opened with."""
    global _shard_client
    _shard_client = tls
    if tls is not None:
        log.info("channels to shards: mutual TLS (CA %s, client certificate %s)", tls.ca, tls.cert)


def shard_client_tls() -> ShardClientTLS | None:
    return _shard_client


def shard_channel(address: str, options: Sequence[tuple[str, Any]] = ()) -> grpc.Channel:
    """A channel to the shard at ``address``: mutual TLS with the configured cluster client
    certificate (:func:`configure_shard_client`; the files read now), else plain text."""
    tls = _shard_client
    if tls is None:
        return grpc.insecure_channel(address, options=list(options))
    return grpc.secure_channel(address, tls.credentials(), options=list(options))


def is_loopback(host: str) -> bool:
    """Whether ``host`` (of a ``--listen HOST:PORT``) names only loopback addresses."""
    import ipaddress

    host = host.strip("[]")
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


# ------------------------------------------------------------------------- the server's flags
def add_server_arguments(p: argparse.ArgumentParser, env: Callable[[str, str], str]) -> None:
    """The public server's TLS flags (``env``: its ``VS_SERVER_*`` lookup)."""
    group = p.add_argument_group("TLS (docs/tls.md)")
    group.add_argument(
        "--tls-cert",
        default=env("tls_cert", ""),
        help="PEM certificate (chain) of the public port; with --tls-key it serves TLS only (reloaded when the "
        "files change and on SIGHUP)",
    )
    group.add_argument("--tls-key", default=env("tls_key", ""), help="PEM private key of --tls-cert")
    group.add_argument(
        "--tls-client-ca",
        default=env("tls_client_ca", ""),
        help="PEM CA: clients of the public port must present a certificate it signed (optional)",
    )
    group.add_argument(
        "--shard-tls-ca", default=env("shard_tls_ca", ""), help="PEM CA that signs the shards' certificates"
    )
    group.add_argument(
        "--shard-tls-cert",
        default=env("shard_tls_cert", ""),
        help="PEM cluster client certificate presented to the shards (mutual TLS; with --shard-tls-ca/-key)",
    )
    group.add_argument("--shard-tls-key", default=env("shard_tls_key", ""), help="PEM private key of --shard-tls-cert")


def server_from_args(args: argparse.Namespace) -> ReloadingCertificates | None:
    """Applies the server's TLS flags: configures the channels to shards
    (:func:`configure_shard_client`) and returns the public port's certificates (None: plain
    text). TLSConfigError when the flags or files are not usable."""
    configure_shard_client(ShardClientTLS.from_flags(args.shard_tls_ca, args.shard_tls_cert, args.shard_tls_key))
    if args.tls_client_ca and not (args.tls_cert and args.tls_key):
        raise TLSConfigError("server: --tls-client-ca needs --tls-cert and --tls-key")
    return server_certificates(
        args.tls_cert, args.tls_key, args.tls_client_ca, what="server", require_ca=False, ca_flag="--tls-client-ca"
    )
