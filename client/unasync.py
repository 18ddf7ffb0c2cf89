"""Generate the blocking client from the trio one, by token substitution (as httpcore does).

    python -m unitsync.client.unasync          rewrite `_sync/` from `_async/`
    python -m unitsync.client.unasync --check  exit 1 if `_sync/` is not what `_async/` makes

The trio client (`_async/*.py`) is the one hand-written source; each module there becomes
the module of the same name in `_sync/`, every line rewritten by SUBSTITUTIONS (`async def`
becomes `def`, `await ` goes, trio's backend becomes the blocking one), under a header
saying it is generated and from what. `_sync/__init__.py` is written by hand.

Error rules: `--check` names the first line that differs (or the file missing, or a
generated file whose source is gone) and exits 1; so does a substitution that no line uses,
since a rule that matches nothing is a rule someone thinks is applied. It only reads and
compares, so CI (`.ci/run`) and a test (`tests/test_clients.py`) run it.
"""

from __future__ import annotations

import re
import sys
from dataclasses import dataclass, field
from pathlib import Path

HERE = Path(__file__).resolve().parent
"""The `client` package: `_async/` and `_sync/` are inside it."""

SUBSTITUTIONS: list[tuple[str, str]] = [
    (r"\basync def\b", "def"),
    (r"\basync with\b", "with"),
    (r"\basync for\b", "for"),
    (r"\bawait ", ""),
    (r"\b__aenter__\b", "__enter__"),
    (r"\b__aexit__\b", "__exit__"),
    (r"\basynccontextmanager\b", "contextmanager"),
    (r"\baclosing\b", "closing"),
    (r"\baclose\b", "close"),
    (r"\bAsync([A-Z]\w*)", r"\1"),
    (r"\b_backends\.trio\b", "_backends.sync"),
    (r"\bTrio([A-Z]\w*)", r"Sync\1"),
]
"""(pattern, replacement), applied in this order to every line, each to whole words: the
`Async*` names (AsyncClient, AsyncConnection, AsyncIterator) lose the prefix, and the
trio backend's names (`_backends.trio`, `Trio*`) become the blocking one's."""

COMPILED = [(re.compile(pattern), replacement) for pattern, replacement in SUBSTITUTIONS]


def header(source: str) -> str:
    return (
        f"# GENERATED from client/_async/{source} by `python -m unitsync.client.unasync`:\n"
        "# do not edit. Change the source, then run that command (CI checks they agree).\n"
    )


@dataclass
class Unasync:
    """One pass over `_async/`: the text each `_sync/` module should have, and which rules
    were used."""

    root: Path = HERE
    used: set[int] = field(default_factory=set)

    def line(self, text: str) -> str:
        for index, (pattern, replacement) in enumerate(COMPILED):
            text, count = pattern.subn(replacement, text)
            if count:
                self.used.add(index)
        return text

    def generated(self, source: Path) -> str:
        lines = source.read_text().splitlines(keepends=True)
        return header(source.name) + "".join(self.line(each) for each in lines)

    def pairs(self) -> list[tuple[Path, Path]]:
        """(source, generated) for every module of `_async/` but its `__init__`."""
        return [
            (source, self.root / "_sync" / source.name)
            for source in sorted((self.root / "_async").glob("*.py"))
            if source.name != "__init__.py"
        ]

    def orphans(self) -> list[Path]:
        """Generated modules in `_sync/` whose source is gone."""
        sources = {source.name for source, _ in self.pairs()}
        return [
            each
            for each in sorted((self.root / "_sync").glob("*.py"))
            if each.name != "__init__.py" and each.name not in sources
        ]

    def unused(self) -> list[str]:
        return [SUBSTITUTIONS[i][0] for i in range(len(SUBSTITUTIONS)) if i not in self.used]


def problems(root: Path = HERE) -> list[str]:
    """What is wrong with `root/_sync/` (nothing if it is what `root/_async/` makes)."""
    unasync = Unasync(root)
    found: list[str] = []
    for source, target in unasync.pairs():
        expected = unasync.generated(source)
        if not target.exists():
            found.append(f"{target} is missing: it is generated from {source}")
            continue
        actual = target.read_text()
        if actual != expected:
            found.append(_first_difference(source, target, expected, actual))
    found += [f"{each} has no source in {root / '_async'}: remove it" for each in unasync.orphans()]
    if unused := unasync.unused():
        found.append(f"substitutions no line uses (remove them): {', '.join(unused)}")
    return found


def generate(root: Path = HERE) -> list[Path]:
    """Write every `_sync/` module from its source; the files written."""
    unasync = Unasync(root)
    written = []
    for source, target in unasync.pairs():
        target.write_text(unasync.generated(source))
        written.append(target)
    for orphan in unasync.orphans():
        orphan.unlink()
    if unused := unasync.unused():
        raise SystemExit(f"substitutions no line uses (remove them): {', '.join(unused)}")
    return written


def _first_difference(source: Path, target: Path, expected: str, actual: str) -> str:
    wanted, found = expected.splitlines(), actual.splitlines()
    number = next(
        (n for n, pair in enumerate(zip(wanted, found, strict=False), 1) if pair[0] != pair[1]),
        min(len(wanted), len(found)) + 1,  # one is the other cut short
    )
    want = wanted[number - 1] if number <= len(wanted) else "(the end)"
    got = found[number - 1] if number <= len(found) else "(the end)"
    return (
        f"{target} is not what {source} makes (line {number}):\n"
        f"    generated: {want!r}\n"
        f"    found:     {got!r}\n"
        "  run `python -m unitsync.client.unasync` to regenerate it"
    )


def main(argv: list[str]) -> int:
    if argv == ["--check"]:
        if found := problems(HERE):
            print("\n".join(found), file=sys.stderr)
            return 1
        return 0
    if argv:
        print(__doc__, file=sys.stderr)
        return 2
    for path in generate(HERE):
        print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
