"""A corpus of documents from real text this machine has: the shared LAMA T-REx evidence sentences joined into one
document per subject (each fact's evidence, in the data's order), with the facts as the documents' facts and one
query per fact, written as ftrace records (.jsonl, .jsonl.gz or .jsonl.zst by the name given).

    python perf/make_documents.py --out /tmp/docs.jsonl.gz [--relation P176,P19] [--split train] [--copies N]

--copies N repeats every document N times under varied ids ("SUBJECT~K"): where real text runs out, a corpus of the
size asked for, of the same text (its queries are not repeated; results made with it must say so).
"""

from __future__ import annotations

import argparse
import gzip
import json
from collections.abc import Iterator
from pathlib import Path
from typing import IO, Any

SHARED = Path(__file__).resolve().parents[2] / "shared" / "data" / "lama-trex"


def documents(root: Path, relations: list[str] | None, splits: list[str]) -> tuple[list[dict], list[dict]]:
    """(documents, queries): one document per subject, its facts' evidence joined; one query per fact."""
    from ftrace.corpus import load_lama

    corpus = load_lama(root, relations, splits)
    by_id = corpus.by_id()
    docs: dict[str, dict[str, Any]] = {}
    for q in corpus.queries:
        if q.fact is None:
            continue
        d = docs.setdefault(q.fact[0], {"id": q.fact[0], "sentences": [], "facts": []})
        for sid in q.proponents:
            if sid not in d["sentences"]:
                d["sentences"].append(sid)
        if list(q.fact) not in d["facts"]:
            d["facts"].append(list(q.fact))
    out = [{"id": d["id"], "text": " ".join(by_id[s].text for s in d["sentences"]), "facts": d["facts"]}
           for d in docs.values() if d["sentences"]]
    queries = [{"id": q.id, "prompt": q.prompt, "target": q.target, "fact": list(q.fact)}
               for q in corpus.queries if q.fact is not None and q.proponents]
    return out, queries


def opener(path: Path) -> IO[str]:
    if path.name.endswith(".gz"):
        return gzip.open(path, "wt", encoding="utf-8")
    if path.name.endswith(".zst"):
        import io

        import zstandard

        return io.TextIOWrapper(zstandard.ZstdCompressor().stream_writer(open(path, "wb")), encoding="utf-8")
    return open(path, "w", encoding="utf-8")


def records(docs: list[dict], queries: list[dict], copies: int) -> Iterator[dict]:
    for k in range(copies):
        for d in docs:
            yield d if k == 0 else {**d, "id": f"{d['id']}~{k}"}
    yield from queries


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--lama", type=Path, default=SHARED)
    ap.add_argument("--relation", default=None, help="comma-separated LAMA relations (default: all)")
    ap.add_argument("--split", default="train,dev,test")
    ap.add_argument("--copies", type=int, default=1)
    o = ap.parse_args()
    docs, queries = documents(o.lama, o.relation.split(",") if o.relation else None, o.split.split(","))
    with opener(o.out) as f:
        for r in records(docs, queries, o.copies):
            f.write(json.dumps(r, ensure_ascii=False) + "\n")
    words = sum(len(d["text"].split()) for d in docs)
    print(f"{o.out}: {len(docs)} documents x {o.copies} ({words:,} words each copy), {len(queries)} queries")


if __name__ == "__main__":
    main()
