"""`ingest --hnsw` against exact search on a built index: the recall of Qdrant Edge's HNSW for each vector
kind, its search latency beside exact search's, the time to build it, and the disk and memory it takes.

    python perf/hnsw_recall.py --index indexes/scale/lama-all            # 200 seeded dev queries
    python perf/hnsw_recall.py --index IDX --queries 20 --work /tmp/w    # a quick check

Protocol
- The index is copied (WORK/<name>-hnsw; the original stays exact) and HNSW is built on the copy by the
  same call `ftrace ingest --hnsw` makes (`store.optimize()`: Qdrant Edge's optimizers with their default
  HNSW settings), timed.
- Queries: --queries seeded queries of the index with proponents (dev split first), their targets given;
  each query's vectors are computed once (the model's part is not what is measured here).
- Per query and vector kind: the top --k by exact search (`exact=True`, a full scan) and by HNSW with each search
  beam of --ef (hnsw_ef; 0 = Qdrant's default, ef_construct; ftrace's own is vectors.search_beam(points)); recall@k =
  the share of the exact top k that HNSW returns. Latency per search, min / median / p95 over the queries,
  after --warmup untimed searches.
- Disk: bytes of the Qdrant directory before and after the build; memory: this process's RSS after the
  searches (the store memory-maps its files) and the raw size of each vector kind (points x dimensions x 2
  bytes, float16).
- One run per results file: perf/results/hnsw_recall-cpu.{json,md} (--out to change).
"""

from __future__ import annotations

import argparse
import json
import shutil
import time
from pathlib import Path

import numpy as np
from common import ROOT, command_of, machine, rel, write_results
from serve_latency import sample_queries


def dir_bytes(path: Path) -> int:
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file())


def rss_gib() -> float:
    return next(int(x.split()[1]) for x in open("/proc/self/status") if x.startswith("VmRSS")) / 2**20


def pct(values: list[float]) -> dict:
    a = np.asarray(values) * 1000
    return {"min_ms": float(a.min()), "p50_ms": float(np.median(a)), "p95_ms": float(np.percentile(a, 95))}


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--index", required=True)
    ap.add_argument("--queries", type=int, default=200)
    ap.add_argument("--k", type=int, default=10)
    ap.add_argument("--warmup", type=int, default=5)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--work", default=str(ROOT / "indexes" / "scale"))
    ap.add_argument("--ef", default="0,128,256,512,1024",
                    help="HNSW search beams to compare (0: Qdrant's default); ftrace's: vectors.search_beam(points)")
    ap.add_argument("--out", default=str(ROOT / "perf" / "results" / "hnsw_recall-cpu.json"))
    args = ap.parse_args(argv)
    import torch

    from ftrace.index.files import STORES
    from ftrace.index.manifest import Manifest
    from ftrace.query.tracer import Tracer

    source = Path(args.index)
    copy = Path(args.work) / f"{source.name}-hnsw"
    built = copy / "hnsw.json"
    if not built.exists():
        shutil.rmtree(copy, ignore_errors=True)
        shutil.copytree(source, copy, ignore=shutil.ignore_patterns(".*.lock", ".progress*", "train"))
        exact_bytes = dir_bytes(copy / STORES["edge"])
        tracer = Tracer(copy, device="cpu")
        start = time.perf_counter()
        tracer.store.optimize()
        record = {"build_s": round(time.perf_counter() - start, 1), "qdrant_bytes_exact": exact_bytes}
        tracer.close()
        record["qdrant_bytes_hnsw"] = dir_bytes(copy / STORES["edge"])
        built.write_text(json.dumps(record) + "\n")
    record = json.loads(built.read_text())
    m = Manifest.read(copy)
    names = list(m.vectors)
    tracer = Tracer(copy, device="cpu")
    try:
        queries = sample_queries(copy, args.queries, args.seed)
        qvecs = [tracer.query_vectors(q["prompt"], q["target"], names) for q in queries]
        store = tracer.store
        for v in qvecs[:args.warmup]:  # open the shard, fault its files in
            for n in names:
                store.search(n, v[n], args.k, exact=True)
                store.search(n, v[n], args.k)
        ftrace_ef = store.search_ef()
        beams = [int(x) for x in args.ef.split(",")]
        per: dict[str, dict] = {}
        for n in names:
            t_exact, exact = [], []
            for v in qvecs:
                t0 = time.perf_counter()
                exact.append([i for i, _ in store.search(n, v[n], args.k, exact=True)])
                t_exact.append(time.perf_counter() - t0)
            size = m.vectors[n]["size"]
            per[n] = {"dimensions": size, "raw_bytes_float16": m.corpus.examples * size * 2, "exact": pct(t_exact),
                      "hnsw": {}}
            for ef in beams:
                store.beam = ef  # the beam the store's searches use (0: Qdrant's default)
                recall, t_hnsw = [], []
                for v, ex in zip(qvecs, exact, strict=True):
                    t0 = time.perf_counter()
                    approx = [i for i, _ in store.search(n, v[n], args.k)]
                    t_hnsw.append(time.perf_counter() - t0)
                    recall.append(len(set(ex) & set(approx)) / max(1, len(ex)))
                per[n]["hnsw"][str(ef)] = {f"recall@{args.k}": {"mean": float(np.mean(recall)),
                                                                 "min": float(np.min(recall)),
                                                                 "perfect": float(np.mean(np.array(recall) == 1))},
                                           "latency": pct(t_hnsw)}
        res = {"command": command_of(__file__, argv),
               "index": rel(source), "copy": rel(copy), "examples": m.corpus.examples, "queries": len(queries),
               "k": args.k, "build": record, "vectors": per, "rss_gib_after": round(rss_gib(), 2),
               "ftrace_ef": ftrace_ef,
               "hnsw_settings": "Qdrant Edge defaults (the shard is created without an HNSW config: m 16, "
                                "ef_construct 100); searches with each hnsw_ef of --ef",
               "machine": machine(torch.device("cpu"))}
    finally:
        tracer.close()
    out = Path(args.out)
    write_results(out, res, markdown(res))
    return res


def markdown(r: dict) -> str:
    b = r["build"]
    lines = [f"# HNSW against exact search: `{r['index']}` ({r['examples']:,} examples)", "",
             f"Command: `{r['command']}`. {r['queries']} queries with their targets, top {r['k']}. "
             f"{r['hnsw_settings']}.", "",
             f"HNSW build (`store.optimize()`, as `ftrace ingest --hnsw`): {b['build_s']} s; Qdrant directory "
             f"{b['qdrant_bytes_exact'] / 2**30:.2f} GiB exact, {b['qdrant_bytes_hnsw'] / 2**30:.2f} GiB with HNSW. "
             f"Process RSS after the searches: {r['rss_gib_after']} GiB.", "",
             f"| vector | dims | raw float16 | exact p50 / p95 ms | HNSW search beam (hnsw_ef) | recall@{r['k']} "
             f"mean / min | queries with all {r['k']} | HNSW p50 / p95 ms |", "|---|---|---|---|---|---|---|---|"]
    for n, v in r["vectors"].items():
        for ef, h in v["hnsw"].items():
            rc, t = h[f"recall@{r['k']}"], h["latency"]
            beam = f"{ef} (ftrace's)" if int(ef) == r["ftrace_ef"] else "Qdrant's default" if ef == "0" else ef
            lines.append(f"| {n} | {v['dimensions']} | {v['raw_bytes_float16'] / 2**20:,.0f} MiB | "
                         f"{v['exact']['p50_ms']:.1f} / {v['exact']['p95_ms']:.1f} | {beam} | {rc['mean']:.3f} / "
                         f"{rc['min']:.2f} | {rc['perfect']:.0%} | {t['p50_ms']:.1f} / {t['p95_ms']:.1f} |")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
