"""What the perf/ scripts share: the repository's places, the sample texts, measuring a process and the machine,
and writing a results file (JSON with the command that made it, and its markdown beside it).

A script run as `python perf/NAME.py` imports it as `common` (its own directory is first on sys.path)."""

from __future__ import annotations

import json
import math
import os
import platform
import re
import shlex
import statistics
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("FTRACE_SHARED_DATA", ROOT.parent / "shared" / "data"))  # ../shared/data
SAMPLE = ROOT / "ftrace" / "corpus" / "data" / "sample.jsonl"
LAMA = SHARED / "lama-trex" / "P176" / "train.jsonl"
MAX_TOKENS = 256  # ingest's --max-tokens default
HZ = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100


def rel(path: str | Path) -> str:
    """`path` relative to the repository when it lies inside it or beside it (../shared), "~/..." in the home
    directory, else as given: a results file does not name the machine it was made on."""
    p = Path(path).resolve()
    if p.is_relative_to(ROOT):
        return str(p.relative_to(ROOT))
    if p.is_relative_to(ROOT.parent):
        return os.path.relpath(p, ROOT)
    if p.is_relative_to(Path.home()):
        return str(Path("~") / p.relative_to(Path.home()))
    return str(path)


def slug(text: str) -> str:
    return re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-")


def _texts_of(path: Path):
    with open(path, encoding="utf-8") as f:
        for line in f:
            obj = json.loads(line) if line.strip() else {}
            if "text" in obj:
                yield obj["text"]
            for ev in obj.get("evidences", []):  # LAMA T-REx: [MASK] = the object's surface form
                yield ev["masked_sentence"].replace("[MASK]", ev["obj_surface"])


def load_texts(n: int, path: str | None = None) -> tuple[list[str], str, int]:
    """(n texts, source, distinct): distinct sentences from `path`, else the shipped sample corpus then
    LAMA P176 (where ../shared is); where fewer than n exist they are repeated (same cost per text)."""
    sources = [Path(path)] if path else [p for p in (SAMPLE, LAMA) if p.exists()]
    texts: list[str] = []
    seen: set[str] = set()
    used = []
    for src in sources:
        used.append(rel(src))
        for t in _texts_of(src):
            if t not in seen:
                seen.add(t)
                texts.append(t)
                if len(texts) >= n:
                    break
        if len(texts) >= n:
            break
    if not texts:
        raise SystemExit(f"no texts in {', '.join(map(str, sources)) or 'any source'}")
    distinct = len(texts)
    texts = (texts * math.ceil(n / distinct))[:n]
    return texts, " + ".join(used), distinct


def peak_reset() -> None:
    try:  # "5" resets this process's peak RSS (VmHWM), Linux >= 4.0
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
    except OSError:
        pass


def mem_mb(field: str) -> float:
    try:
        for line in open("/proc/self/status"):
            if line.startswith(field + ":"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def proc_status(pid: int | str = "self", fields: tuple[str, ...] = ("VmRSS", "VmHWM", "RssAnon", "RssFile")) -> dict:
    """Memory of a process from /proc/PID/status, in KiB: its resident set (VmRSS) and peak (VmHWM), and the
    resident set's anonymous part (RssAnon: heap, what the process really holds) and file-backed part (RssFile:
    memory-mapped files, page cache the kernel can drop). Empty once the process is gone."""
    try:
        lines = Path(f"/proc/{pid}/status").read_text().splitlines()
    except OSError:
        return {}
    out = {}
    for line in lines:
        key, _, value = line.partition(":")
        if key in fields:
            out[key] = int(value.split()[0])
    return out


def cpu_seconds() -> float:
    t = os.times()
    return t.user + t.system


def machine_busy_seconds() -> float:
    try:
        v = [int(x) for x in open("/proc/stat").readline().split()[1:]]
        return (sum(v[:8]) - v[3] - v[4]) / HZ  # all but idle and iowait
    except OSError:
        return float("nan")


def spread(values: list[float]) -> dict:
    return {"min": min(values), "median": statistics.median(values), "max": max(values)}


def shell_line(args: list[str]) -> str:
    """A command line as a results file shows it: absolute paths relative to the repository (see `rel`), quoted
    for a shell."""
    return shlex.join([rel(a) if os.path.isabs(a) else a for a in args])


def command_of(script: str, argv: list[str] | None) -> str:
    """The command line that made a results file."""
    return "python " + shell_line([script, *(sys.argv[1:] if argv is None else argv)])


def results_path(out: str | None, name: str, dtype: str = "float32") -> Path:
    """--out, or perf/results/NAME-cpu[-DTYPE].json."""
    suffix = "" if dtype == "float32" else f"-{dtype}"
    return Path(out) if out else ROOT / "perf" / "results" / f"{name}-cpu{suffix}.json"


def write_results(out: Path, result: dict, md: str) -> None:
    """One run's results file (JSON) and its markdown beside it (.md), printed."""
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=1) + "\n")
    out.with_suffix(".md").write_text(md)
    print(md)


def machine(device) -> dict:
    import torch
    import transformers

    cpu = platform.processor() or ""
    mem = None
    try:
        cpu = next(x.split(":", 1)[1].strip() for x in open("/proc/cpuinfo") if x.startswith("model name"))
        mem = round(next(int(x.split()[1]) for x in open("/proc/meminfo") if x.startswith("MemTotal")) / 2**20, 1)
    except (OSError, StopIteration):
        pass
    out = {"device": device.type, "cpu": cpu, "cores": os.cpu_count(), "memory_gb": mem,
           "torch_threads": torch.get_num_threads(), "torch": torch.__version__,
           "transformers": transformers.__version__, "python": platform.python_version(),
           "platform": platform.platform(), "float32_matmul_precision": torch.get_float32_matmul_precision()}
    if device.type == "cuda":
        props = torch.cuda.get_device_properties(device)
        out |= {"card": torch.cuda.get_device_name(device), "gpu_memory_gb": round(props.total_memory / 2**30, 1),
                "cuda": torch.version.cuda, "cudnn": torch.backends.cudnn.version()}
    return out
