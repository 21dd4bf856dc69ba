"""What every ``vsearch`` command shares: the server address, the connection, errors and the
state file ``vsearch up`` leaves for the others.

Address: ``--address``, else ``$VSEARCH_ADDRESS``, else ``127.0.0.1:7000`` (where
``python -m server.cluster`` and ``vsearch up`` listen by default). API key: ``--api-key``, else
``$VSEARCH_API_KEY``, else none (docs/api-keys.md). Home: ``$VSEARCH_HOME``,
else ``~/.local/share/vectorsearch`` (``vsearch up`` keeps its data there and writes
``up.json``: the address it serves and the embedding model, so ``vsearch index`` can create a
collection of the model's dimension).

TLS: ``--tls-ca FILE`` (else ``$VSEARCH_TLS_CA``) makes every connection TLS, trusting that PEM
CA (e.g. ``DIR/ca.pem`` of ``vsearch up --tls DIR``); ``--tls-cert``/``--tls-key``
(``$VSEARCH_TLS_CERT``/``$VSEARCH_TLS_KEY``) present a client certificate to a server that
requires one. Without them: plain text.
"""

from __future__ import annotations

import argparse
import json
import os
from dataclasses import asdict, dataclass
from pathlib import Path

from vectorsearch_client import Client, Unavailable, VectorSearchError

DEFAULT_ADDRESS = "127.0.0.1:7000"
DEFAULT_COLLECTION = "images"
CONNECT_TIMEOUT_S = 5.0
RPC_TIMEOUT_S = 60.0  # every call's deadline unless it names its own


class CliError(Exception):
    """A failure to report as one line (``vsearch: <message>``) with exit code 2."""


def default_address() -> str:
    return os.environ.get("VSEARCH_ADDRESS") or DEFAULT_ADDRESS


def add_tls_arguments(parser: argparse.ArgumentParser) -> None:
    env = os.environ.get
    parser.add_argument(
        "--tls-ca",
        default=env("VSEARCH_TLS_CA") or None,
        metavar="FILE",
        help="connect over TLS trusting this PEM CA (env VSEARCH_TLS_CA)",
    )
    parser.add_argument(
        "--tls-cert",
        default=env("VSEARCH_TLS_CERT") or None,
        metavar="FILE",
        help="PEM client certificate, for a server that requires one (env VSEARCH_TLS_CERT)",
    )
    parser.add_argument(
        "--tls-key", default=env("VSEARCH_TLS_KEY") or None, metavar="FILE", help="its key (env VSEARCH_TLS_KEY)"
    )


def default_api_key() -> str | None:
    return os.environ.get("VSEARCH_API_KEY") or None


def home() -> Path:
    """``$VSEARCH_HOME``, else ``~/.local/share/vectorsearch``."""
    if os.environ.get("VSEARCH_HOME"):
        return Path(os.environ["VSEARCH_HOME"])
    base = os.environ.get("XDG_DATA_HOME") or str(Path.home() / ".local" / "share")
    return Path(base) / "vectorsearch"


@dataclass(frozen=True)
class UpState:
    """What a running ``vsearch up`` serves: ``address``, the model id and its dimension."""

    address: str
    embedding_model: str
    dimension: int
    data_dir: str
    pid: int

    @staticmethod
    def path() -> Path:
        return home() / "up.json"

    def write(self) -> None:
        target = self.path()
        target.parent.mkdir(parents=True, exist_ok=True)
        tmp = target.with_suffix(".tmp")
        tmp.write_text(json.dumps(asdict(self), indent=2) + "\n")
        tmp.replace(target)

    @classmethod
    def read(cls) -> UpState | None:
        """The state file's content, or None when there is none or it cannot be read."""
        try:
            data = json.loads(cls.path().read_text())
            return cls(
                str(data["address"]),
                str(data["embedding_model"]),
                int(data["dimension"]),
                str(data["data_dir"]),
                int(data["pid"]),
            )
        except (OSError, ValueError, KeyError, TypeError):
            return None

    def remove(self) -> None:
        """Removes the state file if it is still this process's."""
        current = self.read()
        if current is not None and current.pid == self.pid:
            self.path().unlink(missing_ok=True)


class Connection:
    """The SDK client (``client``) of the server at ``address``, sending ``api_key`` (``--api-key``,
    else ``$VSEARCH_API_KEY``) when given. ``open()`` waits up to
    ``timeout`` for the server to answer and raises CliError (one line naming the address) when
    it does not."""

    def __init__(
        self,
        address: str,
        tls_ca: str | None = None,
        tls_cert: str | None = None,
        tls_key: str | None = None,
        api_key: str | None = None,
    ) -> None:
        self.address = address
        self.tls = bool(tls_ca or tls_cert)
        try:
            self.client = Client(
                address,
                timeout=RPC_TIMEOUT_S,
                api_key=api_key or None,
                tls_ca=tls_ca,
                tls_cert=tls_cert,
                tls_key=tls_key,
            )
        except (OSError, ValueError) as exc:
            raise CliError(f"TLS: {exc}") from None

    @classmethod
    def from_args(cls, args: argparse.Namespace) -> Connection:
        """The connection of the global options ``--address``, ``--tls-*`` and ``--api-key``."""
        return cls(
            args.address,
            getattr(args, "tls_ca", None),
            getattr(args, "tls_cert", None),
            getattr(args, "tls_key", None),
            getattr(args, "api_key", None),
        )

    def open(self, timeout: float = CONNECT_TIMEOUT_S) -> Connection:
        try:
            self.client.wait_ready(timeout)
        except Unavailable:
            self.close()
            raise CliError(
                f"cannot reach a vectorsearch server at {self.address} "
                "(start one with `vsearch up`, or set --address / VSEARCH_ADDRESS"
                + ("; is it TLS with another CA?)" if self.tls else "; if it serves TLS, pass --tls-ca)")
            ) from None
        return self

    def close(self) -> None:
        self.client.close()

    def __enter__(self) -> Connection:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def call_error(exc: VectorSearchError, what: str) -> CliError:
    """A one-line CliError for a failed call: ``<what>: <CODE>: <details>``."""
    return CliError(f"{what}: {exc.code.name}: {exc.message}")
