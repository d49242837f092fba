"""Throughput of per-example projected gradients against the plain forward+backward limit, a naive
per-example autograd loop and peers, on the same batches of the same model.

    python perf/gradient_throughput.py                       # SmolLM2-135M, 256 examples
    python perf/gradient_throughput.py --model PATH --examples 32 --naive-examples 4 --out /tmp/g.json

All methods run in ONE process, interleaved: for every batch, each method processes that batch in
turn (the order rotates from batch to batch), so a load spike from other processes on a shared
machine hits every method alike and the ratios stay meaningful. The naive per-example loops run
their --naive-examples examples spread over the same rounds. Every method first gets a warm-up batch
of 4 other examples. Memory: before each step the kernel's high-water mark is reset
(/proc/self/clear_refs), so the peak RSS of a step is that method's own; "+" is the step's peak over
the RSS just before it (the model, batches and imports are shared). CPU: cores used = process CPU
seconds / wall seconds during the method's steps; "others" = cores used by other processes meanwhile
(from /proc/stat). Results: --out (JSON) and a markdown table beside it (.md).

Methods
- plain: model(...) logits for every position, summed token cross-entropy, loss.backward() (an
  ordinary training step, which also computes every weight gradient): the limit to compare with.
- no-hooks: ftrace's pass without projections (forward, LM head at labelled positions only,
  backward to the input embeddings without weight gradients): the floor of ftrace's design, so
  ftrace minus no-hooks is the cost of the projections.
- ftrace-embed / ftrace-linear: GradientFeaturizer (factored) with the default embedding block
  (dim 4096) and with every decoder Linear (dim 256 per block, 16 x 16 like bergson's default).
- naive-embed / naive-linear: FTRACE's way, one example at a time: loss.backward() and the chosen
  weights' .grad flattened and copied out.
- bergson: bergson's InMemoryCollector + CollectorComputer (projection_dim 16, its default Rademacher
  projection) on the same batches, every Linear of the base model (= ftrace-linear's modules).
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import platform
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SAMPLE = ROOT / "ftrace" / "corpus" / "data" / "sample.jsonl"
LAMA = ROOT.parent / "shared" / "data" / "lama-trex" / "P176" / "train.jsonl"
LINEAR_LAYERS = ["model.layers.*.self_attn.*_proj", "model.layers.*.mlp.*_proj"]
METHODS = ["plain", "no-hooks", "ftrace-embed", "ftrace-linear", "naive-embed", "naive-linear", "bergson"]
WARMUP = 4
HZ = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100


def load_texts(n: int) -> tuple[list[str], list[str], str]:
    """(n texts, WARMUP warm-up texts, source): the shipped sample corpus, else LAMA P176 evidences."""
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
        source = "../shared/data/lama-trex/P176/train.jsonl (evidences, [MASK] = obj_surface)"
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
    return texts[WARMUP:n + WARMUP], texts[:WARMUP], source


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


def cpu_seconds() -> float:
    t = os.times()
    return t.user + t.system


def machine_busy_seconds() -> float:
    try:
        v = [int(x) for x in open("/proc/stat").readline().split()[1:]]
        return (sum(v[:8]) - v[3] - v[4]) / HZ  # all but idle and iowait
    except OSError:
        return float("nan")


def sum_loss(logits, labels):
    import torch

    nxt = torch.cat([labels[:, 1:], torch.full_like(labels[:, :1], -100)], 1)
    return torch.nn.functional.cross_entropy(logits.reshape(-1, logits.shape[-1]).float(), nxt.reshape(-1),
                                             ignore_index=-100, reduction="sum")


class Method:
    def __init__(self, name: str):
        self.name = name
        self.seconds = self.cpu = self.others = 0.0
        self.peak = self.peak_over = 0.0
        self.examples = self.tokens = 0
        self.info: dict = {}
        self.error: str | None = None
        self.vectors: list = []

    def timed(self, fn, batch) -> None:
        peak_reset()
        before = mem_mb("VmRSS")
        c0, b0, t0 = cpu_seconds(), machine_busy_seconds(), time.perf_counter()
        fn(batch)
        dt = time.perf_counter() - t0
        cpu = cpu_seconds() - c0
        self.seconds += dt
        self.cpu += cpu
        self.others += max(0.0, machine_busy_seconds() - b0 - cpu)
        peak = mem_mb("VmHWM")
        self.peak = max(self.peak, peak)
        self.peak_over = max(self.peak_over, peak - before)
        self.examples += len(batch)
        self.tokens += int(batch.attention_mask.sum())

    def result(self) -> dict:
        if self.error:
            return {"method": self.name, "error": self.error, **self.info}
        return {"method": self.name, **self.info, "examples": self.examples, "tokens": self.tokens,
                "seconds": round(self.seconds, 3), "examples_per_s": self.examples / self.seconds,
                "tokens_per_s": self.tokens / self.seconds, "cores_used": self.cpu / self.seconds,
                "other_processes_cores": self.others / self.seconds, "peak_rss_mb": round(self.peak),
                "peak_over_start_mb": round(self.peak_over)}


def build(args, lm):
    """name -> (Method, step function) for every requested method that can run."""
    import torch

    from ftrace.config import GradientConfig
    from ftrace.features.gradients import GradientFeaturizer

    model = lm.model
    out = {}

    def plain(batch):
        model.zero_grad(set_to_none=True)
        logits = model(input_ids=batch.input_ids, attention_mask=batch.attention_mask, use_cache=False).logits
        sum_loss(logits, batch.labels).backward()
        model.zero_grad(set_to_none=True)

    def nohooks(batch):
        """ftrace's pass without its hooks: forward, LM head at labelled positions, backward to the
        input embeddings only. What the featuriser costs before any projection."""
        cap = []
        h = model.get_input_embeddings().register_forward_hook(lambda mod, a, o: cap.append(o))
        try:
            hidden = model.base_model(input_ids=batch.input_ids, attention_mask=batch.attention_mask,
                                      use_cache=False).last_hidden_state
        finally:
            h.remove()
        nxt = batch.labels[:, 1:]
        b_idx, t_idx = (nxt != -100).nonzero(as_tuple=True)
        logits = model.get_output_embeddings()(hidden[b_idx, t_idx])
        loss = torch.nn.functional.cross_entropy(logits, nxt[b_idx, t_idx], reduction="sum")
        torch.autograd.grad(loss, cap)

    def ftrace(name, cfg):
        m = Method(name)
        feat = GradientFeaturizer(model, cfg)
        m.info = {"config": cfg.model_dump(), "size": feat.size, "blocks": len(feat.blocks)}
        return m, lambda batch: m.vectors.append(feat.vectors(batch))

    def naive(name, cfg):
        m = Method(name)
        params = [b.param for b in GradientFeaturizer(model, cfg).blocks]
        m.info = {"size": int(sum(p.numel() for p in params)), "layers": cfg.layers}

        def step(batch):
            model.zero_grad(set_to_none=True)
            logits = model(input_ids=batch.input_ids, attention_mask=batch.attention_mask, use_cache=False).logits
            sum_loss(logits, batch.labels).backward()
            flat = torch.cat([p.grad.reshape(-1) for p in params]).numpy().copy()
            assert flat.shape[0] == m.info["size"]
            model.zero_grad(set_to_none=True)

        return m, step

    def bergson():
        m = Method("bergson")
        try:
            import bergson as bg
            from bergson import CollectorComputer, GradientProcessor, IndexConfig, InMemoryCollector
            from datasets import Dataset
        except Exception as e:
            m.error = f"cannot import bergson: {type(e).__name__}: {e}"
            return m, None
        tmp = tempfile.mkdtemp(prefix="bergson-bench-")
        cfg = IndexConfig(run_path=os.path.join(tmp, "index"), projection_dim=args.bergson_dim)
        os.makedirs(cfg.partial_run_path, exist_ok=True)
        processor = GradientProcessor(projection_dim=cfg.projection_dim)  # shared: caches its matrices
        m.info = {"version": bg.__version__, "config": {"projection_dim": cfg.projection_dim,
                                                        "projection_type": cfg.projection_type,
                                                        "loss_reduction": cfg.loss_reduction,
                                                        "modules": "every Linear of model.base_model"}}

        def rows(batch):
            return [(batch.input_ids[i, :n].tolist(), batch.labels[i, :n].tolist())
                    for i, n in enumerate(batch.attention_mask.sum(1).tolist())]

        def step(batch):
            r = rows(batch)  # bergson pads its own batches (right, with 0), with labels -100 there
            data = Dataset.from_dict({"input_ids": [x[0] for x in r], "labels": [x[1] for x in r]})
            collector = InMemoryCollector(model=model.base_model, cfg=cfg, processor=processor, data=data)
            CollectorComputer(model=model, data=data, collector=collector, batches=[list(range(len(r)))],
                              cfg=cfg).run_with_collector_hooks(desc="bergson")
            grads = collector.gradients
            m.info["size"], m.info["blocks"] = int(sum(g.shape[1] for g in grads.values())), len(grads)
            # per-module unit, concatenated, unit (ftrace's normalisation) for the agreement check
            parts = [torch.nn.functional.normalize(g.float(), dim=1) for g in grads.values()]
            m.vectors.append(torch.nn.functional.normalize(torch.cat(parts, 1), dim=1).numpy())

        return m, step

    for name in args.methods:
        if name == "plain":
            out[name] = (Method("plain"), plain)
        elif name == "no-hooks":
            out[name] = (Method("no-hooks"), nohooks)
        elif name == "ftrace-embed":
            out[name] = ftrace(name, GradientConfig(layers=args.layers or ["model.embed_tokens"], dim=args.dim or 4096))
        elif name == "ftrace-linear":
            out[name] = ftrace(name, GradientConfig(layers=args.layers or LINEAR_LAYERS, dim=args.dim or 256))
        elif name == "naive-embed":
            out[name] = naive(name, GradientConfig(layers=args.layers or ["model.embed_tokens"]))
        elif name == "naive-linear":
            out[name] = naive(name, GradientConfig(layers=args.layers or LINEAR_LAYERS, dim=1))
        elif name == "bergson":
            out[name] = bergson()
        else:
            raise SystemExit(f"unknown method {name}; known: {', '.join(METHODS)}")
    return out


def machine() -> dict:
    import torch
    import transformers

    cpu = platform.processor() or ""
    mem = None
    try:
        cpu = next(x.split(":", 1)[1].strip() for x in open("/proc/cpuinfo") if x.startswith("model name"))
        mem = round(next(int(x.split()[1]) for x in open("/proc/meminfo") if x.startswith("MemTotal")) / 2**20, 1)
    except (OSError, StopIteration):
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
    m = res["machine"]
    lines = [f"Model `{res['model']}`, {res['examples']} examples from `{res['text_source']}` "
             f"({res['tokens']} tokens, {res['padded_positions']} padded positions), batch size {res['batch_size']}, "
             f"naive loops on {res['naive_examples']} examples; {m['cores']} cores ({m['cpu']}), {m['memory_gb']} GB, "
             f"torch {m['torch']} with {m['torch_threads']} threads; methods interleaved batch by batch.", "",
             "| method | vector size | examples | examples/s | tokens/s | x plain limit | x naive loop "
             "| peak RSS MB (+ step) | cores used | others' cores |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    for r in res["results"]:
        if "error" in r:
            lines.append(f"| {r['method']} | - | - | - | - | - | - | - | - | not run: {r['error']} |")
            continue
        x_plain = f"{r['examples_per_s'] / plain['examples_per_s']:.2f}" if "examples_per_s" in plain else "-"
        naive_key = {"ftrace-embed": "naive-embed", "ftrace-linear": "naive-linear",
                     "bergson": "naive-linear"}.get(r["method"], "")
        nv = by.get(naive_key, {})
        x_naive = f"{r['examples_per_s'] / nv['examples_per_s']:.1f}" if "examples_per_s" in nv else "-"
        lines.append(f"| {r['method']} | {r.get('size', '-')} | {r['examples']} | {r['examples_per_s']:.2f} | "
                     f"{r['tokens_per_s']:.0f} | {x_plain} | {x_naive} | "
                     f"{r['peak_rss_mb']} (+{r['peak_over_start_mb']}) | "
                     f"{r['cores_used']:.2f} | {r['other_processes_cores']:.2f} |")
    if res.get("agreement"):
        lines += ["", "Agreement (Pearson r over all pairs of examples of the pairwise scores): " +
                  ", ".join(f"{k}: {v:.3f}" for k, v in res["agreement"].items())]
    lines += [""] + [f"- {n}" for n in res.get("notes", [])]
    return "\n".join(lines) + "\n"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", default="smollm2-135m")
    ap.add_argument("--examples", type=int, default=256)
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--naive-examples", type=int, default=16)
    ap.add_argument("--layers", nargs="*", default=None, help="override the layers of the ftrace and naive methods")
    ap.add_argument("--dim", type=int, default=None, help="override ftrace's per-block size")
    ap.add_argument("--bergson-dim", type=int, default=16, help="bergson's projection_dim (per side)")
    ap.add_argument("--methods", nargs="*", default=METHODS)
    ap.add_argument("--out", default=str(ROOT / "perf" / "results" / "gradient_throughput.json"))
    args = ap.parse_args()
    os.environ.setdefault("TQDM_DISABLE", "1")  # bergson's progress bars
    logging.disable(logging.INFO)  # and its per-batch INFO lines

    import numpy as np
    import torch

    from ftrace.model import example_batch, load_model

    started = time.perf_counter()
    lm = load_model(args.model)
    texts, warm_texts, source = load_texts(args.examples)
    tok = lm.tokenizer
    bs = args.batch_size
    batches = [example_batch(tok, texts[i:i + bs]) for i in range(0, len(texts), bs)]
    warm = example_batch(tok, warm_texts)
    singles = [example_batch(tok, [t]) for t in texts[:args.naive_examples]]
    methods = build(args, lm)
    runnable = {k: v for k, v in methods.items() if v[1] is not None}

    for name, (m, step) in runnable.items():  # warm-up: allocator, lazy imports, projection matrices
        step(singles[0] if name.startswith("naive") else warm)
        m.vectors.clear()
    batched = [k for k in runnable if not k.startswith("naive")]
    per_round = -(-len(singles) // len(batches))
    for i, batch in enumerate(batches):
        order = batched[i % len(batched):] + batched[:i % len(batched)]
        for name in order:
            m, step = runnable[name]
            m.timed(step, batch)
        for name in (k for k in runnable if k.startswith("naive")):
            m, step = runnable[name]
            for single in singles[i * per_round:(i + 1) * per_round]:
                m.timed(step, single)
        print(f"round {i + 1}/{len(batches)} done at {time.perf_counter() - started:.0f} s", flush=True)

    agree = {}
    vecs = {k: np.concatenate(methods[k][0].vectors) for k in ("ftrace-linear", "bergson")
            if k in runnable and methods[k][0].vectors}
    if len(vecs) == 2:
        agree["ftrace-linear vs bergson"] = agreement(vecs["ftrace-linear"], vecs["bergson"])
    res = {"model": args.model, "examples": len(texts), "batch_size": bs, "naive_examples": len(singles),
           "tokens": int(sum(int(b.attention_mask.sum()) for b in batches)),
           "padded_positions": int(sum(b.input_ids.numel() for b in batches)),
           "text_source": source, "machine": machine(), "torch_threads": torch.get_num_threads(),
           "total_seconds": round(time.perf_counter() - started, 1),
           "results": [methods[k][0].result() for k in methods], "agreement": agree,
           "notes": ["x plain limit = examples/s over plain's examples/s on the same batches; x naive loop = "
                     "examples/s over the naive per-example loop of the same weights (naive-linear for bergson).",
                     "ftrace's backward stops at the input embeddings and computes no weight gradient, and its LM "
                     "head runs only at labelled positions; plain is an ordinary training step (every weight "
                     "gradient, logits at every position), so ftrace can exceed 1.0x of it.",
                     "Agreement: both are 16x16-per-module projections of the same per-example gradients, "
                     "normalised per module; r < 1 is the projections' noise, not a disagreement of gradients."]}
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(res, indent=2) + "\n")
    out.with_suffix(".md").write_text(table(res))
    print(table(res))


if __name__ == "__main__":
    main()
