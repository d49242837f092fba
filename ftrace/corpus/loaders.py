"""Corpus loaders: ftrace's plain jsonl, LAMA T-REx (jsonl per relation), raw T-REx documents.

Every loader returns a `Corpus` whose order depends only on its input and arguments, and every
malformed input raises `CorpusError` naming the file and line.
"""

from __future__ import annotations

import json
from collections.abc import Iterator, Sequence
from importlib import resources
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ValidationError

from ftrace import FtraceError
from ftrace.config import SPLITS
from ftrace.corpus.records import Corpus, Query, Sentence, sentence_id


class CorpusError(FtraceError):
    pass


def _describe(err: ValidationError) -> str:
    e = err.errors()[0]
    where = ".".join(str(p) for p in e["loc"])
    return f"{where}: {e['msg']}" if where else e["msg"]


def _json_error(e: json.JSONDecodeError) -> str:
    """json's message with its position: its `msg` alone can end mid-sentence ("Invalid control character at")."""
    return f"not valid JSON ({e.msg.removesuffix(' at')} at column {e.colno})"


# A plain corpus line a user gives holds one sentence or query: 64 KiB is far more text than any model reads of
# one (--max-tokens), so a longer line is a file that is not one record per line. The files ftrace writes itself
# (an index's corpus.jsonl, whose query lines list every proponent: 5,000 for one LAMA fact) and LAMA lines, with
# all their evidence, are not capped.
MAX_SENTENCE_LINE = 65_536


def read_jsonl(path: Path, max_line: int | None = None) -> Iterator[tuple[int, dict[str, Any]]]:
    """Yield (line number, object) for each non-blank line; a bad line (or one over `max_line` bytes) raises
    CorpusError."""
    try:
        f = open(path, "rb")  # lines decoded one by one, so a bad byte is reported on its own line
    except OSError as e:
        raise CorpusError(f"{path}: cannot read corpus file ({e.strerror})") from None
    with f:
        n = 0
        while raw := f.readline(-1 if max_line is None else max_line + 2):  # a huge line is never read whole
            n += 1
            if max_line is not None and len(raw.rstrip(b"\r\n")) > max_line:
                raise CorpusError(f"{path}:{n}: line longer than {max_line:,} bytes; a corpus line holds one "
                                  "sentence or query")
            try:
                line = raw.decode("utf-8")
            except UnicodeDecodeError as e:
                raise CorpusError(f"{path}:{n}: not UTF-8 text (byte {e.object[e.start]:#04x})") from None
            if not line.strip():
                continue
            try:
                obj = json.loads(line.rstrip("\r\n"))  # without its newline: an error at its end is on this line
            except json.JSONDecodeError as e:
                raise CorpusError(f"{path}:{n}: {_json_error(e)}") from None
            if not isinstance(obj, dict):
                raise CorpusError(f"{path}:{n}: expected a JSON object, got {type(obj).__name__}")
            yield n, obj


def _parse(model: type[BaseModel], obj: Any, where: str) -> Any:
    try:
        return model.model_validate(obj)
    except ValidationError as e:
        raise CorpusError(f"{where}: {_describe(e)}") from None


# --- plain jsonl -----------------------------------------------------------------------------

class _PlainSentence(BaseModel):
    id: str | None = None
    text: str
    facts: list[tuple[str, str, str]] = []


def load_jsonl(path: Path, source: str | None = None, max_line: int | None = MAX_SENTENCE_LINE) -> Corpus:
    """ftrace's own format: sentence lines {"text", "id"?, "facts"?} and query lines
    {"prompt", "target", "id"?, "fact"?, "proponents"?}. See docs in the README. `max_line`: the longest line
    accepted (None for the files ftrace wrote itself)."""
    sentences: list[Sentence] = []
    queries: list[Query] = []
    seen: dict[str, int] = {}
    for n, obj in read_jsonl(path, max_line):
        where = f"{path}:{n}"
        if "prompt" in obj:
            obj.setdefault("id", f"q{n}")
            q = _parse(Query, obj, where)
            if not q.prompt.strip() or not q.target.strip():
                raise CorpusError(f"{where}: query prompt and target must not be empty")
            queries.append(q)
        elif "text" in obj:
            raw = _parse(_PlainSentence, obj, where)
            if not raw.text.strip():
                raise CorpusError(f"{where}: sentence text is empty")
            sid = raw.id or sentence_id(raw.text)
            if sid in seen:
                raise CorpusError(f"{where}: duplicate sentence id {sid!r} (first on line {seen[sid]})")
            seen[sid] = n
            sentences.append(Sentence(id=sid, text=raw.text, facts=raw.facts))
        else:
            raise CorpusError(f"{where}: a line needs either 'text' (a sentence) or 'prompt' (a query)")
    if not sentences:
        raise CorpusError(f"{path}: no sentence lines")
    for q in queries:
        missing = [p for p in q.proponents if p not in seen]
        if missing:
            raise CorpusError(f"{path}: query {q.id!r} names unknown proponent ids {missing[:3]}")
    return Corpus(source=source or str(path), sentences=sentences, queries=queries).link_proponents()


def sample_path() -> Path:
    return Path(str(resources.files("ftrace.corpus") / "data" / "sample.jsonl"))


def load_sample() -> Corpus:
    return load_jsonl(sample_path(), source="sample")


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
        raise CorpusError(f"{path}:{e.lineno}: {_json_error(e)}") from None
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

def load_corpus(
    spec: str,
    relations: Sequence[str] | None = None,
    splits: Sequence[str] = SPLITS,
    limit: int | None = None,
) -> Corpus:
    """'sample', a plain .jsonl file, a LAMA T-REx directory, or a raw T-REx .json file. `relations`, `splits`
    (other than all three) and `limit` select LAMA facts: with any other corpus they are refused, not ignored."""
    if spec == "sample":
        _lama_only(spec, "the built-in plain jsonl corpus", relations, splits, limit)
        return load_sample()
    path = Path(spec)
    if path.is_dir():
        if not (path / "relations.jsonl").exists():
            raise CorpusError(f"{path}: a corpus directory must be in the LAMA T-REx layout (relations.jsonl missing)")
        return load_lama(path, relations, splits, limit)
    if not path.exists():
        raise CorpusError(f"{path}: corpus not found (give 'sample', a .jsonl file, a LAMA T-REx directory or a "
                          "T-REx .json file)")
    if path.suffix == ".json":
        _lama_only(spec, "a raw T-REx file", relations, splits, limit)
        rel_file = path.parent.parent / "lama-trex" / "relations.jsonl"
        return load_trex(path, load_templates(rel_file) if rel_file.exists() else None)
    _lama_only(spec, "a plain jsonl corpus", relations, splits, limit)
    return load_jsonl(path)


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
