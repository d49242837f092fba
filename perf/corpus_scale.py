"""Issue 28's scale table: a corpus of documents cut into passages, ingested with BM25 + embed and HNSW at 10k, 100k
and 1M passages: ingest time, passages/s, peak RSS, disk per passage, stage times, warm and cold query latency, and
HNSW recall against exact search.

    python perf/make_documents.py --out /tmp/lama-docs.jsonl          # once: all LAMA T-REx splits, one per subject
    python perf/corpus_scale.py --documents /tmp/lama-docs.jsonl --sizes 10000,100000,1000000 --work /tmp/scale

Protocol
- Text: the shared LAMA T-REx evidence sentences, joined into one document per subject by perf/make_documents.py
  (--documents), cut by ingest into passages of the default size (--max-tokens 256 tokens, every 192). A corpus of
  N passages: the documents in order, then again under varied ids ("SUBJECT~K") where the real text runs out, until
  their passages (estimated from each document's token count) reach N (with --distinct each copy starts with 30
  words of another document, which shifts all its passage windows: no two passages are the same text); its queries:
  one per fact of the documents it holds (their first copy; proponents linked by fact). Written once per size as
  plain .jsonl, not timed; the exact passage count is the index's.
- Ingest: one `ftrace ingest --no-tracin --hnsw` process per size (BM25 and the default embed vectors of the default
  model in --dtype, HNSW built at the end), its wall time and peak RSS (the largest resident set of the process,
  JVM included, and the largest anonymous and file-backed parts of it: Qdrant Edge memory-maps its segments, whose
  pages count in the resident set but are page cache the kernel can drop) read from /proc, its stages from the
  manifest's timings: reading and cutting the corpus into the index's store (corpus_s), Lucene (bm25_s), embed
  vectors into Qdrant Edge (vectors_s: the plan's pass over every row included), HNSW (hnsw_s); the rest is
  start-up (imports, model load) and fitting the idf pooling.
- Disk: the bytes the index directory allocates (`ftrace info`'s bytes_on_disk), per passage.
- Warm queries: `ftrace serve` on the index (1 torch thread), --warmup untimed requests then --requests timed ones
  per method (bm25, embed, embed+bm25) with the queries' targets, cycling through a seeded sample of the corpus's
  queries: p50 / p95 of the client's wall time.
- Cold: `ftrace query PROMPT --target T --method embed+bm25` in a fresh process, --cold-repeats times: the median.
- HNSW recall@10 of the embed vectors: for --recall-queries seeded queries, the top 10 by HNSW (ftrace's search)
  against the top 10 by exact search (`exact=True`: a full scan of the same store); a hit counts when its score
  reaches the exact 10th score (repeated documents make identical passages, whose vectors tie and may come back
  under either id; `by_id` is the plain overlap; `by_document` counts any copy of the same document), and the median
  time of the HNSW search call alone (`search_ms_p50`, warm). `--recall-of SIZE=INDEX --recall-ef EF,EF` measures a
  kept index again, also at other search beams.
- Nothing else runs on the machine meanwhile (the host's speed varies from day to day: the plain-forward check of
  perf/ingest_scale.py, run just before, is recorded with --speed-check).
- One run per results file: perf/results/corpus_scale-cpu.{json,md} (--out to change).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import re
import signal
import statistics
import subprocess
import sys
import threading
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import numpy as np
from common import ROOT, command_of, machine, proc_status, rel, write_results
from serve_latency import time_method

FTRACE = [sys.executable, "-m", "ftrace.cli"]
TIE = 1e-6  # scores this close are a tie (identical passages have identical vectors)
METHODS = ["bm25", "embed", "embed+bm25"]


DISTINCT_WORDS, DISTINCT_STEP = 30, 7919  # --distinct: the words each copy borrows, and from which document


def passages_per_document(docs: list[dict]) -> list[int]:
    """Each document's passages as ingest's defaults cut it, estimated from its token count (a window's edges
    snap between words, so the real count can differ by one now and then)."""
    from ftrace.config import DEFAULT_MODEL, MAX_TOKENS, CorpusSelection
    from ftrace.corpus.passages import token_windows
    from ftrace.model.loading import load_tokenizer

    size, stride = CorpusSelection().passages(MAX_TOKENS)
    tokenizer = load_tokenizer(DEFAULT_MODEL)
    counts = []
    for k in range(0, len(docs), 512):
        ids = tokenizer([d["text"] for d in docs[k:k + 512]], add_special_tokens=False)["input_ids"]
        counts += [len(token_windows(len(i), size, stride)) for i in ids]
    return counts


def write_documents(docs: list[dict], queries: list[dict], counts: list[int], n: int, path: Path,
                    distinct: bool = False) -> dict:
    """The documents (copied under varied ids past the first pass) until their passages reach `n`, and the queries
    of the subjects they hold. `distinct`: copy K of document i starts with the first DISTINCT_WORDS words of document
    (i + K x DISTINCT_STEP) mod D, which shifts every passage window of the copy, so that no two passages are the
    same text (identical vectors make HNSW's ties)."""
    written, passages, subjects = 0, 0, set()
    tmp = path.with_suffix(".partial")
    with open(tmp, "w", encoding="utf-8") as f:
        k = 0
        while passages < n:
            for i, (d, c) in enumerate(zip(docs, counts, strict=True)):
                if passages >= n:
                    break
                copy = d if k == 0 else {**d, "id": f"{d['id']}~{k}"}
                if k and distinct:
                    tail = docs[(i + k * DISTINCT_STEP) % len(docs)]["text"].split()[:DISTINCT_WORDS]
                    copy["text"] = " ".join(tail) + " " + d["text"]
                f.write(json.dumps(copy, ensure_ascii=False) + "\n")
                subjects.add(d["id"])
                written, passages = written + 1, passages + c
            k += 1
        kept = [q for q in queries if q["fact"][0] in subjects]
        f.writelines(json.dumps(q, ensure_ascii=False) + "\n" for q in kept)
    tmp.rename(path)
    return {"documents": written, "copies": k, "passages_estimated": passages, "queries": len(kept)}


CGROUP_V1 = Path("/sys/fs/cgroup/memory")  # cgroup v1's memory controller (this machine's)


@contextlib.contextmanager
def memory_cgroup(limit_gib: float | None) -> Iterator[Path | None]:
    """A fresh memory cgroup limited to `limit_gib` (None: no cgroup), swap included where the kernel accounts it.
    What the kernel charges to it is the process's heap and the page cache it touches (its memory-mapped files
    included); at the limit it reclaims page cache, and kills the process only when what it holds cannot be
    reclaimed: finishing under the limit shows the work fits in that much memory."""
    if limit_gib is None:
        yield None
        return
    group = CGROUP_V1 / f"ftrace-scale-{os.getpid()}"
    limit = str(int(limit_gib * 2**30))
    try:
        group.mkdir()
        (group / "memory.limit_in_bytes").write_text(limit)
    except OSError as e:
        with contextlib.suppress(OSError):
            group.rmdir()
        raise SystemExit(f"--memory-limit: cannot make a memory cgroup under {CGROUP_V1} ({e.strerror}); it needs "
                         "cgroup v1's memory controller, writable (root)") from None
    with contextlib.suppress(OSError):  # absent where swap is not accounted (and then not used past the limit)
        (group / "memory.memsw.limit_in_bytes").write_text(limit)
    try:
        yield group
    finally:  # a process left in it (an interrupted run) is killed, so that the cgroup can go
        for pid in (group / "cgroup.procs").read_text().split():
            with contextlib.suppress(ProcessLookupError):
                os.kill(int(pid), signal.SIGKILL)
        for _ in range(50):
            try:
                group.rmdir()
                break
            except OSError:
                time.sleep(0.1)
        else:
            print(f"warning: could not remove the memory cgroup {group}", file=sys.stderr)


def cgroup_report(group: Path, limit_gib: float) -> dict:
    """What the memory cgroup saw: its limit, the most it charged (heap + page cache), how often it hit the limit, and
    whether the kernel killed anything for memory (None: this kernel does not say)."""
    oom = dict(line.split() for line in (group / "memory.oom_control").read_text().splitlines())
    return {"limit_gib": limit_gib, "max_usage_gib": round(int((group / "memory.max_usage_in_bytes").read_text())
                                                           / 2**30, 2),
            "limit_hits": int((group / "memory.failcnt").read_text()),
            "oom_kills": int(oom["oom_kill"]) if "oom_kill" in oom else None}


def ingest(corpus: Path, index: Path, dtype: str, limit_gib: float | None = None) -> dict:
    """One `ftrace ingest` process: wall seconds, and its memory read from /proc every 0.2 s: the peak resident set
    (VmHWM, JVM included; its last reading before the process ends) and the largest anonymous (heap) and file-backed
    (memory-mapped: Qdrant's segments, the model's weights) parts, in GiB; with `limit_gib`, run in a memory cgroup of
    that size (`memory_cgroup`) and its report."""
    start = time.perf_counter()
    command = [*FTRACE, "ingest", "--index", str(index), "--corpus", str(corpus), "--no-tracin", "--hnsw", "--dtype",
               dtype]
    with memory_cgroup(limit_gib) as group, subprocess.Popen(
            command if group is None else ["sh", "-c", 'echo $$ > "$0" && exec "$@"', str(group / "cgroup.procs"),
                                           *command],  # the shell joins the cgroup, then becomes the ingest
            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, env=env(2)) as p:
        err: list[str] = []
        reader = threading.Thread(target=lambda: err.append(p.stderr.read() if p.stderr else ""), daemon=True)
        reader.start()
        peaks = {"VmHWM": 0, "RssAnon": 0, "RssFile": 0}
        while p.poll() is None:
            for k, v in proc_status(p.pid, tuple(peaks)).items():
                peaks[k] = max(peaks[k], v)
            time.sleep(0.2)
        reader.join()
        wall = time.perf_counter() - start
        capped = cgroup_report(group, limit_gib) if group is not None and limit_gib is not None else None
    if p.returncode:
        raise SystemExit(f"ingest of {corpus} failed (exit {p.returncode}; {capped or 'no memory cgroup'}):\n"
                         f"{''.join(err)[-3000:]}")
    gib = {k: round(v / 2**20, 2) for k, v in peaks.items()}
    return {"wall_s": round(wall, 1), "peak_rss_gib": gib["VmHWM"], "peak_anon_gib": gib["RssAnon"],
            "peak_file_gib": gib["RssFile"]} | ({"memory_cgroup": capped} if capped else {})


def env(threads: int) -> dict[str, str]:
    return {**os.environ, "OMP_NUM_THREADS": str(threads), "MKL_NUM_THREADS": str(threads),
            "TOKENIZERS_PARALLELISM": "false", "PYTHONPATH": str(ROOT)}


def sample(index: Path, n: int, seed: int) -> list[dict]:
    """A seeded sample of the index's queries with a proponent (read from its store: not the whole corpus)."""
    from ftrace.index.layout import IndexDir

    queries = [q for q in IndexDir(index).texts.queries() if q.proponents]
    picks = np.random.default_rng(seed).choice(len(queries), min(n, len(queries)), replace=False)
    return [{"prompt": queries[i].prompt, "target": queries[i].target} for i in sorted(picks)]


def warm(index: Path, queries: list[dict], args) -> dict:
    from ftrace.testing import start_server

    server = start_server(index, index.with_name(index.name + ".serve.log"), "--device", "cpu", env=env(1))
    try:
        out = {"server_startup_s": round(server.startup_s, 1)}
        for method in METHODS:
            r = time_method(server.url, queries, method, args.warmup, args.requests, answer=False)
            out[method] = {k: r["latency_s"].get(k) for k in ("p50", "p95")} | {"errors": r["errors"]}
            print(f"  warm {method:<11} p50 {out[method]['p50']:.3f} s", flush=True)
    finally:
        server.stop()
    return out


def cold(index: Path, q: dict, repeats: int) -> dict:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        p = subprocess.run([*FTRACE, "query", q["prompt"], "--index", str(index), "--target", q["target"],
                            "--method", "embed+bm25"], capture_output=True, text=True, env=env(2))
        times.append(time.perf_counter() - start)
        if p.returncode:
            raise SystemExit(f"ftrace query failed:\n{p.stderr[-2000:]}")
    return {"median_s": round(statistics.median(times), 2), "min_s": round(min(times), 2),
            "max_s": round(max(times), 2), "repeats": repeats}


def recall(index: Path, queries: list[dict], k: int, others: list[int] | None = None) -> dict[int, dict]:
    """HNSW's top k against exact search's for the embed vectors, per search beam (hnsw_ef: the store's own, then
    `others`), each query's vector and exact top k computed once for all beams. A corpus of repeated documents
    holds identical passages, whose vectors tie: a tie may come back under either id, so a hit counts when its
    score reaches the exact k-th score (`recall@k`); `by_id` is the plain overlap of ids; `by_document` the overlap
    of the documents the hits were cut from, whichever copy (`DOC~K`), counted with multiplicity (per document, not
    per passage): near-copies of a passage score nearly alike, and which copy comes back is then a matter of
    near-ties, not of the graph."""
    from ftrace.query.tracer import Tracer

    tracer = Tracer(index, device="cpu")
    try:
        beams = list(dict.fromkeys([tracer.store.search_ef(), *(others or [])]))
        got, by_id, by_document, seconds = ({b: [] for b in beams} for _ in range(4))
        for q in queries:
            v = tracer.query_vectors(q["prompt"], q["target"], ["embed"])["embed"]
            exact = tracer.store.search("embed", v, k, exact=True)
            floor = min(score for _, score in exact) - TIE
            for b in beams:
                tracer.store.beam = b
                start = time.perf_counter()
                approx = tracer.store.search("embed", v, k)
                seconds[b].append(time.perf_counter() - start)
                got[b].append(sum(score >= floor for _, score in approx) / max(1, len(exact)))
                by_id[b].append(len({i for i, _ in exact} & {i for i, _ in approx}) / max(1, len(exact)))
                same = Counter(source_document(i) for i, _ in exact) & Counter(source_document(i) for i, _ in approx)
                by_document[b].append(sum(same.values()) / max(1, len(exact)))
    finally:
        tracer.close()
    return {b: {f"recall@{k}": round(float(np.mean(got[b])), 4), "min": round(float(np.min(got[b])), 2),
                "perfect": round(float(np.mean(np.array(got[b]) == 1)), 3),
                "by_id": round(float(np.mean(by_id[b])), 4), "by_document": round(float(np.mean(by_document[b])), 4),
                "queries": len(got[b]), "beam": b, "search_ms_p50": round(1000 * float(np.median(seconds[b])), 1)}
            for b in beams}


def source_document(passage_id: str) -> str:
    """The document a passage was cut from, whichever copy: 'DOC~3#2' -> 'DOC' (a passage id is DOCUMENT#N)."""
    return re.sub(r"~\d+$", "", passage_id.rpartition("#")[0] or passage_id)


def recall_of(args) -> None:
    """--recall-of SIZE=INDEX: the HNSW recall of an index kept from a run (or built by the same ingest command)
    measured again, into that size's entry of --out."""
    size, _, path = args.recall_of.partition("=")
    out = Path(args.out)
    res = json.loads(out.read_text())
    entry = next(s for s in res["sizes"] if s["target"] == int(size))
    qs = sample(Path(path), max(args.queries, args.recall_queries), args.seed)
    others = [int(ef) for ef in args.recall_ef.split(",")] if args.recall_ef else []
    by_beam = recall(Path(path), qs[:args.recall_queries], 10, others)
    entry["hnsw_recall"] = by_beam.pop(next(iter(by_beam))) | {"command": command_of(__file__, None),
                                                                 "index": rel(path)}
    if by_beam:
        entry["hnsw_recall"]["by_beam"] = {str(ef): r for ef, r in by_beam.items()}
    write_results(out, res, markdown(res))


def run_size(n: int, docs, queries, counts, args) -> dict:
    from ftrace.index.layout import IndexDir

    work = Path(args.work)
    corpus, index = work / f"docs-{n}{'-distinct' if args.distinct else ''}.jsonl", work / f"index-{n}"
    made = write_documents(docs, queries, counts, n, corpus, args.distinct) if not corpus.exists() else json.loads(
        corpus.with_suffix(".json").read_text())
    corpus.with_suffix(".json").write_text(json.dumps(made))
    if index.exists():
        raise SystemExit(f"{index}: left by an earlier run; delete it to measure again")
    print(f"[{n}] ingest {rel(corpus)} ({made['documents']} documents)", flush=True)
    built = ingest(corpus, index, args.dtype, args.memory_limit)
    d = IndexDir(index)
    m = d.manifest
    passages = m.corpus.examples
    out = {"target": n, "corpus": made, "passages": passages, "ingest": built,
           "passages_per_s": round(passages / built["wall_s"], 1), "stages_s": m.timings,
           "disk_bytes": d.status()["bytes_on_disk"]}
    out["disk_bytes_per_passage"] = round(out["disk_bytes"] / passages)
    print(f"  {passages} passages in {built['wall_s']} s, peak RSS {built['peak_rss_gib']} GiB", flush=True)
    qs = sample(index, max(args.queries, args.recall_queries), args.seed)
    out["warm"] = warm(index, qs[:args.queries], args)
    out["cold_query"] = cold(index, qs[0], args.cold_repeats)
    out["hnsw_recall"], = recall(index, qs[:args.recall_queries], 10).values()  # at the store's own beam
    if not args.keep:
        import shutil

        shutil.rmtree(index)
    return out


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--documents", type=Path, required=True, help="perf/make_documents.py's output (.jsonl)")
    ap.add_argument("--sizes", default="10000,100000,1000000", help="passages per corpus, comma-separated")
    ap.add_argument("--dtype", default="bfloat16", choices=["float32", "bfloat16"])
    ap.add_argument("--work", default="/tmp/corpus-scale")
    ap.add_argument("--queries", type=int, default=50, help="distinct queries the warm requests cycle through")
    ap.add_argument("--requests", type=int, default=40)
    ap.add_argument("--warmup", type=int, default=5)
    ap.add_argument("--cold-repeats", type=int, default=3)
    ap.add_argument("--recall-queries", type=int, default=200)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--speed-check", type=Path, default=None, help="perf/ingest_scale.py's plain-forward check")
    ap.add_argument("--distinct", action="store_true",
                    help="copies start with words borrowed from another document: no two passages the same text")
    ap.add_argument("--memory-limit", type=float, default=None, metavar="GIB",
                    help="run each ingest in a memory cgroup of GIB GiB (heap and page cache charged together)")
    ap.add_argument("--keep", action="store_true", help="keep the indexes (default: delete each once measured)")
    ap.add_argument("--recall-of", metavar="SIZE=INDEX", default=None,
                    help="measure the HNSW recall again on a kept INDEX for SIZE's entry of --out, and stop")
    ap.add_argument("--recall-ef", default=None, metavar="EF,EF",
                    help="with --recall-of: the recall again at these search beams (hnsw_ef) beside ftrace's")
    ap.add_argument("--out", default=str(ROOT / "perf" / "results" / "corpus_scale-cpu.json"))
    args = ap.parse_args(argv)
    if args.recall_of:
        recall_of(args)
        return json.loads(Path(args.out).read_text())
    import torch

    Path(args.work).mkdir(parents=True, exist_ok=True)
    lines = [json.loads(x) for x in args.documents.read_text(encoding="utf-8").splitlines() if x.strip()]
    docs, queries = [x for x in lines if "text" in x], [x for x in lines if "prompt" in x]
    counts = passages_per_document(docs)
    res: dict = {"command": command_of(__file__, argv), "documents": {
        "file": args.documents.name, "count": len(docs), "passages_estimated": int(sum(counts)),
        "words": sum(len(d["text"].split()) for d in docs), "queries": len(queries)},
        "dtype": args.dtype, "distinct": args.distinct, "machine": machine(torch.device("cpu")), "sizes": []}
    if args.speed_check:
        ref = json.loads(args.speed_check.read_text())["reference"]["methods"]["plain forward"]
        res["plain_forward_sentences_per_s"] = round(ref["examples_per_s"]["median"], 1)
    for n in [int(x) for x in args.sizes.split(",")]:
        res["sizes"].append(run_size(n, docs, queries, counts, args))
        write_results(Path(args.out), res, markdown(res))
    return res


def markdown(r: dict) -> str:
    d = r["documents"]
    lines = [
        "# A corpus of documents at 10k, 100k and 1M passages (issue 28)", "",
        f"`{r['command']}`", "",
        f"Text: the shared LAMA T-REx evidence sentences joined into {d['count']:,} per-subject documents "
        f"({d['words']:,} words, about {d['passages_estimated']:,} passages of 256 tokens every 192); larger corpora "
        "repeat them under varied ids (`SUBJECT~K`)"
        + (f", each copy starting with the first {DISTINCT_WORDS} words of another document (`--distinct`: every "
           "passage window shifts, no two passages the same text)" if r.get("distinct") else "")
        + ". BM25 + embed (no gradients), HNSW built at the end, "
        f"SmolLM2-135M-Instruct (dequantised from its Q4_1 GGUF) in {r['dtype']}. "
        + (f"Host speed: plain forward {r['plain_forward_sentences_per_s']} LAMA sentences/s (fast day: 77). "
           if "plain_forward_sentences_per_s" in r else ""), "",
        "| passages | documents (copies) | ingest | passages/s | peak RSS (anon / file) | disk / passage | corpus "
        "| bm25 | vectors | hnsw | warm p50 / p95: bm25 | embed | embed+bm25 | cold query | HNSW recall@10 |",
        "|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    def ms(w: dict) -> str:
        return f"{1000 * w['p50']:.0f} / {1000 * w['p95']:.0f} ms"

    def rss(run: dict) -> str:  # runs before the split read only the peak (/usr/bin/time)
        split = f" ({run['peak_anon_gib']} / {run['peak_file_gib']})" if "peak_anon_gib" in run else ""
        return f"{run['peak_rss_gib']} GiB{split}"

    for s in r["sizes"]:
        t, w = s["stages_s"], s["warm"]
        lines.append(
            f"| {s['passages']:,} | {s['corpus']['documents']:,} ({s['corpus']['copies']}) "
            f"| {s['ingest']['wall_s'] / 60:.1f} min "
            f"| {s['passages_per_s']:,.0f} | {rss(s['ingest'])} | {s['disk_bytes_per_passage']:,} B "
            f"| {t.get('corpus_s', 0):.0f} s | {t.get('bm25_s', 0):.0f} s | {t.get('vectors_s', 0):.0f} s "
            f"| {t.get('hnsw_s', 0):.0f} s | {ms(w['bm25'])} | {ms(w['embed'])} | {ms(w['embed+bm25'])} "
            f"| {s['cold_query']['median_s']} s | {s['hnsw_recall']['recall@10']} |")
    lines += ["", "Stages from the manifest's timings (the rest of the ingest's wall time is start-up and the idf "
              "fit); warm latencies are `ftrace serve`'s /trace with targets, one request at a time; the cold query "
              "is a fresh `ftrace query --method embed+bm25` process (median). HNSW recall: the embed vectors' top "
              "10 by HNSW against exact search on the same store, a tie (an identical passage of another copy) "
              "counting as found; the plain overlap of ids is `by_id` in the JSON beside this, with the rest."]
    for s in r["sizes"]:
        if "memory_cgroup" in s["ingest"]:
            g = s["ingest"]["memory_cgroup"]
            lines += ["", f"The {s['passages']:,}-passage ingest ran in a memory cgroup limited to "
                      f"{g['limit_gib']} GiB (`--memory-limit`: heap and page cache charged together, page cache "
                      "reclaimed at the limit): "
                      f"it finished with {g['oom_kills']} kills for memory, the cgroup's usage peaked at "
                      f"{g['max_usage_gib']} GiB and met the limit {g['limit_hits']:,} times."]
    again = [s for s in r["sizes"] if "command" in s["hnsw_recall"]]
    if again:
        lines += ["", "HNSW recall measured again on the kept index (`--recall-of`): " + "; ".join(
            f"{s['passages']:,} passages: `{s['hnsw_recall']['command']}`" for s in again) + "."]
        for s in again:
            beams = s["hnsw_recall"].get("by_beam", {})
            if beams:
                lines += ["", f"Recall@10 at {s['passages']:,} passages by search beam (hnsw_ef; ftrace's is "
                          f"{s['hnsw_recall']['beam']}): " + ", ".join(
                              f"{ef}: {b['recall@10']} (by document {b['by_document']}"
                              + (f", search p50 {b['search_ms_p50']} ms" if "search_ms_p50" in b else "") + ")"
                              for ef, b in beams.items())
                          + "."]
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
