"""How results files name paths."""

from __future__ import annotations

from pathlib import Path
from typing import Any


def shown(path: Path | str) -> str:
    """Relative to the working directory (the repository) when inside it, so results do not name
    the machine they were made on."""
    full = Path(path).resolve()
    return str(full.relative_to(Path.cwd())) if full.is_relative_to(Path.cwd()) else str(full)


def shown_paths(value: Any) -> Any:
    """`value` (JSON-like) with every absolute path `shown`: relative inside the working directory, "~/..." inside
    the home directory, so that no results file names the machine it was made on."""
    if isinstance(value, dict):
        return {k: shown_paths(v) for k, v in value.items()}
    if isinstance(value, list):
        return [shown_paths(v) for v in value]
    if isinstance(value, str) and value.startswith("/"):
        full, home = Path(value), Path.home()
        if full.is_relative_to(Path.cwd()):
            return shown(full)
        if full.is_relative_to(home):
            return str(Path("~") / full.relative_to(home))
    return value
