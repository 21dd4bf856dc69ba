"""Plain-text tables for the terminal: left-aligned text, right-aligned numbers."""

from __future__ import annotations

from collections.abc import Sequence


def render(headers: Sequence[str], rows: Sequence[Sequence[object]], right: Sequence[bool] | None = None) -> str:
    """``headers`` and ``rows`` as aligned columns separated by two spaces, a rule under the
    header; column ``i`` is right-aligned when ``right[i]`` (default: numbers)."""
    cells = [[str(c) for c in row] for row in rows]
    if right is None:
        right = [bool(rows) and all(isinstance(row[i], int | float) for row in rows) for i in range(len(headers))]
    widths = [max([len(h), *(len(row[i]) for row in cells)]) for i, h in enumerate(headers)]

    def line(values: Sequence[str]) -> str:
        parts = [v.rjust(w) if r else v.ljust(w) for v, w, r in zip(values, widths, right, strict=True)]
        return "  ".join(parts).rstrip()

    return "\n".join([line(list(headers)), line(["-" * w for w in widths]), *(line(row) for row in cells)])
