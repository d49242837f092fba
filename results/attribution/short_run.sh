#!/usr/bin/env bash
# Issue 27: a short run, asked of the main run's open question (is the 3x random-target that tracin misses held back by
# the long run's saturation?). The main run's command (main_run.sh) stopped at 383 steps: its learning rate decays
# to 0 by step 383 (the main run's was still at 81% of its peak there), checkpoints at 122 and 243 (beside the main
# run's 121 and 242) and 383, so every fine-tune-learned fact was learned within 383 steps, the last of them close to the
# final checkpoint. Traced with the main-adam recipe chosen on the main run (the embedding block, the three
# checkpoints each divided by its own Adam moments); the hypothesis, written before the run: tracin at 3x
# random-target on this run's fine-tune-learned facts. RUNS should outlive the work tree (e.g. ~/ftrace-runs).
set -euo pipefail
FT=${FT:-.venv/bin/ftrace}
RUNS=${RUNS:-$HOME/ftrace-runs}
SEL=(--corpus ../shared/data/lama-trex --relation P131,P527,P37,P30,P136,P1303 --split train)
$FT train "${SEL[@]}" --out "$RUNS/attribution-short" --example-loss object --epochs 2 --max-steps 383 --lr 2e-4 \
    --batch-size 16 --autocast bfloat16 --checkpoint-at 0.316,0.632 --eval-facts 1000
$FT ingest --index "$RUNS/index-short-adam" "${SEL[@]}" --train-run "$RUNS/attribution-short" \
    --checkpoint-select 122,243,383 --checkpoint-optimizer --dtype bfloat16
$FT bench --index "$RUNS/index-short-adam" --mode rerank --split train --queries 200 --seeds 3 --only fine-tune-learned \
    --out results/attribution/short-adam-fine-tune-learned-rerank > /dev/null
