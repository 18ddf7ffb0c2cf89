"""`unitsync --install-completion`, loaded only when asked for (it is not cheap to import)."""

from __future__ import annotations

from typing import Literal


def install_completion(shell: Literal["bash", "zsh", "fish"] | None = None) -> int:
    """Install shell completion for unitsync; the shell is detected when not given."""
    from .app import app

    path = app.install_completion(shell=shell, add_to_startup=True)
    print(f"completion installed in {path}; open a new shell to use it")
    return 0
