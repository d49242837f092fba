"""Where a cold `ftrace query` spends its time: each run a fresh `python -m ftrace.cli` process, as a user
types it, on the sample index.

    python perf/cold_cli.py                                  # builds the sample index in a temp dir first
    python perf/cold_cli.py --index indexes/sample --repeats 7
    python perf/cold_cli.py --baseline /tmp/ftrace-before    # also time another checkout, interleaved

Protocol
- Commands (wall clock of the whole process, from fork to exit): `bm25 --target` (BM25 only, the
  answer given: no model needed), `default` (the index's default method, the model's own answer: model
  load and greedy answer), `embed+bm25 --target` (model load and query embedding); `default, index served`
  (`default` on a copy of the index that an `ftrace serve` of this checkout holds, started before the timed
  runs: the query is asked of the warm server); and two references: `python -c pass` (the interpreter alone)
  and the floor of a cold model query, a plain-transformers process (no ftrace) that imports torch and
  transformers, loads the index's model (the default one's cached copy) in the index's dtype and runs one
  forward of the prompt.
- One untimed warm-up run of each (the page cache holds the files afterwards, as for a user's second
  query), then --repeats rounds; within a round every command runs once per source (this checkout,
  and --baseline if given), so a load spike from other processes hits all alike; min / median / max
  over the rounds.
- Stages: a probe process (fresh each round) runs the steps of a query one after another, each timed:
  imports, opening the index, JVM start, BM25, torch and transformers imports, model load, answer,
  query vector, vector store. The CLI may overlap some of them (the sum can exceed its wall clock).
- Imports: one `python -X importtime` run of each command: the import time per top-level package
  (sum of its modules' own times).
- Threads: OMP_NUM_THREADS / MKL_NUM_THREADS = --threads (default 1, the project's rule on this shared
  2-core machine; torch's own default would be 2). Load average before and after is recorded.
- Writes perf/results/cold_cli-cpu.json and .md (--out).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections import defaultdict
from importlib import metadata
from pathlib import Path

from common import ROOT, command_of, rel, results_path, shell_line, write_results

from ftrace.config import DEFAULT_MODEL
from ftrace.index.files import LOCK_FILES
from ftrace.index.manifest import Manifest
from ftrace.model.loading import cache_dir
from ftrace.testing import start_server

PROMPT, TARGET = "Toyota Avanza is produced by", "Toyota"
TARGETS = {"default": 4.0, "bm25 --target": 2.0}  # seconds, issue 10
COMMANDS = {
    "bm25 --target": ["query", PROMPT, "--method", "bm25", "--target", TARGET],
    "default": ["query", PROMPT],
    "embed+bm25 --target": ["query", PROMPT, "--method", "embed+bm25", "--target", TARGET],
}

FLOOR_NAME = "floor: torch + transformers, load, one forward"
FLOOR = """
import sys
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer
model = AutoModelForCausalLM.from_pretrained(sys.argv[1], dtype=getattr(torch, sys.argv[2])).eval()
tok = AutoTokenizer.from_pretrained(sys.argv[1])
with torch.no_grad():
    model(**tok(sys.argv[3], return_tensors="pt"))
"""
SERVED = "default, index served"

PROBE = """
import json, sys, time
index = sys.argv[1]
out, t = {}, time.perf_counter()
def lap(name):
    global t
    now = time.perf_counter(); out[name] = now - t; t = now
import ftrace.cli
lap("imports: cli (typer, pydantic, configs)")
from ftrace.query.render import render
from ftrace.query.tracer import Tracer
lap("imports: query modules")
tracer = Tracer(index, device="cpu")
lap("open index (manifest, corpus)")
from ftrace.index.jvm import autoclass
autoclass("java.lang.String")
lap("JVM start")
tracer.bm25.search(PROMPT + " " + TARGET, 100)
lap("BM25 open + search")
import torch
lap("import torch")
import transformers
lap("import transformers")
tracer.lm
lap("model load (rest of transformers, weights, tokenizer, fingerprint)")
tracer.answer(PROMPT)
lap("greedy answer")
vec = tracer.query_vectors(PROMPT, TARGET, ["embed"])["embed"]
lap("query vector (embed)")
tracer.store.search("embed", vec, 100)
lap("vector store open + search")
tracer.close()
print(json.dumps(out))
""".replace("PROMPT", repr(PROMPT)).replace("TARGET", repr(TARGET))


def env(source: Path, threads: int) -> dict[str, str]:
    return {**os.environ, "PYTHONPATH": str(source), "OMP_NUM_THREADS": str(threads),
            "MKL_NUM_THREADS": str(threads), "TOKENIZERS_PARALLELISM": "false"}


def timed(args: list[str], source: Path, threads: int) -> tuple[float, subprocess.CompletedProcess]:
    start = time.perf_counter()
    p = subprocess.run(args, cwd=source, env=env(source, threads), capture_output=True, text=True)
    took = time.perf_counter() - start
    if p.returncode:
        raise SystemExit(f"{' '.join(args[:6])}... failed in {source}:\n{p.stderr[-2000:]}")
    return took, p


def cli(command: list[str], index: Path) -> list[str]:
    return [sys.executable, "-m", "ftrace.cli", *command, "--index", str(index)]


def spread(values: list[float]) -> dict:
    return {"min": min(values), "median": statistics.median(values), "max": max(values),
            "runs": [round(v, 3) for v in values]}


def import_times(stderr: str) -> dict:
    """Import time per top-level package: the sum of its modules' own (self) times, seconds."""
    by: dict[str, float] = defaultdict(float)
    for line in stderr.splitlines():
        if line.startswith("import time:") and "|" in line and "self [us]" not in line:
            own, _, name = line.removeprefix("import time:").split("|")
            by[name.strip().split(".")[0]] += int(own) / 1e6
    top = sorted(by.items(), key=lambda kv: -kv[1])
    return {"total_s": round(sum(by.values()), 3), "by_package_s": {k: round(v, 3) for k, v in top[:10]}}


def machine() -> dict:
    cpu = next((ln.split(":", 1)[1].strip() for ln in Path("/proc/cpuinfo").read_text().splitlines()
                if ln.startswith("model name")), platform.processor())
    versions = {d: metadata.version(d) for d in ("torch", "transformers", "pyserini", "qdrant-edge-py")}
    return {"cpu": cpu, "cores": os.cpu_count(), "python": platform.python_version(), **versions}


def build_index(where: Path, source: Path, threads: int) -> Path:
    index = where / "sample"
    print(f"building {index} with `ftrace ingest` (default model and settings)", file=sys.stderr)
    timed([sys.executable, "-m", "ftrace.cli", "ingest", "--index", str(index)], source, threads)
    return index


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--index", type=Path, help="a sample index (default: build one in a temp dir)")
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--baseline", type=Path, help="another checkout to time alongside (e.g. before a change)")
    ap.add_argument("--out", default=None)
    a = ap.parse_args(argv)
    sources = {"this checkout": ROOT} | ({"baseline": a.baseline.resolve()} if a.baseline else {})
    with tempfile.TemporaryDirectory() as tmp:
        # built by the oldest source: a newer ftrace reads older indexes, not always the reverse
        index = a.index or build_index(Path(tmp), sources.get("baseline", ROOT), a.threads)
        served = Path(tmp) / "served"
        shutil.copytree(index, served, ignore=shutil.ignore_patterns(*LOCK_FILES))
        server = start_server(served, Path(tmp) / "serve.log", "--device", "cpu",
                              env=env(ROOT, a.threads))  # outside the timed region, like a user's running server
        try:
            load_before = os.getloadavg()
            model = Manifest.read(index).model  # the floor loads the index's model, in its dtype
            source = str(cache_dir() / "models" / DEFAULT_MODEL) if model.name == DEFAULT_MODEL else model.name
            common = {"python -c pass": [sys.executable, "-c", "pass"],
                      FLOOR_NAME: [sys.executable, "-c", FLOOR, source, model.dtype, PROMPT]}
            jobs = {s: common | {k: cli(v, index) for k, v in COMMANDS.items()}
                    | ({SERVED: cli(COMMANDS["default"], served)} if s == "this checkout" else {}) for s in sources}
            for s, src in sources.items():  # warm-up: file caches, compiled bytecode
                for args in jobs[s].values():
                    timed(args, src, a.threads)
            walls: dict = {s: defaultdict(list) for s in sources}
            stages: dict = {s: defaultdict(list) for s in sources}
            for r in range(a.repeats):
                for name in jobs["this checkout"]:
                    for s, src in sources.items():
                        if name in jobs[s]:
                            took, p = timed(jobs[s][name], src, a.threads)
                            if name == SERVED and ": it answered" not in p.stderr:  # not a cold local query
                                raise SystemExit(f"the served query was not answered by the server: {p.stderr}")
                            walls[s][name].append(took)
                for s, src in sources.items():
                    _, p = timed([sys.executable, "-c", PROBE, str(index)], src, a.threads)
                    for k, v in json.loads(p.stdout.splitlines()[-1]).items():
                        stages[s][k].append(v)
                print(f"round {r + 1}/{a.repeats}: " + ", ".join(
                    f"{s} {n} {walls[s][n][-1]:.2f}s" for s in sources for n in COMMANDS), file=sys.stderr)
            imports = {s: {n: import_times(timed([sys.executable, "-X", "importtime", *cli(c, index)[1:]], src,
                                                 a.threads)[1].stderr) for n, c in COMMANDS.items()}
                       for s, src in sources.items()}
            load_after = os.getloadavg()
        finally:
            server.stop()
    result = {
        "command": command_of(__file__, argv), "machine": machine(), "threads": a.threads, "repeats": a.repeats,
        "load_average_before": load_before,
        "load_average_after": load_after, "index": "built by this script" if a.index is None else rel(a.index),
        "commands": {n: shell_line(["ftrace", *c, "--index", "INDEX"]) for n, c in COMMANDS.items()}
        | {SERVED: shell_line(["ftrace", *COMMANDS["default"], "--index", "SERVED_INDEX"])},
        "sources": {s: rel(p) for s, p in sources.items()},
        "wall_s": {s: {n: spread(v) for n, v in w.items()} for s, w in walls.items()},
        "stages_s": {s: {n: spread(v) for n, v in st.items()} for s, st in stages.items()},
        "imports": imports, "targets_s": TARGETS,
    }
    write_results(results_path(a.out, "cold_cli"), result, markdown(result))


def markdown(r: dict) -> str:
    m, srcs = r["machine"], list(r["wall_s"])
    lines = ["# Cold `ftrace query` (perf/cold_cli.py)", "", f"Command: `{r['command']}`", "",
             f"{m['cpu']}, {m['cores']} cores, {r['threads']} torch thread(s); Python {m['python']}, torch "
             f"{m['torch']}, transformers {m['transformers']}, pyserini {m['pyserini']}. Load average (1, 5, 15 "
             f"min) {tuple(round(x, 2) for x in r['load_average_before'])} before, "
             f"{tuple(round(x, 2) for x in r['load_average_after'])} after (other agents share the machine).",
             "", f"Index: the sample corpus (337 sentences) with the default model and settings. {r['repeats']} "
             "rounds after a warm-up; seconds, min / median / max.", "",
             "| command | " + " | ".join(srcs) + " | target |", "|---|" + "---|" * len(srcs) + "---|"]
    for name in r["wall_s"][srcs[0]]:
        cells = [f"{w['min']:.2f} / **{w['median']:.2f}** / {w['max']:.2f}" if w else "-" for w in
                 (r["wall_s"][s].get(name) for s in srcs)]
        target = r["targets_s"].get(name)
        lines.append(f"| `{r['commands'].get(name, name)}` | " + " | ".join(cells) +
                     f" | {f'<= {target:.0f} s' if target else ''} |")
    for s in srcs:
        med = {n: w["median"] for n, w in r["wall_s"][s].items()}
        ratios = ", ".join(f"`{n}` {med[n] / med[FLOOR_NAME]:.2f}x" for n in ("default", "embed+bm25 --target", SERVED)
                           if n in med)
        lines += ["", f"{s}: median over the floor's median: {ratios}."]
    lines += ["", "Stages (a probe process running a query's steps one at a time; median seconds):", "",
              "| stage | " + " | ".join(srcs) + " |", "|---|" + "---|" * len(srcs)]
    for name in r["stages_s"][srcs[0]]:
        lines.append(f"| {name} | " + " | ".join(f"{r['stages_s'][s][name]['median']:.3f}" for s in srcs) + " |")
    lines += ["", "Import time by top-level package (`python -X importtime`, one run; seconds):", ""]
    for s in srcs:
        for name, imp in r["imports"][s].items():
            top = ", ".join(f"{k} {v:.2f}" for k, v in list(imp["by_package_s"].items())[:6])
            lines.append(f"- {s}, `{name}`: {imp['total_s']:.2f} s in all; {top}")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
