"""The bench's resumable cache of computed results (scores, the model's answers, tail-patch steps): OUT/cache.jsonl
and OUT/tailpatch.jsonl, one JSON line per computed entry.

Each line is {"k": settings hash, "seed": int | null, "q": query id, "m": method, "v": value,
"t": seconds it took to compute}.
The settings hash covers everything the value depends on (index identity, mode, candidate sizes or
depth, cache format), so a run with other settings never reads another run's entries, even in the
same file. Lines are appended and flushed as they are computed: an interrupted run loses at most
the entry it was computing, and a torn last line is ignored.
"""

from __future__ import annotations

import hashlib
import json
import math
from pathlib import Path
from typing import Any, TextIO

FORMAT = 1


def settings_hash(obj: Any) -> str:
    return hashlib.sha256(json.dumps([FORMAT, obj], sort_keys=True, default=str).encode()).hexdigest()[:16]


class ResultCache:
    def __init__(self, path: Path, keys: set[str]):
        """Load the entries of `keys` (the settings hashes this run may use) from `path`."""
        self.path = Path(path)
        self.entries: dict[tuple, Any] = {}
        self.seconds: dict[tuple, float] = {}
        self.used: set[tuple] = set()
        self.other = 0  # entries written under other settings (kept, never used)
        self.torn = 0
        self.hits = 0
        self.written = 0
        if self.path.exists():
            with open(self.path, encoding="utf-8") as f:
                for line in f:
                    try:
                        e = json.loads(line)
                        key = (e["k"], e["seed"], e["q"], e["m"])
                    except (json.JSONDecodeError, KeyError, TypeError):
                        self.torn += 1
                        continue
                    if e["k"] in keys:
                        self.entries[key] = e["v"]
                        self.seconds[key] = float(e.get("t", 0.0))
                    else:
                        self.other += 1
        self.loaded = set(self.entries)
        self._f: TextIO | None = None

    @property
    def reused(self) -> int:
        """Distinct entries of earlier runs that this run used."""
        return len(self.used & self.loaded)

    def get(self, k: str, seed: int | None, query: str, method: str) -> Any | None:
        v = self.entries.get((k, seed, query, method))
        if v is not None:
            self.hits += 1
            self.used.add((k, seed, query, method))
        return v

    def put(self, k: str, seed: int | None, query: str, method: str, value: Any, seconds: float = 0.0) -> Any:
        seconds = round(seconds, 4)  # as written, so a resumed run sums exactly the same times
        if self._f is None:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self._f = open(self.path, "a", encoding="utf-8")
            if self._f.tell() > 0 and not _ends_with_newline(self.path):
                self._f.write("\n")  # never glue a new entry onto a torn line
        f: TextIO = self._f
        f.write(json.dumps({"k": k, "seed": seed, "q": query, "m": method, "v": value,
                                  "t": seconds}, ensure_ascii=False) + "\n")
        f.flush()
        self.entries[(k, seed, query, method)] = value
        self.seconds[(k, seed, query, method)] = seconds
        self.used.add((k, seed, query, method))
        self.written += 1
        return value

    @property
    def used_s(self) -> float:
        """Compute time of the entries this run used, whether cached earlier or computed now."""
        return math.fsum(self.seconds.get(key, 0.0) for key in self.used)  # exact: independent of order

    def lines(self) -> int:
        if not self.path.exists():
            return 0
        with open(self.path, encoding="utf-8") as f:
            return sum(1 for _ in f)

    def close(self) -> None:
        if self._f is not None:
            self._f.close()
            self._f = None


def _ends_with_newline(path: Path) -> bool:
    with open(path, "rb") as f:
        f.seek(-1, 2)
        return f.read(1) == b"\n"
