#!/usr/bin/env bash
# Issue 27, item 4: embed at FTRACE's level. The same corpus as example_loss.sh (P20, P27, P31, P39, train + dev:
# 6,910 sentences; the base SmolLM2-135M-Instruct, never trained on them), embed from the embedding layer pooled two
# ways: FTRACE's plain mean (the index indexes/attribution/loss-sentence made by example_loss.sh) and the idf pooling
# (--embed-pooling idf, the default since: each token weighted by its inverse document frequency over a seeded sample of 4,096
# sentences, the sample's mean token subtracted). The pooling was chosen on TRAIN-split facts (a numpy prototype
# over full retrieval, then these benches); dev is reported. Run from the repository root after example_loss.sh.
set -euo pipefail
FT=${FT:-.venv/bin/ftrace}
IDX=indexes/attribution/embed-idf
$FT ingest --index "$IDX" --corpus ../shared/data/lama-trex --relation P20,P27,P31,P39 --split train,dev \
    --dtype bfloat16 --no-tracin --embed-pooling idf
# train: the choice (fusion weight 0.5); dev: the report (fusion weight tuned on train)
for split in train dev; do
  tune=(); [ "$split" = dev ] && tune=(--tune-split train)
  for mode in rerank full; do
    for pooling in idf mean; do
      index=$IDX; [ "$pooling" = mean ] && index=indexes/attribution/loss-sentence
      $FT bench --index "$index" --mode "$mode" --split "$split" --queries 200 --seeds 3 "${tune[@]}" \
          --methods bm25,embed,embed+bm25,random-target --out "results/attribution/embed-$pooling-$split-$mode" \
          > /dev/null
    done
  done
done
