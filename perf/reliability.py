"""The reliability report: runs tests/test_reliability.py and the bounded-request tests of tests/test_serve.py
(real processes, real engines, a tiny model) and writes what each scenario did, with the actual messages, to
perf/results/reliability.md.

    python perf/reliability.py                 # 16 concurrent readers
    python perf/reliability.py --readers 32 --out /tmp/reliability.md

The scenarios and their checks live in the test module only; each test appends its outcomes to the file
named by FTRACE_RELIABILITY_LOG, and this script turns them into a table. A failing test fails the report.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def machine() -> str:
    cpu = platform.processor() or platform.machine()
    try:
        cpu = next(ln.split(":", 1)[1].strip() for ln in Path("/proc/cpuinfo").read_text().splitlines()
                   if ln.startswith("model name"))
    except (OSError, StopIteration):
        pass
    return f"{cpu}, {os.cpu_count()} logical CPUs (shared with other processes), {platform.system()}"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--readers", type=int, default=16, help="concurrent `ftrace query` processes (test default: 8)")
    ap.add_argument("--out", type=Path, default=ROOT / "perf" / "results" / "reliability.md")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        log = Path(tmp) / "outcomes.jsonl"
        env = {**os.environ, "FTRACE_RELIABILITY_LOG": str(log), "FTRACE_TEST_READERS": str(args.readers),
               "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}
        cmd = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "tests/test_reliability.py",
               "tests/test_serve.py", "-k", "not test_serve or huge_prompt or over_its_time"]
        load = os.getloadavg()[0]
        t0 = time.monotonic()
        done = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True)
        wall = time.monotonic() - t0
        summary = (done.stdout.strip().splitlines() or ["(no output)"])[-1]
        if done.returncode != 0:
            sys.exit(f"tests failed, no report written:\n{done.stdout[-5000:]}{done.stderr[-2000:]}")
        rows = [json.loads(ln) for ln in log.read_text().splitlines()]
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True,
                            text=True).stdout.strip()
    lines = [
        "# Reliability",
        "",
        f"`python perf/reliability.py --readers {args.readers}` on {time.strftime('%Y-%m-%d')} (commit {commit}): "
        f"tests/test_reliability.py and test_serve.py's bounded requests, {summary} ({wall:.0f} s wall on "
        f"{machine()}, load average {load:.1f} at the start).",
        "Real `ftrace` processes on real Qdrant Edge and Lucene, with a tiny random model on the sample corpus "
        "(337 sentences). INDEX, DIR and MODEL stand for the test's temporary paths.",
    ]
    scenario = None
    for r in rows:
        if r["scenario"] != scenario:
            scenario = r["scenario"]
            lines += ["", f"## {scenario[0].upper()}{scenario[1:]}", "", "| case | outcome |", "|---|---|"]
        lines.append(f"| {r['item']} | {r['outcome'].replace('|', '&#124;')} |")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text("\n".join(lines) + "\n")
    print(f"wrote {args.out.relative_to(ROOT) if args.out.is_relative_to(ROOT) else args.out}")


if __name__ == "__main__":
    main()
