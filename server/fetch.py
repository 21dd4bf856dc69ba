"""Reads the bytes behind an ingested item's URI, under the server's policy.

``file://`` URIs are read only below the directories the server was started with
(``--allow-file-root``; none by default), after resolving symlinks and ``..``, so a client
cannot read arbitrary server files. ``http(s)://`` URIs are fetched only with
``--allow-http-fetch`` (off by default: a server that fetches what clients name can be turned
against the network it sits in). Every fetch has a timeout and a size bound.

Errors, one per item: InvalidArgument (a scheme or path the policy refuses, a body over the
bound), NotFound (no such file, HTTP 404), Unavailable (a network failure or timeout, HTTP 5xx).
Thread-safe: holds no state beyond its configuration.
"""

from __future__ import annotations

import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import unquote, urlsplit

from core import limits
from core.errors import DomainError, InvalidArgument, NotFound, Unavailable
from core.text import quote


@dataclass(frozen=True)
class FetchPolicy:
    file_roots: tuple[Path, ...] = ()
    allow_http: bool = False
    max_bytes: int = limits.MAX_IMAGE_BYTES
    timeout_s: float = 10.0


class UriFetcher:
    def __init__(self, policy: FetchPolicy) -> None:
        self.policy = policy
        self._roots = tuple(root.resolve() for root in policy.file_roots)

    def fetch(self, uri: str, timeout: float | None = None) -> bytes:
        """The bytes at ``uri``; raises a DomainError (see the module docstring)."""
        parts = urlsplit(uri)
        if parts.scheme == "file":
            return self._file(parts.netloc, unquote(parts.path), uri)
        if parts.scheme in ("http", "https"):
            return self._http(uri, min(self.policy.timeout_s, timeout) if timeout else self.policy.timeout_s)
        raise InvalidArgument(f"uri {quote(uri)}: only file:// and http(s):// URIs can be fetched")

    def _file(self, host: str, path: str, uri: str) -> bytes:
        if not self._roots:
            raise InvalidArgument(
                f"uri {quote(uri)}: this server reads no file:// URIs (start it with --allow-file-root DIR)"
            )
        if host not in ("", "localhost"):
            raise InvalidArgument(f"uri {quote(uri)}: a file:// URI must name a local path")
        try:
            resolved = Path(path).resolve(strict=True)
        except (OSError, RuntimeError):
            raise NotFound(f"uri {quote(uri)}: no such file") from None
        if not any(resolved.is_relative_to(root) for root in self._roots):
            raise InvalidArgument(f"uri {quote(uri)}: outside the directories this server may read")
        if not resolved.is_file():
            raise InvalidArgument(f"uri {quote(uri)}: not a regular file")
        size = resolved.stat().st_size
        if size > self.policy.max_bytes:
            raise InvalidArgument(f"uri {quote(uri)}: {size} bytes, more than the limit of {self.policy.max_bytes}")
        try:
            return resolved.read_bytes()
        except OSError as exc:
            raise Unavailable(f"uri {quote(uri)}: could not be read ({exc.strerror})") from None

    def _http(self, uri: str, timeout: float) -> bytes:
        if not self.policy.allow_http:
            raise InvalidArgument(f"uri {quote(uri)}: this server fetches no http(s) URIs (--allow-http-fetch)")
        request = urllib.request.Request(uri, headers={"User-Agent": "vectorsearch-ingest"})
        try:
            with urllib.request.urlopen(request, timeout=timeout) as response:  # the scheme is checked above
                body: bytes = response.read(self.policy.max_bytes + 1)
        except urllib.error.HTTPError as exc:
            raise _http_error(uri, exc.code) from None
        except (urllib.error.URLError, TimeoutError, OSError) as exc:
            reason = getattr(exc, "reason", exc)
            raise Unavailable(f"uri {quote(uri)}: could not be fetched ({reason})") from None
        if len(body) > self.policy.max_bytes:
            raise InvalidArgument(f"uri {quote(uri)}: more than the limit of {self.policy.max_bytes} bytes")
        return body


def _http_error(uri: str, code: int) -> DomainError:
    if code == 404:
        return NotFound(f"uri {quote(uri)}: HTTP 404")
    if code >= 500 or code == 429:
        return Unavailable(f"uri {quote(uri)}: HTTP {code}")
    return InvalidArgument(f"uri {quote(uri)}: HTTP {code}")
