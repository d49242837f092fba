"""`ftrace query --prompts FILE`: many prompts traced in one process, written for analysis (JSONL, CSV)."""

from __future__ import annotations

import csv
import json
from collections.abc import Callable, Iterator
from pathlib import Path

from pydantic import BaseModel
from tqdm import tqdm

from ftrace import FtraceError
from ftrace.corpus.files import read_records
from ftrace.plumbing import log, replacing
from ftrace.query.result import QueryResult


class Prompt(BaseModel):
    id: str
    prompt: str
    target: str | None = None


def read_prompts(path: Path) -> list[Prompt]:
    """A .txt file's non-blank lines, or records {prompt, target?, id?} (ids default to the line or row)."""
    if not path.is_file():
        raise FtraceError(f"--prompts {path}: no such file")
    if path.suffix == ".txt":
        try:
            lines = path.read_text(encoding="utf-8").splitlines()
        except UnicodeDecodeError as e:
            raise FtraceError(f"--prompts {path}: not UTF-8 text (byte {e.object[e.start]:#04x})") from None
        out = [Prompt(id=str(n), prompt=line.strip()) for n, line in enumerate(lines, 1) if line.strip()]
    else:
        out = []
        for where, r in read_records(path):
            prompt, target, rid = r.get("prompt"), r.get("target"), r.get("id")
            if not isinstance(prompt, str) or not prompt.strip():
                raise FtraceError(f"{where}: a prompt record needs a non-blank 'prompt'")
            if target is not None and (not isinstance(target, str) or not target.strip()):
                raise FtraceError(f"{where}: 'target' must be non-blank text (or left out: the model's answer)")
            out.append(Prompt(id=str(rid) if rid is not None else where.default_id(""), prompt=prompt,
                              target=target))
    if not out:
        raise FtraceError(f"--prompts {path}: no prompts")
    return out


def check_out(out: Path | None) -> None:
    """Refuse an --out whose directory is missing before any prompt is traced, not after all of them."""
    if out is not None and not out.parent.is_dir():
        raise FtraceError(f"--out {out}: no directory {out.parent}")


def trace_all(prompts: list[Prompt], trace: Callable[[Prompt], QueryResult]
              ) -> Iterator[tuple[Prompt, QueryResult | str]]:
    """Each prompt's result, or the one-line error it got (the other prompts go on)."""
    failed = 0
    for p in tqdm(prompts, desc="prompts", unit="prompt"):
        try:
            yield p, trace(p)
        except FtraceError as e:
            failed += 1
            yield p, str(e)
    if failed:
        log(f"{failed} of {len(prompts)} prompts failed: their records hold the error")


def as_record(p: Prompt, r: QueryResult | str) -> str:
    return json.dumps({"id": p.id, **(r.model_dump() if isinstance(r, QueryResult) else {"prompt": p.prompt,
                                                                                          "error": r})},
                      ensure_ascii=False)


CSV_FIELDS = ["id", "prompt", "target", "target_from", "method", "rank", "sentence_id", "document", "span_start",
              "span_end", "score", "proponent", "text"]


def write_results(results: Iterator[tuple[Prompt, QueryResult | str]], out: Path | None) -> int:
    """Each result as a JSON line ({"id": ..., **result}, or {"id", "prompt", "error"}) on stdout, or OUT.jsonl and
    OUT.csv (a row a hit, every method's score a column) written whole or not at all. How many prompts there were."""
    if out is None:
        n = 0
        for p, r in results:
            print(as_record(p, r), flush=True)
            n += 1
        return n
    done = list(results)
    traced = [(p, r) for p, r in done if isinstance(r, QueryResult)]
    methods = list(dict.fromkeys(m for _, r in traced for row in r.rows for m in row.scores))
    base = out.with_suffix("") if out.suffix in (".jsonl", ".csv") else out
    jsonl, table = base.with_name(base.name + ".jsonl"), base.with_name(base.name + ".csv")
    with replacing(jsonl) as tmp, open(tmp, "w", encoding="utf-8") as f:
        f.writelines(as_record(p, r) + "\n" for p, r in done)
    with replacing(table) as tmp, open(tmp, "w", encoding="utf-8", newline="") as f:
        w = csv.writer(f)
        w.writerow(CSV_FIELDS + [f"score_{m}" for m in methods])
        for p, r in traced:
            for row in r.rows:
                span = row.span or (None, None)
                w.writerow([p.id, r.prompt, r.target, r.target_from, r.method, row.rank, row.sentence_id,
                            row.document, span[0], span[1], row.score, row.proponent, row.text]
                           + [row.scores.get(m) for m in methods])
    log(f"{len(done)} prompts traced: {jsonl} and {table}")
    return len(done)
