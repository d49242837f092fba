"""ftrace's model work on a shared machine: featurisation speed alone and beside a second model process, per
OpenMP wait policy and thread count.

    python perf/shared_machine.py                       # SmolLM2 (the default model), the shipped sample corpus
    python perf/shared_machine.py --model PATH --sentences 8 --passes 1    # a quick check

Protocol
- A worker (this script with --worker, a fresh process) loads the model and ingest's featurizers (embed +
  tracin, ingest's defaults), cuts --sentences sentences of the sample corpus into ingest's length-sorted
  batches, warms up on the longest batch, prints "ready", then times --passes passes over all batches
  (examples/s per pass: min / median / max).
- Per setting (wait policy x threads): the worker alone; then the worker beside a neighbour, a second worker
  with the same setting featurising in a loop (started first, timed once it is ready), which is what two
  ftrace jobs on one machine do. The ratio beside / alone is the slowdown.
- Policies: "spin" = the OpenMP runtime's default (GNU OpenMP, torch's: idle threads spin-wait a while
  between parallel regions), "passive" = OMP_WAIT_POLICY=PASSIVE (idle threads sleep at once: what ftrace
  sets unless the environment says otherwise), "brief" = GOMP_SPINCOUNT=10000 (a short spin, then sleep),
  "active" = OMP_WAIT_POLICY=ACTIVE (idle threads spin without end).
  Threads: torch's intra-op threads (OMP_NUM_THREADS).
- Nothing else may run meanwhile: the CPU other processes used is recorded.
- One run per results file: perf/results/shared_machine-cpu.{json,md} (--out to change).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import subprocess
import sys
import time
from collections.abc import Iterator

from common import ROOT, command_of, machine, machine_busy_seconds, results_path, spread, write_results

# the environment each policy runs with (OMP_WAIT_POLICY and GOMP_SPINCOUNT otherwise unset)
POLICIES = {"spin": {}, "passive": {"OMP_WAIT_POLICY": "PASSIVE"}, "brief": {"GOMP_SPINCOUNT": "10000"},
            "active": {"OMP_WAIT_POLICY": "ACTIVE"}}


def worker(args) -> None:
    """Featurise the same batches --passes times (or forever with --loop); one JSON line of rates."""
    from ingest_scale import ingest_batches

    from ftrace.config import CorpusSelection, IngestConfig
    from ftrace.corpus import load_corpus
    from ftrace.model.objective import Objective

    c = IngestConfig(corpus=CorpusSelection(corpus="sample"), model=args.model, dtype=args.dtype, device="cpu")
    lm, featurizers, chosen, lengths, parts = ingest_batches(c, load_corpus("sample"), args.sentences, 0)
    loss = {f.name: f.example_loss for f in featurizers}
    objectives = {x: Objective(x, lm.tokenizer, c.max_tokens) for x in set(loss.values())}

    def featurise(part) -> None:
        batches = {x: o.batch(chosen[part])[0] for x, o in objectives.items()}
        for f in featurizers:
            f.vectors(batches[loss[f.name]])

    featurise(max(parts, key=lambda p: (p.stop - p.start) * max(lengths[p])))  # warm-up
    print("ready", flush=True)
    rates = []
    while args.loop or len(rates) < args.passes:
        start = time.perf_counter()
        for part in parts:
            featurise(part)
        rates.append(len(chosen) / (time.perf_counter() - start))
    import torch

    print(json.dumps({"examples_per_s": spread(rates), "torch_threads": torch.get_num_threads()}), flush=True)


def spawn(args, policy: str, threads: int, loop: bool) -> subprocess.Popen:
    env = {k: v for k, v in os.environ.items() if k not in ("OMP_WAIT_POLICY", "GOMP_SPINCOUNT", "OMP_NUM_THREADS")}
    env |= {"OMP_NUM_THREADS": str(threads), **POLICIES[policy]}
    cmd = [sys.executable, __file__, "--worker", "--sentences", str(args.sentences), "--passes", str(args.passes),
           "--dtype", args.dtype,
           *(["--model", args.model] if args.model else []), *(["--loop"] if loop else [])]
    return subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True, env=env, cwd=ROOT)


def wait_ready(proc: subprocess.Popen) -> None:
    line = proc.stdout.readline() if proc.stdout else ""
    if line.strip() != "ready":
        raise SystemExit(f"the worker did not start (exit {proc.wait()})")


@contextlib.contextmanager
def neighbour(args, policy: str, threads: int) -> Iterator[subprocess.Popen]:
    """A worker featurising in a loop while inside, ready before the body runs; it must still run at the end."""
    proc = spawn(args, policy, threads, loop=True)
    try:
        wait_ready(proc)
        yield proc
        if proc.poll() is not None:
            raise SystemExit(f"the neighbour stopped (exit {proc.returncode}) before the timing ended")
    finally:
        proc.kill()
        proc.wait()


def measure(args, policy: str, threads: int, beside: bool) -> dict:
    with neighbour(args, policy, threads) if beside else contextlib.nullcontext():
        busy0, t0 = machine_busy_seconds(), time.perf_counter()
        proc = spawn(args, policy, threads, loop=False)
        out, _ = proc.communicate()
        if proc.returncode:
            raise SystemExit(f"the worker failed (exit {proc.returncode})")
        result = json.loads(out.strip().splitlines()[-1])
        result["machine_busy_cores"] = round((machine_busy_seconds() - busy0) / (time.perf_counter() - t0), 2)
        return result


def markdown(r: dict) -> str:
    lines = ["# ftrace on a shared machine: featurisation alone and beside a second model process", "",
             f"Command: `{r['command']}` ({r['machine']['cpu']}, {r['machine']['cores']} cores; "
             f"{r['sentences']} sample sentences, embed + tracin as ingest makes them, {r['dtype']}, "
             f"{r['passes']} timed passes after a warm-up; the neighbour is a second worker with the same setting)."
             , "", "| wait policy | threads | alone: examples/s (min / median / max) | beside a neighbour | "
             "beside / alone | machine busy (cores) alone / beside |", "|---|---|---|---|---|---|"]
    for s in r["settings"]:
        a, b = s["alone"]["examples_per_s"], s["beside"]["examples_per_s"]
        lines.append(f"| {s['policy']} | {s['threads']} | {a['min']:.2f} / {a['median']:.2f} / {a['max']:.2f} | "
                     f"{b['min']:.2f} / {b['median']:.2f} / {b['max']:.2f} | {b['median'] / a['median']:.2f} | "
                     f"{s['alone']['machine_busy_cores']} / {s['beside']['machine_busy_cores']} |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default=None)
    ap.add_argument("--dtype", default="float32", choices=["float32", "bfloat16", "float16"])
    ap.add_argument("--sentences", type=int, default=48)
    ap.add_argument("--passes", type=int, default=3)
    ap.add_argument("--threads", default="2,1", help="torch threads per process, comma-separated")
    ap.add_argument("--policies", default="spin,passive,brief")
    ap.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--loop", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--out", default=None)
    args = ap.parse_args(argv)
    if args.worker:
        worker(args)
        return {}
    import torch

    settings = []
    for threads in map(int, args.threads.split(",")):
        for policy in args.policies.split(","):
            s = {"policy": policy, "threads": threads, "alone": measure(args, policy, threads, beside=False),
                 "beside": measure(args, policy, threads, beside=True)}
            print(json.dumps(s), file=sys.stderr)
            settings.append(s)
    r = {"command": command_of(__file__, argv), "started": time.strftime("%Y-%m-%d %H:%M"),
         "machine": machine(torch.device("cpu")), "sentences": args.sentences, "passes": args.passes,
         "dtype": args.dtype, "settings": settings}
    write_results(results_path(args.out, "shared_machine", args.dtype), r, markdown(r))
    return r


if __name__ == "__main__":
    main()
