"""The index's texts: its sentences (or passages) and queries in one SQLite file, `corpus.sqlite`, which a query reads
by id and by prompt (a cold `ftrace query` opens what it shows, not the whole corpus) and bench and train read whole.

An index made before this file holds `corpus.jsonl` (ftrace's plain format) instead: it is read whole into an
in-memory database and used the same way.
"""

from __future__ import annotations

import json
import sqlite3
import threading
from collections.abc import Iterable, Iterator
from pathlib import Path

from ftrace.corpus import Corpus, Query, Sentence, load_records, match_key
from ftrace.plumbing import replacing

SCHEMA = """
CREATE TABLE sentences (n INTEGER PRIMARY KEY, id TEXT UNIQUE NOT NULL, json TEXT NOT NULL);
CREATE TABLE queries (n INTEGER PRIMARY KEY, key TEXT NOT NULL, json TEXT NOT NULL);
CREATE INDEX queries_by_key ON queries (key);
"""
CHUNK = 900  # ids per SELECT ... IN (...): under SQLite's default limit of 999 variables in older builds


def write_texts(path: Path, corpus: Corpus) -> None:
    """Write `corpus`'s sentences and queries to `path`, whole or not at all (built beside it, then renamed)."""
    with replacing(path) as tmp:
        _fill(sqlite3.connect(tmp), corpus).close()


def _fill(db: sqlite3.Connection, corpus: Corpus) -> sqlite3.Connection:
    with db:
        db.executescript(SCHEMA)
        db.executemany("INSERT INTO sentences (id, json) VALUES (?, ?)",
                       ((s.id, s.model_dump_json(exclude_none=True)) for s in corpus.sentences))
        db.executemany("INSERT INTO queries (key, json) VALUES (?, ?)",
                       ((match_key(q.prompt), q.model_dump_json(exclude_none=True)) for q in corpus.queries))
    return db


class Texts:
    """Read access to an index's texts, shared by a server's threads (one connection, taken in turns)."""

    def __init__(self, db: sqlite3.Connection, source: str, passages: tuple[int, int] | None):
        self.db, self.source, self.passages = db, source, passages
        self._lock = threading.Lock()

    @classmethod
    def open(cls, index_dir: Path, source: str, passages: tuple[int, int] | None = None) -> Texts:
        path = Path(index_dir) / "corpus.sqlite"
        if path.exists():
            db = sqlite3.connect(f"{path.resolve().as_uri()}?mode=ro", uri=True, check_same_thread=False)
        else:  # an index from before corpus.sqlite: its corpus.jsonl (a query line lists every proponent: no cap)
            legacy = load_records(Path(index_dir) / "corpus.jsonl", source=source, own=True)
            db = _fill(sqlite3.connect(":memory:", check_same_thread=False), legacy)
        return cls(db, source, passages)

    def _rows(self, sql: str, args: Iterable[object] = ()) -> list[tuple]:
        with self._lock:
            return self.db.execute(sql, tuple(args)).fetchall()

    def get(self, sentence_id: str) -> Sentence | None:
        rows = self._rows("SELECT json FROM sentences WHERE id = ?", [sentence_id])
        return Sentence.model_validate_json(rows[0][0]) if rows else None

    def sentences(self, ids: Iterable[str]) -> dict[str, Sentence]:
        """The sentences of `ids` that the index holds, by id."""
        ids = list(dict.fromkeys(ids))
        out: dict[str, Sentence] = {}
        for start in range(0, len(ids), CHUNK):
            part = ids[start:start + CHUNK]
            for sid, js in self._rows(f"SELECT id, json FROM sentences WHERE id IN ({','.join('?' * len(part))})",
                                      part):
                out[sid] = Sentence.model_validate_json(js)
        return out

    def queries_for(self, prompt: str) -> list[Query]:
        """The queries whose prompt is `prompt`, leading article aside (`match_key`)."""
        return [Query.model_validate_json(js) for (js,) in
                self._rows("SELECT json FROM queries WHERE key = ? ORDER BY n", [match_key(prompt)])]

    def example_prompt(self) -> str:
        """A prompt to warm a model with: the first query's, else the first sentence's first words."""
        rows = self._rows("SELECT json FROM queries ORDER BY n LIMIT 1")
        if rows:
            return str(json.loads(rows[0][0])["prompt"])
        rows = self._rows("SELECT json FROM sentences ORDER BY n LIMIT 1")
        return " ".join(str(json.loads(rows[0][0])["text"]).split()[:4])

    def _all(self, table: str) -> Iterator[str]:
        with self._lock:
            for (js,) in self.db.execute(f"SELECT json FROM {table} ORDER BY n"):
                yield js

    def corpus(self) -> Corpus:
        """The whole corpus, in its order."""
        return Corpus(source=self.source, passages=self.passages,
                      sentences=[Sentence.model_validate_json(js) for js in list(self._all("sentences"))],
                      queries=[Query.model_validate_json(js) for js in list(self._all("queries"))])

    def close(self) -> None:
        self.db.close()
