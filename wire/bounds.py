"""What a unit may hold: the bound of everything the agent stores, and the checks (SPEC §12).

Each bound is checked where a value enters: by the agent on every request (`check_request`
in the connection, the graph for what needs the graph: names new to it, dependencies per
unit), and by every client before it sends (`client.session`), so the command line says the
same thing early, before a request too big for a frame is even built. A request past a bound
is refused in one line naming the bound and what to do (exit 1), and nothing is stored.

The bounds are chosen together: the biggest unit view they allow, with every list full and
every string as long as it may be, encodes to well under one frame (`wire.framing.MAX_FRAME`;
`tests/test_bounds.py` builds it from these numbers and fails if a bound is raised past it).
So `status`, a watch and every reply work for every graph. What a view would list beyond
them is cut in the view, which says so in its `cut` field: the units that want a unit (any
number may: wanting a unit never fails because others want it too), and anything a journal
written before the bounds holds past them.

A string that is not UTF-8 (the command line's undecodable bytes, which Python keeps as lone
surrogates) is a usage error (exit 2) naming the value, shown with its bytes escaped.

No trio, no msgspec here beyond the frame types: the command line imports it.
"""

from __future__ import annotations

from .errors import Refused, UsageError
from .protocol import (
    CONDITIONS,
    Complete,
    Fail,
    Request,
    Restarting,
    SetReason,
    Start,
    Stopped,
    Want,
)

MAX_NAME_BYTES = 255
"""A unit name (SPEC §1): room for any sensible name, and a view lists hundreds of them."""
MAX_DEPS = 500
"""Units one unit may want: far more than any script waits for (a workspace has tens), and
500 dependencies, each listed twice in a view (`dependencies`, `waiting_on`), are 0.3 MB."""
MAX_REASON_BYTES = 4096
"""A reason (`fail --reason`, a service's status): a sentence, or a few lines of a log; a view
holds it 101 times (the unit's and each transition's), 0.4 MB."""
MAX_COMMAND_BYTES = 1024
"""An owner's command line as the agent keeps it; clients cut theirs to 200 characters
(`processes.COMMAND_LIMIT`), which never exceeds it."""
MAX_TOKEN_BYTES = 64
"""A run's token (clients make 16 hex digits): kept with the unit by a `start`, named by the
reports of its run; never shown."""
MAX_PIDNS_BYTES = 64
"""An owner's PID namespace as /proc names it (`pid:[4026531836]`): kept, never shown."""
HISTORY_LIMIT = 100
"""Transitions kept per unit: an agent that runs for months does not grow without bound."""
DEPENDENTS_SHOWN = 500
"""Units a view lists as wanting it, first by name; the rest are counted in its `cut`."""
NAMES_IN_A_MESSAGE = 20
"""Names a message lists (a cycle's path, the units that still want one) before it says how
many more there are: a refusal is read by a person, and must fit in a frame too."""
REFUSED_CATEGORIES = {
    "Cc": "a control character",
    "Cf": "a format character (invisible: zero-width, bidi override...)",
    "Zl": "a line separator",
    "Zp": "a paragraph separator",
}
"""Unicode categories a new unit name may not hold: characters that are invisible, or that
break or reorder the line a name is shown on."""
NAME_RULE = (
    f"a unit name is UTF-8 text of 1 to {MAX_NAME_BYTES} bytes, not only whitespace, without "
    "control, format or line/paragraph separator characters (Unicode categories Cc, Cf, Zl, Zp)"
)


def check_name(name: str) -> None:
    """Refuse a name a new unit may not have (SPEC §1, §12).

    The graph checks only names new to it: a unit named before these rules (a journal of an
    older release) can still be shown, completed and forgotten.
    """
    if not name:
        raise Refused(f"a unit name must not be empty; {NAME_RULE}")
    try:
        size = len(name.encode("utf-8"))
    except UnicodeEncodeError:
        raise Refused(f"unit name {escaped(name)} is not valid UTF-8; {NAME_RULE}") from None
    if size > MAX_NAME_BYTES:
        raise Refused(
            f"unit name {escaped(name[:40])}... is {size} bytes long; the limit is "
            f"{MAX_NAME_BYTES} bytes: use a shorter name"
        )
    if name.isspace():
        raise Refused(f"unit name {escaped(name)} is only whitespace; {NAME_RULE}")
    if name.isascii():  # the common case: only C0 controls and DEL to look for
        bad = next((char for char in name if char < " " or char == "\x7f"), None)
    else:
        bad = next((char for char in name if _category(char) in REFUSED_CATEGORIES), None)
    if bad is not None:
        raise Refused(
            f"unit name {escaped(name)} contains U+{ord(bad):04X} ({_char_name(bad)}), "
            f"{REFUSED_CATEGORIES[_category(bad)]}; {NAME_RULE}"
        )


def check_request(request: Request) -> None:
    """Refuse a request whose strings are not UTF-8 (exit 2) or past a bound (exit 1).

    What needs the graph (a name new to it, dependencies counted with those the unit
    has) is the graph's to check.
    """
    unit = getattr(request, "unit", None)
    if unit is not None:
        _utf8("unit name", unit)
    if isinstance(request, Want):
        if request.on is not None and request.on not in CONDITIONS:
            raise UsageError(
                f"unknown condition {request.on!r}: an edge is on one of "
                f"{', '.join(CONDITIONS)} (the default: completed)",
                unit=request.unit,
            )
        for dep in request.deps:
            _utf8("dependency", dep)
        count = len(set(request.deps))
        if count > MAX_DEPS:
            raise Refused(too_many_deps(request.unit, count), unit=request.unit)
    if isinstance(request, Fail | SetReason | Restarting | Stopped):
        _utf8("reason", request.reason)
        check_reason(request.reason, request.unit)
    if isinstance(request, Start | Complete | Fail | SetReason):
        _utf8("token", request.token)
        _at_most("a run's token", request.token, MAX_TOKEN_BYTES, "make a shorter one")
    if isinstance(request, Start) and request.owner is not None:
        _utf8("owner command", request.owner.command)
        _at_most(
            "an owner's command line",
            request.owner.command,
            MAX_COMMAND_BYTES,
            "cut it (clients send its first 200 characters)",
        )
        _utf8("owner PID namespace", request.owner.pidns)
        _at_most(
            "an owner's PID namespace",
            request.owner.pidns,
            MAX_PIDNS_BYTES,
            "give it as /proc/PID/ns/pid names it (pid:[4026531836])",
        )


def check_reason(reason: str, unit: str | None = None) -> None:
    size = len(reason.encode("utf-8", "surrogatepass"))
    if size > MAX_REASON_BYTES:
        raise Refused(
            f"the reason is longer than {MAX_REASON_BYTES} bytes (it is {size}), the limit: "
            "shorten it (put long logs in a file and name the file)",
            unit=unit,
        )


def too_many_deps(unit: str, count: int) -> str:
    return (
        f"unit {escaped(unit)} would want {count} units; a unit may want at most {MAX_DEPS}: "
        f"group them (`want {unit} group-a group-b`, then `want group-a DEP...` and `complete "
        "group-a` once they are done)"
    )


def escaped(text: str) -> str:
    """`text` quoted as Python writes a string, but with each byte that is not UTF-8 (a lone
    surrogate from the command line) as \\xNN: the bytes the user typed, `'a\\xff'`."""
    out = []
    for char in text:
        code = ord(char)
        if 0xDC80 <= code <= 0xDCFF:
            out.append(f"\\x{code - 0xDC00:02x}")
        elif char == "'":
            out.append("\\'")
        else:
            out.append(repr(char)[1:-1])
    return "'" + "".join(out) + "'"


def is_utf8(text: str) -> bool:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def listed(names: list[str], limit: int = NAMES_IN_A_MESSAGE) -> str:
    """Names for a message, comma-separated: the first `limit`, then how many more."""
    if len(names) <= limit:
        return ", ".join(names)
    return f"{', '.join(names[:limit])} and {len(names) - limit:,} more"


def cut_utf8(text: str, limit: int) -> str:
    """`text` cut to at most `limit` bytes of UTF-8, on a character boundary."""
    data = text.encode("utf-8", "surrogatepass")
    if len(data) <= limit:
        return text
    return data[:limit].decode("utf-8", "ignore")


def _utf8(what: str, value: str) -> None:
    if not is_utf8(value):
        raise UsageError(
            f"the {what} {escaped(value)} is not valid UTF-8 (the bytes shown as \\xNN): "
            "unit names, dependencies and reasons are text; give it in UTF-8"
        )


def _at_most(what: str, value: str, limit: int, fix: str) -> None:
    size = len(value.encode("utf-8"))
    if size > limit:
        raise Refused(f"{what} is {size} bytes long; the limit is {limit} bytes: {fix}")


def _category(char: str) -> str:
    import unicodedata  # only for names that are not ASCII: the CLI does not pay for it

    return unicodedata.category(char)


def _char_name(char: str) -> str:
    import unicodedata

    return unicodedata.name(char, "unnamed")
