"""Corpus loaders: records (ftrace's plain format, in any of `files`' formats), LAMA T-REx (jsonl per relation), raw
T-REx documents.

Every loader returns a `Corpus` whose order depends only on its input and arguments, and every
malformed input raises `CorpusError` naming the file and line (or row).
"""

from __future__ import annotations

import inspect
import json
import sqlite3
from collections.abc import Callable, Iterator, Sequence
from importlib import resources
from pathlib import Path
from typing import Any, Concatenate, ParamSpec, TypeVar

from pydantic import BaseModel, ValidationError

from ftrace.config import SPLITS
from ftrace.corpus.files import CorpusError, Where, is_records, json_error, read_jsonl, read_records
from ftrace.corpus.passages import Passages
from ftrace.corpus.records import Corpus, Query, Sentence, find_object, sentence_id
from ftrace.corpus.store import CorpusStore, CorpusWriter, write_corpus

P = ParamSpec("P")
T = TypeVar("T")

# A record line of a jsonl corpus holds one sentence, document or query: a document may run to megabytes (a book), but
# a line past this is a file that is not one record per line (a JSON array, a dump). The files ftrace writes itself
# (an index's corpus.jsonl, whose query lines list every proponent: 5,000 for one LAMA fact) and LAMA lines, with
# all their evidence, are not capped.
MAX_RECORD_LINE = 32 * 2**20
# Records whose texts are cut into passages together (tokenised at once: `Passages.spans_of`): this many, or fewer
# where their texts reach CUT_CHARS characters (a chunk's token offsets are Python objects held at once, about 100
# bytes a token: some 100 MB at 4M characters).
CUT_TOGETHER = 256
CUT_CHARS = 4 * 2**20


def _describe(err: ValidationError) -> str:
    e = err.errors()[0]
    where = ".".join(str(p) for p in e["loc"])
    return f"{where}: {e['msg']}" if where else e["msg"]


def _parse(model: type[BaseModel], obj: Any, where: str) -> Any:
    try:
        return model.model_validate(obj)
    except ValidationError as e:
        raise CorpusError(f"{where}: {_describe(e)}") from None


# --- records -------------------------------------------------------------------------------

class _PlainSentence(BaseModel):
    id: str | None = None
    text: str
    facts: list[tuple[str, str, str]] = []
    # where a passage lies in its document: read from the files ftrace wrote itself only
    document: str | None = None
    span: tuple[int, int] | None = None
    passage: int | None = None


PROVENANCE = ("document", "span", "passage")


def load_records(path: Path, source: str | None = None, text_field: str = "text", id_field: str = "id",
                 passages: Passages | None = None, own: bool = False) -> Corpus:
    """`store_records` held in memory, as a `Corpus`."""
    return store_records(None, path, source, text_field, id_field, passages, own).corpus()


def store_records(dest: Path | None, path: Path, source: str | None = None, text_field: str = "text",
                  id_field: str = "id", passages: Passages | None = None, own: bool = False) -> CorpusStore:
    """ftrace's own format, in any file `files.read_records` reads, written to a corpus store at `dest` (in memory:
    None) one record at a time: text records {TEXT_FIELD, ID_FIELD?, "facts"?} (sentences or documents) and query
    records {"prompt", "target", "id"?, "fact"?, "proponents"?}; see docs/index-format.md. With `passages`, a record
    longer than a passage is cut into passages (id "DOC#K", the document's facts whose object they state); a query's
    proponent naming a cut document means its passages stating the query's fact (all of them when none does). `own`:
    a file ftrace wrote itself (an index's corpus.jsonl), read with its passages' provenance and no line cap (a query
    line lists all its proponents)."""
    try:
        with CorpusWriter(dest) as w:
            _read_into(w, path, text_field, id_field, passages, own)
            described = f" ({passages.describe()})" if passages and w.cut else ""
            return w.finish((source or str(path)) + described, (passages.size, passages.stride) if passages else None,
                            str(path))
    except sqlite3.Error as e:  # e.g. the disk is full
        raise CorpusError(f"{dest}: cannot write the corpus store ({e})") from None


def _read_into(w: CorpusWriter, path: Path, text_field: str, id_field: str, passages: Passages | None,
               own: bool) -> None:
    def text(obj: dict[str, Any]) -> str | None:  # a text record's text, if it can be cut (else its error comes later)
        t = obj.get(text_field)
        return t if "prompt" not in obj and isinstance(t, str) and _unicode(t) else None

    def chars(record: tuple[Where, dict[str, Any]]) -> int:  # a record's share of a chunk's CUT_CHARS
        t = record[1].get(text_field)
        return len(t) if isinstance(t, str) else 0

    cutting = passages if passages and not own else None
    try:
        records = read_records(path, None if own else MAX_RECORD_LINE)
        for chunk in _chunks(records, CUT_TOGETHER, chars):
            cut: dict[int, list[tuple[int, int]]] = {}
            if cutting:  # else every record is kept whole: no text to look at here
                texts = {k: t for k, (_, obj) in enumerate(chunk) if (t := text(obj)) is not None}
                cut = dict(zip(texts, cutting.spans_of(list(texts.values())), strict=True))
            for k, (where, obj) in enumerate(chunk):
                _add_record(w, where, obj, text_field, id_field, cut.get(k), own)
    except CorpusError:
        w.flush()  # a duplicate id before this record is the first error in the file: raised here
        raise


def _chunks(records: Iterator[T], n: int, size: Callable[[T], int]) -> Iterator[list[T]]:
    """`records` n at a time, fewer where their sizes reach `CUT_CHARS`; an error reading one is raised after the
    records before it are taken."""
    chunk: list[T] = []
    total = 0
    try:
        for r in records:
            chunk.append(r)
            total += size(r)
            if len(chunk) == n or total >= CUT_CHARS:
                yield chunk
                chunk, total = [], 0
    except CorpusError:
        if chunk:
            yield chunk
        raise
    if chunk:
        yield chunk


def _unicode(text: str) -> bool:
    """Whether `text` is valid Unicode: JSON's escapes can hold a lone surrogate (\\ud800), which no encoding takes."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def _add_record(w: CorpusWriter, where: Where, obj: dict[str, Any], text_field: str, id_field: str,
                spans: list[tuple[int, int]] | None, own: bool) -> None:
    """Add one record; `spans`: where a text record is cut into passages (`Passages.spans`; None: kept whole)."""
    if "prompt" in obj:
        obj.setdefault("id", where.default_id("q"))
        q = _parse(Query, obj, str(where))
        if not q.prompt.strip() or not q.target.strip():
            raise CorpusError(f"{where}: query prompt and target must not be empty")
        w.add_query(q, where)
    elif text_field in obj:
        record = _text_record(obj, text_field, id_field, where, own)
        raw = _parse(_PlainSentence, record, str(where))
        if not raw.text.strip():
            raise CorpusError(f"{where}: text is empty")
        if not _unicode(raw.text):
            raise CorpusError(f"{where}: text is not valid Unicode (a lone surrogate such as \\ud800)")
        sid = raw.id or sentence_id(raw.text)
        if spans is None or len(spans) == 1:
            w.add(Sentence(id=sid, text=raw.text, facts=raw.facts, document=raw.document, span=raw.span,
                           passage=raw.passage), where)
        else:
            w.add_document([Sentence(id=f"{sid}#{k}", text=raw.text[a:b], document=sid, span=(a, b), passage=k,
                                     facts=[f for f in raw.facts if find_object(raw.text[a:b], f[2])])
                            for k, (a, b) in enumerate(spans)], where)
    else:
        raise CorpusError(f"{where}: a record needs either {text_field!r} (a text: --text-field) or 'prompt' "
                          "(a query)")


def _text_record(obj: dict[str, Any], text_field: str, id_field: str, where: Where, own: bool) -> dict[str, Any]:
    """A text record under the names `_PlainSentence` reads: its text and id fields (an integer id becomes text);
    a user's fields that happen to be named like a passage's provenance are not taken for it."""
    rid = obj.get(id_field)
    if isinstance(rid, int) and not isinstance(rid, bool):
        rid = str(rid)
    elif rid is not None and not isinstance(rid, str):
        raise CorpusError(f"{where}: {id_field}: an id must be a string or an integer, got {type(rid).__name__}")
    if not isinstance(obj[text_field], str):
        raise CorpusError(f"{where}: {text_field}: text must be a string, got {type(obj[text_field]).__name__}")
    kept = obj if own else {k: v for k, v in obj.items() if k not in PROVENANCE}
    return {**kept, "text": obj[text_field], "id": rid}


def sample_path() -> Path:
    return Path(str(resources.files("ftrace.corpus") / "data" / "sample.jsonl"))


def load_sample() -> Corpus:
    return load_records(sample_path(), source="sample")


# --- LAMA T-REx ------------------------------------------------------------------------------

class _LamaEvidence(BaseModel):
    obj_surface: str
    masked_sentence: str


class _LamaFact(BaseModel):
    uuid: str | None = None
    sub_label: str
    obj_label: str
    predicate_id: str
    evidences: list[_LamaEvidence] = []


def load_templates(path: Path) -> dict[str, str]:
    out = {}
    for n, obj in read_jsonl(path):
        if "relation" not in obj or "template" not in obj:
            raise CorpusError(f"{path}:{n}: a relation line needs 'relation' and 'template'")
        out[obj["relation"]] = obj["template"]
    return out


def prompt_from_template(template: str, subject: str) -> str:
    """"[X] is produced by [Y] ." -> "Toyota Avanza is produced by" (text before the object)."""
    head = template.split("[Y]")[0]
    return head.replace("[X]", subject).strip()


def load_lama(
    root: Path,
    relations: Sequence[str] | None = None,
    splits: Sequence[str] = SPLITS,
    limit: int | None = None,
) -> Corpus:
    """LAMA T-REx layout: root/relations.jsonl and root/P<id>/<split>.jsonl.

    `limit` keeps the first N facts of each (relation, split) file. Evidence sentences are unmasked
    (the [MASK] filled with obj_surface); a sentence proves every selected fact listing it.
    """
    templates = load_templates(root / "relations.jsonl")
    unknown = [s for s in splits if s not in SPLITS]
    if unknown:
        raise CorpusError(f"unknown split(s) {unknown}; choose from {list(SPLITS)}")
    rels = list(relations) if relations else sorted(p.name for p in root.iterdir() if p.is_dir())
    sentences: dict[str, Sentence] = {}
    queries: list[Query] = []
    for rel in rels:
        if rel not in templates:
            raise CorpusError(f"{root}: relation {rel!r} is not in relations.jsonl")
        for split in splits:
            path = root / rel / f"{split}.jsonl"
            if not path.exists():
                continue  # some relations lack a split (data README)
            kept = 0
            for n, obj in read_jsonl(path):
                if limit is not None and kept >= limit:
                    break
                kept += 1
                fact = _parse(_LamaFact, obj, f"{path}:{n}")
                triple = (fact.sub_label, fact.predicate_id, fact.obj_label)
                proponents = []
                for ev in fact.evidences:
                    text = ev.masked_sentence.replace("[MASK]", ev.obj_surface)
                    sid = sentence_id(text)
                    s = sentences.setdefault(sid, Sentence(id=sid, text=text))
                    if triple not in s.facts:
                        s.facts.append(triple)
                    proponents.append(sid)
                queries.append(Query(
                    id=fact.uuid or f"{rel}/{split}/{n}",
                    prompt=prompt_from_template(templates[rel], fact.sub_label),
                    target=fact.obj_label,
                    fact=triple,
                    proponents=list(dict.fromkeys(proponents)),
                    split=split,
                ))
    if not sentences:  # e.g. splits no selected relation has: an index of nothing is refused, not built
        raise CorpusError(f"{root}: relation(s) {','.join(rels) or 'none'}, split(s) {','.join(splits)}: "
                          "no evidence sentences selected")
    source = f"lama:{root}:{','.join(rels)}:{','.join(splits)}:{limit or 'all'}"
    return Corpus(source=source, sentences=list(sentences.values()), queries=queries).link_proponents()


# --- raw T-REx -------------------------------------------------------------------------------

def _relation_id(uri: str) -> str:
    return uri.rsplit("/", 1)[-1]


def load_trex(path: Path, templates: dict[str, str] | None = None) -> Corpus:
    """Raw T-REx documents (a JSON list): one sentence per `sentences_boundaries` span, with the
    (subject, relation, object) surface forms of the triples aligned to it. With `templates`
    (relation id -> LAMA template) each distinct fact also becomes a query."""
    try:
        docs = json.loads(path.read_text(encoding="utf-8"))
    except OSError as e:
        raise CorpusError(f"{path}: cannot read T-REx file ({e.strerror})") from None
    except json.JSONDecodeError as e:
        raise CorpusError(f"{path}:{e.lineno}: {json_error(e)}") from None
    if not isinstance(docs, list):
        raise CorpusError(f"{path}: expected a JSON list of T-REx documents")
    sentences: list[Sentence] = []
    facts_seen: dict[tuple[str, str, str], None] = {}
    for d, doc in enumerate(docs):
        try:
            text, bounds, triples = doc["text"], doc["sentences_boundaries"], doc["triples"]
        except (KeyError, TypeError) as e:
            raise CorpusError(f"{path}: document {d} lacks {e}") from None
        per_sentence: dict[int, list[tuple[str, str, str]]] = {}
        for t in triples:
            subj, obj = t["subject"]["surfaceform"], t["object"]["surfaceform"]
            if not subj or not obj or t.get("sentence_id") is None:
                continue
            triple = (subj, _relation_id(t["predicate"]["uri"]), obj)
            per_sentence.setdefault(t["sentence_id"], [])
            if triple not in per_sentence[t["sentence_id"]]:
                per_sentence[t["sentence_id"]].append(triple)
            facts_seen.setdefault(triple)
        for i, (a, b) in enumerate(bounds):
            s_text = text[a:b].strip()
            if s_text:
                sid = f"{doc.get('docid', d)}#{i}"
                sentences.append(Sentence(id=sid, text=s_text, facts=per_sentence.get(i, [])))
    queries = []
    if templates:
        for subj, rel, obj in facts_seen:
            if rel in templates:
                queries.append(Query(id=f"{subj}|{rel}|{obj}", prompt=prompt_from_template(templates[rel], subj),
                                     target=obj, fact=(subj, rel, obj)))
    return Corpus(source=f"trex:{path}", sentences=sentences, queries=queries).link_proponents()


# --- dispatch --------------------------------------------------------------------------------

def store_corpus(
    dest: Path | None,
    spec: str,
    relations: Sequence[str] | None = None,
    splits: Sequence[str] = SPLITS,
    limit: int | None = None,
    *,
    text_field: str = "text",
    id_field: str = "id",
    passages: Passages | None = None,
) -> CorpusStore:
    """'sample', records (a .jsonl, .jsonl.gz, .jsonl.zst or .parquet file, a `datasets` directory, or a directory of
    such files), a LAMA T-REx directory, or a raw T-REx .json file, written to a corpus store at `dest` (in memory:
    None): records streamed there one at a time (memory bounded by a batch of them, whatever the corpus's size), LAMA
    and T-REx loaded first. `relations`, `splits` (other than all three) and `limit` select LAMA facts, `text_field`
    and `id_field` name a record's fields: with a corpus of the other kind they are refused, not ignored. `passages`
    cuts records longer than a passage; LAMA and T-REx sentences are kept whole, one example each, as FTRACE does."""
    got = _selected(spec, relations, splits, limit, text_field, id_field)
    if isinstance(got, Corpus):
        return write_corpus(dest, got)
    return store_records(dest, got, "sample" if spec == "sample" else None, text_field=text_field,
                         id_field=id_field, passages=passages)


def _selected(spec: str, relations: Sequence[str] | None, splits: Sequence[str], limit: int | None,
              text_field: str, id_field: str) -> Path | Corpus:
    """The file or directory of records `spec` names, or the LAMA or T-REx corpus it names, loaded; options of the
    other kind are refused."""
    path = Path(spec)
    if spec != "sample" and not path.exists():
        raise CorpusError(f"{path}: corpus not found (give 'sample', a .jsonl[.gz|.zst] or .parquet file, a datasets "
                          "or shards directory, a LAMA T-REx directory or a T-REx .json file)")
    if spec == "sample" or is_records(path):
        _lama_only(spec, "a corpus of records", relations, splits, limit)
        return sample_path() if spec == "sample" else path
    fields = [f"{option} {value}" for option, value, default in (("--text-field", text_field, "text"),
                                                                  ("--id-field", id_field, "id")) if value != default]
    if fields:
        raise CorpusError(f"{fields[0]}: the corpus {spec!r} is LAMA T-REx data, whose fields are fixed; --text-field "
                          "and --id-field name the fields of a corpus of records")
    if not path.is_dir() and path.suffix != ".json":
        raise CorpusError(f"{path}: not a corpus file (.jsonl, .jsonl.gz, .jsonl.zst, .parquet, or a raw T-REx "
                          ".json)")
    if path.is_dir():
        return load_lama(path, relations, splits, limit)
    _lama_only(spec, "a raw T-REx file", relations, splits, limit)
    rel_file = path.parent.parent / "lama-trex" / "relations.jsonl"
    return load_trex(path, load_templates(rel_file) if rel_file.exists() else None)


def _lama_only(spec: str, kind: str, relations: Sequence[str] | None, splits: Sequence[str],
               limit: int | None) -> None:
    """Refuse a LAMA selection (`--relation`, `--split`, `--limit`) for a corpus of another kind, which would
    otherwise be loaded whole."""
    given = [(option, value) for option, value, wanted in (
        ("--relation", ",".join(relations or ()), bool(relations)),
        ("--split", ",".join(splits), list(splits) != list(SPLITS)),
        ("--limit", str(limit), limit is not None)) if wanted]
    if given:
        option, value = given[0]
        raise CorpusError(f"{option} {value}: the corpus {spec!r} is {kind}; --relation, --split and --limit select "
                          "facts of a LAMA T-REx directory (relations.jsonl + P*/{train,dev,test}.jsonl)")


def _in_memory(store: Callable[Concatenate[Path | None, P], CorpusStore]) -> Callable[P, Corpus]:
    """`store(None, ...)` read back whole, with `store`'s signature less `dest` (a LAMA corpus goes through the
    in-memory store too: a few seconds at 100k sentences, for one definition of the arguments)."""
    def load_corpus(*args: P.args, **kwargs: P.kwargs) -> Corpus:
        return store(None, *args, **kwargs).corpus()
    sig = inspect.signature(store)
    load_corpus.__signature__ = sig.replace(parameters=list(sig.parameters.values())[1:],  # type: ignore[attr-defined]
                                            return_annotation="Corpus")
    load_corpus.__doc__ = "`store_corpus`'s corpus held in memory, as a `Corpus` (the same arguments, without `dest`)."
    return load_corpus


load_corpus = _in_memory(store_corpus)
