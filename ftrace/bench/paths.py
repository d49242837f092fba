"""How results files name paths."""

from __future__ import annotations

from pathlib import Path


def shown(path: Path | str) -> str:
    """Relative to the working directory (the repository) when inside it, so results do not name
    the machine they were made on."""
    full = Path(path).resolve()
    return str(full.relative_to(Path.cwd())) if full.is_relative_to(Path.cwd()) else str(full)
