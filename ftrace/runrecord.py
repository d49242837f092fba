"""Run records: `ingest`, `train` and `bench` write their validated config beside their output
(OUT/config.json), and `--config FILE` runs one again (options given beside it override its values).

    {"format": 1, "command": "bench", "config": {...the command's config, as `ftrace.config` dumps it...}}

Settings that do not change results (threads, --json, bench's --device) are not recorded; ingest's and
train's --device are (give another beside --config to move a run). Paths are as they were given, so a record
re-runs from the directory it ran in. A directory given to --config means its config.json.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

from pydantic import BaseModel

from ftrace import FtraceError
from ftrace.plumbing import write_atomic

RECORD = "config.json"
FORMAT = 1


def write_record(directory: Path, command: str, config: BaseModel,
                 paths: Callable[[Any], Any] | None = None) -> Path:
    """DIRECTORY/config.json for `ftrace COMMAND --config` (replaced at each run: the last one is recorded);
    `paths`: how the record names paths (a bench run's, which may be a results file: `bench.paths.shown_paths`)."""
    path = Path(directory) / RECORD
    values = config.model_dump(mode="json")
    record = {"format": FORMAT, "command": command, "config": paths(values) if paths else values}
    write_atomic(path, json.dumps(record, indent=2, ensure_ascii=False) + "\n")
    return path


def read_record(path: Path, command: str) -> dict[str, Any]:
    """The config values a record holds, for `ftrace COMMAND`; one-line errors for anything else."""
    path = Path(path)
    if path.is_dir():
        path = path / RECORD
    try:
        record = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise FtraceError(f"--config {path}: no such file") from None
    except (OSError, UnicodeDecodeError, ValueError) as e:
        raise FtraceError(f"--config {path}: not a JSON run record ({type(e).__name__})") from None
    if not isinstance(record, dict) or not isinstance(record.get("config"), dict) or "command" not in record:
        raise FtraceError(f"--config {path}: not an ftrace run record (written by ingest, train or bench as "
                          f"OUT/{RECORD})")
    if record.get("format") != FORMAT:
        raise FtraceError(f"--config {path}: record format {record.get('format')!r}; this ftrace reads {FORMAT}")
    if record["command"] != command:
        raise FtraceError(f"--config {path}: records an `ftrace {record['command']}` run, not `ftrace {command}`")
    return record["config"]
