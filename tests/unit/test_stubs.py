"""The generated stubs match proto/, and a stale or missing build fails with a hint."""

from __future__ import annotations

from pathlib import Path

import pytest

from vsproto import freshness


def test_current_stubs_are_fresh() -> None:
    freshness.ensure_fresh()
    assert freshness.STAMP.read_text().strip() == freshness.fingerprint()


def test_stale_stamp_gives_a_hint(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    stamp = tmp_path / "STAMP"
    stamp.write_text("0" * 64)
    monkeypatch.setattr(freshness, "STAMP", stamp)
    with pytest.raises(freshness.StaleStubsError, match=r"stale.*python -m vsproto.build"):
        freshness.ensure_fresh()


def test_missing_stubs_give_a_hint(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(freshness, "STAMP", tmp_path / "nothing-here")
    with pytest.raises(freshness.StaleStubsError, match=r"missing.*python -m vsproto.build"):
        freshness.ensure_fresh()


def test_fingerprint_changes_with_any_proto_edit(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    root = tmp_path / "proto"
    (root / "pkg").mkdir(parents=True)
    (root / "pkg" / "a.proto").write_text('syntax = "proto3";\n')
    monkeypatch.setattr(freshness, "PROTO_ROOT", root)
    before = freshness.fingerprint()
    (root / "pkg" / "a.proto").write_text('syntax = "proto3";\n// changed\n')
    assert freshness.fingerprint() != before
