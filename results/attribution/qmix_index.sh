#!/usr/bin/env bash
# Issue 27, query_mix.sh's step 3: the product form of TrackStar's task-specific whitening, one index. The rows index
# of rows.sh whitened at ingest with 600 of the corpus's queries' gradients mixed in at 0.99 (`--whiten-queries`,
# the mix's default; D = 0.01 as chosen before). Its bench leaves those 600 queries out of its draws, so its draws are
# not the rows index's: tracin is read against the random-target of its own draws (paired.py at the end).
# RUNS: where the main run lives; main_run.sh's first command (`ftrace train`) trains it, or resumes it, first.
# Every command resumes where a stopped one left off (the training from its last checkpoint or resume/, the ingest
# from its stored vectors). Alone on the cores.
set -euo pipefail
FT=${FT:-.venv/bin/ftrace}
PY=${PY:-.venv/bin/python}
RUNS=${RUNS:-$HOME/ftrace-runs}
SEL=(--corpus ../shared/data/lama-trex --relation P131,P527,P37,P30,P136,P1303 --split train)
export OMP_WAIT_POLICY=PASSIVE
$FT train "${SEL[@]}" --out "$RUNS/attribution-main" --example-loss object --epochs 2 --max-steps 2014 --lr 2e-4 \
    --batch-size 16 --autocast bfloat16 --checkpoint-at 0.06,0.12,0.19 --eval-facts 1000
$FT ingest --index "$RUNS/index-main-rows-qmix" "${SEL[@]}" \
    --train-run "$RUNS/attribution-main" --checkpoint-select 121,242,383,2014 --checkpoint-optimizer \
    --tracin-tied input --tracin-projection rows --tracin-dim 144 --whiten --whiten-damping 0.01 \
    --whiten-queries 600 --dtype bfloat16
for mode in rerank full; do
  $FT bench --index "$RUNS/index-main-rows-qmix" --mode $mode --depth 100 --split train \
      --queries 200 --seeds 3 --only fine-tune-learned --out "results/attribution/main-rows-qmix-fine-tune-learned-$mode" \
      > /dev/null
done
cd results/attribution
for mode in rerank full; do
  R=main-rows-qmix-fine-tune-learned-$mode
  for pair in "$R:tracin|$R:random-target" "$R:tracin+bm25|$R:bm25" "$R:tracin|$R:embed"; do
    "../../$PY" paired.py "${pair%%|*}" "${pair##*|}" --slice fine-tune-learned --ratio
  done
done
