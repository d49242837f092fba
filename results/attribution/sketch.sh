#!/usr/bin/env bash
# Issue 27, item 5: the TensorSketch projection (`--tracin-projection sketch`) against the factored default, on the
# object-loss index of example_loss.sh (base model, P20/P27/P31/P39, train + dev: retrieval of fact-stating
# sentences, not attribution). First the peer check (the exact cosines of the full embedding gradient, 100
# train-split queries' whole candidate sets), then the same index rebuilt with the sketch, benched as
# example_loss.sh benches (train: where the projection was looked at; dev: held out).
set -euo pipefail
FT=${FT:-.venv/bin/ftrace}
PY=${PY:-.venv/bin/python}
$PY results/attribution/peer_check.py --index indexes/attribution/loss-object --queries 100 \
    --projections sketch:4096,sketch:16384,sketch:65535,65535 --out results/attribution/peer_check_sketch.json
IDX=indexes/attribution/loss-object-sketch
$FT ingest --index "$IDX" --corpus ../shared/data/lama-trex --relation P20,P27,P31,P39 --split train,dev \
    --dtype bfloat16 --example-loss object --embed-pooling mean --tracin-projection sketch
for split in train dev; do
  $FT bench --index "$IDX" --mode rerank --split "$split" --queries 200 --seeds 3 \
      --methods bm25,tracin,random-target --out "results/attribution/loss-object-sketch-$split-rerank" > /dev/null
done
