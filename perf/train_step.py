"""`ftrace train`'s step on the CPU against its floor, on LAMA T-REx sentences (issue 18: an epoch within 1.5x a
plain forward + backward over the same examples in length-sorted batches).

    python perf/train_step.py                                  # SmolLM2-135M, 64 dev sentences, batch 16, float32
    python perf/train_step.py --model PATH --examples 32 --repeats 1 --corpus sample   # a quick check

Protocol
- A seeded sample of --examples training examples (the corpus's sentences under --example-loss), in the seeded
  random order of one epoch cut into batches of --batch-size, as `ftrace train` steps through them.
- Per epoch, three ways, taking turns batch by batch (the order rotates):
  - "one padded batch": ftrace's step before this change: the batch padded to its longest sentence, lm_loss,
    backward, AdamW step;
  - "ftrace step": `accumulate_gradient` (length-sorted groups of at most GROUP_TOKENS padded tokens, each padded
    to its own longest row), AdamW step: what `ftrace train` runs;
  - "floor": forward + backward of the same epoch's examples sorted by length over the whole epoch and cut into
    batches of --batch-size (the least padding any batching of those examples gets), no optimizer.
  Each on its own copy of the model (the AdamW steps change it). After a warm-up on the longest batch, --repeats
  epochs; seconds per epoch as min / median / max, and the ratio of medians to the floor.
- Results: perf/results/train_step-cpu[-DTYPE].{json,md} (--out to change), with the load other processes put
  on the machine meanwhile.
"""

from __future__ import annotations

import argparse
import copy
import sys
import time

import numpy as np
from common import (
    SHARED,
    command_of,
    machine,
    machine_busy_seconds,
    rel,
    results_path,
    spread,
    write_results,
)

WAYS = ("one padded batch", "ftrace step", "floor")


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--corpus", default=str(SHARED / "lama-trex"))
    ap.add_argument("--split", default="dev")
    ap.add_argument("--model", default="smollm2-135m")
    ap.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"])
    ap.add_argument("--example-loss", default="sentence", choices=["sentence", "object"])
    ap.add_argument("--examples", type=int, default=64)
    ap.add_argument("--batch-size", type=int, default=16)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", default=None)
    a = ap.parse_args(argv)

    import torch

    from ftrace.config import MAX_TOKENS
    from ftrace.corpus import load_corpus
    from ftrace.model import load_model
    from ftrace.model.loading import DTYPES
    from ftrace.model.objective import GROUP_TOKENS, Objective, accumulate_gradient, lm_loss

    corpus = load_corpus(a.corpus) if a.corpus == "sample" else load_corpus(a.corpus, splits=[a.split])
    lm = load_model(a.model)
    rng = np.random.default_rng(a.seed)
    pool = [corpus.sentences[int(i)] for i in rng.permutation(len(corpus.sentences))[:4 * a.examples]]
    objective = Objective(a.example_loss, lm.tokenizer)
    examples = objective.training_examples(pool)[:a.examples]
    batches = [examples[i:i + a.batch_size] for i in range(0, len(examples), a.batch_size)]
    tokens = [len(lm.tokenizer(e.text, truncation=True, max_length=MAX_TOKENS)["input_ids"]) for e in examples]
    by_length = [examples[i] for i in np.argsort(tokens, kind="stable")]
    sorted_batches = [by_length[i:i + a.batch_size] for i in range(0, len(by_length), a.batch_size)]

    models = {w: copy.deepcopy(lm.model).to(dtype=DTYPES[a.dtype]).train() for w in WAYS}
    opts = {w: torch.optim.AdamW(models[w].parameters(), lr=1e-5) for w in WAYS[:2]}

    def step(way: str, i: int) -> float:
        model = models[way]
        t0 = time.perf_counter()
        if way == "floor":
            model.zero_grad(set_to_none=True)
            lm_loss(model, objective.batch(sorted_batches[i])[0]).backward()
        else:
            opts[way].zero_grad(set_to_none=True)
            batch = objective.batch(batches[i])[0]
            if way == "ftrace step":
                accumulate_gradient(model, batch)
            else:
                lm_loss(model, batch).backward()
            opts[way].step()
        return time.perf_counter() - t0

    longest = max(range(len(batches)), key=lambda i: max(tokens[examples.index(e)] for e in batches[i]))
    for w in WAYS:  # warm-up
        step(w, longest)
    seconds: dict[str, list[float]] = {w: [] for w in WAYS}
    busy0, cpu0, t0 = machine_busy_seconds(), time.process_time(), time.perf_counter()
    for r in range(a.repeats):
        spent = dict.fromkeys(WAYS, 0.0)
        for i in range(len(batches)):
            k = (i + r) % len(WAYS)
            for w in WAYS[k:] + WAYS[:k]:
                spent[w] += step(w, i)
        for w in WAYS:
            seconds[w].append(spent[w])
        print(f"epoch {r + 1}: " + ", ".join(f"{w} {spent[w]:.1f} s" for w in WAYS), file=sys.stderr)
    wall = time.perf_counter() - t0
    others = max(0.0, (machine_busy_seconds() - busy0) - (time.process_time() - cpu0)) / wall

    shown = a.corpus if a.corpus == "sample" else rel(a.corpus)
    padded = sum(len(b) * max(tokens[examples.index(e)] for e in b) for b in batches)
    floor_s = float(np.median(seconds["floor"]))
    r = {"command": command_of(__file__, argv), "machine": machine(torch.device("cpu")), "model": a.model,
         "dtype": a.dtype, "corpus": shown, "split": a.split, "example_loss": a.example_loss,
         "examples": len(examples), "batch_size": a.batch_size, "group_tokens": GROUP_TOKENS,
         "tokens": sum(tokens), "padded_tokens_one_batch": padded, "repeats": a.repeats,
         "other_processes_cores": round(others, 2),
         "seconds_per_epoch": {w: spread(s) for w, s in seconds.items()},
         "x_floor": {w: round(float(np.median(s)) / floor_s, 2) for w, s in seconds.items()}}
    lines = [f"# `ftrace train`'s step against its floor ({r['machine']['cpu']}, {r['machine']['cores']} cores, "
             f"{a.dtype})", "", f"Command: `{r['command']}`", "",
             f"{len(examples)} {a.split} examples of {shown} ({a.example_loss} loss, {sum(tokens):,} tokens; "
             f"{padded:,} when each random batch of {a.batch_size} is padded to its longest), one epoch = "
             f"{len(batches)} steps, {a.repeats} epochs after a warm-up, the three ways taking turns batch by batch; "
             f"other processes kept {r['other_processes_cores']} cores busy meanwhile.", "",
             "| way | seconds per epoch (min / median / max) | x floor |", "|---|---|---|"]
    for w in WAYS:
        s = r["seconds_per_epoch"][w]
        lines.append(f"| {w} | {s['min']:.1f} / {s['median']:.1f} / {s['max']:.1f} | {r['x_floor'][w]:.2f} |")
    lines += ["", f"Target (issue 18): ftrace step <= 1.5x floor: "
              f"{'met' if r['x_floor']['ftrace step'] <= 1.5 else 'missed'}."]
    write_results(results_path(a.out, "train_step", a.dtype), r, "\n".join(lines) + "\n")
    return r


if __name__ == "__main__":
    main()
