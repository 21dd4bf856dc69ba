"""core/tls.py's reload decisions and core/devcerts.py, on real certificate files (no sockets)."""

from __future__ import annotations

import logging
import os
from pathlib import Path

import pytest
from cryptography import x509
from vectorsearch_client._channels import channel_credentials

from core import devcerts, tls


@pytest.fixture(scope="module")
def pairs(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """Two CAs' certificates: ``a`` and ``b``."""
    a, b = tmp_path_factory.mktemp("a"), tmp_path_factory.mktemp("b")
    devcerts.ensure(a)
    devcerts.ensure(b)
    return a, b


def live_copy(tmp_path: Path, source: Path, pad: int = 0) -> tuple[Path, Path]:
    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    cert.write_bytes((source / "server.pem").read_bytes() + b"\n" * pad)
    key.write_bytes((source / "server-key.pem").read_bytes())
    return cert, key


def test_unchanged_files_keep_the_configuration(tmp_path: Path, pairs: tuple[Path, Path]) -> None:
    cert, key = live_copy(tmp_path, pairs[0])
    certs = tls.ReloadingCertificates(cert, key)
    assert certs.fetch() is None and certs.fetch() is None
    assert certs.reload() is False  # same content
    assert certs.reloads == 0


def test_new_valid_files_are_handed_to_grpc_once(tmp_path: Path, pairs: tuple[Path, Path]) -> None:
    cert, key = live_copy(tmp_path, pairs[0])
    certs = tls.ReloadingCertificates(cert, key)
    live_copy(tmp_path, pairs[1])
    assert certs.fetch() is not None
    assert certs.fetch() is None
    assert certs.reloads == 1


def test_half_written_or_mismatched_files_keep_the_old_certificate(
    tmp_path: Path, pairs: tuple[Path, Path], caplog: pytest.LogCaptureFixture
) -> None:
    cert, key = live_copy(tmp_path, pairs[0])
    certs = tls.ReloadingCertificates(cert, key)
    new_cert = (pairs[1] / "server.pem").read_bytes()
    with caplog.at_level(logging.WARNING, logger="tls"):
        cert.write_bytes(new_cert[: len(new_cert) // 2])  # half written
        assert certs.fetch() is None
        cert.write_bytes(new_cert)  # the whole certificate, but the old key: they do not match
        assert certs.fetch() is None
        assert certs.fetch() is None  # not re-read until the files change again
    messages = [r.getMessage() for r in caplog.records]
    assert len(messages) == 2 and all("keeping the old certificate" in m for m in messages)
    assert "does not match" in messages[1]
    key.write_bytes((pairs[1] / "server-key.pem").read_bytes())  # the rest of the rotation
    assert certs.fetch() is not None
    assert certs.reloads == 1


def test_reload_rereads_files_whose_stat_did_not_change(tmp_path: Path, pairs: tuple[Path, Path]) -> None:
    """SIGHUP's path: the same size, inode and mtime, other content (padding evens the sizes)."""
    a_len, b_len = (len((p / "server.pem").read_bytes()) for p in pairs)
    cert, key = live_copy(tmp_path, pairs[0], pad=max(0, b_len - a_len))
    certs = tls.ReloadingCertificates(cert, key)
    stats = [os.stat(p) for p in (cert, key)]
    for path, source, st in zip((cert, key), ("server.pem", "server-key.pem"), stats, strict=True):
        data = (pairs[1] / source).read_bytes()
        data += b"\n" * (st.st_size - len(data))
        with open(path, "r+b") as f:  # in place: same inode
            f.write(data)
        os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns))
    assert [(os.stat(p).st_size, os.stat(p).st_mtime_ns) for p in (cert, key)] == [
        (s.st_size, s.st_mtime_ns) for s in stats
    ]
    assert certs.fetch() is None  # the stat says nothing changed
    assert certs.reload() is True
    assert certs.fetch() is not None  # handed over at the next handshake
    assert certs.fetch() is None


def test_fetch_never_raises(tmp_path: Path, pairs: tuple[Path, Path], monkeypatch: pytest.MonkeyPatch) -> None:
    cert, key = live_copy(tmp_path, pairs[0])
    certs = tls.ReloadingCertificates(cert, key)

    def broken(force: bool) -> None:
        raise RuntimeError("boom")

    monkeypatch.setattr(certs, "_check", broken)
    assert certs.fetch() is None


def test_flags_must_come_together(tmp_path: Path, pairs: tuple[Path, Path]) -> None:
    a = pairs[0]
    assert tls.server_certificates("", "", "", what="x", require_ca=False, ca_flag="--ca") is None
    with pytest.raises(tls.TLSConfigError):
        tls.server_certificates(str(a / "server.pem"), "", "", what="x", require_ca=False, ca_flag="--ca")
    with pytest.raises(tls.TLSConfigError, match="--tls-ca"):
        tls.server_certificates(
            str(a / "shard.pem"), str(a / "shard-key.pem"), "", what="shard", require_ca=True, ca_flag="--tls-ca"
        )
    with pytest.raises(tls.TLSConfigError, match="does not match"):
        tls.ReloadingCertificates(a / "server.pem", a / "shard-key.pem")
    with pytest.raises(tls.TLSConfigError, match="go together"):
        tls.ShardClientTLS.from_flags(str(a / "ca.pem"), "", "")
    assert tls.ShardClientTLS.from_flags("", "", "") is None
    assert tls.ShardClientTLS.from_flags(str(a / "ca.pem"), str(a / "client.pem"), str(a / "client-key.pem"))


def test_is_loopback() -> None:
    assert all(tls.is_loopback(h) for h in ("127.0.0.1", "127.0.0.2", "localhost", "[::1]", "::1"))
    assert not any(tls.is_loopback(h) for h in ("0.0.0.0", "[::]", "10.0.0.1", "shard-0.shards", ""))


def test_devcerts_makes_a_chain_with_the_hosts_and_keeps_it(tmp_path: Path) -> None:
    out = tmp_path / "certs"
    assert devcerts.main(["--out", str(out), "--hosts", "127.0.0.1,shard-0.example", "--days", "2"]) == 0
    ca = x509.load_pem_x509_certificate((out / "ca.pem").read_bytes())
    server = x509.load_pem_x509_certificate((out / "server.pem").read_bytes())
    client = x509.load_pem_x509_certificate((out / "client.pem").read_bytes())
    server.verify_directly_issued_by(ca)
    client.verify_directly_issued_by(ca)
    sans = server.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert [str(ip) for ip in sans.get_values_for_type(x509.IPAddress)] == ["127.0.0.1"]
    assert sans.get_values_for_type(x509.DNSName) == ["shard-0.example"]
    assert (server.not_valid_after_utc - server.not_valid_before_utc).days == 2
    assert oct((out / "server-key.pem").stat().st_mode & 0o777) == "0o600"
    before = (out / "ca.pem").read_bytes()
    assert devcerts.ensure(out) is False and (out / "ca.pem").read_bytes() == before  # kept
    (out / "shard-key.pem").unlink()
    assert devcerts.ensure(out) is True and (out / "ca.pem").read_bytes() != before  # made anew


def test_sdk_credentials_options(tmp_path: Path, pairs: tuple[Path, Path]) -> None:
    a = pairs[0]
    assert channel_credentials(None, None, None, None, None) is None
    assert channel_credentials(None, a / "ca.pem", None, None, None) is not None
    assert channel_credentials(None, None, (a / "ca.pem").read_bytes(), a / "client.pem", a / "client-key.pem")
    with pytest.raises(ValueError):
        channel_credentials(None, a / "ca.pem", b"x", None, None)
    with pytest.raises(ValueError):
        channel_credentials(None, a / "ca.pem", None, a / "client.pem", None)
    with pytest.raises(OSError):
        channel_credentials(None, tmp_path / "missing.pem", None, None, None)
