"""`ftrace ingest` at scale on the CPU: the whole LAMA T-REx corpus (102,133 sentences) and seeded samples of
it, each a real `ftrace ingest` process (BM25 + embed + a tracin gradient vector for every sentence), against
the plain forward pass over a fixed sample of the same sentences, measured in the same run.

    python perf/ingest_scale.py                                # 1k, 10k and all sentences, ingest's defaults
    python perf/ingest_scale.py --dtype bfloat16               # the model in bfloat16 (ingest --dtype)
    python perf/ingest_scale.py --sizes 200 --sample 64 --repeats 1 --model PATH --corpus sample   # a quick check
    python perf/ingest_scale.py --dtype bfloat16 --sizes 2000 --longest --sample 0 --batch-tokens 512  # the longest 2k
    python perf/ingest_scale.py --dtype bfloat16 --sizes '' --compare-tokens 512   # 1024 vs 512 tokens a batch
    python perf/ingest_scale.py --dtype bfloat16 --sizes all --tail 2000 --sample 0  # the whole corpus's peak RSS

Protocol
- Reference, in this process first: a seeded sample of --sample sentences of the corpus, cut into the
  batches ingest makes (sorted by token length, --batch-size 32 within --batch-tokens, ingest's default). Per batch,
  taking turns: the plain forward pass (`model(...)`: logits at every position, no gradient), the body
  alone (no LM head: the floor of a forward-only design) and ftrace's featurisation (ingest's own
  featurizers, embed and tracin, from the tokenised batch to the vectors). After a warm-up on the
  longest batch, --repeats passes; rates as min / median / max over the passes.
- Then, per size, `ftrace ingest --index WORK/lama-SIZE` in a fresh process (the full size reads the
  LAMA directory itself; a sample is written once as a plain .jsonl corpus, as perf/serve_latency.py
  does): wall time, peak RSS of that process (wait4), bytes on disk, the stage times the manifest records,
  and the CPU other processes used meanwhile. An index already complete is reported from its record
  (WORK/lama-SIZE.build.json) instead of being rebuilt; delete it to measure again.
- --sample-longest N draws the reference sample from the N longest sentences instead of all of them.
- --compare-tokens N adds a pass over the same sentences in the batches ingest would make at --batch-tokens N
  (each timed in turn with the reference batch it starts in), to choose ingest's budget by its speed in one run.
- With --longest, a size is the N longest sentences (by token count) instead of a seeded sample: the last
  batches of a whole-corpus ingest, where its featurisation memory peaks. --sample 0 skips the reference.
- --tail N measures the whole corpus's ingest where its memory peaks, without its hours: the index is set up as
  `ftrace ingest` would set it up, random unit vectors stand in for every example but the last N of ingest's plan
  (the longest sentences), and then the real `ftrace ingest` resumes it: it builds BM25 over the whole corpus,
  holds the whole collection in its store and featurises the N longest sentences, like the last stretch of a
  whole-corpus run. Its peak RSS is that stretch's, an estimate of a whole run's (which also carries the heap that
  its earlier batches leave behind); its time is the stretch's only.
- One run per results file: perf/results/ingest_scale-cpu[-DTYPE].{json,md} (--out to change).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np
from common import (
    HZ,
    ROOT,
    SHARED,
    command_of,
    machine,
    machine_busy_seconds,
    rel,
    results_path,
    shell_line,
    spread,
    write_results,
)

TARGET_S = {"target": 7200, "stretch": 3600}  # issue 15: the whole corpus in 2 hours, 1 hour the stretch
RSS_EVERY_S = 10.0  # resident-size samples of an ingest process


def steal_seconds() -> float:
    """CPU time the hypervisor gave other machines (/proc/stat "steal"): a virtual machine's hidden neighbours."""
    try:
        return int(open("/proc/stat").readline().split()[8]) / HZ
    except (OSError, IndexError, ValueError):
        return float("nan")


def corpus_file(corpus, size: int | None, seed: int, work: Path, longest: bool = False) -> tuple[Path, int]:
    """The corpus, or `size` of its sentences (a seeded sample, or the longest) with their queries, as a .jsonl
    file."""
    from ftrace.corpus import Corpus

    n = len(corpus.sentences) if size is None or size >= len(corpus.sentences) else size
    path = work / (f"corpus-{n}-longest.jsonl" if longest else f"corpus-{n}-seed{seed}.jsonl")
    if not path.exists():
        if n < len(corpus.sentences):
            if longest:
                from ftrace.model import load_model
                from ftrace.model.batching import token_lengths

                lengths = token_lengths(load_model().tokenizer, [x.text for x in corpus.sentences])
                keep = sorted(longest(lengths, n))
            else:
                keep = sorted(np.random.default_rng(seed).choice(len(corpus.sentences), n, replace=False))
            sentences = [corpus.sentences[i] for i in keep]
            ids = {s.id for s in sentences}
            queries = [q.model_copy(update={"proponents": [p for p in q.proponents if p in ids]})
                       for q in corpus.queries]
            corpus = Corpus(source=corpus.source, sentences=sentences, queries=[q for q in queries if q.proponents])
        work.mkdir(parents=True, exist_ok=True)
        corpus.write_jsonl(path)
    return path, n


def sample_rss(pid: int, every_s: float, stop: threading.Event) -> list[tuple[float, float, float]]:
    """(seconds since start, resident GiB, of which anonymous GiB) of process `pid` every `every_s` until `stop`:
    where the peak comes, and how much of it is memory the process itself allocated rather than file pages mapped
    into it (Qdrant Edge's vectors: page cache the kernel can write back and reclaim)."""
    samples: list[tuple[float, float, float]] = []
    t0 = time.perf_counter()

    def run() -> None:
        while not stop.wait(every_s):
            try:
                kib = {ln.split(":")[0]: int(ln.split()[1]) for ln in open(f"/proc/{pid}/status")
                       if ln.startswith(("VmRSS:", "RssAnon:"))}
                samples.append((round(time.perf_counter() - t0, 1), round(kib["VmRSS"] / 2**20, 2),
                                round(kib["RssAnon"] / 2**20, 2)))
            except (OSError, KeyError, ValueError):
                return

    threading.Thread(target=run, daemon=True).start()
    return samples


def longest(lengths: list[int], n: int) -> list[int]:
    """Positions of the `n` longest, longest first (ties in order)."""
    return sorted(range(len(lengths)), key=lambda i: (-lengths[i], i))[:n]


def ingest_batches(c, corpus, n: int, seed: int, from_longest: int = 0):
    """The model and ingest's featurizers for config `c`, and a seeded sample of `n` of the corpus's examples (of
    its `from_longest` longest ones, when given) in ingest's order and cut into the batches ingest's plan makes
    (`batch_plan`)."""
    from ftrace.corpus import write_corpus
    from ftrace.index.layout import IndexDir
    from ftrace.ingest.pipeline import batch_plan, build_featurizers, fit_featurizers, ingest_order
    from ftrace.model import load_model
    from ftrace.model.batching import token_lengths
    from ftrace.model.objective import index_examples

    lm = load_model(c.model, "cpu", c.dtype)
    examples = index_examples(corpus.sentences)
    if from_longest:
        every = token_lengths(lm.tokenizer, [e.text for e in examples])
        examples = [examples[i] for i in longest(every, from_longest)]
    pick = np.random.default_rng(seed).choice(len(examples), min(n, len(examples)), replace=False)
    chosen, lengths = ingest_order(lm.tokenizer, [examples[i] for i in pick])
    lengths = [min(k, c.max_tokens) for k in lengths]
    featurizers = build_featurizers(lm, c, None)
    with tempfile.TemporaryDirectory() as fitted:  # what ingest fits (the idf pooling) on the corpus, as ingest does
        fit_featurizers(featurizers, write_corpus(None, corpus), lm, c, IndexDir(Path(fitted)))
    return lm, featurizers, chosen, lengths, batch_plan(lengths, c)


def reference_rates(corpus, args) -> dict:
    """Plain forward, body-only forward and ftrace's featurisation on the same batches, taking turns."""
    import torch

    from ftrace.config import CorpusSelection, IngestConfig
    from ftrace.model.objective import Objective

    c = IngestConfig(corpus=CorpusSelection(corpus=args.corpus), model=args.model, dtype=args.dtype, device="cpu",
                     **({"batch_tokens": args.batch_tokens} if args.batch_tokens else {}))
    lm, featurizers, chosen, lengths, parts = ingest_batches(c, corpus, args.sample, args.seed, args.sample_longest)
    loss = {f.name: f.example_loss for f in featurizers}
    objectives = {x: Objective(x, lm.tokenizer, c.max_tokens) for x in {"sentence", *loss.values()}}
    model = lm.model

    @torch.no_grad()
    def plain(part):
        b = objectives["sentence"].batch(chosen[part])[0]
        model(input_ids=b.input_ids, attention_mask=b.attention_mask, use_cache=False)

    @torch.no_grad()
    def body(part):
        b = objectives["sentence"].batch(chosen[part])[0]
        model.base_model(input_ids=b.input_ids, attention_mask=b.attention_mask, use_cache=False)

    def ftrace(part):
        batches = {x: objectives[x].batch(chosen[part])[0] for x in set(loss.values())}
        for f in featurizers:
            f.vectors(batches[loss[f.name]])

    methods = {"plain forward": plain, "body forward": body, "ftrace featurisation": ftrace}
    if args.compare_tokens:
        from ftrace.ingest.pipeline import batch_plan

        # ingest's plan at the other budget over the same sorted sentences; each of its batches is timed with the
        # batch of this plan it starts in
        finer_plan = batch_plan(lengths, c.model_copy(update={"batch_tokens": args.compare_tokens}))

        def finer(part):
            for sub in finer_plan:
                if part.start <= sub.start < part.stop:
                    ftrace(sub)

        methods[f"ftrace featurisation, {args.compare_tokens}-token batches"] = finer
    longest = max(parts, key=lambda p: (p.stop - p.start) * max(lengths[p]))
    for step in methods.values():  # warm-up
        step(longest)
    seconds: dict[str, list[float]] = {m: [] for m in methods}
    busy0, steal0, cpu0, t0 = machine_busy_seconds(), steal_seconds(), time.process_time(), time.perf_counter()
    for r in range(args.repeats):
        spent = dict.fromkeys(methods, 0.0)
        for i, part in enumerate(parts):
            names = list(methods)
            names = names[(i + r) % len(names):] + names[:(i + r) % len(names)]  # rotate who goes first
            for m in names:
                start = time.perf_counter()
                methods[m](part)
                spent[m] += time.perf_counter() - start
        for m in methods:
            seconds[m].append(spent[m])
    wall = time.perf_counter() - t0
    others = max(0.0, (machine_busy_seconds() - busy0) - (time.process_time() - cpu0)) / wall
    tokens = sum(lengths)
    out = {"examples": len(chosen), "tokens": tokens, "batches": len(parts), "repeats": args.repeats,
           "other_processes_cores": round(others, 2), "steal_cores": round((steal_seconds() - steal0) / wall, 3),
           "methods": {}}
    for m, s in seconds.items():
        out["methods"][m] = {"seconds": spread(s), "examples_per_s": spread([len(chosen) / x for x in s]),
                             "tokens_per_s": spread([tokens / x for x in s])}
    plain_s = float(np.median(seconds["plain forward"]))
    for m in methods:
        out["methods"][m]["x_plain_forward"] = round(plain_s / float(np.median(seconds[m])), 3)
    out["featurizers"] = {f.name: f.spec().get("tied", f.spec().get("layers")) for f in featurizers}
    out["batch_tokens"] = c.batch_tokens
    if args.compare_tokens:
        out["compare_tokens"] = {"budget": args.compare_tokens, "batches": len(finer_plan)}
    out["drawn_from_longest"] = args.sample_longest or None
    return out


def disk_bytes(index: Path) -> dict[str, int]:
    """Bytes each part of an index takes on disk: allocated blocks, not apparent sizes (Qdrant Edge preallocates
    sparse files)."""
    def used(p: Path) -> int:
        return p.stat().st_blocks * 512

    return {p.name: sum(used(f) for f in p.rglob("*") if f.is_file()) if p.is_dir() else used(p)
            for p in index.iterdir() if not p.name.startswith(".")}


def stand_in_all_but_tail(index: Path, corpus, args) -> int:
    """Set up `index` as `ftrace ingest` of the whole corpus would (its manifest, corpus copy and empty store: the
    measured ingest refuses to resume anything built differently) and store random unit vectors for every example
    but the last --tail of ingest's plan. Returns how many stand in."""
    from ftrace.config import CorpusSelection, IngestConfig
    from ftrace.corpus import write_corpus
    from ftrace.index.layout import IndexDir
    from ftrace.ingest.pipeline import build_featurizers, ensure_store, ingest_order, plan_manifest
    from ftrace.model import load_model
    from ftrace.model.objective import index_examples

    if index.exists():
        raise SystemExit(f"{index}: left by an earlier --tail run; delete it to measure again")
    c = IngestConfig(index=str(index), corpus=CorpusSelection(corpus=args.corpus), model=args.model,
                     dtype=args.dtype, device="cpu")
    lm = load_model(c.model, "cpu", c.dtype)
    featurizers = build_featurizers(lm, c, None)
    target = IndexDir(index)
    index.mkdir(parents=True)
    texts = write_corpus(target.corpus_file, corpus)
    manifest = plan_manifest(texts, lm, featurizers, c, None)
    texts.close()
    manifest.write(index)
    examples, _ = ingest_order(lm.tokenizer, index_examples(corpus.sentences))
    stand_ins = examples[:max(0, len(examples) - args.tail)]
    sizes = {f.name: f.size for f in featurizers}
    rng = np.random.default_rng(args.seed)
    store = target.open_store(manifest)
    try:
        ensure_store(store, featurizers, c)
        del lm, featurizers
        for i in range(0, len(stand_ins), 500):
            chunk = stand_ins[i:i + 500]
            vectors = {}
            for name, size in sizes.items():
                v = rng.standard_normal((len(chunk), size), dtype=np.float32)
                vectors[name] = v / np.linalg.norm(v, axis=1, keepdims=True)
            store.upsert([e.id for e in chunk], vectors,
                         [{"example_id": e.id, "sentence_id": e.sentence_id} for e in chunk])
    finally:
        store.close()
    return len(stand_ins)


def ingest_size(corpus, size: int | None, args, work: Path) -> dict:
    """One `ftrace ingest` process for `size` sentences (None: the whole corpus), or its record."""
    from ftrace.config import DEFAULT_MODEL
    from ftrace.index.files import MANIFEST
    from ftrace.index.manifest import Manifest

    longest = getattr(args, "longest", False)  # perf/serve_latency.py builds its indexes here too, without it
    name = "all" if size is None or size >= len(corpus.sentences) else f"{size}{'-longest' if longest else ''}"
    budget = getattr(args, "batch_tokens", None)
    tail = getattr(args, "tail", 0)
    index = work / f"lama-{name}{f'-tail{tail}' if tail else ''}{f'-bt{budget}' if budget else ''}"
    record = index.with_name(index.name + ".build.json")
    if (index / MANIFEST).exists() and Manifest.read(index).complete and record.exists():
        m = Manifest.read(index)
        wanted = (args.model or DEFAULT_MODEL, args.dtype)
        if (m.model.name, m.model.dtype) != wanted:
            raise SystemExit(f"{index}: built with {m.model.name} in {m.model.dtype}, not {wanted[0]} in {wanted[1]}; "
                             "give another --work or delete it")
        return {**json.loads(record.read_text()), "reused": True}
    source = args.corpus if name == "all" else str(corpus_file(corpus, size, args.seed, work, longest)[0])
    cmd = [sys.executable, "-m", "ftrace.cli", "ingest", "--index", str(index), "--corpus", source,
           "--dtype", args.dtype, "--device", "cpu", *(["--model", args.model] if args.model else []),
           *(["--batch-tokens", str(args.batch_tokens)] if getattr(args, "batch_tokens", None) else [])]
    stand_ins = stand_in_all_but_tail(index, corpus, args) if tail else 0
    busy0, steal0, t0 = machine_busy_seconds(), steal_seconds(), time.perf_counter()
    with open(index.with_name(index.name + ".log"), "a") as log:  # appended: a resumed index keeps its earlier log
        log.write(f"=== {time.strftime('%Y-%m-%d %H:%M')}: {shell_line(cmd)}\n")
        log.flush()
        proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, cwd=ROOT)
        stop = threading.Event()
        rss = sample_rss(proc.pid, RSS_EVERY_S, stop)
        _, status, usage = os.wait4(proc.pid, 0)
        stop.set()
    wall = time.perf_counter() - t0
    proc.returncode = os.waitstatus_to_exitcode(status)
    if proc.returncode:
        raise SystemExit(f"{' '.join(cmd)} failed ({proc.returncode}); see {index}.log")
    cpu = usage.ru_utime + usage.ru_stime
    m = Manifest.read(index)
    disk = disk_bytes(index)
    built = {"index": rel(index), "command": shell_line(["ftrace", *cmd[3:]]),
             "sentences": m.corpus.sentences, "featurised": round(m.timings["vectors"]), "stand_ins": stand_ins,
             "wall_s": round(wall, 1), "examples_per_s": round(m.timings["vectors"] / wall, 2), "stages_s": m.timings,
             "peak_rss_gib": round(usage.ru_maxrss / 2**20, 2), "cpu_s": round(cpu, 1),
             "other_processes_cores": round(max(0.0, machine_busy_seconds() - busy0 - cpu) / wall, 2),
             "steal_cores": round((steal_seconds() - steal0) / wall, 3),
             "disk_bytes": disk, "disk_total_bytes": sum(disk.values()),
             "built_at": time.strftime("%Y-%m-%d %H:%M"), "tracin": m.vectors.get("tracin", {}).get("tied"),
             "dtype": m.model.dtype, "resident_every_s": RSS_EVERY_S, "resident_gib": rss}
    record.write_text(json.dumps(built, indent=1) + "\n")
    return {**built, "reused": False}


def markdown(r: dict) -> str:
    ref = r["reference"]
    lines = [f"# `ftrace ingest` at scale ({r['machine']['cpu']}, {r['machine']['cores']} cores, {r['dtype']})", "",
             f"Command: `{r['command']}`", ""]
    if ref:
        among = f" of the {ref['drawn_from_longest']:,} longest" if ref.get("drawn_from_longest") else ""
        lines += [f"Reference (same run, in one process, taking turns batch by batch): a seeded sample of "
                  f"{ref['examples']} sentences{among} ({ref['tokens']:,} tokens, {ref['batches']} length-sorted "
                  f"batches within {ref['batch_tokens']} tokens), "
                  f"{ref['repeats']} passes after a warm-up; other processes kept {ref['other_processes_cores']} "
                  "cores busy meanwhile.", "",
                  "| pass | examples/s (min / median / max) | tokens/s (median) | x plain forward |",
                  "|---|---|---|---|"]
        for m, v in ref["methods"].items():
            e = v["examples_per_s"]
            lines.append(f"| {m} | {e['min']:.1f} / {e['median']:.1f} / {e['max']:.1f} | "
                         f"{v['tokens_per_s']['median']:,.0f} | {v['x_plain_forward']:.2f} |")
    else:
        lines.append("No reference pass (--sample 0).")
    lines += ["", "Whole ingest processes (`ftrace ingest`, BM25 + embed + tracin for every sentence):", "",
              "| sentences | wall | examples/s | at the plain forward's rate | stages (s) | peak RSS | disk | "
              "others' cores | steal |", "|---|---|---|---|---|---|---|---|---|"]
    plain = ref["methods"]["plain forward"]["examples_per_s"]["median"] if ref else float("nan")
    for b in r["sizes"]:
        stages = ", ".join(f"{k.removesuffix('_s')} {v:,.0f}" for k, v in b["stages_s"].items() if k.endswith("_s"))
        done = b.get("featurised", b["sentences"])
        what = f"{done:,} longest of {b['sentences']:,}" if b.get("stand_ins") else f"{b['sentences']:,}"
        lines.append(f"| {what} | {b['wall_s'] / 60:,.1f} min | {b['examples_per_s']:.1f} | "
                     f"{done / plain / 60:,.1f} min | {stages} | {b['peak_rss_gib']} GiB | "
                     f"{b['disk_total_bytes'] / 2**30:.2f} GiB | {b['other_processes_cores']} | "
                     f"{b.get('steal_cores', 'n/a')} |")
        if b.get("resident_gib"):
            curve = b["resident_gib"]
            marks = [curve[min(len(curve) - 1, round(f * (len(curve) - 1)))] for f in (0.25, 0.5, 0.75, 1.0)]
            top = max(curve, key=lambda x: x[1])
            lines.append(f"| | resident (anonymous) at 1/4, 1/2, 3/4 and the end: "
                         f"{', '.join(f'{g} ({a}) GiB' for _, g, a in marks)}; highest of the samples every "
                         f"{b['resident_every_s']:.0f} s: {top[1]} ({top[2]}) GiB, highest anonymous "
                         f"{max(a for *_, a in curve)} GiB | | | | | | | |")
    full = next((b for b in r["sizes"] if b["index"].endswith("lama-all")
                 and b.get("featurised", b["sentences"]) == b["sentences"]), None)  # whole, not resumed
    if full:
        t = full["wall_s"]
        lines += ["", f"The whole corpus: {t / 60:.1f} minutes: the 2-hour target is "
                  f"{'met' if t <= TARGET_S['target'] else 'missed'}, the 1-hour stretch "
                  f"{'met' if t <= TARGET_S['stretch'] else 'missed'}; peak RSS {full['peak_rss_gib']} GiB "
                  f"(target 6 GiB: {'met' if full['peak_rss_gib'] <= 6 else 'missed'})."]
    for b in r["sizes"]:
        if b.get("stand_ins"):
            lines += ["", f"`{b['index']}`: the last stretch of a whole-corpus ingest (--tail). Random unit vectors "
                      f"stood in for the first {b['stand_ins']:,} examples of ingest's plan, then one `ftrace ingest` "
                      f"process built BM25 over all {b['sentences']:,} sentences, held the whole collection in its "
                      f"store and featurised the {b['featurised']:,} longest: peak RSS {b['peak_rss_gib']} GiB "
                      f"(target 6 GiB, on this stretch: {'met' if b['peak_rss_gib'] <= 6 else 'missed'}). A whole "
                      "run also carries the heap its earlier batches leave behind; the time is the stretch's only."]
        elif b.get("featurised", b["sentences"]) < b["sentences"]:
            lines += ["", f"`{b['index']}` was resumed: this process featurised {b['featurised']:,} of its "
                      f"{b['sentences']:,} sentences, so its wall time is not the whole ingest's."]
    lines += ["", "Records from an earlier run (reused) say so in the JSON (`reused`)."]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--corpus", default=str(SHARED / "lama-trex"))
    ap.add_argument("--sizes", default="1000,10000,all", help="sentences per index; 'all' = the whole corpus")
    ap.add_argument("--model", default=None)
    ap.add_argument("--dtype", default="float32", choices=["float32", "bfloat16", "float16"])
    ap.add_argument("--sample", type=int, default=1024, help="sentences in the fixed reference sample (0: none)")
    ap.add_argument("--sample-longest", type=int, default=0,
                    help="draw the reference sample from this many longest sentences (0: from all)")
    ap.add_argument("--longest", action="store_true", help="each size: the N longest sentences, not a sample")
    ap.add_argument("--batch-tokens", type=int, default=None, help="ingest's --batch-tokens (default: ingest's)")
    ap.add_argument("--tail", type=int, default=0,
                    help="with --sizes all: stand-in vectors for all but the last N examples of ingest's plan, then "
                         "the real ingest of those N (a whole-corpus ingest's memory, without its hours)")
    ap.add_argument("--compare-tokens", type=int, default=None,
                    help="reference: also featurise the sample in the batches ingest makes at this token budget")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--work", default=str(ROOT / "indexes" / "scale"))
    ap.add_argument("--out", default=None)
    args = ap.parse_args(argv)
    if args.compare_tokens is not None and args.compare_tokens < 1:
        ap.error("--compare-tokens: a token budget of at least 1")
    if args.tail < 0 or (args.tail and [x.strip() for x in args.sizes.split(",")] != ["all"]):
        ap.error("--tail N: a count of at least 1, with --sizes all (the whole corpus) and no other size")
    if args.sample_longest and not args.sample:
        ap.error("--sample-longest draws the reference sample: it needs --sample")
    from ftrace.corpus import load_corpus

    corpus = load_corpus(args.corpus)
    if args.tail >= (examples := len(corpus.sentences)):  # one example a sentence
        ap.error(f"--tail {args.tail}: fewer than the corpus's {examples:,} examples")
    work = Path(args.work).resolve()  # the ingest processes run in the repository
    work.mkdir(parents=True, exist_ok=True)
    started = time.strftime("%Y-%m-%d %H:%M")
    reference = reference_rates(corpus, args) if args.sample else None
    sizes = [None if s.strip() == "all" else int(s) for s in args.sizes.split(",") if s.strip()]
    built = []
    for size in sizes:
        built.append(ingest_size(corpus, size, args, work))
        print(json.dumps(built[-1]), file=sys.stderr)
    import torch

    r = {"command": command_of(__file__, argv), "started": started,
         "machine": machine(torch.device("cpu")), "dtype": args.dtype, "corpus": rel(args.corpus),
         "reference": reference, "sizes": built, "targets_s": TARGET_S,
         "self_peak_rss_gib": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20, 2), "hz": HZ}
    write_results(results_path(args.out, "ingest_scale", args.dtype), r, markdown(r))
    return r


if __name__ == "__main__":
    main()
