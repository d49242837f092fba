"""loss.jsonl: one line per training step, {"step": s, "epoch": e, "loss": l, "lr": r}, where step s
counts from 1 (the weights after it are those of a checkpoint `step-s`), loss is the step's batch
loss and lr the learning rate it used. On resume, lines after the resumed checkpoint (and a line a
kill cut short) are dropped, so the file always matches the checkpoints."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from ftrace.plumbing import write_atomic


def read_losses(path: Path, upto: int | None = None) -> list[dict[str, Any]]:
    if not path.exists():
        return []
    rows = []
    for line in path.read_text(encoding="utf-8").splitlines():
        try:
            row = json.loads(line)
        except ValueError:
            continue  # a line cut short by a kill
        if not isinstance(row, dict) or not isinstance(row.get("step"), int):
            continue
        if upto is None or row["step"] <= upto:
            rows.append(row)
    return rows


def truncate_losses(path: Path, upto: int) -> None:
    """Keep the lines of steps <= `upto`, rewritten atomically."""
    rows = read_losses(path, upto)
    write_atomic(path, "".join(json.dumps(r) + "\n" for r in rows))


class LossLog:
    """Appends one line per step; flushed at every checkpoint (and on close)."""

    def __init__(self, path: Path) -> None:
        self.file = open(path, "a", encoding="utf-8")

    def add(self, step: int, epoch: float, loss: float, lr: float) -> None:
        self.file.write(json.dumps({"step": step, "epoch": round(epoch, 6), "loss": loss, "lr": lr}) + "\n")

    def flush(self) -> None:
        self.file.flush()

    def close(self) -> None:
        self.file.close()
