"""`--help` as a man page reads: plain text, words wrapped at word boundaries to the width,
no Python values (issue 23, 7). Loaded only when help is printed.

cyclopts builds the panels (usage, description, arguments, options, commands); this
formats them. Each paragraph of a command's description is reflowed as one (a docstring's
line breaks are the source's, not the reader's); an entry is `NAME: what it does`, its
continuation lines indented under it; a `[default: ...]` is kept whole on one line, and
shown only when it informs: never for a flag that is off (`False`), an empty repeatable
option (`()`), or an option with no value (`None`), which are what leaving it out means.
The width is the console's: the terminal's, else $COLUMNS, else 80 (rich's rules).
"""

from __future__ import annotations

import re
import textwrap
from typing import TYPE_CHECKING, Any

from cyclopts.help.formatters.plain import PlainFormatter, _to_plain_text

if TYPE_CHECKING:
    from cyclopts.help import HelpEntry
    from rich.console import Console, ConsoleOptions

INDENT = "  "
HANGING = "      "
"""Where an entry's continuation lines begin: under its words, not under its name."""
UNINFORMATIVE_DEFAULTS = frozenset({"False", "True", "()", "[]", "None", '""'})
"""Python values cyclopts would print as defaults: the option's absence says as much."""
GLUE = "\x00"
"""Stands for a space that must not break a line (inside `[default: 5m]`) while wrapping."""
BRACKETED = re.compile(r"\[(?:default|env var|choices): [^\]]*\]")
OPTION_AND_VALUE = re.compile(r"(-[\w-]+) (?=[^\s\[|-])")
"""In a usage line, an option and its value (`--log-level L`): never split between lines."""
UNBOUNDED = 10_000
"""A width at which rich wraps nothing: the text is reflowed here instead."""


class ManPageFormatter(PlainFormatter):
    def render_usage(self, console: Console, options: ConsoleOptions, usage: Any) -> None:
        text = _to_plain_text(usage, _wide(console)) if usage else ""
        if not text:
            return
        if not text.startswith("Usage:"):
            text = f"Usage: {text}"
        glued = OPTION_AND_VALUE.sub(lambda m: m.group(1) + GLUE, " ".join(text.split()))
        self._print_plain(console, _wrap(glued, console.width, "", HANGING))
        console.print()

    def render_description(
        self, console: Console, options: ConsoleOptions, description: Any
    ) -> None:
        text = _to_plain_text(description, _wide(console)) if description else ""
        paragraphs = [" ".join(p.split()) for p in re.split(r"\n\s*\n", text) if p.strip()]
        if not paragraphs:
            return
        wrapped = (_wrap(p, console.width, "", "") for p in paragraphs)
        self._print_plain(console, "\n\n".join(wrapped))
        console.print()

    def _format_parameter_entry(
        self, options: tuple[str, ...], desc: str, console: Console, entry: HelpEntry
    ) -> None:
        if not options:
            return
        parts = [" ".join(desc.split())] if desc else []
        if entry.choices:
            parts.append(f"[choices: {', '.join(entry.choices)}]")
        if entry.env_var:
            parts.append(f"[env var: {', '.join(entry.env_var)}]")
        if entry.default is not None and entry.default not in UNINFORMATIVE_DEFAULTS:
            parts.append(f"[default: {entry.default}]")
        if entry.required:
            parts.append("[required]")
        text = ", ".join(options) + (f": {' '.join(parts)}" if parts else "")
        self._print_plain(console, _wrap(text, console.width, INDENT, HANGING))

    def _format_command_entry(
        self, names: tuple[str, ...], shorts: tuple[str, ...], desc: str, console: Console
    ) -> None:
        for i, name in enumerate(names):
            label = name + (", " + " ".join(shorts) if shorts and i == 0 else "")
            words = " ".join(desc.split()) if i == 0 else ""
            text = f"{label}: {words}" if words else label
            self._print_plain(console, _wrap(text, console.width, INDENT, HANGING))


def _wrap(text: str, width: int, first: str, rest: str) -> str:
    """`text` wrapped at spaces to `width`; a bracketed note is never split."""
    glued = BRACKETED.sub(lambda m: m.group(0).replace(" ", GLUE), text)
    lines = textwrap.wrap(
        glued,
        width=max(width, 40),
        initial_indent=first,
        subsequent_indent=rest,
        break_long_words=False,
        break_on_hyphens=False,
    )
    return "\n".join(lines).replace(GLUE, " ")


def _wide(console: Console) -> Console:
    """A console like `console` that wraps nothing, to read a renderable's words from."""
    import io

    from rich.console import Console as RichConsole

    return RichConsole(file=io.StringIO(), width=UNBOUNDED, no_color=True, highlight=False)
