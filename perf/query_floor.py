"""A warm query's model work against its floor, on the CPU: the query's gradient vector and the model's greedy
answer (what `ftrace serve` spends most of a /trace request on), each beside the plain model passes it cannot
do without, on the same prompts, in one run.

    python perf/query_floor.py --index indexes/scale/lama-1000
    python perf/query_floor.py --index INDEX --queries 4 --repeats 1      # a quick check

Protocol
- An index built by `ftrace ingest` (its model, dtype and gradient vector); --queries of its queries with
  proponents (seeded, dev split first, as perf/serve_latency.py draws them), each with its target. Torch
  threads: --threads (1 by default, as perf/serve_latency.py's server).
- Per query, taking turns (the order rotates): "query vector" (the Tracer's own path for the index's gradient
  vector, as a tracin request runs it), "floor: forward + backward" (the plain model on the same tokens, the
  summed loss of every token, backward to the input embeddings: the work any such gradient needs), "forward" (a
  plain forward of the same tokens), "answer" (the Tracer's greedy answer, as a request without a target runs
  it) and "floor: decode" (a bare greedy loop with a KV cache making the same model calls: the prompt once,
  then one step per generated token; it must produce the same answer, or the script stops).
- One warm-up pass, then --repeats passes; per method the mean seconds per query of each pass, min / median /
  max over the passes, and the ratio of the medians to the floor.
- Profile: torch.profiler over one more pass of "query vector" and of "answer": the 5 ops with the most self
  CPU time.
- One run per results file: perf/results/query_floor-cpu[-DTYPE].{json,md} (--out to change).
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

from common import command_of, machine, machine_busy_seconds, rel, results_path, spread, write_results
from serve_latency import sample_queries

FLOORS = {"query vector": "floor: forward + backward", "answer": "floor: decode"}


def top_ops(prof, n: int = 5) -> list[dict]:
    rows = sorted(prof.key_averages(), key=lambda e: e.self_cpu_time_total, reverse=True)[:n]
    total = sum(e.self_cpu_time_total for e in prof.key_averages()) or 1
    return [{"op": e.key, "self_ms": round(e.self_cpu_time_total / 1000, 1),
             "share": round(e.self_cpu_time_total / total, 3), "calls": e.count} for e in rows]


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--index", required=True)
    ap.add_argument("--queries", type=int, default=12)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", default=None)
    args = ap.parse_args(argv)
    import torch
    from torch.profiler import ProfilerActivity, profile

    from ftrace.model import query_batch
    from ftrace.model.answer import MAX_NEW_TOKENS, cut, has_stop
    from ftrace.query.tracer import Tracer

    torch.set_num_threads(args.threads)
    tracer = Tracer(Path(args.index))
    m = tracer.index.manifest
    grad = next(n for n, v in m.vectors.items() if v["kind"] == "gradient")
    tracer.featurizer(grad)
    lm, tok = tracer.lm, tracer.lm.tokenizer
    queries = sample_queries(Path(args.index), args.queries, args.seed)
    batches = [query_batch(tok, [q["prompt"]], [q["target"]], m.max_tokens) for q in queries]
    embed = lm.model.get_input_embeddings()

    def vector(i: int) -> None:
        tracer.query_vectors(queries[i]["prompt"], queries[i]["target"], [grad])

    def forward_backward(i: int) -> None:
        b = batches[i]
        x = embed(b.input_ids).detach().requires_grad_()
        logits = lm.model(inputs_embeds=x, attention_mask=b.attention_mask, use_cache=False).logits
        loss = torch.nn.functional.cross_entropy(logits[0, :-1].float(), b.input_ids[0, 1:], reduction="sum")
        torch.autograd.grad(loss, x)

    @torch.no_grad()
    def forward(i: int) -> None:
        b = batches[i]
        lm.model(input_ids=b.input_ids, attention_mask=b.attention_mask, use_cache=False)

    answers: dict[int, str] = {}

    def answer(i: int) -> None:
        answers[i] = tracer.answer(queries[i]["prompt"])

    @torch.no_grad()
    def decode(i: int) -> None:
        ids = tok(queries[i]["prompt"], return_tensors="pt", truncation=True, max_length=m.max_tokens)["input_ids"]
        out = lm.model(input_ids=ids, use_cache=True)
        new: list[int] = []
        while True:
            new.append(int(out.logits[0, -1].argmax()))
            text = tok.decode(new, skip_special_tokens=True)
            if len(new) == MAX_NEW_TOKENS or has_stop(text) or new[-1] == tok.eos_token_id:
                break
            out = lm.model(input_ids=torch.tensor([new[-1:]]), cache=out.cache, use_cache=True)
        if i in answers and cut(text) != answers[i]:
            raise SystemExit(f"floor: decode answered {cut(text)!r} where ftrace answered {answers[i]!r}")

    methods = {"query vector": vector, "floor: forward + backward": forward_backward, "forward": forward,
               "answer": answer, "floor: decode": decode}
    names = list(methods)
    for i in range(len(queries)):  # warm-up; the answers first, so the bare loop is checked against them
        for name in names:
            methods[name](i)
    per_pass: dict[str, list[float]] = {n: [] for n in names}
    busy0, t0 = machine_busy_seconds(), time.perf_counter()
    cpu0 = time.process_time()
    for r in range(args.repeats):
        spent = dict.fromkeys(names, 0.0)
        for i in range(len(queries)):
            k = (i + r) % len(names)
            for name in names[k:] + names[:k]:
                start = time.perf_counter()
                methods[name](i)
                spent[name] += time.perf_counter() - start
        for name in names:
            per_pass[name].append(spent[name] / len(queries))
    wall = time.perf_counter() - t0
    others = max(0.0, machine_busy_seconds() - busy0 - (time.process_time() - cpu0)) / wall
    profiles = {}
    for name in FLOORS:
        with profile(activities=[ProfilerActivity.CPU]) as prof:
            for i in range(len(queries)):
                methods[name](i)
        profiles[name] = top_ops(prof)
    seconds = {n: spread(v) for n, v in per_pass.items()}
    ratios = {n: round(seconds[n]["median"] / seconds[f]["median"], 2) for n, f in FLOORS.items()}
    r = {"command": command_of(__file__, argv), "machine": machine(torch.device("cpu")), "index": rel(args.index),
         "model": m.model.name, "dtype": m.model.dtype, "vector": grad, "threads": args.threads,
         "queries": len(queries), "tokens_mean": sum(b.input_ids.shape[1] for b in batches) / len(batches),
         "answer_words_mean": sum(len(a.split()) for a in answers.values()) / len(answers),
         "repeats": args.repeats, "other_processes_cores": round(others, 2), "seconds_per_query": seconds,
         "x_floor": ratios, "profiles": profiles}
    write_results(results_path(args.out, "query_floor", m.model.dtype), r, markdown(r))
    return r


def markdown(r: dict) -> str:
    mc = r["machine"]
    lines = [f"# A warm query's model work against its floor ({mc['cpu']}, {mc['cores']} cores, {r['dtype']}, "
             f"{r['threads']} torch thread(s))", "", f"Command: `{r['command']}`", "",
             f"Index `{r['index']}` (model {r['model']}, vector `{r['vector']}`); {r['queries']} of its queries with "
             f"their targets, {r['tokens_mean']:.1f} tokens on average (prompt + target), answers of "
             f"{r['answer_words_mean']:.1f} words on average; {r['repeats']} passes after a warm-up, taking turns "
             f"query by query; other processes kept {r['other_processes_cores']} cores busy meanwhile.", "",
             "| work | ms per query (min / median / max over passes) | x its floor |", "|---|---|---|"]
    for name, s in r["seconds_per_query"].items():
        ratio = r["x_floor"].get(name)
        lines.append(f"| {name} | {1000 * s['min']:.0f} / {1000 * s['median']:.0f} / {1000 * s['max']:.0f} | "
                     f"{'' if ratio is None else f'{ratio:.2f}'} |")
    for name, ops in r["profiles"].items():
        lines += ["", f"Top 5 ops of \"{name}\" by self CPU time (torch.profiler, one pass):", "",
                  "| op | self ms | share | calls |", "|---|---|---|---|"]
        lines += [f"| {o['op']} | {o['self_ms']} | {100 * o['share']:.0f}% | {o['calls']} |" for o in ops]
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
