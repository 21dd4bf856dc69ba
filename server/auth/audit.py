"""The audit log: one JSON line per admin or destructive call (``--audit-log PATH``, ``-`` for
stdout; off when unset). Which calls: ``audit=True`` in ``server/auth/roles.py`` (collections
created or dropped, Delete, Compact, the topology and rebalancing calls, API key management),
refused ones included.

A line (keys in this order; docs/api-keys.md)::

    {"time": "2025-01-02T03:04:05.678+00:00", "key_id": "3f2a9c0d1b7e", "peer": "ipv4:127.0.0.1:50312",
     "method": "/vectorsearch.v1.SearchService/Delete", "request": {"collection": "docs", "ids": 2},
     "outcome": "OK", "request_id": "...", "duration_ms": 3.1}

``key_id`` is the caller's key id (``bootstrap`` for the bootstrap key, ``open`` while keys are not
enforced, the id a refused key claims, or null without a key); never a secret. ``request`` holds
names and counts, never vectors. ``outcome`` is the call's gRPC status code name. Each line is
written whole and flushed under a lock (thread-safe); the file is opened for appending.
"""

from __future__ import annotations

import json
import logging
import sys
import threading
from datetime import UTC, datetime
from typing import Any, TextIO

log = logging.getLogger("server.audit")


class AuditLog:
    def __init__(self, stream: TextIO, *, owned: bool) -> None:
        self._stream = stream
        self._owned = owned
        self._lock = threading.Lock()

    @classmethod
    def open(cls, target: str) -> AuditLog | None:
        """The audit log of ``--audit-log``: None for "", stdout for "-", else the file (appended)."""
        if not target:
            return None
        if target == "-":
            return cls(sys.stdout, owned=False)
        try:
            return cls(open(target, "a", encoding="utf-8"), owned=True)
        except OSError as exc:
            raise SystemExit(f"cannot open --audit-log {target}: {exc.strerror}") from None

    def write(
        self,
        *,
        key_id: str | None,
        peer: str,
        method: str,
        request: dict[str, Any],
        outcome: str,
        request_id: str | None,
        duration_ms: float,
    ) -> None:
        record = {
            "time": datetime.now(UTC).isoformat(timespec="milliseconds"),
            "key_id": key_id,
            "peer": peer,
            "method": method,
            "request": request,
            "outcome": outcome,
            "request_id": request_id,
            "duration_ms": round(duration_ms, 3),
        }
        line = json.dumps(record, ensure_ascii=False, default=str, separators=(", ", ": ")) + "\n"
        with self._lock:
            try:
                self._stream.write(line)
                self._stream.flush()
            except (OSError, ValueError) as exc:  # full disk, closed stream
                log.error("cannot write the audit log: %s (lost: %s)", exc, line.strip())

    def close(self) -> None:
        with self._lock:
            if self._owned:
                self._stream.close()
