"""Status codes of the public API: the shared two-way map of ``core/status.py``."""

from __future__ import annotations

from core.status import to_code as status_for

__all__ = ["status_for"]
