"""A development CA and the certificates of a local cluster:
``python -m core.devcerts --out DIR [--hosts 127.0.0.1,localhost,::1] [--days 30] [--force]``
(``vsearch-certs``).

Writes into DIR (created, mode 0700; keys 0600), each file renamed into place whole:

* ``ca.pem``, ``ca-key.pem``: the CA (keep its key to issue more; it signs everything below);
* ``server.pem``, ``server-key.pem``: the public server's certificate (serverAuth), with a
  subjectAltName for every ``--hosts`` entry (IP addresses as iPAddress, names as dNSName);
* ``shard.pem``, ``shard-key.pem``: the shards' certificate (serverAuth), same SANs;
* ``client.pem``, ``client-key.pem``: the cluster client certificate (clientAuth) the server
  presents to the shards (``--shard-tls-cert/--shard-tls-key``), also usable by an SDK client
  when the public port requires client certificates (``--tls-client-ca``).

Keys are ECDSA P-256. Validity: ``--days`` (default 30) from an hour ago, for the CA and every
certificate: this is a development CA, not a production PKI; rerun with ``--force`` (or delete
DIR) when they expire. Without ``--force`` files already there are kept, unless one is missing
or a certificate has expired or expires within a day (then everything is made anew).
"""

from __future__ import annotations

import argparse
import datetime as dt
import ipaddress
import os
import secrets
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

DEFAULT_HOSTS = ("127.0.0.1", "localhost", "::1")
DEFAULT_DAYS = 30
PAIRS = ("ca", "server", "shard", "client")


@dataclass(frozen=True)
class Issued:
    cert: x509.Certificate
    key: ec.EllipticCurvePrivateKey

    def cert_pem(self) -> bytes:
        return self.cert.public_bytes(serialization.Encoding.PEM)

    def key_pem(self) -> bytes:
        return self.key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )


def _name(common_name: str) -> x509.Name:
    return x509.Name(
        [
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, "vectorsearch dev"),
            x509.NameAttribute(NameOID.COMMON_NAME, common_name),
        ]
    )


def _validity(days: int) -> tuple[dt.datetime, dt.datetime]:
    now = dt.datetime.now(dt.UTC)
    return now - dt.timedelta(hours=1), now + dt.timedelta(days=days)


def make_ca(common_name: str = "vectorsearch dev CA", days: int = DEFAULT_DAYS) -> Issued:
    key = ec.generate_private_key(ec.SECP256R1())
    start, end = _validity(days)
    cert = (
        x509.CertificateBuilder()
        .subject_name(_name(common_name))
        .issuer_name(_name(common_name))
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(start)
        .not_valid_after(end)
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=True,
                crl_sign=True,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .sign(key, hashes.SHA256())
    )
    return Issued(cert, key)


def issue(
    ca: Issued, common_name: str, hosts: Sequence[str] = (), *, client: bool = False, days: int = DEFAULT_DAYS
) -> Issued:
    """A certificate signed by ``ca``: for a server (serverAuth, SANs ``hosts``) or, with
    ``client``, for a client (clientAuth)."""
    key = ec.generate_private_key(ec.SECP256R1())
    start, end = _validity(days)
    builder = (
        x509.CertificateBuilder()
        .subject_name(_name(common_name))
        .issuer_name(ca.cert.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(start)
        .not_valid_after(end)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(
            x509.ExtendedKeyUsage([ExtendedKeyUsageOID.CLIENT_AUTH if client else ExtendedKeyUsageOID.SERVER_AUTH]),
            critical=False,
        )
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(ca.key.public_key()),
            critical=False,
        )
    )
    names: list[x509.GeneralName] = []
    for host in hosts:
        try:
            names.append(x509.IPAddress(ipaddress.ip_address(host)))
        except ValueError:
            names.append(x509.DNSName(host))
    if names:
        builder = builder.add_extension(x509.SubjectAlternativeName(names), critical=False)
    return Issued(builder.sign(ca.key, hashes.SHA256()), key)


def write_atomic(path: Path, data: bytes, mode: int = 0o644) -> None:
    """Writes ``data`` to a temporary file beside ``path`` and renames it into place (a reader
    such as a reloading server never sees half a file)."""
    tmp = path.with_name(f".{path.name}.{secrets.token_hex(4)}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, mode)
    with os.fdopen(fd, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    tmp.replace(path)


def write_pair(out: Path, name: str, issued: Issued) -> None:
    """``<name>-key.pem`` (0600) then ``<name>.pem``."""
    write_atomic(out / f"{name}-key.pem", issued.key_pem(), 0o600)
    write_atomic(out / f"{name}.pem", issued.cert_pem())


def _usable(out: Path) -> bool:
    """Every file is there and no certificate expires within a day."""
    soon = dt.datetime.now(dt.UTC) + dt.timedelta(days=1)
    for name in PAIRS:
        if not (out / f"{name}-key.pem").is_file():
            return False
        try:
            cert = x509.load_pem_x509_certificate((out / f"{name}.pem").read_bytes())
        except (OSError, ValueError):
            return False
        if cert.not_valid_after_utc < soon:
            return False
    return True


def ensure(
    out: str | os.PathLike[str], hosts: Sequence[str] = DEFAULT_HOSTS, days: int = DEFAULT_DAYS, force: bool = False
) -> bool:
    """Makes the CA and the certificates in ``out`` unless usable ones are there (or
    ``force``). True when it made new ones."""
    target = Path(out)
    target.mkdir(parents=True, exist_ok=True)
    os.chmod(target, 0o700)
    if not force and _usable(target):
        return False
    ca = make_ca(days=days)
    write_pair(target, "ca", ca)
    write_pair(target, "server", issue(ca, "vectorsearch server", hosts, days=days))
    write_pair(target, "shard", issue(ca, "vectorsearch shard", hosts, days=days))
    write_pair(target, "client", issue(ca, "vectorsearch cluster client", client=True, days=days))
    return True


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m core.devcerts", description=(__doc__ or "").split("\n")[0])
    p.add_argument("--out", required=True, type=Path, help="directory for the CA, certificates and keys")
    p.add_argument(
        "--hosts",
        default=",".join(DEFAULT_HOSTS),
        help="comma-separated subjectAltNames (IPs and DNS names) of the server and shard certificates",
    )
    p.add_argument("--days", type=int, default=DEFAULT_DAYS, help="validity of every certificate (default 30)")
    p.add_argument("--force", action="store_true", help="make new ones even when usable ones are there")
    args = p.parse_args(argv)
    hosts = [h.strip() for h in args.hosts.split(",") if h.strip()]
    made = ensure(args.out, hosts, args.days, args.force)
    what = "made" if made else "kept (still valid; --force makes new ones)"
    print(f"{what}: {', '.join(f'{n}.pem' for n in PAIRS)} and their keys in {args.out}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
