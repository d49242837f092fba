"""A corpus on disk: its sentences (or passages) and queries in one SQLite file, written in one pass (`CorpusWriter`:
memory bounded by a batch of rows and by the queries, not by the corpus) and read by id, by prompt, by row number,
in order, or whole (`CorpusStore`).

An index keeps its corpus so (`corpus.sqlite`): a cold `ftrace query` opens what it shows, ingest streams the rows
it featurises, bench and train read it whole. An index made before this file holds `corpus.jsonl` instead: read
whole into an in-memory store and used the same way.

Rows are numbered from 1 in corpus order (`n`), so row n is the corpus's (n-1)th sentence and its (n-1)th example.
"""

from __future__ import annotations

import hashlib
import json
import os
import sqlite3
import threading
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any, NoReturn

import numpy as np

from ftrace.corpus.files import CorpusError, Where
from ftrace.corpus.records import Corpus, Query, Sentence, fact_key, fingerprint_of, match_key, stated_objects

SCHEMA = """
CREATE TABLE sentences (n INTEGER PRIMARY KEY, id TEXT UNIQUE NOT NULL, json TEXT NOT NULL);
CREATE TABLE queries (n INTEGER PRIMARY KEY, key TEXT NOT NULL, json TEXT NOT NULL);
CREATE INDEX queries_by_key ON queries (key);
CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
"""
# what only writing needs, gone with the connection: where each record was (for a duplicate's message), which rows
# state which fact (proponents), which rows a cut document became
WRITING = """
CREATE TEMP TABLE at (n INTEGER PRIMARY KEY, file INTEGER NOT NULL, line INTEGER, row INTEGER);
CREATE TEMP TABLE facts (fact TEXT NOT NULL, n INTEGER NOT NULL);
CREATE TEMP TABLE documents (id TEXT PRIMARY KEY, first INTEGER NOT NULL, last INTEGER NOT NULL, file INTEGER,
                              line INTEGER, row INTEGER);
"""
TAKEN = {  # where a taken id was first: (file, line, row)
    "documents": "SELECT file, line, row FROM documents WHERE id = ?",
    "sentences": "SELECT a.file, a.line, a.row FROM sentences s LEFT JOIN at a ON a.n = s.n WHERE s.id = ?",
}
CHUNK = 900  # ids per SELECT ... IN (...): under SQLite's default limit of 999 variables in older builds
ROWS = 1000  # rows written, or read in order, at a time


class CorpusWriter:
    """Writes a corpus store in one pass: `add` each text record (or a document's passages) and query, then `finish`.
    Ids must be unique (a second one is refused, naming where the first was); queries are held until `finish`, which
    resolves and links their proponents (`Corpus.link_proponents`'s rule) and checks that each exists."""

    def __init__(self, path: Path | None):
        """A new store at `path` (replacing a file there), or in memory (None)."""
        if path is not None:
            Path(path).unlink(missing_ok=True)
        self.path = path
        self.db = db = sqlite3.connect(":memory:" if path is None else str(path), check_same_thread=False)
        db.isolation_level = None  # transactions as written here
        # a new file, renamed into place once written: no journal on disk (one in memory, for the savepoints)
        db.executescript("PRAGMA journal_mode = MEMORY; PRAGMA synchronous = OFF;" + SCHEMA + WRITING)
        db.execute("BEGIN")
        self.count = 0
        self.cut = 0  # documents cut into passages
        self.objects = 0  # rows that state an object (scored under the example loss "object")
        self.queries: list[Query] = []
        self._asked: dict[str, Where | None] = {}
        self._files: dict[Path, int] = {}
        self._wheres: list[Where] = []
        self._rows: list[tuple[Sentence, Where | None]] = []
        self._hash = hashlib.sha256()

    def add(self, s: Sentence, where: Where | None = None) -> None:
        if self.cut:  # a cut document's id is taken too (by a sentence, or by a later document's passage)
            self._taken(s.id, where, "documents")
        self._rows.append((s, where))
        if len(self._rows) >= ROWS:
            self.flush()

    def add_document(self, passages: Sequence[Sentence], where: Where | None = None) -> None:
        """The passages a document was cut into (their `document` its id)."""
        doc = str(passages[0].document)
        self.flush()
        self._taken(doc, where, "documents")
        self._taken(doc, where, "sentences")
        first = self.count + 1
        for s in passages:
            self.add(s, where)
        self.cut += 1
        self.db.execute("INSERT INTO documents VALUES (?, ?, ?, ?, ?, ?)",
                        (doc, first, first + len(passages) - 1, self._file(where) if where else None,
                         where.line if where else None, where.row if where else None))

    def _taken(self, key: str, where: Where | None, table: str) -> None:
        """Refuse `key` where a document (table "documents") or a stored sentence ("sentences") has it."""
        found = self.db.execute(TAKEN[table], [key]).fetchone()
        if found is not None:
            raise CorpusError(f"{where or 'corpus'}: duplicate id {key!r}{first_at(self._where(found), where)}")

    def add_query(self, q: Query, where: Where | None = None) -> None:
        """A query; one read from a file (`where`) must have an id no earlier one of the file has."""
        if where is not None:
            if q.id in self._asked:
                raise CorpusError(f"{where}: duplicate query id {q.id!r}{first_at(self._asked[q.id], where)}")
            self._asked[q.id] = where
        self.queries.append(q)

    def close(self) -> None:
        self.db.close()

    def __enter__(self) -> CorpusWriter:
        return self

    def __exit__(self, kind: type[BaseException] | None, *_: object) -> None:
        if kind is not None:  # a store half written is of no use: `finish` hands a finished one over
            self.close()

    def flush(self) -> None:
        """Store the rows added so far (a duplicate id among them is raised here)."""
        rows, self._rows = self._rows, []
        if not rows:
            return
        base = self.count
        self.db.execute("SAVEPOINT batch")
        try:
            self.db.executemany("INSERT INTO sentences (n, id, json) VALUES (?, ?, ?)",
                                ((base + k + 1, s.id, s.model_dump_json(exclude_none=True))
                                 for k, (s, _) in enumerate(rows)))
        except sqlite3.IntegrityError:
            self.db.execute("ROLLBACK TO batch")
            self._duplicate(rows)
        self.db.execute("RELEASE batch")
        self.db.executemany("INSERT INTO at VALUES (?, ?, ?, ?)",
                            ((base + k + 1, self._file(w), w.line, w.row) for k, (_, w) in enumerate(rows) if w))
        self.db.executemany("INSERT INTO facts VALUES (?, ?)",
                            ((fact_key(t), base + k + 1) for k, (s, _) in enumerate(rows) for t in s.facts))
        for s, _ in rows:
            self._hash.update(s.id.encode() + b"\0" + s.text.encode() + b"\n")
            self.objects += bool(stated_objects(s))
        self.count += len(rows)

    def _file(self, where: Where) -> int:
        if where.file not in self._files:
            self._files[where.file] = len(self._wheres)
            self._wheres.append(where)
        return self._files[where.file]

    def _where(self, found: tuple) -> Where | None:
        """A record's place from its (file, line, row) columns."""
        file, line, row = found
        return None if file is None else Where(self._wheres[file].file, self._wheres[file].file_number, line, row)

    def _duplicate(self, rows: list[tuple[Sentence, Where | None]]) -> NoReturn:
        """Raise for the first row of `rows` whose id is taken, naming where the first was."""
        mine: dict[str, Where | None] = {}
        for s, w in rows:
            found = self.db.execute(TAKEN["sentences"], [s.id]).fetchone()
            if found is not None or s.id in mine:
                first = mine.get(s.id) if found is None else self._where(found)
                raise CorpusError(f"{w or 'corpus'}: duplicate id {s.id!r}{first_at(first, w)}")
            mine[s.id] = w
        raise CorpusError(f"{rows[0][1] or 'corpus'}: duplicate id among the {len(rows)} records from here")

    def finish(self, source: str, passages: tuple[int, int] | None, name: str | None = None) -> CorpusStore:
        """Resolve and link the queries' proponents, write them and the corpus's description (and, for a file, sync
        it to disk: it is renamed into an index next); the store, open for reading. `name`: the input, as errors
        name it."""
        self.flush()
        name = name or source
        if not self.count:
            raise CorpusError(f"{name}: no text records")
        self.db.execute("CREATE INDEX temp.facts_by_fact ON facts (fact)")
        for q in self.queries:
            named = list(dict.fromkeys(p for d in q.proponents for p in self._passages_of(d, q)))
            known = self._known(named)
            missing = [p for p in named if p not in known]
            if missing:
                raise CorpusError(f"{name}: query {q.id!r} names unknown proponent ids {missing[:3]}")
            stating = [i for (i,) in self.db.execute(
                "SELECT s.id FROM facts f JOIN sentences s ON s.n = f.n WHERE f.fact = ? ORDER BY f.n",
                [fact_key(q.fact)])] if q.fact else []
            q.proponents = list(dict.fromkeys([*named, *stating]))
        self.db.executemany("INSERT INTO queries (key, json) VALUES (?, ?)",
                            ((match_key(q.prompt), q.model_dump_json(exclude_none=True)) for q in self.queries))
        meta = {"source": source, "passages": list(passages) if passages else None,
                "fingerprint": self._hash.hexdigest()[:16], "sentences": self.count, "queries": len(self.queries),
                "objects": self.objects}
        self.db.executemany("INSERT INTO meta VALUES (?, ?)", ((k, json.dumps(v)) for k, v in meta.items()))
        self.db.execute("COMMIT")
        if self.path is not None:
            with open(self.path, "rb") as f:
                os.fsync(f.fileno())
        return CorpusStore(self.db)

    def _passages_of(self, doc: str, q: Query) -> list[str]:
        """A proponent id as the store knows it: itself, or the passages of a cut document (those stating the
        query's fact, else all)."""
        found = self.db.execute("SELECT first, last FROM documents WHERE id = ?", [doc]).fetchone()
        if found is None:
            return [doc]
        cut = [Sentence.model_validate_json(js) for (js,) in self.db.execute(
            "SELECT json FROM sentences WHERE n BETWEEN ? AND ? ORDER BY n", found)]
        stating = [s.id for s in cut if q.fact and tuple(q.fact) in s.facts]
        return stating or [s.id for s in cut]

    def _known(self, ids: list[str]) -> set[str]:
        out: set[str] = set()
        for start in range(0, len(ids), CHUNK):
            part = ids[start:start + CHUNK]
            out |= {i for (i,) in self.db.execute(
                f"SELECT id FROM sentences WHERE id IN ({','.join('?' * len(part))})", part)}
        return out


def first_at(first: Where | None, where: Where | None) -> str:
    """' (first on line 3)', ' (first at row 2)' in the same file, ' (first at FILE:LINE)' in another; '' unknown."""
    if first is None:
        return ""
    if where is not None and first.same_file(where):
        return f" (first on line {first.line})" if first.line is not None else f" (first at row {first.row})"
    return f" (first at {first})"


def write_corpus(path: Path | None, corpus: Corpus) -> CorpusStore:
    """A store of a corpus held in memory (LAMA, T-REx): at `path`, or in memory (None)."""
    with CorpusWriter(path) as w:
        for s in corpus.sentences:
            w.add(s)
        for q in corpus.queries:
            w.add_query(q.model_copy(deep=True))
        return w.finish(corpus.source, corpus.passages)


class CorpusStore:
    """Read access to a corpus store, shared by a server's threads (one connection, taken in turns)."""

    def __init__(self, db: sqlite3.Connection, source: str | None = None, passages: tuple[int, int] | None = None):
        self.db = db
        self._lock = threading.Lock()
        self._meta = meta = self._read_meta()
        self.source = source if source is not None else meta.get("source", "")
        self.passages = passages if source is not None else (tuple(meta["passages"]) if meta.get("passages")
                                                             else None)

    @classmethod
    def open(cls, path: Path, source: str | None = None, passages: tuple[int, int] | None = None) -> CorpusStore:
        """The store at `path`, read-only; `source` and `passages` as an index's manifest names them (else the
        store's own)."""
        db = sqlite3.connect(f"{Path(path).resolve().as_uri()}?mode=ro", uri=True, check_same_thread=False)
        return cls(db, source, passages)

    def _rows(self, sql: str, args: Iterable[object] = ()) -> list[tuple]:
        with self._lock:
            return self.db.execute(sql, tuple(args)).fetchall()

    def meta(self) -> dict[str, Any]:
        """What the writer recorded (source, passages, fingerprint, counts); {} in a store from before it did."""
        return dict(self._meta)

    def _read_meta(self) -> dict[str, Any]:
        if not self._rows("SELECT name FROM sqlite_master WHERE name = 'meta'"):
            return {}
        return {k: json.loads(v) for k, v in self._rows("SELECT key, value FROM meta")}

    def __len__(self) -> int:
        if "sentences" in self._meta:
            return int(self._meta["sentences"])
        return int(self._rows("SELECT count(*) FROM sentences")[0][0])

    def get(self, sentence_id: str) -> Sentence | None:
        rows = self._rows("SELECT json FROM sentences WHERE id = ?", [sentence_id])
        return Sentence.model_validate_json(rows[0][0]) if rows else None

    def sentences(self, ids: Iterable[str]) -> dict[str, Sentence]:
        """The sentences of `ids` that the store holds, by id."""
        ids = list(dict.fromkeys(ids))
        out: dict[str, Sentence] = {}
        for start in range(0, len(ids), CHUNK):
            part = ids[start:start + CHUNK]
            for sid, js in self._rows(f"SELECT id, json FROM sentences WHERE id IN ({','.join('?' * len(part))})",
                                      part):
                out[sid] = Sentence.model_validate_json(js)
        return out

    def at(self, rows: Sequence[int] | np.ndarray) -> list[Sentence]:
        """The sentences of row numbers `rows` (from 1), in that order."""
        out: dict[int, Sentence] = {}
        for start in range(0, len(rows), CHUNK):
            part = [int(n) for n in rows[start:start + CHUNK]]
            for n, js in self._rows(f"SELECT n, json FROM sentences WHERE n IN ({','.join('?' * len(part))})", part):
                out[n] = Sentence.model_validate_json(js)
        return [out[int(n)] for n in rows]

    def iter_sentences(self, first: int = 1) -> Iterator[Sentence]:
        """Every sentence from row `first` on, in order, read `ROWS` at a time."""
        n = first - 1
        while True:
            rows = self._rows("SELECT n, json FROM sentences WHERE n > ? ORDER BY n LIMIT ?", [n, ROWS])
            if not rows:
                return
            n = rows[-1][0]
            for _, js in rows:
                yield Sentence.model_validate_json(js)

    def queries(self) -> list[Query]:
        return [Query.model_validate_json(js) for (js,) in self._rows("SELECT json FROM queries ORDER BY n")]

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

    def fingerprint(self) -> str:
        return str(self.meta().get("fingerprint") or fingerprint_of(self.iter_sentences()))

    def query_count(self) -> int:
        if "queries" in self._meta:
            return int(self._meta["queries"])
        return int(self._rows("SELECT count(*) FROM queries")[0][0])

    def has_objects(self) -> bool:
        """Whether any sentence states an object (so the example loss "object" scores something)."""
        meta = self.meta()
        if "objects" in meta:
            return bool(meta["objects"])
        return any(stated_objects(s) for s in self.iter_sentences())

    def corpus(self) -> Corpus:
        """The whole corpus, in its order."""
        return Corpus(source=self.source, passages=self.passages, sentences=list(self.iter_sentences()),
                      queries=self.queries())

    def close(self) -> None:
        self.db.close()
