#!/usr/bin/env bash
# Issue 27, item 1: the main run, planned from the pilot (README.md#a-model-that-learned-from-the-indexed-corpus-the-pilot)
# and NOT YET RUN. The six pilot relations' whole train split (P131, P527, P37, P30, P136, P1303: 21,480 sentences,
# 4,239 facts), continued training of the default model with the object loss (the pilot: a third of the facts right
# within one epoch, flat after it; the whole-sentence loss a seventh in three), 1.5 epochs, mixed precision (float32
# weights and AdamW, bfloat16 passes: about 1.85x float32's step on an AMX CPU, a rough figure taken beside other jobs), checkpoints early (FTRACE's 6-19%) and
# late, the learning curve on 1,000 facts at each. Estimated on the day of the pilot (a host at 0.56x the fast day):
# about 2 hours of training, then about 2 hours for the index (4 checkpoints' gradients). It will not fit one
# session: RUNS should be a directory that outlives the work tree (e.g. ~/ftrace-runs), and the same command resumes
# the training exactly, the ingest from its stored vectors. Nothing else should run beside it.
set -euo pipefail
FT=${FT:-.venv/bin/ftrace}
RUNS=${RUNS:-$HOME/ftrace-runs}
SEL=(--corpus ../shared/data/lama-trex --relation P131,P527,P37,P30,P136,P1303 --split train)
$FT train "${SEL[@]}" --out "$RUNS/attribution-main" --example-loss object --epochs 2 --max-steps 2014 --lr 2e-4 \
    --batch-size 16 --autocast bfloat16 --checkpoint-at 0.06,0.12,0.19 --eval-facts 1000
# FTRACE's early checkpoints (6%, 12%, 19% of the run) and the final one, rather than the inverse-perplexity selection
$FT ingest --index "$RUNS/index-main" "${SEL[@]}" --train-run "$RUNS/attribution-main" --checkpoint-select all \
    --dtype bfloat16
for only in fine-tune-learned pre-train-learned; do
  for mode in rerank full; do
    $FT bench --index "$RUNS/index-main" --mode "$mode" --split train --queries 200 --seeds 3 --only "$only" \
        --out "results/attribution/main-$only-$mode" > /dev/null
  done
done
