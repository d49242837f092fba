"""Issue 28: cutting documents into passages, the ingest's corpus stage, against its floor.

    python perf/make_documents.py --out /tmp/lama-docs.jsonl          # once
    python perf/passage_cut.py --documents /tmp/lama-docs.jsonl --limit 20000

Protocol: the first --limit documents of --documents (perf/make_documents.py's per-subject LAMA documents), cut
into passages of the default size (--max-tokens 256, every 192) by the default model's tokenizer, three ways, each
--repeats times after one untimed warm-up (the tokenizer loaded outside the timed region):
- store: the corpus stage as `ftrace ingest` runs it (`store_records` into a corpus store file: reading the jsonl,
  cutting `CUT_TOGETHER` records together, writing SQLite);
- each document alone: `Passages.spans` of one document at a time (this code's cut without batching across
  documents; the cut before it, one window at a time, is gone: its figures are in the results file's notes);
- floor: each document tokenised once with its offsets, all together (`ModelTokens.offsets`), nothing else: the
  work no cut can avoid (a passage's text must also be tokenised alone to know that it fits, which this omits).
Reported: seconds (min / median / max), documents and passages per second, and each way against the floor.
"""

from __future__ import annotations

import argparse
import itertools
import json
import tempfile
import time
from pathlib import Path

from common import command_of, machine, rel, results_path, spread, write_results

from ftrace.config import DEFAULT_MODEL, MAX_TOKENS, CorpusSelection
from ftrace.corpus import Passages
from ftrace.corpus.loaders import CUT_TOGETHER, store_records
from ftrace.model.corpus import ModelTokens


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--documents", type=Path, required=True)
    ap.add_argument("--limit", type=int, default=20000)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--model", default=DEFAULT_MODEL, help="whose tokenizer cuts (default: ftrace's default model)")
    ap.add_argument("--out")
    a = ap.parse_args(argv)
    tokens = ModelTokens(a.model)
    passages = Passages(*CorpusSelection(corpus=str(a.documents)).passages(MAX_TOKENS), tokens)  # ingest's
    with tempfile.TemporaryDirectory() as tmp:
        sample = Path(tmp) / "documents.jsonl"
        with open(a.documents, encoding="utf-8") as f, open(sample, "w", encoding="utf-8") as g:
            g.writelines(itertools.islice(f, a.limit))
        with open(sample, encoding="utf-8") as f:
            texts = [json.loads(line)["text"] for line in f]
        counts: dict[str, int] = {}

        def store() -> None:
            db = Path(tmp) / "corpus.sqlite"
            db.unlink(missing_ok=True)
            s = store_records(db, sample, passages=passages)
            counts["passages"] = len(s)
            s.close()

        ways = {"store": store,
                "each document alone": lambda: [passages.spans(t) for t in texts],
                "floor": lambda: [tokens.offsets(texts[k:k + CUT_TOGETHER]) for k in range(0, len(texts),
                                                                                           CUT_TOGETHER)]}
        seconds: dict[str, list[float]] = {w: [] for w in ways}
        tokens.offsets(["warm"])
        for r in range(a.repeats + 1):  # round 0: warm-up, untimed
            for way, run in ways.items():
                t = time.perf_counter()
                run()
                if r:
                    seconds[way].append(time.perf_counter() - t)
    import torch

    floor = min(seconds["floor"])
    result = {"command": command_of("perf/passage_cut.py", argv), "machine": machine(torch.device("cpu")),
              "documents": len(texts), "source": rel(a.documents), "passages": counts["passages"],
              "passage_tokens": passages.size, "stride": passages.stride,
              "cut_together": CUT_TOGETHER,
              "ways": {w: {"seconds": spread(s), "documents_per_s": len(texts) / min(s),
                           "passages_per_s": counts["passages"] / min(s), "x_floor": min(s) / floor}
                       for w, s in seconds.items()}}
    md = [f"# Cutting documents into passages (issue 28)\n\n`{result['command']}`\n",
          f"{len(texts):,} documents of {rel(a.documents)}, {counts['passages']:,} passages of {passages.size} "
          f"tokens every {passages.stride}; {result['machine']['cpu']}, "
          f"{result['machine']['cores']} cores; {a.repeats} repeats after a warm-up.\n",
          "| way | seconds (min / median / max) | documents/s | passages/s | x floor |", "|---|---|---|---|---|"]
    for w, v in result["ways"].items():
        s = v["seconds"]
        md.append(f"| {w} | {s['min']:.2f} / {s['median']:.2f} / {s['max']:.2f} | {v['documents_per_s']:,.0f} | "
                  f"{v['passages_per_s']:,.0f} | {v['x_floor']:.2f} |")
    write_results(results_path(a.out, "passage_cut"), result, "\n".join(md) + "\n")
    return result


if __name__ == "__main__":
    main()
