"""Which columns the live table (`status --watch`) shows, and how wide, so it fits the terminal.

Pure: the cells of the rows on screen and the terminal's width in, a width per column out.
Every width is measured from the rows shown (an owner reads `pid 4194304 gone`, a run
lasts `12h05m`), so no cell pushes the table past its budget. The table is never wider
than the terminal; when everything does not fit, what gives way, in this order:

1. UNIT, WAITING ON and REASON are cut with `…` (down to `NARROWEST` each);
2. then whole columns go, in `DROP_ORDER`: SINCE first (FOR says how long ago), then
   TIMELINE, READY, OWNER, WAITING ON, FOR and REASON. UNIT and STATUS always stay.

TIMELINE is only offered from `TIMELINE_FROM_CELLS` columns up, where it always fits.
"""

from __future__ import annotations

from .cells import NAME_CELLS, width
from .render import TABLE_COLUMNS

BAR_CELLS = 30
"""The widest a unit's timeline bar gets (the whole boot, rescaled as it grows)."""
MIN_BAR_CELLS = 10
"""Narrower than this a bar says nothing."""
TIMELINE_FROM_CELLS = 100
"""From this terminal width up the table has a TIMELINE column, and always room for it
(SINCE gives way first). Below it, the table's own columns take the width: at 80 columns
a bar would be squeezed to nothing. One threshold, so the README can say when bars show."""
COLUMNS = (*TABLE_COLUMNS, "TIMELINE")
"""Every column the live table may show, in the order it shows them."""
STEADY_CELLS = {"STATUS": len("completed"), "READY": len("READY"), "SINCE": 8, "FOR": 6}
"""Columns that keep at least this width whatever the rows say, so the table does not
jitter as units change status."""
NARROWEST = {"UNIT": 10, "WAITING ON": 7, "REASON": 6}
"""How far a column with free text is cut before a whole column goes (never wider than
its widest cell): a unit name cut shorter than this is hard to tell from its neighbours."""
DROP_ORDER = ("SINCE", "TIMELINE", "READY", "OWNER", "WAITING ON", "FOR", "REASON")
"""Whole columns that go, first to last, when even the cut columns do not fit. OWNER
outlasts READY: a started unit whose owner is gone is what a look at the table is for."""
GROWTH = (
    ("UNIT", 24),
    ("WAITING ON", 16),
    ("REASON", 24),
    ("TIMELINE", BAR_CELLS),
    ("UNIT", NAME_CELLS),
    ("WAITING ON", NAME_CELLS),
    ("REASON", None),
)
"""How room left over is handed out: (column, up to this width, None: its widest cell).
Readable names and reasons first (`clone refused` says more than a longer bar), then the
bar, then whole names and reasons."""
CELL_OVERHEAD = 3
"""A border and two cells of padding per column."""
EDGE = 1
"""The table's right border."""


def layout(rows: list[list[str]], cells: int) -> dict[str, int]:
    """The columns to show (in `COLUMNS` order) and their widths, for a terminal `cells`
    wide; `rows` are the cells of `TABLE_COLUMNS` of the rows on screen."""
    widest = {
        name: max([width(row[i]) for row in rows] + [width(name), STEADY_CELLS.get(name, 0)])
        for i, name in enumerate(TABLE_COLUMNS)
    }
    widest["UNIT"] = min(widest["UNIT"], NAME_CELLS)
    widest["WAITING ON"] = min(widest["WAITING ON"], NAME_CELLS)
    widest["TIMELINE"] = BAR_CELLS
    narrowest = {name: min(widest[name], NARROWEST.get(name, widest[name])) for name in widest}
    narrowest["TIMELINE"] = MIN_BAR_CELLS
    shown = [name for name in COLUMNS if name != "TIMELINE" or cells >= TIMELINE_FROM_CELLS]
    for name in DROP_ORDER:
        if table_cells({n: narrowest[n] for n in shown}) <= cells:
            break
        if name in shown:
            shown.remove(name)
    widths = {name: narrowest[name] for name in shown}
    spare = cells - table_cells(widths)
    for name, cap in GROWTH:
        if name in widths and spare > 0:
            target = widest[name] if cap is None else min(widest[name], cap)
            grown = min(spare, max(0, target - widths[name]))
            widths[name] += grown
            spare -= grown
    return widths


def table_cells(widths: dict[str, int]) -> int:
    """How wide a table with columns of these widths is, borders and padding included."""
    return sum(widths.values()) + CELL_OVERHEAD * len(widths) + EDGE
