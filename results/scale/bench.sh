#!/usr/bin/env bash
# Issue 15: FTRACE's evaluation on the whole LAMA T-REx corpus (102,133 sentences, 32,698 facts; every relation,
# train + dev + test), indexed by `python perf/ingest_scale.py --dtype bfloat16` (indexes/scale/lama-all:
# SmolLM2-135M-Instruct dequantised from its Q4_1 GGUF, weights in bfloat16; embed = the embedding layer,
# tracin = the tied embedding's projected gradient, 4,096 dimensions).
# The model never trained on these sentences: the numbers measure retrieval of fact-stating sentences, not
# attribution. Fusion weights are tuned on TRAIN-split facts (200 drawn with seed 0); DEV-split facts are
# reported (3 seeds x 200). --only pre-train-learned draws both from the facts the model already answers
# (FTRACE Table 2's slice). Run from the repository root; each run resumes from its cache.jsonl.
set -euo pipefail
FT=.venv/bin/ftrace
IDX=indexes/scale/lama-all
COMMON=(--index "$IDX" --split dev --queries 200 --seeds 3 --tune-split train)
for mode in rerank full; do
  $FT bench "${COMMON[@]}" --mode "$mode" --out "results/scale/bench-$mode-all" > /dev/null
  $FT bench "${COMMON[@]}" --mode "$mode" --only pre-train-learned --out "results/scale/bench-$mode-pretrain" > /dev/null
done
# `ftrace query`'s default on this index: the best method of the full-retrieval run over all queries, as tuned
$FT bench "${COMMON[@]}" --mode full --save-default --out results/scale/bench-full-all > /dev/null  # cached: seconds
# the cascade: BM25's top 20 re-ranked by the tuned sum, the rest in BM25's order (for the bm25-hard slice)
$FT bench "${COMMON[@]}" --mode full --fusion cascade --out results/scale/bench-full-all-cascade > /dev/null
