"""Warm `ftrace serve` latency and load on the CPU: /trace p50 / p95 per method at 1k, 10k and all
~100k LAMA T-REx training examples, the model part and the store part timed separately, and a bounded
load test.

    python perf/serve_latency.py                       # SmolLM2-135M; 1k, 10k, all 102,133 sentences
    python perf/serve_latency.py --model PATH --corpus sample --sizes 100,all --requests 5 --load-seconds 3
    python perf/serve_latency.py --dtype bfloat16 --sizes 1000 --load-seconds 0 --beside passive   # shared cores

Protocol
- Corpora: the LAMA T-REx sentences of the shared data (--corpus, default ../shared/data/lama-trex):
  all of them for "all", a seeded sample of N sentences otherwise, each with the queries whose facts
  its sentences state (proponents restricted to the sample); written once as a plain .jsonl corpus.
- Indexes (under --work, shared with perf/ingest_scale.py, reused when complete): each built by a real
  `ftrace ingest` process with the default settings (and --dtype): BM25 over the sentences (Lucene),
  `embed` vectors (the model's embedding layer, mean-pooled: 576 dimensions for SmolLM2-135M) and `tracin`
  vectors (the projected gradient of the tied embedding, 4,096 dimensions) for every sentence. Exact
  search (ftrace's default: no HNSW) scans every stored vector.
- Server: `ftrace serve` in a subprocess (torch threads: --threads), queried over HTTP on 127.0.0.1.
- Per size and method: --warmup untimed requests, then --requests timed ones, one at a time, cycling
  through a seeded sample of the corpus's queries (dev split first) with their targets given (the
  trace itself); "embed+bm25, model answer" leaves the target out (greedy answer generation included).
  Latency: the client's wall time per request. Parts, from the server's Server-Timing header: model =
  answer generation + query vectors; store = BM25 (Lucene) + Qdrant Edge; the rest of the server's
  total is fusion and building the rows; the rest of the latency is HTTP and JSON.
- With --beside POLICY: after the quiet timing of a size, every method timed again while a neighbour runs on
  the same machine, then once more quiet: the neighbour is perf/shared_machine.py's featurisation worker in a
  loop (ingest's work on 32 sentences of the shipped sample corpus, the index's model and dtype, 2 torch
  threads, its idle OpenMP threads as POLICY says: passive is what a running `ftrace ingest` does, spin what a
  torch job with the runtime's default does). Per method, beside p50 / the mean of the two quiet p50s is the
  slowdown (issue 18: within 2x).
- Load: --clients concurrent clients for --load-seconds against the largest index, embed+bm25 with
  targets: completed requests per second, latency p50 / p95, errors (any non-200 or failed request).
- The machine is shared with others: load averages (as `uptime`) before and after each phase, and the
  cores other processes kept busy during it (/proc/stat minus the server's and this script's CPU time).
- One run per results file: perf/results/serve_latency-cpu.{json,md} (--out to change).
"""

from __future__ import annotations

import argparse
import json
import os
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path

import numpy as np
from common import HZ, ROOT, SHARED, command_of, machine, machine_busy_seconds, rel, write_results
from ingest_scale import ingest_size
from shared_machine import POLICIES, neighbour

METHODS = ["bm25", "embed", "tracin", "embed+bm25", "tracin+bm25", "tracin+embed"]
ANSWER = "embed+bm25, model answer"  # the default method without a target: greedy answer generation included
TARGET = {"method": "embed+bm25", "p50_s": 0.5}  # issue 10: warm p50 < 0.5 s at ~100k examples on CPU
LOAD_METHOD = "embed+bm25"
SHARED_SLOWDOWN = 2.0  # issue 18: beside another model process, within 2x of the quiet figure


# --- corpora and indexes ------------------------------------------------------------------------

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


def time_methods(args, url: str, queries: list[dict], methods: list[str]) -> list[dict]:
    """Every method with the queries' targets, then embed+bm25 with the model's answer (--answer)."""
    results = []
    for method, answer in [*((x, False) for x in methods), *([("embed+bm25", True)] if "embed+bm25" in methods
                                                              and args.answer else [])]:
        results.append(time_method(url, queries, method, args.warmup, args.requests, answer=answer))
        print(f"  {results[-1]['method']:<14} p50 {results[-1]['latency_s'].get('p50', float('nan')):.3f} s",
              flush=True)
    return results


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

    built = ingest_size(corpus, size, args, Path(args.work))  # the index, built by `ftrace ingest` unless there
    index, n = ROOT / built["index"], built["sentences"]
    print(f"[{n} sentences] index {rel(index)}", flush=True)
    m = Manifest.read(index)
    queries = sample_queries(index, args.queries, args.seed)
    env = {"OMP_NUM_THREADS": str(args.threads), "MKL_NUM_THREADS": str(args.threads),
           "TOKENIZERS_PARALLELISM": "false", "PYTHONPATH": str(ROOT)}
    server = start_server(index, Path(args.work) / f"serve-{n}.log", "--device", "cpu", env=env)
    try:
        methods = [x for x in args.methods if x.split("+")[0] in ("bm25", *m.vectors)]
        with Phase(server.proc.pid) as phase:
            results = time_methods(args, server.url, queries, methods)
        out = {"sentences": n, "examples": m.corpus.examples, "index": rel(index),
               "vectors": {k: v["size"] for k, v in m.vectors.items()}, "build": built,
               "server_startup_s": round(server.startup_s, 1), "queries_sampled": len(queries),
               "results": results, "machine_load": phase.result}
        if args.beside:
            print(f"  beside a neighbour ({args.beside}), then quiet again", flush=True)
            worker = argparse.Namespace(sentences=32, passes=1, dtype=m.model.dtype, model=args.model)
            with neighbour(worker, args.beside, 2), Phase(server.proc.pid) as beside:
                out["beside"] = time_methods(args, server.url, queries, methods)
            out["beside_load"] = beside.result | {"policy": args.beside}
            out["quiet_after"] = time_methods(args, server.url, queries, methods)
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
                    help="also time embed+bm25 without a target (the model answers first)")
    ap.add_argument("--clients", type=int, default=8)
    ap.add_argument("--load-seconds", type=float, default=60.0, help="load test length (0: none)")
    ap.add_argument("--threads", type=int, default=1, help="the server's torch/OMP threads")
    ap.add_argument("--beside", choices=list(POLICIES), default=None,
                    help="also time every method beside a neighbour with this OpenMP wait policy (passive: ftrace's)")
    ap.add_argument("--dtype", default="float32", choices=["float32", "bfloat16", "float16"],
                    help="ingest --dtype of indexes this script builds")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--work", default=str(ROOT / "indexes" / "scale"),
                    help="corpora, indexes (shared with perf/ingest_scale.py), server logs")
    ap.add_argument("--out", default=str(ROOT / "perf" / "results" / "serve_latency-cpu.json"))
    args = ap.parse_args(argv)
    args.methods = [x for x in args.methods.split(",") if x]
    sizes = [None if s == "all" else int(s) for s in args.sizes.split(",") if s]
    if args.requests < 1 or args.warmup < 0 or not sizes:
        raise SystemExit("--requests must be at least 1, --warmup at least 0, and --sizes name one size")
    os.environ.setdefault("TQDM_DISABLE", "1")
    return run(args, sizes, argv)


def run(args, sizes: list[int | None], argv: list[str] | None = None) -> dict:
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
                    load = load_test(server.url, sample_queries(ROOT / result["index"], args.queries, args.seed),
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
           "command": command_of(__file__, argv),
           "notes": [*NOTES, busy_note(per_size, load)]}
    write_results(Path(args.out), res, table(res))
    return res


NOTES = [
    "Every vector is real: ingest stored each sentence's embedding and gradient; a tracin query computes its own "
    "gradient (a forward and backward pass of the model).",
    "Exact vector search (ftrace's default, no HNSW): the Qdrant part grows with the number of stored vectors "
    "times their size.",
    "Requests run one at a time in the server (one worker thread owns the model and stores), so under load "
    "latency = queueing + service time.",
]


def busy_note(per_size: list[dict], load: dict | None) -> str:
    others = [p["machine_load"]["others_cores"] for p in [*per_size, *([load] if load else [])]]
    loads = [p["machine_load"]["load_before"][0] for p in [*per_size, *([load] if load else [])]]
    quiet = max(others) < 0.1
    return (f"During the quiet phases the machine was {'quiet' if quiet else 'shared'}: other processes kept "
            f"{min(others):.2f}-{max(others):.2f} of its {os.cpu_count()} cores busy during the phases (1-minute load "
            f"average {min(loads):.1f}-{max(loads):.1f} at their starts)"
            + ("." if quiet else "; a quiet machine would give lower times, the model-bound ones most."))


# --- report -------------------------------------------------------------------------------------

def built(b: dict) -> str:
    when = f"{b['wall_s']} s" if b.get("wall_s") is not None else "an unrecorded time"
    return f"{when}{', ' + b['built_at'] if b.get('built_at') else ''}{', reused by this run' if b['reused'] else ''}"


def growth(res: dict) -> list[str]:
    """Cost as the corpus grows, one row per size: the ingest that built the index (its stages) and warm query
    latency p50 by part (model, Lucene, Qdrant) for the default-size methods."""
    def part(size: dict, method: str) -> str:
        r = next((r for r in size["results"] if r["method"] == method), None)
        if r is None or not r["latency_s"].get("n"):
            return "-"
        return (f"{ms(r['latency_s'])} (model {ms(r['model_s'])}, bm25 {ms(r['bm25_s'])}, "
                f"qdrant {ms(r['qdrant_s'])})")

    lines = ["### Cost as the corpus grows", "",
             "| examples | ingest (`ftrace ingest`, wall) | ingest examples/s | ingest stages (s) | index on disk | "
             "embed+bm25 p50 ms (parts) | tracin p50 ms (parts) |", "|---|---|---|---|---|---|---|"]
    for size in res["sizes"]:
        b = size["build"]
        stages = ", ".join(f"{k.removesuffix('_s')} {v:,.0f}" for k, v in (b.get("stages_s") or {}).items()
                           if k.endswith("_s"))
        disk = f"{b['disk_total_bytes'] / 2**30:.2f} GiB" if b.get("disk_total_bytes") else "-"
        rate = f"{b['examples_per_s']:.1f}" if b.get("examples_per_s") else "-"
        lines.append(f"| {size['sentences']:,} | {built(b)} | {rate} | {stages or '-'} | {disk} | "
                     f"{part(size, 'embed+bm25')} | {part(size, 'tracin')} |")
    return [*lines, ""]


def beside_table(size: dict) -> list[str]:
    bl = size["beside_load"]
    lines = [f"Beside a neighbour (a featurisation worker in a loop, 2 threads, OpenMP wait policy {bl['policy']}), "
             f"between the quiet timing above and a second quiet one: the server used {bl['server_cores']} cores, "
             f"others {bl['others_cores']}.", "",
             "| method | quiet p50 (before / after) | beside p50 | beside / quiet | p95 quiet / beside | "
             f"within {SHARED_SLOWDOWN:g}x |", "|---|---|---|---|---|---|"]
    for q, b, a in zip(size["results"], size["beside"], size["quiet_after"], strict=True):
        quiet = [r["latency_s"]["p50"] for r in (q, a) if r["latency_s"].get("n")]
        ratio = b["latency_s"]["p50"] / (sum(quiet) / len(quiet)) if quiet and b["latency_s"].get("n") else None
        lines.append(f"| {q['method']} | {ms(q['latency_s'])} / {ms(a['latency_s'])} | {ms(b['latency_s'])} | "
                     f"{'-' if ratio is None else f'{ratio:.2f}'} | {ms(q['latency_s'], 'p95')} / "
                     f"{ms(b['latency_s'], 'p95')} | "
                     f"{'-' if ratio is None else 'yes' if ratio <= SHARED_SLOWDOWN else 'no'} |")
    return [*lines, ""]


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
    lines += growth(res)
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
        if size.get("beside"):
            lines += beside_table(size)
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
