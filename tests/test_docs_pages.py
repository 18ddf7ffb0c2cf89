"""The pages of docs/ as a reader follows them: every console block runs, every link lands.

Each page with console blocks to run is a session of its own, as the README is
(`harness/console_session.py`: `# exit N`, `<!-- not run: why -->`, normalised lines): a fresh
HOME, runtime dir and state dir, blocks in order, so a page's first block starts what the page
needs and no page depends on another or on the README (issue 23, item 11). The links between
the README and the pages, and the imports the Python examples show, are checked too: a section
that moves, or a module that is renamed, fails here rather than in a reader's hands.
"""

from __future__ import annotations

import importlib
import re
from pathlib import Path

import pytest

from conftest import agents_running, stop_agents
from harness.console_session import play, runnable

ROOT = Path(__file__).resolve().parent.parent
DOCS = ROOT / "docs"
ELSEWHERE = {"systemd.md": "test_systemd.py plays it under a real systemd user manager"}
"""Pages whose console blocks need a machine of their own, and the test that runs them there."""
PAGES = sorted(page.name for page in DOCS.glob("*.md") if runnable(page))
SESSIONS = [name for name in PAGES if name not in ELSEWHERE]


@pytest.mark.parametrize("name", SESSIONS)
def test_a_page_runs_top_to_bottom_in_a_session_of_its_own(name: str, short_tmp: Path) -> None:
    page = DOCS / name
    try:
        assert play(page, short_tmp) == len(runnable(page))
    finally:
        stop_agents(agents_running(str(short_tmp)))  # any a command started by itself


def test_every_page_with_commands_to_run_is_run_somewhere() -> None:
    """A page whose blocks stopped being found (a fence renamed, a page renamed) fails here."""
    assert set(SESSIONS) >= {"agent.md", "bounds.md", "commands.md", "restarts.md", "services.md"}
    assert set(ELSEWHERE) <= set(PAGES)


# --- links and imports -------------------------------------------------------------------------

LINK = re.compile(r"\]\(([^)\s]+)\)")
HEADING = re.compile(r"#{1,6} (.+)")
FENCE = re.compile(r"^\s*```")


def anchors(page: Path) -> set[str]:
    """The anchors GitHub makes for the page's headings (`## A tour` -> `a-tour`)."""
    found: set[str] = set()
    seen: dict[str, int] = {}
    in_code = False
    for line in page.read_text().splitlines():
        if FENCE.match(line):
            in_code = not in_code
        elif not in_code and (match := HEADING.fullmatch(line)):
            slug = re.sub(r"[^\w\- ]", "", match.group(1).strip().lower()).replace(" ", "-")
            found.add(f"{slug}-{seen[slug]}" if slug in seen else slug)
            seen[slug] = seen.get(slug, 0) + 1
    return found


def pages() -> list[Path]:
    return [ROOT / "README.md", *sorted(DOCS.glob("*.md"))]


def test_every_link_between_the_pages_resolves() -> None:
    broken = []
    for page in pages():
        for target in LINK.findall(page.read_text()):
            if re.match(r"[a-z]+:", target):
                continue  # a web address
            file, _, anchor = target.partition("#")
            destination = (page.parent / file).resolve() if file else page
            if not destination.exists():
                broken.append(f"{page.name}: {target} (no such file)")
            elif anchor and destination.suffix == ".md" and anchor not in anchors(destination):
                broken.append(f"{page.name}: {target} (no such heading in {destination.name})")
    assert not broken, "\n".join(broken)


PYTHON_BLOCK = re.compile(r"```python\n(.*?)```", re.DOTALL)
IMPORT = re.compile(r"^\s*from (unitsync[\w.]*) import ([\w, ]+)$|^\s*import (unitsync[\w.]*)$")


def test_every_import_the_pages_show_resolves() -> None:
    shown = [
        match.groups()
        for page in pages()
        for block in PYTHON_BLOCK.findall(page.read_text())
        for match in map(IMPORT.match, block.splitlines())
        if match
    ]
    assert shown, "no Python example imports unitsync any more: is this check still needed?"
    for module, names, plain in shown:
        imported = importlib.import_module(module or plain)
        for name in (names or "").replace(" ", "").split(","):
            assert not name or hasattr(imported, name), f"{module} has no {name}"
