"""Words of the command line as bytes and as text (SPEC §12).

The command line may hold any bytes; Python hands them over as text, with each byte that
is not UTF-8 kept as a lone surrogate (`os.fsdecode`). What unitsync sends the agent, or
uses as text (unit names, dependencies, reasons, a regex, a probe's shell line), must be
UTF-8: `utf8_problem` says which word is not, escaped as it was typed (`'a\\xff'`), and
the command exits 2. `run`'s COMMAND and ARGS are the exception: they go to exec as the
bytes given, and are shown (in `status`, in a reason) as a shell would take them back.
"""

from __future__ import annotations

import shlex
from collections.abc import Iterable, Sequence

from unitsync.wire.bounds import escaped, is_utf8

_SHELL_ESCAPES = {"\\": "\\\\", "'": "\\'", "\n": "\\n", "\t": "\\t", "\r": "\\r"}


def utf8_problem(words: Iterable[tuple[str, str | None]]) -> str | None:
    """The message for the first (what, word) whose word is not UTF-8; None if all are."""
    for what, word in words:
        if word is not None and not is_utf8(word):
            return (
                f"{what} {escaped(word)} is not valid UTF-8 (the bytes shown as \\xNN); "
                "give it in UTF-8"
            )
    return None


def shell_word(word: str) -> str:
    """`word` as a shell takes it back: `shlex.quote`d, or, when it holds bytes that are not
    UTF-8 or characters that do not print, in bash's `$'...'` with those escaped."""
    if is_utf8(word) and word.isprintable():
        return shlex.quote(word)
    out = []
    for char in word:
        code = ord(char)
        if 0xDC80 <= code <= 0xDCFF:  # a byte that was not UTF-8
            out.append(f"\\x{code - 0xDC00:02x}")
        elif char in _SHELL_ESCAPES:
            out.append(_SHELL_ESCAPES[char])
        elif char.isprintable():
            out.append(char)
        elif code < 0x100:
            out.append(f"\\x{code:02x}")
        else:
            out.append(f"\\u{code:04x}" if code <= 0xFFFF else f"\\U{code:08x}")
    return "$'" + "".join(out) + "'"


def shell_line(words: Sequence[str]) -> str:
    """A command as one line a shell takes back (always UTF-8, so the agent can keep it)."""
    return " ".join(shell_word(word) for word in words)
