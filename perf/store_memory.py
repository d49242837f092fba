"""Where an embedded Qdrant (Edge) shard's memory goes while ftrace stores vectors and builds HNSW (issue 28: the 1M
ingest peaked at 5.39 GiB RSS after storing its vectors).

Each layout runs in a fresh process that does what `ftrace ingest --hnsw` does to its store, without the model:
create the shard (an `EdgeStore` made with the layout's settings: `default` is `EdgeStore.create`'s), upsert N
seeded random unit vectors of the embed size (576) in batches of 32 with ftrace's payload, `optimize()` (the HNSW
build), close. A thread samples /proc/self/status every 0.1 s; per stage the table gives the largest resident set
(VmRSS), split into anonymous memory (RssAnon: the heap, what the process really holds) and file pages (RssFile:
memory-mapped files, page cache the kernel can drop under pressure), with the stage's seconds.

    python perf/store_memory.py --points 300000 --out perf/results/store_memory-cpu.json

Layouts: `default` (ftrace's store today: vectors and HNSW graph in Qdrant's defaults), `vectors-cold` (dense
vectors memory-mapped, not warmed: `EdgeVectorParams(memory=Memory.Cold)`), `vectors-cached` (memory-mapped and
warmed), `cold-graph` (both the vectors and the HNSW graph `Memory.Cold`).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

from common import command_of, machine, proc_status, write_results

LAYOUTS = ("default", "vectors-cold", "vectors-cached", "cold-graph")
DIM = 576  # SmolLM2-135M's hidden size: the embed vector
BATCH = 32  # ingest's --batch-size


class Sampler(threading.Thread):
    """The largest VmRSS (with its anon/file split) and the largest RssAnon, per named stage."""

    def __init__(self) -> None:
        super().__init__(daemon=True)
        self.stage, self.peaks, self.done = "start", {}, threading.Event()

    def run(self) -> None:
        while not self.done.is_set():
            self.sample()
            time.sleep(0.1)

    def sample(self) -> None:
        s = proc_status(fields=("VmRSS", "RssAnon", "RssFile"))
        p = self.peaks.setdefault(self.stage, {"VmRSS": 0, "RssAnon": 0, "RssFile": 0, "anon_peak": 0})
        if s["VmRSS"] > p["VmRSS"]:
            p.update(s)
        p["anon_peak"] = max(p["anon_peak"], s["RssAnon"])

    def enter(self, stage: str) -> None:
        self.sample()
        self.stage = stage


def one(layout: str, points: int, work: Path) -> dict:
    """The measurement in this process (a child of `main`)."""
    import numpy as np
    import qdrant_edge as qe

    from ftrace.index.vectors import EdgeStore

    sampler = Sampler()
    sampler.start()
    store = EdgeStore(work / "qdrant")
    cold, cached = qe.Memory.Cold, qe.Memory.Cached
    vector_memory = {"vectors-cold": cold, "vectors-cached": cached, "cold-graph": cold}.get(layout)
    hnsw = (qe.HnswIndexConfig(m=16, ef_construct=100, full_scan_threshold=10000, memory=cold)
            if layout == "cold-graph" else None)
    config = qe.EdgeConfig(vectors={"embed": qe.EdgeVectorParams(
        size=DIM, distance=qe.Distance.Cosine, datatype=qe.VectorStorageDatatype.Float16, memory=vector_memory,
        hnsw_config=hnsw)})
    store._open(lambda: qe.EdgeShard.create(str(store.path), config))
    rng = np.random.default_rng(0)
    seconds = {}
    sampler.enter("upsert")
    t = time.perf_counter()
    for start in range(0, points, BATCH):
        n = min(BATCH, points - start)
        v = rng.standard_normal((n, DIM), dtype=np.float32)
        v /= np.linalg.norm(v, axis=1, keepdims=True)
        ids = [f"doc{start + j}:lm" for j in range(n)]
        store.upsert(ids, {"embed": v.astype(np.float16)}, [{"example_id": i, "sentence_id": i[:-3]} for i in ids])
    seconds["upsert"] = time.perf_counter() - t
    sampler.enter("hnsw")
    t = time.perf_counter()
    store.optimize()
    seconds["hnsw"] = time.perf_counter() - t
    sampler.enter("close")
    t = time.perf_counter()
    store.close()
    seconds["close"] = time.perf_counter() - t
    sampler.enter("end")
    sampler.done.set()
    sampler.join()
    disk = sum(p.stat().st_size for p in work.rglob("*") if p.is_file())
    return {"layout": layout, "points": points, "seconds": {k: round(v, 1) for k, v in seconds.items()},
            "peaks_kib": {k: v for k, v in sampler.peaks.items() if k != "start"}, "disk_bytes": disk}


def table(runs: list[dict]) -> str:
    gib = 2 ** 20
    lines = ["| layout | stage | seconds | peak VmRSS | its RssAnon | its RssFile | peak RssAnon |",
             "|---|---|---:|---:|---:|---:|---:|"]
    for r in runs:
        for stage in ("upsert", "hnsw", "close"):
            p = r["peaks_kib"][stage]
            sizes = " | ".join(f"{p[k] / gib:.2f} GiB" for k in ("VmRSS", "RssAnon", "RssFile", "anon_peak"))
            lines.append(f"| {r['layout']} | {stage} | {r['seconds'][stage]} | {sizes} |")
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--points", type=int, default=300_000)
    ap.add_argument("--layouts", default=",".join(LAYOUTS))
    ap.add_argument("--out", type=Path, default=None)
    ap.add_argument("--one", choices=LAYOUTS, help=argparse.SUPPRESS)  # the child process
    ap.add_argument("--work", type=Path, help=argparse.SUPPRESS)
    a = ap.parse_args()
    if a.one:
        print(json.dumps(one(a.one, a.points, a.work)))
        return
    runs = []
    for layout in a.layouts.split(","):
        with tempfile.TemporaryDirectory() as work:
            out = subprocess.run([sys.executable, __file__, "--one", layout, "--points", str(a.points), "--work", work],
                                 check=True, capture_output=True, text=True).stdout
        runs.append(json.loads(out.splitlines()[-1]))
        print(json.dumps(runs[-1]), flush=True)
    md = (f"# An Edge shard's memory while storing {a.points:,} embed vectors and building HNSW\n\n"
          f"`{command_of('perf/store_memory.py', None)}`\n\n{__doc__.split(chr(10) + chr(10))[1]}\n\n{table(runs)}\n")
    if not a.out:
        print(md)
        return
    import torch

    write_results(a.out, {"command": command_of("perf/store_memory.py", None), "machine": machine(torch.device("cpu")),
                          "runs": runs}, md)


if __name__ == "__main__":
    main()
