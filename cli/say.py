"""One line to stderr in one write.

`print(text, file=sys.stderr)` writes the text and its newline separately when stderr is
unbuffered (PYTHONUNBUFFERED): with several processes writing to one terminal or log (a
`run`, its agent, another script), another line could land in between. One write each.
"""

from __future__ import annotations

import sys


def say(line: str) -> None:
    sys.stderr.write(line + "\n")
    sys.stderr.flush()
