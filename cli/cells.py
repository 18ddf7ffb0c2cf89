"""How many terminal columns text takes, and text cut to a number of columns.

Unit names may be any UTF-8 (SPEC §1): CJK characters take two columns, combining marks
none, so `len` misaligns columns. Only the standard library's `unicodedata` (rich's
width table costs ~10 ms to import, paid by every command that loads it).
"""

from __future__ import annotations

import unicodedata

ELLIPSIS = "…"
NAME_CELLS = 40
"""Widest a unit name is shown in text (tables, the chart, blame, critical-chain) and in
the SVG's name column: room for any sensible name. Longer ones keep their head and end
in an ellipsis there; JSON and the SVG's tooltips have them whole."""


def char_width(char: str) -> int:
    if unicodedata.combining(char) or unicodedata.category(char) in ("Mn", "Me", "Cf"):
        return 0
    return 2 if unicodedata.east_asian_width(char) in ("W", "F") else 1


def width(text: str) -> int:
    if text.isascii():
        return len(text)
    return sum(char_width(char) for char in text)


def fit(text: str, cells: int, ellipsis: str = ELLIPSIS) -> str:
    """`text` in exactly `cells` columns: padded with spaces, or cut with `ellipsis` (one
    column wide)."""
    text = shorten(text, cells, ellipsis)
    return text + " " * (cells - width(text))


def shorten(text: str, cells: int, ellipsis: str = ELLIPSIS) -> str:
    """`text` if it fits in `cells` columns, else cut to fit with `ellipsis` at the end."""
    if width(text) <= cells:
        return text
    if cells <= 0:
        return ""
    kept, used = [], 0
    for char in text:
        size = char_width(char)
        if used + size > cells - 1:
            break
        kept.append(char)
        used += size
    return "".join(kept) + ellipsis


def short_name(name: str, ellipsis: str = ELLIPSIS) -> str:
    """A unit name as every text view shows it: whole, or cut to NAME_CELLS columns."""
    return shorten(name, NAME_CELLS, ellipsis)


def columns(rows: list[list[str]]) -> str:
    """Left-aligned columns two spaces apart; every column but the last at most NAME_CELLS
    wide (a long unit name is shortened with an ellipsis rather than widen every row)."""
    rows = [[shorten(cell, NAME_CELLS) for cell in row[:-1]] + row[-1:] for row in rows]
    widths = [max(width(row[i]) for row in rows) for i in range(len(rows[0]))]
    return "\n".join(
        "  ".join(fit(cell, size) for cell, size in zip(row, widths, strict=True)).rstrip()
        for row in rows
    )
