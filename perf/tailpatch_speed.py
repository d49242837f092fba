"""Time of one tail-patch step (`ftrace bench --metric tailpatch`) against its floor, on the CPU.

    python perf/tailpatch_speed.py                   # SmolLM2-135M (the default model), 10 sets of 10 sentences
    python perf/tailpatch_speed.py --model PATH --sets 4 --repeats 1

Protocol
- Sets as bench makes them: 10 sentences each (the sample corpus's sentences in seeded random sets),
  one query prompt and target per set; the model steps from a fresh AdamW (the default model has no
  training run; a run's state costs the same arithmetic).
- The parts of a step, each timed over the same sets: "gradient" (forward + backward of the set as one
  batch, cut after its last scored token), "update" (the stepped weights: AdamW's arithmetic on every
  parameter, new tensors), "score" (the prompt forward at the stepped weights), and "step" (the three
  together, as `TailPatcher.patch` runs them).
- The floor: "train step" = loss.backward() on the same batch plus torch.optim.AdamW.step() in place, on
  a copy of the model: what one ordinary training step on the set costs. A tail-patch also scores the
  prompt, and must not touch the weights, hence its new tensors.
- Warm-up on the first set, untimed; then --repeats passes over all sets, methods taking turns set by
  set; min / median / max of each method's mean seconds per set over the repeats.
- Results: perf/results/tailpatch_speed-cpu.{json,md} (or --out), with the machine's load.
"""

from __future__ import annotations

import argparse
import copy
import os
import platform
import statistics
import time

import numpy as np
import torch
from common import command_of, results_path, write_results

from ftrace.bench.tailpatch import TailPatcher
from ftrace.corpus import load_sample
from ftrace.model import load_model
from ftrace.model.objective import lm_loss

METHODS = ["gradient", "step", "train step", "update", "score"]  # the first three need no given gradient


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="smollm2-135m")
    ap.add_argument("--sets", type=int, default=10)
    ap.add_argument("--k", type=int, default=10)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--out", default=None)
    a = ap.parse_args(argv)

    corpus = load_sample()
    rng = np.random.default_rng(0)
    queries = [q for q in corpus.queries if q.proponents][:a.sets]
    sets = [[corpus.sentences[int(i)] for i in rng.choice(len(corpus.sentences), a.k, replace=False)]
            for _ in queries]
    lm = load_model(a.model)
    patcher = TailPatcher.for_index(lm, None, 256, lr=2e-4)
    trained = copy.deepcopy(lm.model)
    opt = torch.optim.AdamW(trained.parameters(), lr=2e-4)

    def run(method: str, q, sentences, grads, stepped) -> float:
        examples = patcher.examples(sentences)
        t0 = time.perf_counter()
        if method == "gradient":
            patcher.gradient(examples)
        elif method == "update":
            patcher.stepped(grads)
        elif method == "score":
            patcher.logprobs([q.prompt], [q.target], stepped)
        elif method == "step":
            patcher.patch(q.prompt, q.target, sentences)
        else:
            opt.zero_grad(set_to_none=True)
            lm_loss(trained, patcher.objective.batch(examples)[0]).backward()
            opt.step()
        return time.perf_counter() - t0

    def inputs(sentences):  # what "update" and "score" start from (untimed)
        grads = patcher.gradient(patcher.examples(sentences))
        return grads, patcher.stepped(grads)

    first = inputs(sets[0])
    for m in METHODS:  # warm-up
        run(m, queries[0], sets[0], *first)
    del first
    times: dict[str, list[float]] = {m: [] for m in METHODS}
    load = []
    for r in range(a.repeats):
        per: dict[str, list[float]] = {m: [] for m in METHODS}
        for i, (q, s) in enumerate(zip(queries, sets, strict=True)):
            # rotated, so that load hits all alike; the parts that start from a given gradient run after the
            # others, so that the given gradient and weights (1 GB for SmolLM2) are not held while those run
            free, fed = METHODS[i % 3:3] + METHODS[:i % 3], ["update", "score"][i % 2:] + ["update", "score"][:i % 2]
            for m in free:
                per[m].append(run(m, q, s, None, None))
            given = inputs(s)
            for m in fed:
                per[m].append(run(m, q, s, *given))
            del given
        for m in METHODS:
            times[m].append(sum(per[m]) / len(per[m]))
        load.append(os.getloadavg()[0])
        print(f"repeat {r + 1}: " + ", ".join(f"{m} {times[m][-1]:.2f} s" for m in METHODS))

    summary = {m: {"min": min(v), "median": statistics.median(v), "max": max(v)} for m, v in times.items()}
    result = {"command": command_of(__file__, argv), "model": a.model, "k": a.k, "sets": a.sets, "repeats": a.repeats,
              "examples_per_set": float(np.mean([len(patcher.examples(s)) for s in sets])),
              "seconds_per_set": summary, "threads": torch.get_num_threads(), "load_average_1min": load,
              "machine": f"{platform.machine()}, {os.cpu_count()} cores", "torch": torch.__version__,
              "800 steps at the median step (minutes)": round(800 * summary["step"]["median"] / 60, 1)}
    rows = [f"| {m} | {s['min']:.2f} | {s['median']:.2f} | {s['max']:.2f} |" for m, s in summary.items()]
    write_results(results_path(a.out, "tailpatch_speed"), result, "\n".join([
        "# Tail-patch step time (CPU)", "",
        f"`{result['command']}`: {a.model}, {a.sets} sets of {a.k} sample sentences "
        f"({result['examples_per_set']:.1f} examples each), {a.repeats} repeats, {result['threads']} torch threads, "
        f"{result['machine']}; 1-minute load average after each repeat: {', '.join(f'{x:.1f}' for x in load)}.", "",
        "| part | s per set: min | median | max |", "|---|---|---|---|", *rows, "",
        f"step / train step (median): {summary['step']['median'] / summary['train step']['median']:.2f}. "
        f"The 800 distinct steps of results/train's P19 run would take "
        f"{result['800 steps at the median step (minutes)']} minutes at the median step.", ""]))
    return result


if __name__ == "__main__":
    main()
