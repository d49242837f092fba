"""Peak memory of `ftrace ingest` against its token budget per batch (--batch-tokens).

    python perf/batch_memory.py                                   # SmolLM2-135M, 32 long LAMA sentences
    python perf/batch_memory.py --examples 16 --budgets 4096,1024 --max-tokens 256

The corpus is the N longest evidence sentences of the shared LAMA T-REx dev files (../shared/data, or
$FTRACE_SHARED_DATA), all longer than --max-tokens, so every batch is padded to exactly that length:
the case the budget is for (sorted by length, the longest sentences of a corpus share the last
batches). Each budget runs one fresh `ftrace ingest` process (default model, default gradient
vectors) into a new index; its peak RSS is the kernel's high-water mark for that process
(getrusage of a child, read by a wrapper process that runs only it). One run per budget (memory does
not vary between runs the way time does); the time is the process's wall time, model load included.
Writes perf/results/batch_memory-cpu.md.
"""

from __future__ import annotations

import argparse
import glob
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from common import ROOT, SHARED

# runs one command and prints its peak RSS in KiB: RUSAGE_CHILDREN covers only what this wrapper waited for
WRAPPER = ("import resource, subprocess, sys; rc = subprocess.run(sys.argv[1:]).returncode; "
           "print(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss, rc)")


def long_sentences(n: int, min_tokens: int) -> list[str]:
    from ftrace.model import load_model

    texts = set()
    for path in sorted(glob.glob(str(SHARED / "lama-trex" / "P*" / "dev.jsonl"))):
        for line in open(path, encoding="utf-8"):
            for ev in json.loads(line).get("evidences", []):
                texts.add(ev["masked_sentence"].replace("[MASK]", ev["obj_surface"]))
    if not texts:
        sys.exit(f"no LAMA T-REx dev files under {SHARED} (set FTRACE_SHARED_DATA)")
    tok = load_model().tokenizer
    ranked = sorted(texts, key=lambda t: (-len(tok(t)["input_ids"]), t))[:n]
    shortest = len(tok(ranked[-1])["input_ids"])
    if shortest < min_tokens:
        sys.exit(f"only {n - 1} sentences are longer than {min_tokens} tokens: lower --examples or --max-tokens")
    return ranked


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--examples", type=int, default=32)
    ap.add_argument("--max-tokens", type=int, default=128)
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--budgets", default="4096,2048,1024", help="--batch-tokens values, comma-separated")
    ap.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"])
    ap.add_argument("--out", type=Path, default=None)
    args = ap.parse_args()
    budgets = [int(b) for b in args.budgets.split(",")]
    texts = long_sentences(args.examples, args.max_tokens)
    env = {**os.environ, "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "1"), "PYTHONPATH": str(ROOT)}
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        corpus = Path(tmp) / "long.jsonl"
        corpus.write_text("".join(json.dumps({"text": t}) + "\n" for t in texts))
        for budget in budgets:
            cmd = [sys.executable, "-m", "ftrace.cli", "ingest", "--corpus", str(corpus), "--index",
                   str(Path(tmp) / f"idx-{budget}"), "--max-tokens", str(args.max_tokens), "--batch-size",
                   str(args.batch_size), "--batch-tokens", str(budget), "--device", "cpu", "--dtype", args.dtype]
            t0 = time.monotonic()
            done = subprocess.run([sys.executable, "-c", WRAPPER, *cmd], env=env, cwd=ROOT, capture_output=True,
                                  text=True)
            wall = time.monotonic() - t0
            rss_kib, rc = (int(x) for x in done.stdout.split()[-2:])
            if rc != 0:
                sys.exit(f"ingest failed (--batch-tokens {budget}):\n{done.stderr[-3000:]}")
            per_batch = max(1, min(args.batch_size, budget // args.max_tokens))
            rows.append((budget, per_batch, rss_kib / 2**20, wall))
            print(f"--batch-tokens {budget}: {per_batch} examples a batch, peak RSS {rss_kib / 2**20:.2f} GiB, "
                  f"{wall:.0f} s", flush=True)
    cpu = platform.processor() or platform.machine()
    try:
        cpu = next(ln.split(":", 1)[1].strip() for ln in Path("/proc/cpuinfo").read_text().splitlines()
                   if ln.startswith("model name"))
    except (OSError, StopIteration):
        pass
    suffix = "" if args.dtype == "float32" else f"-{args.dtype}"
    out = args.out or ROOT / "perf" / "results" / f"batch_memory-cpu{suffix}.md"
    lines = [
        "# Peak memory of ingest against the token budget per batch",
        "",
        f"`python perf/batch_memory.py --examples {args.examples} --max-tokens {args.max_tokens} --batch-size "
        f"{args.batch_size} --budgets {args.budgets} --dtype {args.dtype}` on {time.strftime('%Y-%m-%d')}, {cpu}, "
        f"{os.cpu_count()} logical CPUs shared with other processes, OMP_NUM_THREADS={env['OMP_NUM_THREADS']}.",
        f"SmolLM2-135M (default model and vectors: embedding + projected gradients of the embedding matrix) on the "
        f"{args.examples} longest LAMA T-REx dev evidence sentences, each cut to {args.max_tokens} tokens: every "
        "batch is (examples x padded length) tokens. One fresh process per budget; peak RSS = its kernel "
        "high-water mark; time = its wall time including the model load (one run each, on a shared machine).",
        "",
        "| --batch-tokens | examples per batch | tokens per batch | peak RSS (GiB) | wall (s) |",
        "|---|---|---|---|---|",
    ]
    lines += [f"| {b} | {n} | {n * args.max_tokens} | {rss:.2f} | {wall:.0f} |" for b, n, rss, wall in rows]
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text("\n".join(lines) + "\n")
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
