"""`unitsync --install-completion`, loaded only when asked for (it is not cheap to import).

It writes a completion script and, for bash and zsh, adds a line that loads it to the
shell's start-up file: both are said, with how to undo them.
"""

from __future__ import annotations

from typing import Literal

STARTUP_FILES = {"bash": "~/.bashrc", "zsh": "~/.zshrc"}


def install_completion(shell: Literal["bash", "zsh", "fish"] | None = None) -> int:
    """Install shell completion for unitsync; the shell is detected when not given."""
    from cyclopts.completion.detect import detect_shell
    from cyclopts.completion.install import add_to_rc_file

    from .app import app

    shell = shell or detect_shell()
    script = app.install_completion(shell=shell, add_to_startup=False)
    print(f"wrote the {shell} completion script to {script}")
    if shell in STARTUP_FILES:
        startup = STARTUP_FILES[shell]
        if add_to_rc_file(script, "unitsync", shell):
            print(f"added a line to {startup} that loads it (delete that line to undo)")
        else:
            print(f"{startup} already loads it; nothing else changed")
    print("open a new shell to use it")
    return 0
