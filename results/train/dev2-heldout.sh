#!/usr/bin/env bash
# Issue 8, held out: P19 (place of birth) queries of the same indexes as dev2-ablation.sh (the model was
# fine-tuned on P138 and P19 dev sentences), fusion weights and models fitted on P138's queries only.
# Every fusion kind runs on the same cached scores; each kind's report is kept as table-<kind>.md /
# results-<kind>.json. Usage: bash results/train/dev2-heldout.sh VARIANT [VARIANT ...]
set -euo pipefail
FT=.venv/bin/ftrace
for name in "$@"; do
  out=results/bench/dev2-$name-P19-rerank
  for kind in ${KINDS:-sum cascade learned}; do
    $FT bench --index indexes/dev2-$name --mode rerank --split dev --relation P19 --tune-relation P138 \
      --queries 100 --seeds 3 --fusion $kind --out $out > /dev/null
    cp $out/table.md $out/table-$kind.md
    cp $out/results.json $out/results-$kind.json
  done
done
