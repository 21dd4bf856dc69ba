"""API keys: their format, the store in the metadata database, and authentication.

A key is ``vs_<id>_<secret>``: ``id`` (12 hex digits) is public (it names the key in listings,
logs and the audit log), ``secret`` 43 URL-safe characters (256 random bits). The database
(``vs_api_keys``, ``core/schema.py``) holds only the SHA-256 of the whole key: a fast hash is
enough for 256-bit random secrets, and the comparison is constant-time (``hmac.compare_digest``).

Modes (docs/api-keys.md): the store is *enforced* once a bootstrap key is configured
(``--admin-key-file`` / ``VS_SERVER_ADMIN_KEY``) or the database holds any key row, revoked ones
included; otherwise the server runs *open* (every call allowed, as before keys existed). So the
first CreateApiKey switches every server sharing the database to enforcing (this one at once,
others within the refresh interval), and revoking every key does not reopen the service: start a
server with a bootstrap key to get back in.

Revocation: every server keeps a snapshot of the table, re-read in the background every
``refresh_s`` (1 s) and on demand when it is older than ``max_age_s`` (2 s) or a presented key id
is not in it (at most every 0.1 s: a key created through another server works at once). A key
revoked through any server stops working on every other one within about ``refresh_s`` plus one
read, and never later than ``max_age_s`` while the database answers; a server that cannot read it
keeps its last snapshot (logged).
"""

from __future__ import annotations

import hashlib
import hmac
import json
import logging
import math
import re
import secrets
import threading
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Engine

from core import schema
from core.errors import InvalidArgument, NotFound, Unauthenticated
from core.principal import OPEN, Principal, Role
from core.spec import validate_name

log = logging.getLogger("server.auth")

KEY_PREFIX = "vs_"
BOOTSTRAP_KEY_ID = "bootstrap"
MIN_BOOTSTRAP_KEY_CHARS = 16
MAX_NAME_BYTES = 128
MAX_KEY_CHARS = 256
_KEY_RE = re.compile(r"^vs_([0-9a-f]{12})_([A-Za-z0-9_-]{16,200})$")
REFRESH_S = 1.0
MAX_AGE_S = 2.0
MIN_RELOAD_INTERVAL_S = 0.1


def digest(key: str) -> str:
    """Hex SHA-256 of a whole key (what the database stores)."""
    return hashlib.sha256(key.encode("utf-8", "surrogatepass")).hexdigest()


def new_key() -> tuple[str, str]:
    """A fresh ``(key_id, key)``."""
    key_id = secrets.token_hex(6)
    return key_id, f"{KEY_PREFIX}{key_id}_{secrets.token_urlsafe(32)}"


def key_id_of(key: str) -> str | None:
    """The id part of a well-formed key, else None (never any of the secret)."""
    match = _KEY_RE.fullmatch(key)
    return match.group(1) if match else None


@dataclass(frozen=True)
class ApiKeyRecord:
    """A row of ``vs_api_keys``."""

    key_id: str
    name: str
    secret_sha256: str = field(repr=False)
    role: Role
    collections: frozenset[str] | None  # None: every collection
    requests_per_s: float | None
    items_per_s: float | None
    created_at: float
    revoked_at: float | None

    @property
    def revoked(self) -> bool:
        return self.revoked_at is not None

    def principal(self) -> Principal:
        return Principal(self.key_id, self.role, self.collections, self.requests_per_s, self.items_per_s)


def _record(row: Any) -> ApiKeyRecord:
    collections = json.loads(row.collections) if row.collections is not None else None
    return ApiKeyRecord(
        key_id=row.id,
        name=row.name,
        secret_sha256=row.secret_sha256,
        role=Role.parse(row.role),
        collections=frozenset(collections) if collections is not None else None,
        requests_per_s=row.requests_per_s,
        items_per_s=row.items_per_s,
        created_at=row.created_at,
        revoked_at=row.revoked_at,
    )


def _rate(value: float | None, what: str) -> float | None:
    if value is None or value == 0:
        return None
    if not math.isfinite(value) or value < 0:
        raise InvalidArgument(f"{what} must be a finite number >= 0 (0: the server's default)")
    return float(value)


@dataclass(frozen=True)
class _Snapshot:
    keys: dict[str, ApiKeyRecord]
    loaded_at: float  # time.monotonic()


class KeyStore:
    """The API keys of one database, as one server sees them (see the module doc). Thread-safe."""

    def __init__(
        self,
        engine: Engine,
        *,
        bootstrap_key: str | None = None,
        refresh_s: float = REFRESH_S,
        max_age_s: float = MAX_AGE_S,
    ) -> None:
        if bootstrap_key is not None and len(bootstrap_key) < MIN_BOOTSTRAP_KEY_CHARS:
            raise ValueError(f"the bootstrap admin key must have at least {MIN_BOOTSTRAP_KEY_CHARS} characters")
        self.engine = engine
        self._bootstrap = digest(bootstrap_key) if bootstrap_key else None
        self.refresh_s = refresh_s
        self.max_age_s = max_age_s
        self._snapshot = _Snapshot({}, -math.inf)
        self._reload_lock = threading.Lock()
        self._last_attempt = -math.inf
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    # ------------------------------------------------------------------ lifecycle
    def start(self) -> None:
        """Reads the keys, logs the mode (a WARNING when open), and starts the refresher."""
        self.refresh()
        if self.enforced:
            count = sum(not k.revoked for k in self._snapshot.keys.values())
            log.info(
                "API keys enforced: %d valid keys in the database, bootstrap admin key %s",
                count,
                "configured" if self._bootstrap else "not configured",
            )
        else:
            log.warning(
                "no API keys are configured: the service is OPEN, every caller may make every call. "
                "Create a key (vsearch admin keys create) or start with --admin-key-file to require keys "
                "(docs/api-keys.md)"
            )
        self._thread = threading.Thread(target=self._refresh_loop, name="api-keys", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(5)

    def _refresh_loop(self) -> None:
        while not self._stop.wait(self.refresh_s):
            self._reload()

    # ------------------------------------------------------------------ reading
    def refresh(self) -> None:
        """Re-reads every key (raises what the database raises)."""
        with self.engine.connect() as conn:
            rows = conn.execute(sa.select(schema.api_keys)).all()
        keys = {row.id: _record(row) for row in rows}
        was_open = self._bootstrap is None and not self._snapshot.keys
        self._snapshot = _Snapshot(keys, time.monotonic())
        if was_open and keys and self._thread is not None:  # not the first read, at start
            log.warning("an API key was created: API keys are enforced from now on (docs/api-keys.md)")

    def _reload(self, wait: bool = False) -> _Snapshot:
        """Re-reads the keys unless that was tried less than 0.1 s ago (``wait``: then waits for
        the end of those 0.1 s and reads); on a database error keeps the last snapshot. Returns
        the current snapshot."""
        with self._reload_lock:
            now = time.monotonic()
            if wait and now - self._last_attempt < MIN_RELOAD_INTERVAL_S:
                time.sleep(MIN_RELOAD_INTERVAL_S - (now - self._last_attempt))
                now = time.monotonic()
            if now - self._last_attempt >= MIN_RELOAD_INTERVAL_S:
                self._last_attempt = now
                try:
                    self.refresh()
                except Exception as exc:
                    log.warning("cannot read the API keys (keeping the last ones read): %s", type(exc).__name__)
            return self._snapshot

    def _fresh(self) -> _Snapshot:
        snapshot = self._snapshot
        if time.monotonic() - snapshot.loaded_at <= self.max_age_s:
            return snapshot
        return self._reload()

    @property
    def enforced(self) -> bool:
        """Whether calls need a key: a bootstrap key, or any key row (revoked ones too)."""
        return self._bootstrap is not None or bool(self._fresh().keys)

    def authenticate(self, key: str | None) -> Principal:
        """The principal of ``key`` (the bearer token, None when the call has none): OPEN while
        the store is not enforced; Unauthenticated for a missing, unknown or revoked key. The
        messages never contain the secret."""
        snapshot = self._fresh()
        if self._bootstrap is None and not snapshot.keys and key:
            snapshot = self._reload()  # a caller with a key: was one created through another server?
        if self._bootstrap is None and not snapshot.keys:
            return OPEN
        if not key:
            raise Unauthenticated(
                "this server requires an API key: send the metadata 'authorization: Bearer <key>' "
                "(vsearch --api-key, Client(api_key=...))"
            )
        presented = digest(key[:MAX_KEY_CHARS])
        if self._bootstrap is not None and hmac.compare_digest(presented, self._bootstrap):
            return Principal(BOOTSTRAP_KEY_ID, Role.ADMIN)
        key_id = key_id_of(key)
        if key_id is None:
            raise Unauthenticated("the API key is malformed (expected vs_<id>_<secret>)")
        record = snapshot.keys.get(key_id)
        if record is None:  # created moments ago through another server?
            record = self._reload(wait=True).keys.get(key_id)
        if record is None or not hmac.compare_digest(presented, record.secret_sha256):
            raise Unauthenticated(f"unknown API key (id {key_id})")
        if record.revoked:
            raise Unauthenticated(f"API key {key_id} was revoked")
        return record.principal()

    # ------------------------------------------------------------------ management
    def create(
        self,
        name: str,
        role: Role,
        collections: Sequence[str] = (),
        requests_per_s: float | None = None,
        items_per_s: float | None = None,
    ) -> tuple[ApiKeyRecord, str]:
        """Stores a new key; returns its record and the whole key (shown once)."""
        name = name.strip()
        if not name or len(name.encode()) > MAX_NAME_BYTES:
            raise InvalidArgument(f"a key's name must have 1..{MAX_NAME_BYTES} bytes")
        names = sorted({validate_name(c) for c in collections})
        key_id, key = new_key()
        record = ApiKeyRecord(
            key_id=key_id,
            name=name,
            secret_sha256=digest(key),
            role=role,
            collections=frozenset(names) if names else None,
            requests_per_s=_rate(requests_per_s, "requests_per_s"),
            items_per_s=_rate(items_per_s, "items_per_s"),
            created_at=time.time(),
            revoked_at=None,
        )
        with self.engine.begin() as conn:
            conn.execute(
                schema.api_keys.insert().values(
                    id=record.key_id,
                    name=record.name,
                    secret_sha256=record.secret_sha256,
                    role=record.role.name.lower(),
                    collections=json.dumps(names) if names else None,
                    requests_per_s=record.requests_per_s,
                    items_per_s=record.items_per_s,
                    created_at=record.created_at,
                    revoked_at=None,
                )
            )
        self._force_reload()
        log.info("API key %s (%s, %s) created", key_id, name, role.name.lower())
        return record, key

    def list(self, include_revoked: bool = False) -> list[ApiKeyRecord]:
        """The keys in the database, by creation time (read now, not from the snapshot)."""
        with self.engine.connect() as conn:
            rows = conn.execute(sa.select(schema.api_keys).order_by(schema.api_keys.c.created_at)).all()
        return [r for r in map(_record, rows) if include_revoked or not r.revoked]

    def revoke(self, key_id: str) -> bool:
        """Revokes a key; False when it already was; NotFound for an unknown id."""
        table = schema.api_keys
        with self.engine.begin() as conn:
            found = conn.execute(sa.select(table.c.revoked_at).where(table.c.id == key_id)).first()
            if found is None:
                raise NotFound(f"no API key with id {key_id[:64]!r}")
            if found.revoked_at is not None:
                return False
            conn.execute(
                table.update().where(table.c.id == key_id, table.c.revoked_at.is_(None)).values(revoked_at=time.time())
            )
        self._force_reload()
        log.info("API key %s revoked", key_id)
        return True

    def _force_reload(self) -> None:
        with self._reload_lock:
            self._last_attempt = time.monotonic()
            self.refresh()


def bearer_token(metadata: Iterable[Any] | None) -> str | None:
    """The key of the call's ``authorization: Bearer <key>`` metadata (None without one);
    Unauthenticated for an authorization entry of another form."""
    for entry in metadata or ():
        key, value = entry[0], entry[1]
        if key != "authorization":
            continue
        if isinstance(value, bytes):
            value = value.decode("utf-8", "replace")
        scheme, _, token = str(value).strip().partition(" ")
        if scheme.lower() != "bearer" or not token.strip():
            raise Unauthenticated("the authorization metadata must be 'Bearer <API key>'")
        return token.strip()
    return None


def load_bootstrap_key(path: str, env_value: str) -> str | None:
    """The bootstrap admin key: the first line of the file at ``path`` when given, else
    ``env_value`` (``VS_SERVER_ADMIN_KEY``), else None. SystemExit when the file cannot be read
    or the key is shorter than 16 characters."""
    if path:
        try:
            lines = Path(path).read_text(encoding="utf-8").strip().splitlines()
        except OSError as exc:
            raise SystemExit(f"cannot read --admin-key-file {path}: {exc.strerror}") from None
        key = lines[0].strip() if lines else ""
    else:
        key = env_value.strip()
    if not key:
        if path:
            raise SystemExit(f"--admin-key-file {path} is empty")
        return None
    if len(key) < MIN_BOOTSTRAP_KEY_CHARS or any(c.isspace() for c in key):
        raise SystemExit(f"the bootstrap admin key must be at least {MIN_BOOTSTRAP_KEY_CHARS} characters, no spaces")
    return key
