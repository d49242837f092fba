"""Throughput of per-example projected gradients against ftrace's own no-hooks floor, a plain
training step, a naive per-example autograd loop and bergson, on the same batches of the same model.

    python perf/gradient_throughput.py                        # SmolLM2-135M on the CPU, 256 examples
    python perf/gradient_throughput.py --device cuda --random-init .gpu/smollm2-config --examples 1024
    python perf/gradient_throughput.py --model PATH --examples 16 --repeats 1 --methods plain,no-hooks

Protocol
- Batches as ftrace ingest makes them: the examples sorted by token length, then cut into
  --batch-size batches; every method gets the very same batches.
- Every method's setup is outside the timed region: featurizer construction and projection matrices,
  bergson's per-batch Dataset (all built up front), and its collector and CollectorComputer (built
  just before each timed step, which then runs exactly `run_with_collector_hooks`).
- Warm-up: each method first processes the longest batch (the naive loops one example), untimed.
- Then --repeats passes over all batches. Within a pass the methods take turns batch by batch (the
  order rotates), so a load spike from other processes hits every method alike; the naive
  per-example loops run their --naive-examples examples (spread over the length range) in the same
  rounds. A method's rate in one repeat = its examples (tokens) / the sum of its step times in that
  pass; reported as min / median / max over the repeats.
- CUDA: torch.cuda.synchronize() before and after every step; peak GPU memory per step from
  torch.cuda.reset_peak_memory_stats / max_memory_allocated ("+" = over what was allocated just before
  the step: the model and batches are shared). CPU: the kernel's RSS high-water mark reset before each
  step (/proc/self/clear_refs); cores used = process CPU seconds / wall seconds of the method's steps,
  "others" = cores busy in other processes meanwhile (/proc/stat).
- One run per results file: --out (JSON) and a markdown table beside it (.md); the default is
  perf/results/gradient_throughput-<cpu or the card's name>[-bfloat16].json.

Methods
- no-hooks: ftrace's pass without projections (forward, LM head at labelled positions only, backward
  to the input embeddings without weight gradients): the floor of ftrace's design, the reference.
- plain: model(...) logits at every position, summed token cross-entropy, loss.backward() (an
  ordinary training step, every weight gradient): the second reference.
- ftrace-embed / ftrace-linear: GradientFeaturizer (factored) with the default embedding block
  (dim 4096) and with every decoder Linear (dim 256 per block, 16 x 16 like bergson's default).
- sketch-embed / sketch-linear: the same with the TensorSketch projection (`projection="sketch"`).
- naive-embed / naive-linear: FTRACE's way, one example at a time: loss.backward() and the chosen
  weights' .grad flattened and copied out to host memory.
- bergson: bergson's InMemoryCollector + CollectorComputer (projection_dim 16, its default Rademacher
  projection) on the same batches, every Linear of the base model (= ftrace-linear's modules), with
  the model set up as bergson's own pipeline does (every weight frozen but the input embeddings).
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import tempfile
import time
from pathlib import Path

from common import (
    MAX_TOKENS,
    ROOT,
    command_of,
    cpu_seconds,
    load_texts,
    machine,
    machine_busy_seconds,
    mem_mb,
    peak_reset,
    rel,
    slug,
    spread,
)

LINEAR_LAYERS = ["model.layers.*.self_attn.*_proj", "model.layers.*.mlp.*_proj"]
METHODS = ["plain", "no-hooks", "ftrace-embed", "ftrace-linear", "sketch-embed", "sketch-linear", "naive-embed",
           "naive-linear", "bergson"]
PROJECTION = {"ftrace": "factored", "sketch": "sketch"}
NAIVE_OF = {"ftrace-embed": "naive-embed", "ftrace-linear": "naive-linear", "sketch-embed": "naive-embed",
            "sketch-linear": "naive-linear", "bergson": "naive-linear"}
TARGETS = [("ftrace-linear", "no-hooks", 0.9), ("ftrace-linear", "bergson", 1.3)]


class Method:
    """One method: `step` is timed; `enter`, `prepare` (batch -> what step takes), `finish` (step's
    output, keep) and `leave` run around it, untimed."""

    def __init__(self, name: str, step=None, *, prepare=None, finish=None, enter=None, leave=None,
                 info: dict | None = None, error: str | None = None):
        self.name, self.step, self.prepare, self.finish = name, step, prepare, finish
        self.enter, self.leave = enter, leave
        self.naive = name.startswith("naive")
        self.info = info or {}
        self.error = error
        self.vectors: list = []
        self.seconds: list[float] = []
        self.examples: list[int] = []
        self.tokens: list[int] = []
        self.cpu = self.others = self.wall = 0.0
        self.peak = self.peak_over = 0.0

    def run(self, batch, repeat: int | None, cuda: bool) -> None:
        """One step on `batch`; `repeat` None = warm-up (not recorded)."""
        import torch

        if self.enter:
            self.enter()
        arg = self.prepare(batch) if self.prepare else batch
        if cuda:
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
            before = torch.cuda.memory_allocated() / 2**20
        else:
            peak_reset()
            before = mem_mb("VmRSS")
        c0, b0, t0 = cpu_seconds(), machine_busy_seconds(), time.perf_counter()
        out = self.step(arg)
        if cuda:
            torch.cuda.synchronize()
        dt = time.perf_counter() - t0
        cpu = cpu_seconds() - c0
        busy = machine_busy_seconds() - b0
        peak = torch.cuda.max_memory_allocated() / 2**20 if cuda else mem_mb("VmHWM")
        if self.finish:
            self.finish(out, keep=repeat == 0)
        elif repeat == 0 and out is not None:
            self.vectors.append(out)
        if self.leave:
            self.leave()
        if repeat is None:
            return
        while len(self.seconds) <= repeat:
            self.seconds.append(0.0)
            self.examples.append(0)
            self.tokens.append(0)
        self.seconds[repeat] += dt
        self.examples[repeat] += len(batch)
        self.tokens[repeat] += int(batch.attention_mask.sum())
        self.wall += dt
        self.cpu += cpu
        self.others += max(0.0, busy - cpu)
        self.peak = max(self.peak, peak)
        self.peak_over = max(self.peak_over, peak - before)

    def rates(self, what: str) -> list[float]:
        counts = self.examples if what == "examples" else self.tokens
        return [c / s for c, s in zip(counts, self.seconds, strict=True)]

    def result(self, cuda: bool) -> dict:
        if self.error:
            return {"method": self.name, "error": self.error, **self.info}
        r = {"method": self.name, **self.info, "examples": self.examples[0], "tokens": self.tokens[0],
             "repeats": len(self.seconds), "seconds": [round(s, 4) for s in self.seconds],
             "examples_per_s": spread(self.rates("examples")), "tokens_per_s": spread(self.rates("tokens"))}
        if cuda:
            r |= {"peak_gpu_mb": round(self.peak), "peak_over_start_mb": round(self.peak_over)}
        else:
            r |= {"peak_rss_mb": round(self.peak), "peak_over_start_mb": round(self.peak_over),
                  "cores_used": self.cpu / self.wall, "other_processes_cores": self.others / self.wall}
        return r


# --- methods -----------------------------------------------------------------------------------

def sum_loss(logits, labels):
    import torch

    nxt = torch.cat([labels[:, 1:], torch.full_like(labels[:, :1], -100)], 1)
    return torch.nn.functional.cross_entropy(logits.reshape(-1, logits.shape[-1]).float(), nxt.reshape(-1),
                                             ignore_index=-100, reduction="sum")


def build(args, model, batches) -> dict[str, Method]:
    """name -> Method for every requested method (with `error` set where one cannot run)."""
    import torch

    from ftrace.config import GradientConfig
    from ftrace.features.gradients import GradientFeaturizer

    def plain(batch):
        model.zero_grad(set_to_none=True)
        logits = model(input_ids=batch.input_ids, attention_mask=batch.attention_mask, use_cache=False).logits
        sum_loss(logits, batch.labels).backward()
        model.zero_grad(set_to_none=True)

    def nohooks(batch):
        """ftrace's pass (collector.py) without its hooks: forward, LM head at labelled positions,
        backward to the input embeddings only."""
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
        loss = torch.nn.functional.cross_entropy(logits.float(), nxt[b_idx, t_idx], reduction="sum")
        torch.autograd.grad(loss, cap)

    def ftrace(name, cfg):
        feat = GradientFeaturizer(model, cfg)
        return Method(name, feat.vectors, info={"config": cfg.model_dump(), "size": feat.size,
                                                "blocks": len(feat.blocks)})

    def naive(name, cfg):
        params = [b.param for b in GradientFeaturizer(model, cfg).blocks]
        size = int(sum(p.numel() for p in params))

        def step(batch):
            model.zero_grad(set_to_none=True)
            logits = model(input_ids=batch.input_ids, attention_mask=batch.attention_mask, use_cache=False).logits
            sum_loss(logits, batch.labels).backward()
            g = torch.cat([p.grad.reshape(-1) for p in params]).float()
            flat = g.numpy().copy() if g.device.type == "cpu" else g.cpu().numpy()
            assert flat.shape[0] == size
            model.zero_grad(set_to_none=True)

        return Method(name, step, info={"size": size, "layers": cfg.layers})

    made = {}
    for name in args.methods:
        if name == "plain":
            made[name] = Method("plain", plain)
        elif name == "no-hooks":
            made[name] = Method("no-hooks", nohooks)
        elif name in ("ftrace-embed", "sketch-embed"):
            made[name] = ftrace(name, GradientConfig(layers=args.layers or ["model.embed_tokens"], dim=args.dim or 4096,
                                                     projection=PROJECTION[name.split("-")[0]]))
        elif name in ("ftrace-linear", "sketch-linear"):
            made[name] = ftrace(name, GradientConfig(layers=args.layers or LINEAR_LAYERS, dim=args.dim or 256,
                                                     projection=PROJECTION[name.split("-")[0]]))
        elif name == "naive-embed":
            made[name] = naive(name, GradientConfig(layers=args.layers or ["model.embed_tokens"]))
        elif name == "naive-linear":
            made[name] = naive(name, GradientConfig(layers=args.layers or LINEAR_LAYERS, dim=1))
        elif name == "bergson":
            made[name] = bergson_method(args, model, batches)
        else:
            raise SystemExit(f"unknown method {name}; known: {', '.join(METHODS)}")
    return made


def bergson_method(args, model, batches) -> Method:
    import torch

    try:
        import bergson as bg
        from bergson import CollectorComputer, GradientProcessor, IndexConfig, InMemoryCollector
        from datasets import Dataset
        from datasets.table import InMemoryTable
    except Exception as e:
        return Method("bergson", error=f"cannot import bergson: {type(e).__name__}: {e}")
    tmp = tempfile.mkdtemp(prefix="bergson-bench-")
    cfg = IndexConfig(run_path=os.path.join(tmp, "index"), projection_dim=args.bergson_dim)
    os.makedirs(cfg.partial_run_path, exist_ok=True)
    processor = GradientProcessor(projection_dim=cfg.projection_dim)  # shared: caches its matrices
    info = {"version": bg.__version__, "config": {"projection_dim": cfg.projection_dim,
                                                  "projection_type": cfg.projection_type,
                                                  "loss_reduction": cfg.loss_reduction,
                                                  "modules": "every Linear of model.base_model",
                                                  "frozen": "every weight but the input embeddings "
                                                            "(as bergson's setup_model_and_peft)"}}

    def rows(batch):  # bergson pads its own batches (right, with 0), with labels -100 there
        ids, labels = batch.input_ids.cpu(), batch.labels.cpu()
        lengths = batch.attention_mask.sum(1).tolist()
        return {"input_ids": [ids[i, :n].tolist() for i, n in enumerate(lengths)],
                "labels": [labels[i, :n].tolist() for i, n in enumerate(lengths)]}

    # every batch's Dataset, up front; a given fingerprint skips datasets' hashing of the table with dill
    # (which fails for some dill/pyarrow pairs)
    data = {id(b): Dataset(InMemoryTable.from_pydict(rows(b)), fingerprint=f"bench-{i}") for i, b in enumerate(batches)}
    flags = [p.requires_grad for p in model.parameters()]
    m = Method("bergson", info=info)

    def enter():
        model.requires_grad_(False)
        model.get_input_embeddings().requires_grad_(True)

    def leave():
        for p, f in zip(model.parameters(), flags, strict=True):
            p.requires_grad_(f)

    def prepare(batch):
        ds = data[id(batch)]
        collector = InMemoryCollector(model=model.base_model, cfg=cfg, processor=processor, data=ds)
        computer = CollectorComputer(model=model, data=ds, collector=collector, batches=[list(range(len(ds)))],
                                     cfg=cfg)
        return collector, computer

    def step(arg):
        collector, computer = arg
        computer.run_with_collector_hooks(desc="bergson")
        return collector

    def finish(collector, keep):
        grads = collector.gradients
        m.info["size"], m.info["blocks"] = int(sum(g.shape[1] for g in grads.values())), len(grads)
        if keep:  # per-module unit, concatenated, unit (ftrace's normalisation) for the agreement check
            parts = [torch.nn.functional.normalize(g.float(), dim=1) for g in grads.values()]
            m.vectors.append(torch.nn.functional.normalize(torch.cat(parts, 1), dim=1).numpy())

    m.step, m.prepare, m.finish, m.enter, m.leave = step, prepare, finish, enter, leave
    return m


# --- setup and report --------------------------------------------------------------------------

def load(args, device, dtype):
    """(model on device in dtype, tokenizer, model name, weights description)."""
    import torch

    if args.random_init:
        from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer
        from transformers.utils import logging as hf_logging

        hf_logging.set_verbosity_error()
        config = AutoConfig.from_pretrained(args.random_init)
        torch.manual_seed(args.seed)
        with torch.device(device):
            model = AutoModelForCausalLM.from_config(config)
        tok = AutoTokenizer.from_pretrained(args.random_init)
        if tok.pad_token_id is None:
            tok.pad_token = tok.eos_token
        name = rel(args.random_init)
        weights = f"random weights, real architecture ({name}/config.json, seed {args.seed})"
    else:
        from ftrace.model import load_model

        lm = load_model(args.model)
        model, tok = lm.model, lm.tokenizer
        name = args.model if not Path(args.model).exists() else rel(args.model)
        weights = f"pretrained (fingerprint {lm.fingerprint})"
    model = model.to(device=device, dtype=dtype).eval()
    return model, tok, name, weights


def agreement(a, b) -> float:
    """Pearson correlation of the pairwise dot products (upper triangle) of two vector sets."""
    import numpy as np

    iu = np.triu_indices(len(a), 1)
    return float(np.corrcoef((a @ a.T)[iu], (b @ b.T)[iu])[0, 1])


def ratios(results: list[dict]) -> None:
    """Adds x_no_hooks, x_plain, x_naive (ratios of median examples/s) to each result."""
    med = {r["method"]: r["examples_per_s"]["median"] for r in results if "error" not in r}
    for r in results:
        if "error" in r:
            continue
        mine = med[r["method"]]
        for key, ref in (("x_no_hooks", "no-hooks"), ("x_plain", "plain"),
                         ("x_naive", NAIVE_OF.get(r["method"], ""))):
            r[key] = mine / med[ref] if ref in med else None


def targets(results: list[dict]) -> list[dict]:
    med = {r["method"]: r["examples_per_s"]["median"] for r in results if "error" not in r}
    return [{"method": a, "reference": b, "target": t, "value": med[a] / med[b], "met": med[a] / med[b] >= t}
            for a, b, t in TARGETS if a in med and b in med]


def fmt(x, spec=".2f") -> str:
    return "-" if x is None else format(x, spec)


def table(res: dict) -> str:
    m = res["machine"]
    cuda = m["device"] == "cuda"
    where = (f"{m['card']} ({m['gpu_memory_gb']} GB), CUDA {m['cuda']}" if cuda
             else f"{m['cores']} cores ({m['cpu']}), {m['memory_gb']} GB, {m['torch_threads']} torch threads")
    lines = [*([f"`{res['command']}`", ""] if "command" in res else []),
             f"Model `{res['model']}` ({res['weights']}), {res['dtype']}, on {where}; torch {m['torch']}, "
             f"transformers {m['transformers']}, Python {m['python']}.", "",
             f"{res['examples']} examples from `{res['text_source']}` ({res['distinct_texts']} distinct), sorted by "
             f"token length into {res['batches']} batches of {res['batch_size']} ({res['tokens']} tokens in "
             f"{res['padded_positions']} padded positions); naive loops on {res['naive_examples']} of them. "
             f"Warm-up on the longest batch, then {res['repeats']} repeats of the whole pass, methods interleaved "
             f"batch by batch; rates are min / median / max over the repeats.", ""]
    mem = "peak GPU MB (+ step)" if cuda else "peak RSS MB (+ step) | cores used | others' cores"
    head = (f"| method | vector size | examples | examples/s min / median / max | tokens/s (median) | x no-hooks "
            f"| x plain | x naive loop | {mem} |")
    lines += [head, "|" + "---|" * (head.count("|") - 1)]
    for r in res["results"]:
        if "error" in r:
            lines.append(f"| {r['method']} | not run: {r['error']} |")
            continue
        e = r["examples_per_s"]
        row = (f"| {r['method']} | {r.get('size', '-')} | {r['examples']} | {e['min']:.2f} / {e['median']:.2f} / "
               f"{e['max']:.2f} | {r['tokens_per_s']['median']:.0f} | {fmt(r['x_no_hooks'])} | {fmt(r['x_plain'])} "
               f"| {fmt(r['x_naive'], '.1f')} | ")
        if cuda:
            row += f"{r['peak_gpu_mb']} (+{r['peak_over_start_mb']}) |"
        else:
            row += (f"{r['peak_rss_mb']} (+{r['peak_over_start_mb']}) | {r['cores_used']:.2f} | "
                    f"{r['other_processes_cores']:.2f} |")
        lines.append(row)
    if res["targets"]:
        lines += ["", "Targets (ratios of median examples/s): " + "; ".join(
            f"{t['method']} / {t['reference']} = {t['value']:.2f} (target >= {t['target']}: "
            f"{'met' if t['met'] else 'NOT met'})" for t in res["targets"])]
    if res["agreement"]:
        lines += ["", "Agreement (Pearson r over all pairs of distinct examples of the pairwise scores): " +
                  ", ".join(f"{k}: {v:.3f}" for k, v in res["agreement"].items())]
    lines += [""] + [f"- {n}" for n in res["notes"]]
    return "\n".join(lines) + "\n"


NOTES = [
    "x no-hooks / x plain / x naive loop = median examples/s over the median of no-hooks, of plain, and of the "
    "naive per-example loop of the same weights (naive-linear for bergson).",
    "no-hooks is ftrace's pass without projections (LM head at labelled positions only, backward to the input "
    "embeddings, no weight gradient): ftrace-X minus no-hooks is the cost of the projections. plain is an "
    "ordinary training step (logits at every position, every weight gradient), so ftrace can beat it.",
    "bergson runs as its own pipeline sets the model up (every weight frozen but the input embeddings); its "
    "Dataset, collector and CollectorComputer are built outside the timed region; the timed step is "
    "run_with_collector_hooks on one batch (pad, forward with logits at every position, backward, per-module "
    "projection, copy to host, teardown).",
    "Agreement: both are 16x16-per-module projections of the same per-example gradients, normalised per "
    "module; r < 1 is the projections' noise, not a disagreement of gradients.",
]


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", default="smollm2-135m", help="model name or path (pretrained weights)")
    ap.add_argument("--random-init", metavar="DIR", help="random weights from DIR/config.json, tokenizer from DIR")
    ap.add_argument("--seed", type=int, default=0, help="seed of --random-init's weights")
    ap.add_argument("--device", choices=["cpu", "cuda"], default="cpu")
    ap.add_argument("--dtype", choices=["float32", "bfloat16"], default="float32", help="model weights")
    ap.add_argument("--examples", type=int, default=256)
    ap.add_argument("--texts", help="jsonl of texts ('text', or LAMA 'evidences'); default: the sample corpus, "
                                    "then LAMA P176 where ../shared is")
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--naive-examples", type=int, default=16)
    ap.add_argument("--layers", nargs="*", default=None, help="override the layers of the ftrace and naive methods")
    ap.add_argument("--dim", type=int, default=None, help="override ftrace's per-block size")
    ap.add_argument("--bergson-dim", type=int, default=16, help="bergson's projection_dim (per side)")
    ap.add_argument("--methods", nargs="*", default=METHODS, help="names, space- or comma-separated")
    ap.add_argument("--out", help="results JSON (default: OUT_DIR/gradient_throughput-<cpu or card>.json)")
    ap.add_argument("--out-dir", default=str(ROOT / "perf" / "results"))
    args = ap.parse_args(argv)
    args.methods = [x for m in args.methods for x in m.split(",") if x]
    if args.repeats < 1 or args.examples < 1:
        raise SystemExit("--repeats and --examples must be at least 1")
    os.environ.setdefault("TQDM_DISABLE", "1")  # bergson's progress bars
    was_disabled = logging.root.manager.disable
    logging.disable(logging.INFO)  # and its per-batch INFO lines
    try:
        return run(args, command_of(__file__, argv))
    finally:
        logging.disable(was_disabled)


def run(args, command: str) -> dict:
    import numpy as np
    import torch

    from ftrace.model import example_batch
    from ftrace.model.batching import token_lengths

    started = time.perf_counter()
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise SystemExit("--device cuda: no CUDA device is available")
    cuda = device.type == "cuda"
    model, tok, model_name, weights = load(args, device, getattr(torch, args.dtype))
    texts, source, distinct = load_texts(args.examples, args.texts)
    # as ingest: sorted by token length, then batched
    lengths = token_lengths(tok, texts)
    order = sorted(range(len(texts)), key=lambda i: (lengths[i], i))
    texts = [texts[i] for i in order]
    first = {}
    for i, t in enumerate(texts):
        first.setdefault(t, i)
    unique = sorted(first.values())  # positions of distinct texts, for the agreement check
    bs = args.batch_size
    batches = [example_batch(tok, texts[i:i + bs], MAX_TOKENS).to(device) for i in range(0, len(texts), bs)]
    k = min(args.naive_examples, len(texts))
    picks = [round(j * (len(texts) - 1) / max(1, k - 1)) for j in range(k)]  # spread over the lengths
    singles = [example_batch(tok, [texts[i]], MAX_TOKENS).to(device) for i in picks]
    methods = build(args, model, batches)
    live = {n: m for n, m in methods.items() if not m.error}
    longest = max(batches, key=lambda b: b.input_ids.numel())
    for m in live.values():  # warm-up: allocator, kernels, lazy imports, projection matrices
        m.run(singles[0] if m.naive else longest, None, cuda)
    batched = [n for n, m in live.items() if not m.naive]
    naive = [n for n, m in live.items() if m.naive]
    per_round = -(-len(singles) // len(batches))
    for r in range(args.repeats):
        for i, batch in enumerate(batches):
            turn = (i + r) % max(1, len(batched))
            for name in batched[turn:] + batched[:turn]:
                live[name].run(batch, r, cuda)
            for name in naive:
                for single in singles[i * per_round:(i + 1) * per_round]:
                    live[name].run(single, r, cuda)
        print(f"repeat {r + 1}/{args.repeats} done at {time.perf_counter() - started:.0f} s", flush=True)

    agree = {}
    vecs = {n: np.concatenate(live[n].vectors)[unique] for n in ("ftrace-linear", "bergson")
            if n in live and live[n].vectors}
    if len(vecs) == 2:
        agree["ftrace-linear vs bergson"] = agreement(vecs["ftrace-linear"], vecs["bergson"])
    results = [m.result(cuda) for m in methods.values()]
    ratios(results)
    mach = machine(device)
    notes = list(NOTES)
    if "random" in weights:
        notes.insert(0, "Random weights, real architecture: the real weights could not be brought to this machine; "
                        "the cost of a pass does not depend on the weights' values.")
    if distinct < len(texts):
        notes.insert(0, f"Only {distinct} distinct texts: they are repeated to make {len(texts)} examples (the "
                        "agreement check uses each distinct text once).")
    res = {"command": command, "model": model_name, "weights": weights, "device": device.type, "card": mach.get("card"),
           "dtype": args.dtype, "examples": len(texts), "distinct_texts": distinct, "text_source": source,
           "batch_size": bs, "batches": len(batches), "sorted_by_length": True, "max_tokens": MAX_TOKENS,
           "tokens": int(sum(int(b.attention_mask.sum()) for b in batches)),
           "padded_positions": int(sum(b.input_ids.numel() for b in batches)),
           "naive_examples": len(singles), "repeats": args.repeats, "warmup": "the longest batch, once per method",
           "machine": mach, "total_seconds": round(time.perf_counter() - started, 1), "results": results,
           "targets": targets(results), "agreement": agree, "notes": notes}
    name = slug(mach["card"]) if cuda else "cpu"
    if args.dtype != "float32":
        name += f"-{args.dtype}"
    out = Path(args.out) if args.out else Path(args.out_dir) / f"gradient_throughput-{name}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(res, indent=2) + "\n")
    out.with_suffix(".md").write_text(table(res))
    print(table(res))
    print(f"wrote {out} and {out.with_suffix('.md')}")
    return res


if __name__ == "__main__":
    main()
