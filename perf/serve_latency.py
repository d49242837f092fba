"""Warm `ftrace serve` latency and load on the CPU: /trace p50 / p95 per method at 1k, 10k and all
~100k LAMA T-REx training examples, the model part and the store part timed separately, and a bounded
load test.

    python perf/serve_latency.py                       # SmolLM2-135M; 1k, 10k, all 102,133 sentences
    python perf/serve_latency.py --model PATH --corpus sample --sizes 100,all --requests 5 --load-seconds 3

Protocol
- Corpora: the LAMA T-REx sentences of the shared data (--corpus, default ../shared/data/lama-trex):
  all of them for "all", a seeded sample of N sentences otherwise, each with the queries whose facts
  its sentences state (proponents restricted to the sample); written once as a plain .jsonl corpus.
- Indexes (under --work, reused when complete): `ftrace ingest` with the default settings: BM25 over
  the real sentences (Lucene), real `embed` vectors (the model's embedding layer, mean-pooled: 576
  dimensions for SmolLM2-135M) and `tracin` vectors of the real size (4,096: the default projected
  embedding-layer gradient) that are SEEDED RANDOM UNIT VECTORS: this script swaps the gradient
  featurizer's `vectors` for a seeded Gaussian generator (normalised) inside ingest, because a forward
  and backward pass per example would take hours for 100k examples on 2 cores. The manifest and
  everything else are ingest's own, so queries compute real query gradients; exact search (ftrace's
  default: no HNSW) scans every stored vector whatever its values.
- Server: `ftrace serve` in a subprocess (torch threads: --threads), queried over HTTP on 127.0.0.1.
- Per size and method: --warmup untimed requests, then --requests timed ones, one at a time, cycling
  through a seeded sample of the corpus's queries (dev split first) with their targets given (the
  trace itself); "bm25+embed, model answer" leaves the target out (greedy answer generation included).
  Latency: the client's wall time per request. Parts, from the server's Server-Timing header: model =
  answer generation + query vectors; store = BM25 (Lucene) + Qdrant Edge; the rest of the server's
  total is fusion and building the rows; the rest of the latency is HTTP and JSON.
- Load: --clients concurrent clients for --load-seconds against the largest index, bm25+embed with
  targets: completed requests per second, latency p50 / p95, errors (any non-200 or failed request).
- The machine is shared with others: load averages (as `uptime`) before and after each phase, and the
  cores other processes kept busy during it (/proc/stat minus the server's and this script's CPU time).
- One run per results file: perf/results/serve_latency-cpu.{json,md} (--out to change).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from gradient_throughput import HZ, ROOT, machine, machine_busy_seconds, rel

SHARED = Path(os.environ.get("FTRACE_SHARED_DATA", ROOT.parent / "shared" / "data"))
METHODS = ["bm25", "embed", "tracin", "bm25+embed", "tracin+bm25", "tracin+embed"]
ANSWER = "bm25+embed, model answer"  # the default method without a target: greedy answer generation included
TARGET = {"method": "bm25+embed", "p50_s": 0.5}  # issue 10: warm p50 < 0.5 s at ~100k examples on CPU
LOAD_METHOD = "bm25+embed"


# --- corpora and indexes ------------------------------------------------------------------------

def corpus_file(corpus, size: int | None, seed: int, work: Path) -> tuple[Path, int]:
    """The corpus, or a seeded sample of `size` of its sentences with their queries, as a .jsonl file."""
    from ftrace.corpus import Corpus

    n = len(corpus.sentences) if size is None or size >= len(corpus.sentences) else size
    path = work / f"corpus-{n}-seed{seed}.jsonl"
    if not path.exists():
        if n < len(corpus.sentences):
            keep = sorted(np.random.default_rng(seed).choice(len(corpus.sentences), n, replace=False))
            sentences = [corpus.sentences[i] for i in keep]
            ids = {s.id for s in sentences}
            queries = [q.model_copy(update={"proponents": [p for p in q.proponents if p in ids]})
                       for q in corpus.queries]
            corpus = Corpus(source=corpus.source, sentences=sentences, queries=[q for q in queries if q.proponents])
        work.mkdir(parents=True, exist_ok=True)
        corpus.write_jsonl(path)
    return path, n


def random_unit_vectors(size: int, seed: int):
    """A stand-in for a featurizer's `vectors`: seeded Gaussian vectors, unit-normalised, one per example."""
    rng = np.random.default_rng(seed)

    def vectors(batch) -> np.ndarray:
        v = rng.standard_normal((batch.input_ids.shape[0], size), dtype=np.float32)
        return v / np.linalg.norm(v, axis=1, keepdims=True)
    return vectors


def build_index(corpus_path: Path, index: Path, model: str | None, batch_size: int, seed: int) -> dict:
    """`ftrace ingest` of the corpus with random `tracin` vectors, unless a complete index is there; how long
    its build took (recorded beside the index, so a reused index still reports it)."""
    from ftrace.config import CorpusSelection, IngestConfig
    from ftrace.index.manifest import Manifest
    from ftrace.ingest import pipeline

    record = index.with_name(index.name + ".build.json")
    if (index / "manifest.json").exists() and Manifest.read(index).complete:
        return {**(json.loads(record.read_text()) if record.exists() else {"build_s": None}), "reused": True}
    real = pipeline.build_featurizers

    def with_random_tracin(lm, c, run):
        featurizers = real(lm, c, run)
        for f in featurizers:
            if f.name == "tracin":
                f.vectors = random_unit_vectors(f.size, seed)  # type: ignore[method-assign]
        return featurizers

    started = time.perf_counter()
    pipeline.build_featurizers = with_random_tracin
    try:
        pipeline.ingest(IngestConfig(index=index, corpus=CorpusSelection(corpus=str(corpus_path)), model=model,
                                     batch_size=batch_size, device="cpu"))
    finally:
        pipeline.build_featurizers = real
    built = {"build_s": round(time.perf_counter() - started, 1), "built_at": time.strftime("%Y-%m-%d %H:%M"),
             "load_at_end": [round(x, 2) for x in os.getloadavg()]}
    record.write_text(json.dumps(built) + "\n")
    return {**built, "reused": False}


def sample_queries(index: Path, n: int, seed: int) -> list[dict]:
    """A seeded sample of the index's queries with at least one proponent, dev split first."""
    from ftrace.index.layout import IndexDir

    queries = [q for q in IndexDir(index).corpus.queries if q.proponents]
    dev = [q for q in queries if q.split == "dev"]
    pool = dev if len(dev) >= n else queries
    picks = np.random.default_rng(seed).choice(len(pool), min(n, len(pool)), replace=False)
    return [{"prompt": pool[i].prompt, "target": pool[i].target} for i in sorted(picks)]


# --- measuring ----------------------------------------------------------------------------------

def post(url: str, body: dict) -> tuple[float, int, dict[str, float]]:
    """(seconds, HTTP status, Server-Timing parts in seconds) of one POST /trace."""
    req = urllib.request.Request(f"{url}/trace", data=json.dumps(body).encode(),
                                 headers={"Content-Type": "application/json"})
    start = time.perf_counter()
    try:
        with urllib.request.urlopen(req, timeout=120) as r:
            r.read()
            status, header = r.status, r.headers.get("Server-Timing", "")
    except urllib.error.HTTPError as e:
        e.read()
        status, header = e.code, ""
    except OSError:
        status, header = 0, ""
    seconds = time.perf_counter() - start
    parts = dict(p.split(";dur=") for p in header.split(", ") if ";dur=" in p)
    return seconds, status, {k: float(v) / 1000 for k, v in parts.items()}


def stats(values: list[float]) -> dict:
    a = np.asarray(values, dtype=float)
    if not len(a):
        return {"n": 0}
    return {"n": len(a), "p50": float(np.percentile(a, 50)), "p95": float(np.percentile(a, 95)),
            "min": float(a.min()), "max": float(a.max()), "mean": float(a.mean())}


def process_cpu_seconds(pid: int) -> float:
    try:
        fields = open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / HZ  # utime + stime
    except (OSError, IndexError, ValueError):
        return float("nan")


class Phase:
    """Load averages at both ends, and the cores others kept busy (machine minus server minus this script)."""

    def __init__(self, server_pid: int):
        self.pid = server_pid

    def __enter__(self) -> Phase:
        self.load_before = [round(x, 2) for x in os.getloadavg()]
        t = os.times()
        self.marks = (time.perf_counter(), machine_busy_seconds(), process_cpu_seconds(self.pid), t.user + t.system)
        return self

    def __exit__(self, *exc) -> None:
        t = os.times()
        now = (time.perf_counter(), machine_busy_seconds(), process_cpu_seconds(self.pid), t.user + t.system)
        wall, busy, server, me = (b - a for a, b in zip(self.marks, now, strict=True))
        others = max(0.0, busy - server - me)
        self.result = {"load_before": self.load_before, "load_after": [round(x, 2) for x in os.getloadavg()],
                       "wall_s": round(wall, 1), "server_cores": round(server / wall, 2),
                       "client_cores": round(me / wall, 2), "others_cores": round(others / wall, 2)}


def time_method(url: str, queries: list[dict], method: str, warmup: int, requests: int, answer: bool) -> dict:
    bodies = [{**q, "method": method} for q in queries]
    if answer:
        bodies = [{"prompt": b["prompt"], "method": method} for b in bodies]
    for i in range(warmup):
        post(url, bodies[i % len(bodies)])
    rows = [post(url, bodies[(warmup + i) % len(bodies)]) for i in range(requests)]
    errors = sum(status != 200 for _, status, _ in rows)
    ok = [parts for _, status, parts in rows if status == 200]

    def part(*names: str) -> dict:
        return stats([sum(p.get(n, 0.0) for n in names) for p in ok])
    return {"method": ANSWER if answer else method, "requests": requests, "errors": errors,
            "latency_s": stats([s for s, status, _ in rows if status == 200]), "server_total_s": part("total"),
            "model_s": part("answer", "vectors"), "answer_s": part("answer"), "vectors_s": part("vectors"),
            "store_s": part("bm25", "qdrant"), "bm25_s": part("bm25"), "qdrant_s": part("qdrant")}


def load_test(url: str, queries: list[dict], clients: int, seconds: float) -> dict:
    bodies = [{**q, "method": LOAD_METHOD} for q in queries]
    latencies: list[list[float]] = [[] for _ in range(clients)]
    errors = [0] * clients
    deadline = time.perf_counter() + seconds

    def client(c: int) -> None:
        i = c
        while time.perf_counter() < deadline:
            s, status, _ = post(url, bodies[i % len(bodies)])
            if status == 200:
                latencies[c].append(s)
            else:
                errors[c] += 1
            i += clients
    started = time.perf_counter()
    threads = [threading.Thread(target=client, args=(c,)) for c in range(clients)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    wall = time.perf_counter() - started
    done = [s for per in latencies for s in per]
    return {"clients": clients, "seconds": round(wall, 1), "method": LOAD_METHOD, "completed": len(done),
            "errors": sum(errors), "throughput_rps": len(done) / wall, "latency_s": stats(done)}


# --- one size -----------------------------------------------------------------------------------

def run_size(args, corpus, size: int | None) -> tuple[dict, object]:
    from ftrace.index.manifest import Manifest
    from ftrace.testing import start_server

    path, n = corpus_file(corpus, size, args.seed, Path(args.work))
    index = Path(args.work) / f"index-{n}"
    print(f"[{n} sentences] index {rel(index)}", flush=True)
    built = build_index(path, index, args.model, args.batch_size, args.seed)
    m = Manifest.read(index)
    queries = sample_queries(index, args.queries, args.seed)
    env = {"OMP_NUM_THREADS": str(args.threads), "MKL_NUM_THREADS": str(args.threads),
           "TOKENIZERS_PARALLELISM": "false", "PYTHONPATH": str(ROOT)}
    server = start_server(index, Path(args.work) / f"serve-{n}.log", "--device", "cpu", env=env)
    try:
        methods = [x for x in args.methods if x.split("+")[0] in ("bm25", *m.vectors)]
        results = []
        with Phase(server.proc.pid) as phase:
            for method in methods:
                results.append(time_method(server.url, queries, method, args.warmup, args.requests, answer=False))
                print(f"  {method:<14} p50 {results[-1]['latency_s'].get('p50', float('nan')):.3f} s", flush=True)
            if "bm25+embed" in methods and args.answer:
                results.append(time_method(server.url, queries, "bm25+embed", args.warmup, args.requests,
                                           answer=True))
                print(f"  {ANSWER} p50 {results[-1]['latency_s'].get('p50', float('nan')):.3f} s", flush=True)
        out = {"sentences": n, "examples": m.corpus.examples, "index": rel(index), "corpus_file": rel(path),
               "vectors": {k: v["size"] for k, v in m.vectors.items()}, "build": built,
               "server_startup_s": round(server.startup_s, 1), "queries_sampled": len(queries),
               "results": results, "machine_load": phase.result}
    except BaseException:
        server.stop()
        raise
    return out, server


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", default=None, help="model for ingest and serve (default: ftrace's, SmolLM2-135M)")
    ap.add_argument("--corpus", default=str(SHARED / "lama-trex"), help="any ftrace corpus (default: LAMA T-REx)")
    ap.add_argument("--sizes", default="1000,10000,all", help="sentences per index, comma-separated; all = every one")
    ap.add_argument("--methods", default=",".join(METHODS))
    ap.add_argument("--requests", type=int, default=40, help="timed requests per method and size")
    ap.add_argument("--warmup", type=int, default=5, help="untimed requests first, per method and size")
    ap.add_argument("--queries", type=int, default=50, help="distinct queries the requests cycle through")
    ap.add_argument("--answer", action=argparse.BooleanOptionalAction, default=True,
                    help="also time bm25+embed without a target (the model answers first)")
    ap.add_argument("--clients", type=int, default=8)
    ap.add_argument("--load-seconds", type=float, default=60.0, help="load test length (0: none)")
    ap.add_argument("--threads", type=int, default=1, help="the server's torch/OMP threads")
    ap.add_argument("--batch-size", type=int, default=128, help="ingest batch size")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--work", default=str(ROOT / "indexes" / "perf-serve"), help="corpora, indexes, server logs")
    ap.add_argument("--out", default=str(ROOT / "perf" / "results" / "serve_latency-cpu.json"))
    args = ap.parse_args(argv)
    args.methods = [x for x in args.methods.split(",") if x]
    sizes = [None if s == "all" else int(s) for s in args.sizes.split(",") if s]
    if args.requests < 1 or args.warmup < 0 or not sizes:
        raise SystemExit("--requests must be at least 1, --warmup at least 0, and --sizes name one size")
    os.environ.setdefault("TQDM_DISABLE", "1")
    return run(args, sizes)


def run(args, sizes: list[int | None]) -> dict:
    import torch

    from ftrace.corpus import load_corpus

    started = time.perf_counter()
    corpus = load_corpus(args.corpus)
    per_size, load = [], None
    for i, size in enumerate(sizes):
        result, server = run_size(args, corpus, size)
        try:
            if i == len(sizes) - 1 and args.load_seconds > 0:
                print(f"  load: {args.clients} clients for {args.load_seconds:.0f} s", flush=True)
                with Phase(server.proc.pid) as phase:
                    load = load_test(server.url, sample_queries(Path(args.work) / f"index-{result['sentences']}",
                                                                args.queries, args.seed),
                                     args.clients, args.load_seconds)
                load |= {"sentences": result["sentences"], "machine_load": phase.result}
        finally:
            server.stop()
        per_size.append(result)
    largest = per_size[-1]
    row = next((r for r in largest["results"] if r["method"] == TARGET["method"]), None)
    target = None
    if row and row["latency_s"]["n"]:
        p50 = row["latency_s"]["p50"]
        target = {**TARGET, "sentences": largest["sentences"], "value_s": p50, "met": p50 < TARGET["p50_s"]}
    res = {"model": args.model or "smollm2-135m", "corpus": rel(args.corpus), "device": "cpu",
           "server_threads": args.threads, "warmup": args.warmup, "requests": args.requests,
           "queries": args.queries, "seed": args.seed, "sizes": per_size, "load": load, "target": target,
           "machine": machine(torch.device("cpu")) | {"uptime_load_at_end": [round(x, 2) for x in os.getloadavg()]},
           "total_seconds": round(time.perf_counter() - started, 1),
           "command": " ".join(["python perf/serve_latency.py", *(sys.argv[1:] if __name__ == "__main__" else [])]),
           "notes": [*NOTES, busy_note(per_size, load)]}
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(res, indent=2) + "\n")
    out.with_suffix(".md").write_text(table(res))
    print(table(res))
    print(f"wrote {out} and {out.with_suffix('.md')}")
    return res


NOTES = [
    "tracin vectors are seeded random unit vectors of the real size (see the script's docstring); embed vectors "
    "and BM25 are real. Query gradients are real: the model runs a forward and backward pass per tracin query.",
    "Exact vector search (ftrace's default, no HNSW): the Qdrant part grows with the number of stored vectors "
    "times their size.",
    "Requests run one at a time in the server (one worker thread owns the model and stores), so under load "
    "latency = queueing + service time.",
]


def busy_note(per_size: list[dict], load: dict | None) -> str:
    others = [p["machine_load"]["others_cores"] for p in [*per_size, *([load] if load else [])]]
    loads = [p["machine_load"]["load_before"][0] for p in [*per_size, *([load] if load else [])]]
    return (f"The machine was shared: other processes kept {min(others):.2f}-{max(others):.2f} of its "
            f"{os.cpu_count()} cores busy during the phases (1-minute load average {min(loads):.1f}-{max(loads):.1f} "
            "at their starts); a quiet machine would give lower times, the model-bound ones most.")


# --- report -------------------------------------------------------------------------------------

def built(b: dict) -> str:
    when = f"{b['build_s']} s" if b.get("build_s") is not None else "an unrecorded time"
    return f"{when}{', ' + b['built_at'] if b.get('built_at') else ''}{', reused by this run' if b['reused'] else ''}"


def ms(d: dict, key: str = "p50") -> str:
    return "-" if not d.get("n") else f"{1000 * d[key]:.0f}"


def table(res: dict) -> str:
    m = res["machine"]
    lines = [f"`ftrace serve`, warm, on the CPU: model `{res['model']}`, server torch threads "
             f"{res['server_threads']}, {m['cores']} cores ({m['cpu']}), {m['memory_gb']} GB; torch {m['torch']}, "
             f"Python {m['python']}. Corpus `{res['corpus']}`. {res['warmup']} warm-up then {res['requests']} "
             f"timed requests per method, one at a time, cycling through {res['queries']} queries with their "
             "targets. Milliseconds, p50 / p95; model = answer + query vectors, store = BM25 + Qdrant (from the "
             "server's Server-Timing header).", ""]
    for size in res["sizes"]:
        ml = size["machine_load"]
        lines += [f"### {size['sentences']:,} training examples",
                  "", f"Vectors {size['vectors']} (`{size['index']}`, built by ingest in {built(size['build'])}); "
                  f"server start {size['server_startup_s']} s. Load average {ml['load_before']} -> "
                  f"{ml['load_after']}; during the timing the server used {ml['server_cores']} cores, others "
                  f"{ml['others_cores']}.", "",
                  "| method | latency p50 | p95 | server total p50 | model p50 / p95 | store p50 / p95 | bm25 p50 | "
                  "qdrant p50 | errors |", "|---|---|---|---|---|---|---|---|---|"]
        for r in size["results"]:
            lines.append(f"| {r['method']} | {ms(r['latency_s'])} | {ms(r['latency_s'], 'p95')} | "
                         f"{ms(r['server_total_s'])} | {ms(r['model_s'])} / {ms(r['model_s'], 'p95')} | "
                         f"{ms(r['store_s'])} / {ms(r['store_s'], 'p95')} | {ms(r['bm25_s'])} | {ms(r['qdrant_s'])} | "
                         f"{r['errors']} |")
        lines.append("")
    if res["load"]:
        ld, ml = res["load"], res["load"]["machine_load"]
        lines += [f"### Load: {ld['clients']} concurrent clients for {ld['seconds']} s, {ld['method']}, "
                  f"{ld['sentences']:,} examples", "",
                  f"{ld['completed']} requests completed, {ld['throughput_rps']:.2f} per second; latency p50 "
                  f"{ms(ld['latency_s'])} ms, p95 {ms(ld['latency_s'], 'p95')} ms; {ld['errors']} errors. Load "
                  f"average {ml['load_before']} -> {ml['load_after']}; server {ml['server_cores']} cores, clients "
                  f"{ml['client_cores']}, others {ml['others_cores']}.", ""]
    t = res["target"]
    if t:
        lines += [f"Target (issue 10): warm p50 < {t['p50_s']} s for {t['method']} at {t['sentences']:,} examples: "
                  f"{t['value_s']:.3f} s, {'met' if t['met'] else 'NOT met'}.", ""]
    lines += [f"- {n}" for n in res["notes"]]
    lines += ["", f"Command: `{res['command']}` ({res['total_seconds']} s in all)."]
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
