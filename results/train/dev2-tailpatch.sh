#!/usr/bin/env bash
# Issue 9: TrackStar's tail-patch influence beside attribution, on P19 (held out: no setting was chosen
# on its queries). The index holds the 502 P138+P19 dev sentences the model was fine-tuned on
# (dev2-ablation.sh trains runs/dev2-object/train); its tracin vectors are the base model's gradients
# (the best variant on P138, results/train/README.md), answers and embeddings the final checkpoint's.
# Fusion weights are tuned on P138. Run from the repository root.
set -euo pipefail
FT=.venv/bin/ftrace
$FT ingest --index indexes/dev2-ft-base --corpus ../shared/data/lama-trex --relation P138,P19 --split dev \
  --train-run runs/dev2-object/train --checkpoint-select base --example-loss sentence
$FT bench --index indexes/dev2-ft-base --mode full --metric all --relation P19 --queries 100 --seeds 1 \
  --tune-relation P138 --out results/bench/dev2-ft-base-P19-full
