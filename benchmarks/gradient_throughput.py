"""Throughput of per-example projected gradients against the plain forward+backward limit, a naive
per-example autograd loop and peers, on the same batches of the same model.

    python benchmarks/gradient_throughput.py                       # SmolLM2-135M, 256 examples
    python benchmarks/gradient_throughput.py --examples 32 --naive-examples 4 --out /tmp/g.json

Each method runs in its own child process (same model, same texts, same batches) so that its peak
memory can be read alone: the child resets the kernel's high-water mark after loading the model and
building the batches, and reports VmHWM after its timed loop. Every method gets one warm-up batch of
4 examples first. Results go to --out (JSON) and a markdown table beside it (.md).

Methods
- plain: model(...) logits for every position, summed token cross-entropy, loss.backward() (the
  ordinary training step, which also computes every weight gradient): the limit to compare with.
- ftrace-embed / ftrace-linear: GradientFeaturizer (factored) with the default embedding block
  (dim 4096) and with every decoder Linear (dim 256 per block, 16 x 16 like bergson's default).
- naive-embed / naive-linear: FTRACE's way, one example at a time: loss.backward() and the chosen
  weights' .grad flattened and copied out, on --naive-examples examples.
- bergson: bergson 2.5.1's InMemoryCollector + CollectorComputer (projection_dim 16, its default
  Rademacher projection) on the same batches, every Linear of the base model.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SAMPLE = ROOT / "ftrace" / "corpus" / "data" / "sample.jsonl"
LAMA = ROOT.parent / "shared" / "data" / "lama-trex" / "P176" / "train.jsonl"
LINEAR_LAYERS = ["model.layers.*.self_attn.*_proj", "model.layers.*.mlp.*_proj"]
METHODS = ["plain", "ftrace-embed", "ftrace-linear", "naive-embed", "naive-linear", "bergson"]
WARMUP = 4


def load_texts(n: int) -> tuple[list[str], str]:
    texts: list[str] = []
    seen = set()
    if SAMPLE.exists():
        source = str(SAMPLE.relative_to(ROOT))
        for line in SAMPLE.read_text(encoding="utf-8").splitlines():
            obj = json.loads(line) if line.strip() else {}
            if "text" in obj and obj["text"] not in seen:
                seen.add(obj["text"])
                texts.append(obj["text"])
    else:
        source = "../shared/data/lama-trex/P176/train.jsonl"
        with open(LAMA, encoding="utf-8") as f:
            for line in f:
                for ev in json.loads(line)["evidences"]:
                    t = ev["masked_sentence"].replace("[MASK]", ev["obj_surface"])
                    if t not in seen:
                        seen.add(t)
                        texts.append(t)
                if len(texts) >= n + WARMUP:
                    break
    if len(texts) < n + WARMUP:
        raise SystemExit(f"{source}: only {len(texts)} distinct sentences, need {n + WARMUP}")
    return texts[WARMUP:n + WARMUP], source


def peak_reset() -> None:
    try:  # "5" resets the peak RSS (VmHWM) of this process (Linux >= 4.0)
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
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def cpu_seconds() -> float:
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


def busy_cores(seconds: float = 2.0) -> float:
    """Cores kept busy by everything on the machine over `seconds` (we sleep meanwhile)."""
    def snap():
        v = [int(x) for x in open("/proc/stat").readline().split()[1:]]
        return v[3] + v[4], sum(v)  # idle + iowait, total
    try:
        i0, t0 = snap()
        time.sleep(seconds)
        i1, t1 = snap()
        return round((1 - (i1 - i0) / max(1, t1 - t0)) * (os.cpu_count() or 1), 2)
    except OSError:
        return -1.0


def wait_quiet(limit_s: float) -> float:
    """Wait (up to limit_s) until other processes use less than 0.2 cores; return what they used."""
    end = time.monotonic() + limit_s
    busy = busy_cores()
    while busy > 0.2 and time.monotonic() < end:
        busy = busy_cores(5.0)
    return busy


def sum_loss(logits, labels):
    import torch

    nxt = torch.cat([labels[:, 1:], torch.full_like(labels[:, :1], -100)], 1)
    return torch.nn.functional.cross_entropy(logits.reshape(-1, logits.shape[-1]).float(), nxt.reshape(-1),
                                             ignore_index=-100, reduction="sum")


def worker(args) -> dict:
    import numpy as np
    import torch

    from ftrace.ingest.gradients import GradientConfig, GradientFeaturizer
    from ftrace.model import example_batch, load_model

    method = args.worker
    lm = load_model(args.model)
    model, tok = lm.model, lm.tokenizer
    texts, _ = load_texts(args.examples)
    bs = args.batch_size
    batches = [example_batch(tok, texts[i:i + bs]) for i in range(0, len(texts), bs)]
    warm = example_batch(tok, texts[:WARMUP])
    n_tokens = int(sum(int(b.attention_mask.sum()) for b in batches))
    padded = int(sum(b.input_ids.numel() for b in batches))
    out: dict = {"method": method}
    layers = args.layers or None
    vectors = None

    def run_plain(batch):
        model.zero_grad(set_to_none=True)
        logits = model(input_ids=batch.input_ids, attention_mask=batch.attention_mask, use_cache=False).logits
        sum_loss(logits, batch.labels).backward()
        model.zero_grad(set_to_none=True)

    if method == "plain":
        step, units = run_plain, batches
    elif method.startswith("ftrace"):
        cfg = (GradientConfig(layers=layers or ["model.embed_tokens"], dim=args.dim or 4096) if method == "ftrace-embed"
               else GradientConfig(layers=layers or LINEAR_LAYERS, dim=args.dim or 256))
        feat = GradientFeaturizer(model, cfg)
        out["config"] = cfg.model_dump()
        out["size"] = feat.size
        out["blocks"] = len(feat.blocks)
        collected = []

        def step(batch):
            collected.append(feat.vectors(batch))

        units = batches
    elif method.startswith("naive"):
        cfg = (GradientConfig(layers=layers or ["model.embed_tokens"]) if method == "naive-embed"
               else GradientConfig(layers=layers or LINEAR_LAYERS, dim=1))
        params = [b.param for b in GradientFeaturizer(model, cfg).blocks]
        out["size"] = int(sum(p.numel() for p in params))
        texts = texts[:args.naive_examples]
        units = [example_batch(tok, [t]) for t in texts]
        n_tokens = int(sum(int(b.attention_mask.sum()) for b in units))
        padded = n_tokens

        def step(batch):
            model.zero_grad(set_to_none=True)
            logits = model(input_ids=batch.input_ids, attention_mask=batch.attention_mask, use_cache=False).logits
            sum_loss(logits, batch.labels).backward()
            flat = torch.cat([p.grad.reshape(-1) for p in params]).numpy().copy()
            assert flat.shape[0] == out["size"]
            model.zero_grad(set_to_none=True)

        warm = units[0]
    elif method == "bergson":
        try:
            import bergson
            from bergson import CollectorComputer, GradientProcessor, IndexConfig, InMemoryCollector
            from datasets import Dataset
        except Exception as e:  # noqa: BLE001 - report why the peer cannot run
            return {"method": method, "error": f"cannot import bergson: {type(e).__name__}: {e}"}
        out["version"] = bergson.__version__
        rows = []
        for b in batches:
            for i in range(len(b)):
                n = int(b.attention_mask[i].sum())
                rows.append((b.input_ids[i, :n].tolist(), b.labels[i, :n].tolist()))
        data = Dataset.from_dict({"input_ids": [r[0] for r in rows], "labels": [r[1] for r in rows]})
        index_batches = [list(range(i, min(i + bs, len(rows)))) for i in range(0, len(rows), bs)]
        tmp = tempfile.mkdtemp(prefix="bergson-bench-")
        cfg = IndexConfig(run_path=os.path.join(tmp, "index"), projection_dim=args.dim or 16)
        os.makedirs(cfg.partial_run_path, exist_ok=True)

        def collect(ds, idx_batches):
            processor = GradientProcessor(projection_dim=cfg.projection_dim)
            collector = InMemoryCollector(model=model.base_model, cfg=cfg, processor=processor, data=ds)
            computer = CollectorComputer(model=model, data=ds, collector=collector, batches=idx_batches, cfg=cfg)
            computer.run_with_collector_hooks(desc="bergson")
            return collector

        warm_ds = Dataset.from_dict({"input_ids": [r[0] for r in rows[:WARMUP]], "labels": [r[1] for r in rows[:WARMUP]]})
        collect(warm_ds, [list(range(WARMUP))])
        model.zero_grad(set_to_none=True)
        peak_reset()
        base_rss = mem_mb("VmRSS")
        c0, t0 = cpu_seconds(), time.perf_counter()
        collector = collect(data, index_batches)
        elapsed = time.perf_counter() - t0
        out["cpu_seconds"] = cpu_seconds() - c0
        grads = collector.gradients
        out["size"] = int(sum(g.shape[1] for g in grads.values()))
        out["blocks"] = len(grads)
        out["config"] = {"projection_dim": cfg.projection_dim, "projection_type": cfg.projection_type,
                         "modules": "every Linear of model.base_model"}
        # per-module unit, concatenated, unit: ftrace's normalisation, for the agreement check
        parts = [torch.nn.functional.normalize(g.float(), dim=1) for g in grads.values()]
        vectors = torch.nn.functional.normalize(torch.cat(parts, 1), dim=1).numpy()
        out.update(examples=len(rows), tokens=n_tokens, padded_positions=padded, seconds=elapsed,
                   batch_seconds=None, rss_before_mb=base_rss, peak_rss_mb=mem_mb("VmHWM"))
        if args.scratch:
            np.save(os.path.join(args.scratch, f"{method}.npy"), vectors)
        return out
    else:
        raise SystemExit(f"unknown method {method}")

    step(warm)  # warm-up: allocator, one-off matrices, lazy imports
    model.zero_grad(set_to_none=True)
    if method.startswith("ftrace"):
        collected.clear()
    peak_reset()
    base_rss = mem_mb("VmRSS")
    times = []
    c0, t0 = cpu_seconds(), time.perf_counter()
    for u in units:
        t = time.perf_counter()
        step(u)
        times.append(time.perf_counter() - t)
    elapsed = time.perf_counter() - t0
    out["cpu_seconds"] = cpu_seconds() - c0
    out.update(examples=int(sum(len(u) for u in units)), tokens=n_tokens, padded_positions=padded,
               seconds=elapsed, batch_seconds=[round(t, 3) for t in times], rss_before_mb=base_rss,
               peak_rss_mb=mem_mb("VmHWM"))
    if method.startswith("ftrace"):
        vectors = np.concatenate(collected)
        if args.scratch:
            np.save(os.path.join(args.scratch, f"{method}.npy"), vectors)
    return out


def machine() -> dict:
    import torch
    import transformers

    cpu = platform.processor() or ""
    try:
        for line in open("/proc/cpuinfo"):
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    mem = None
    try:
        for line in open("/proc/meminfo"):
            if line.startswith("MemTotal"):
                mem = round(int(line.split()[1]) / 1024 / 1024, 1)
    except OSError:
        pass
    return {"cpu": cpu, "cores": os.cpu_count(), "memory_gb": mem, "torch_threads": torch.get_num_threads(),
            "torch": torch.__version__, "transformers": transformers.__version__, "python": platform.python_version(),
            "platform": platform.platform()}


def agreement(a, b) -> float:
    """Pearson correlation of the pairwise dot products (upper triangle) of two vector sets."""
    import numpy as np

    iu = np.triu_indices(len(a), 1)
    return float(np.corrcoef((a @ a.T)[iu], (b @ b.T)[iu])[0, 1])


def table(res: dict) -> str:
    by = {r["method"]: r for r in res["results"]}
    plain = by.get("plain", {})
    lines = [f"Model `{res['model']}`, {res['examples']} examples ({res['text_source']}), batch size "
             f"{res['batch_size']}, {res['machine']['cores']} cores ({res['machine']['cpu']}), torch "
             f"{res['machine']['torch']} with {res['machine']['torch_threads']} threads.", "",
             "| method | vector size | examples | examples/s | tokens/s | x plain limit | x naive loop | peak RSS MB (+ over loaded model) | cores used | others busy before |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    for r in res["results"]:
        if "error" in r:
            lines.append(f"| {r['method']} | - | - | - | - | - | - | not run: {r['error']} | - | - |")
            continue
        eps, tps = r["examples"] / r["seconds"], r["tokens"] / r["seconds"]
        x_plain = f"{eps / (plain['examples'] / plain['seconds']):.2f}" if plain and "seconds" in plain else "-"
        naive_key = {"ftrace-embed": "naive-embed", "ftrace-linear": "naive-linear", "bergson": "naive-linear"}.get(r["method"])
        nv = by.get(naive_key or "", {})
        x_naive = f"{eps / (nv['examples'] / nv['seconds']):.1f}" if "seconds" in nv else "-"
        lines.append(f"| {r['method']} | {r.get('size', '-')} | {r['examples']} | {eps:.2f} | {tps:.0f} | {x_plain} | "
                     f"{x_naive} | {r['peak_rss_mb']:.0f} (+{r['peak_rss_mb'] - r['rss_before_mb']:.0f}) | "
                     f"{r['cpu_seconds'] / r['seconds']:.2f} | {r.get('other_processes_busy_cores_before', '-')} |")
    if res.get("agreement"):
        lines += ["", "Agreement (Pearson r of all pairwise scores, same examples): " +
                  ", ".join(f"{k}: {v:.3f}" for k, v in res["agreement"].items())]
    for note in res.get("notes", []):
        lines += ["", note]
    return "\n".join(lines) + "\n"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", default="smollm2-135m")
    ap.add_argument("--examples", type=int, default=256)
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--naive-examples", type=int, default=16)
    ap.add_argument("--layers", nargs="*", default=None, help="override the layers of the ftrace/naive methods")
    ap.add_argument("--dim", type=int, default=None, help="override the per-block size (bergson: per side)")
    ap.add_argument("--methods", nargs="*", default=METHODS)
    ap.add_argument("--wait-quiet", type=float, default=120.0,
                    help="before each method, wait up to this many seconds for other processes to go idle")
    ap.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "gradient_throughput.json"))
    ap.add_argument("--worker", default=None, help=argparse.SUPPRESS)
    ap.add_argument("--scratch", default=None, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.worker:
        print("RESULT " + json.dumps(worker(args)), flush=True)
        return

    texts, source = load_texts(args.examples)
    scratch = tempfile.mkdtemp(prefix="ftrace-gradbench-")
    results = []
    for method in args.methods:
        cmd = [sys.executable, __file__, "--worker", method, "--model", args.model, "--examples", str(args.examples),
               "--batch-size", str(args.batch_size), "--naive-examples", str(args.naive_examples),
               "--scratch", scratch]
        if args.layers:
            cmd += ["--layers", *args.layers]
        if args.dim:
            cmd += ["--dim", str(args.dim)]
        others = wait_quiet(args.wait_quiet)
        t = time.perf_counter()
        proc = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT)
        line = next((x for x in proc.stdout.splitlines() if x.startswith("RESULT ")), None)
        if line is None:
            tail = (proc.stderr.strip().splitlines() or ["no output"])[-1]
            res = {"method": method, "error": f"exit {proc.returncode}: {tail[:300]}"}
        else:
            res = json.loads(line[len("RESULT "):])
        res["wall_seconds_with_setup"] = round(time.perf_counter() - t, 1)
        res["other_processes_busy_cores_before"] = others
        results.append(res)
        print(json.dumps(res), file=sys.stderr, flush=True)

    import numpy as np

    agree = {}
    vecs = {m: np.load(os.path.join(scratch, f"{m}.npy")) for m in ("ftrace-linear", "bergson")
            if os.path.exists(os.path.join(scratch, f"{m}.npy"))}
    if len(vecs) == 2:
        agree["ftrace-linear vs bergson"] = agreement(vecs["ftrace-linear"], vecs["bergson"])
    res = {"model": args.model, "examples": args.examples, "batch_size": args.batch_size,
           "naive_examples": args.naive_examples, "text_source": source, "machine": machine(),
           "results": results, "agreement": agree,
           "notes": ["x plain limit = examples/s over plain's examples/s on the same batches; x naive loop = "
                     "examples/s over the naive per-example loop of the same weights (naive-linear for bergson).",
                     "ftrace's backward stops at the input embeddings and computes no weight gradient, and its LM "
                     "head runs only at labelled positions; plain is an ordinary training step (every weight "
                     "gradient, logits at every position), so ftrace can exceed 1.0x of it."]}
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(res, indent=2) + "\n")
    out.with_suffix(".md").write_text(table(res))
    print(table(res))


if __name__ == "__main__":
    main()
