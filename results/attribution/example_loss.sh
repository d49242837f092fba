#!/usr/bin/env bash
# Issue 27, item 0: the training examples' loss (sentence vs object) for `tracin`, on relations no one here
# developed on (P20 place of death, P27 citizenship, P31 instance of, P39 position held), train + dev facts.
# The base model (SmolLM2-135M-Instruct dequantised from its Q4_1 GGUF, bfloat16) never trained on these
# sentences: the numbers measure retrieval of fact-stating sentences, not attribution. The choice of ingest's
# default is made on TRAIN-split facts (3 seeds x 200 draws); dev is the held-out check.
# Run from the repository root; indexes go to indexes/attribution (git-ignored), results beside this script.
set -euo pipefail
FT=${FT:-.venv/bin/ftrace}
REL=P20,P27,P31,P39
for loss in sentence object; do
  IDX=indexes/attribution/loss-$loss
  $FT ingest --index "$IDX" --corpus ../shared/data/lama-trex --relation "$REL" --split train,dev \
      --dtype bfloat16 --example-loss "$loss" --embed-pooling mean  # the pooling of its day (embed.sh compares)
  for split in train dev; do
    $FT bench --index "$IDX" --mode rerank --split "$split" --queries 200 --seeds 3 \
        --methods bm25,embed,tracin,random-target --out "results/attribution/loss-$loss-$split-rerank" > /dev/null
  done
done
