#!/usr/bin/env bash
# Issue 15: which gradient a whole-corpus ingest can afford. Today's default (the tied embedding's true
# gradient, "both": a forward and a backward through the whole model) against the LM-head term alone
# ("output": needs no backward) in float32 and bfloat16. SmolLM2-135M-Instruct (dequantised Q4_1 GGUF),
# base model, so these numbers measure retrieval of fact-stating sentences, not attribution.
# Chosen on TRAIN-split facts (the first 30 of each of the 38 relations with a train file: 2,574 sentences,
# 1,140 queries); the whole-corpus report is on dev-split facts. Run from the repository root.
set -euo pipefail
FT=.venv/bin/ftrace
CORPUS=(--corpus ../shared/data/lama-trex --split train --limit 30)
declare -A VARIANT=(
  [both]="--tracin-tied both"
  [output]="--tracin-tied output"
  [output-bf16]="--tracin-tied output --dtype bfloat16"
  [both-bf16]="--tracin-tied both --dtype bfloat16"
)
names=("$@")
[ ${#names[@]} -gt 0 ] || names=(both output output-bf16 both-bf16)
for name in "${names[@]}"; do
  start=$(date +%s)
  # shellcheck disable=SC2086
  $FT ingest --index indexes/block-$name "${CORPUS[@]}" ${VARIANT[$name]}
  mid=$(date +%s)
  $FT bench --index indexes/block-$name --mode rerank --split train --queries 100 --seeds 3 \
    --out results/scale/block-$name-rerank > /dev/null
  echo "$name: ingest $(( mid - start )) s, bench $(( $(date +%s) - mid )) s" >&2
done
