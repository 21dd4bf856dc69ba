"""API keys without a server: the key store on SQLite (format, hashing, open and enforced modes,
bootstrap key, revocation seen by another store on the same database), the bearer metadata, the
audit log, and the interceptor on fake handlers (principal bound while a response stream's
generator runs, client-stream messages checked one by one, fail closed, audit lines)."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import pytest
import sqlalchemy as sa

from core import migrations, principal, schema
from core.errors import InvalidArgument, NotFound, PermissionDenied, Unauthenticated
from core.principal import OPEN, Principal, Role
from core.status import MalformedRequest
from server.auth.audit import AuditLog
from server.auth.interceptor import AuthInterceptor
from server.auth.keys import KeyStore, bearer_token, digest, key_id_of, load_bootstrap_key
from server.auth.roles import Rule, Scope

BOOT = "bootstrap-key-0123456789"


@pytest.fixture
def engine(tmp_path: Path) -> Iterator[sa.Engine]:
    engine = schema.make_engine(f"sqlite:///{tmp_path / 'meta.db'}")
    migrations.migrate(engine)
    yield engine
    engine.dispose()


def test_keys_are_stored_hashed_and_resolve_to_their_principal(engine: sa.Engine) -> None:
    store = KeyStore(engine)
    assert not store.enforced and store.authenticate(None) is OPEN
    record, key = store.create("ingest", Role.WRITE, ["b", "a"], requests_per_s=5, items_per_s=0)
    assert key.startswith(f"vs_{record.key_id}_") and key_id_of(key) == record.key_id
    with engine.connect() as conn:
        row = conn.execute(sa.select(schema.api_keys)).one()
    assert row.secret_sha256 == digest(key) and key.split("_", 2)[2] not in str(tuple(row))
    assert store.enforced
    who = store.authenticate(key)
    assert who == Principal(record.key_id, Role.WRITE, frozenset({"a", "b"}), 5.0, None)
    for bad in (None, "", key[:-1] + ("A" if key[-1] != "A" else "B"), "vs_000000000000_" + "x" * 43, "nonsense"):
        with pytest.raises(Unauthenticated) as refused:
            store.authenticate(bad)
        assert key.split("_", 2)[2] not in str(refused.value)
    assert [r.key_id for r in store.list()] == [record.key_id]
    assert store.revoke(record.key_id) and not store.revoke(record.key_id)
    with pytest.raises(Unauthenticated, match="revoked"):
        store.authenticate(key)
    assert store.list() == [] and len(store.list(include_revoked=True)) == 1
    assert store.enforced  # revoking every key does not reopen the service
    with pytest.raises(NotFound):
        store.revoke("000000000000")


def test_bad_key_requests_are_invalid(engine: sa.Engine) -> None:
    store = KeyStore(engine)
    for name, collections, rate in (("", [], 0.0), ("x" * 129, [], 0.0), ("n", ["bad name"], 0.0), ("n", [], -1.0)):
        with pytest.raises(InvalidArgument):
            store.create(name, Role.READ, collections, requests_per_s=rate)
    assert store.list(include_revoked=True) == []


def test_bootstrap_key_enforces_from_the_start(engine: sa.Engine, tmp_path: Path) -> None:
    store = KeyStore(engine, bootstrap_key=BOOT)
    assert store.enforced
    assert store.authenticate(BOOT) == Principal("bootstrap", Role.ADMIN)
    with pytest.raises(Unauthenticated):
        store.authenticate(None)
    key_file = tmp_path / "admin.key"
    key_file.write_text(BOOT + "\n")
    assert load_bootstrap_key(str(key_file), "") == BOOT
    assert load_bootstrap_key("", "  env-key-0123456789abc ") == "env-key-0123456789abc"
    assert load_bootstrap_key("", "") is None
    with pytest.raises(SystemExit):
        load_bootstrap_key("", "short")
    with pytest.raises(SystemExit):
        load_bootstrap_key(str(tmp_path / "missing"), "")


def test_a_key_revoked_through_one_store_stops_on_another_within_two_seconds(engine: sa.Engine) -> None:
    a, b = KeyStore(engine, refresh_s=0.2), KeyStore(engine, refresh_s=0.2)
    a.start()
    b.start()
    try:
        record, key = a.create("k", Role.READ)
        assert b.authenticate(key).key_id == record.key_id  # unknown id: b re-reads at once
        a.revoke(record.key_id)
        started = time.monotonic()
        while True:
            try:
                b.authenticate(key)
            except Unauthenticated:
                break
            assert time.monotonic() - started < 2.0
            time.sleep(0.02)
    finally:
        a.stop()
        b.stop()


def test_bearer_metadata() -> None:
    assert bearer_token([("x-request-id", "1")]) is None
    assert bearer_token([("authorization", "Bearer abc")]) == "abc"
    assert bearer_token([("authorization", "bearer  abc ")]) == "abc"
    for bad in ("Basic abc", "Bearer", "abc"):
        with pytest.raises(Unauthenticated):
            bearer_token([("authorization", bad)])


# ------------------------------------------------------------------------------ the interceptor
class Aborted(Exception):
    pass


class FakeContext:
    def __init__(self, key: str | None = None) -> None:
        self.metadata = [("authorization", f"Bearer {key}")] if key else []
        self._code: grpc.StatusCode | None = None
        self.details = ""

    def invocation_metadata(self) -> Any:
        return self.metadata

    def abort(self, code: grpc.StatusCode, details: str) -> None:
        self._code, self.details = code, details
        raise Aborted(details)

    def code(self) -> grpc.StatusCode | None:
        return self._code

    def peer(self) -> str:
        return "ipv4:127.0.0.1:1"


class Keys:
    """Two keys: "admin" (unrestricted) and "mine" (write, collection "mine" only)."""

    def authenticate(self, key: str | None) -> Principal:
        if key == "admin":
            return Principal("admin-id", Role.ADMIN)
        if key == "mine":
            return Principal("mine-id", Role.WRITE, frozenset({"mine"}))
        raise Unauthenticated("unknown API key")


class Request:
    def __init__(self, collection: str) -> None:
        self.collection = collection


RULES = {
    "/t.S/Stream": Rule(Role.READ, Scope.GLOBAL),
    "/t.S/Ingest": Rule(Role.WRITE, Scope.COLLECTION),
    "/t.S/Drop": Rule(Role.WRITE, Scope.COLLECTION, audit=True, summary=lambda r: {"collection": r.collection}),
    "/t.S/Open": Rule(None, Scope.OPEN),
}


class Details:
    def __init__(self, method: str) -> None:
        self.method = method
        self.invocation_metadata = ()


def handler(method: str, behavior: Any, kind: str, audit: AuditLog | None = None) -> Any:
    make = {
        "unary_unary": grpc.unary_unary_rpc_method_handler,
        "stream_unary": grpc.stream_unary_rpc_method_handler,
        "unary_stream": grpc.unary_stream_rpc_method_handler,
    }[kind]
    details: Any = Details(method)
    wrapped = AuthInterceptor(Keys(), audit, RULES).intercept_service(lambda d: make(behavior), details)
    assert wrapped is not None
    return getattr(wrapped, kind)


def test_the_principal_is_bound_while_a_response_stream_runs() -> None:
    seen: list[str] = []

    def stream(request: Any, context: Any) -> Iterator[int]:
        for i in range(3):
            seen.append(principal.current().key_id)
            yield i

    responses = handler("/t.S/Stream", stream, "unary_stream")(Request(""), FakeContext("admin"))
    assert principal.current() is OPEN  # nothing runs before iteration
    for _ in responses:
        assert principal.current() is OPEN or principal.current().key_id == "admin-id"
    assert seen == ["admin-id"] * 3
    assert principal.current() is OPEN


def test_client_stream_messages_are_checked_one_by_one() -> None:
    read: list[str] = []

    def ingest(requests: Iterator[Any], context: Any) -> str:
        for r in requests:
            read.append(getattr(r, "collection", "?"))
            assert principal.current().key_id == "mine-id"
        return "done"

    call = handler("/t.S/Ingest", ingest, "stream_unary")
    assert call(iter([Request("mine"), Request(""), Request("mine")]), FakeContext("mine")) == "done"
    context = FakeContext("mine")
    with pytest.raises(Aborted):
        call(iter([Request("mine"), Request(""), Request("other"), Request("mine")]), context)
    assert context.code() == grpc.StatusCode.PERMISSION_DENIED and read[-2:] == ["mine", ""]
    malformed = MalformedRequest("t.Req", "DecodeError")  # passed on: the servicer answers INVALID_ARGUMENT
    assert call(iter([Request("mine"), malformed]), FakeContext("mine")) == "done"


def test_refusals_and_fail_closed(tmp_path: Path) -> None:
    audit_path = tmp_path / "audit.jsonl"
    audit = AuditLog.open(str(audit_path))
    assert audit is not None

    def drop(request: Any, context: Any) -> str:
        return "dropped"

    call = handler("/t.S/Drop", drop, "unary_unary", audit)
    assert call(Request("mine"), FakeContext("mine")) == "dropped"
    for key, code in ((None, "UNAUTHENTICATED"), ("bad", "UNAUTHENTICATED"), ("mine", "PERMISSION_DENIED")):
        context = FakeContext(key)
        with pytest.raises(Aborted):
            call(Request("other"), context)
        assert context.code() == getattr(grpc.StatusCode, code)
    unknown = handler("/t.S/NotInTheTable", drop, "unary_unary")
    with pytest.raises(Aborted):
        unknown(Request(""), FakeContext("admin"))
    assert handler("/t.S/Open", drop, "unary_unary")(Request(""), FakeContext(None)) == "dropped"
    lines = [json.loads(line) for line in audit_path.read_text().splitlines()]
    assert [(x["key_id"], x["outcome"], x["request"]) for x in lines] == [
        ("mine-id", "OK", {"collection": "mine"}),
        (None, "UNAUTHENTICATED", {"collection": "other"}),
        (None, "UNAUTHENTICATED", {"collection": "other"}),
        ("mine-id", "PERMISSION_DENIED", {"collection": "other"}),
    ]


def test_the_audit_log_writes_whole_lines_from_many_threads(tmp_path: Path) -> None:
    audit = AuditLog.open(str(tmp_path / "a.jsonl"))
    assert audit is not None and AuditLog.open("") is None

    def write(n: int) -> None:
        for i in range(200):
            audit.write(
                key_id=f"k{n}", peer="p", method="m", request={"i": i}, outcome="OK", request_id=None, duration_ms=1
            )

    threads = [threading.Thread(target=write, args=(n,)) for n in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    audit.close()
    lines = (tmp_path / "a.jsonl").read_text().splitlines()
    assert len(lines) == 800 and all(json.loads(line)["method"] == "m" for line in lines)


def test_permission_denied_is_a_domain_error_with_its_code() -> None:
    from core import status

    assert status.to_code(PermissionDenied("x")) == grpc.StatusCode.PERMISSION_DENIED
    assert status.to_code(Unauthenticated("x")) == grpc.StatusCode.UNAUTHENTICATED


def test_open_mode_installs_no_wrapper_except_for_audited_calls(tmp_path: Path) -> None:
    """Without keys every caller is OPEN (the context variable's default): unaudited calls run
    unwrapped; an audited one is still wrapped (its line is written); with keys, all are."""

    class OpenKeys(Keys):
        enforced = False

    plain = grpc.unary_unary_rpc_method_handler(lambda request, context: request)
    audit = AuditLog.open(str(tmp_path / "audit.log"))

    def intercepted(keys: Keys, method: str) -> Any:
        return AuthInterceptor(keys, audit, RULES).intercept_service(lambda _d: plain, Details(method))  # type: ignore[arg-type]

    assert intercepted(OpenKeys(), "/t.S/Ingest") is plain
    assert intercepted(OpenKeys(), "/t.S/Drop") is not plain
    assert intercepted(Keys(), "/t.S/Ingest") is not plain
