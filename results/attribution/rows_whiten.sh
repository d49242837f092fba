#!/usr/bin/env bash
# Issue 27, the 3x random-target still missed after the rows projection (rows.sh: 0.478, 2.73x). 2026-12-07.
# 1. TrackStar's whitening in the form a sparse rows vector keeps (R ~ diag(r) (x) A: a weight per token row, the
#    columns' covariance), measured on the rows index's own stored vectors and the main run's bench draws before
#    ingest had it (rows_whiten.py; the damping chosen by the fold check, three relations against the other three).
# 2. The main run's index with it (`--whiten --whiten-damping 0.01`), and the early MLP blocks beside the rows
#    (layers 2 and 4, the main-early index's, chosen on these facts in variants.sh; factored at 1,024 numbers each
#    so that the sparse index fits this machine's memory: ~26 bytes a stored number in Qdrant Edge's RAM).
# 3. Its bench, and the parts of the new index's vector (rows_whiten.py --parts), with the MLP blocks weighed less.
# RUNS: where the main run lives (main_run.sh); the rows index of rows.sh must exist for step 1. Run 2026-12-07
# (step 1 about 8 minutes a run; the index 75 minutes, alone on the cores but for short test runs; the bench 15).
set -euo pipefail
FT=${FT:-.venv/bin/ftrace}
PY=${PY:-.venv/bin/python}
RUNS=${RUNS:-$HOME/ftrace-runs}
SEL=(--corpus ../shared/data/lama-trex --relation P131,P527,P37,P30,P136,P1303 --split train)
(cd results/attribution &&
  OMP_WAIT_POLICY=PASSIVE ../../$PY rows_whiten.py main-rows-fine-tune-learned-rerank --damping 0.01,0.1,1 \
      --out main-rows-whiten.json &&
  OMP_WAIT_POLICY=PASSIVE ../../$PY rows_whiten.py main-rows-fine-tune-learned-rerank --damping 0.01,0.001,0.0001 \
      --samples 4096 --out main-rows-whiten-4096.json &&
  OMP_WAIT_POLICY=PASSIVE ../../$PY rows_whiten.py main-rows-fine-tune-learned-rerank --damping 0.01 --samples 4096 \
      --checkpoints-at 0.01 --out main-rows-whiten-ckpts.json)
$FT ingest --index "$RUNS/index-main-rows-mlp" "${SEL[@]}" --train-run "$RUNS/attribution-main" \
    --checkpoint-select 121,242,383,2014 --checkpoint-optimizer --tracin-tied input --tracin-projection rows \
    --tracin-dim 144 --tracin-layers model.embed_tokens,model.layers.2.mlp.down_proj,model.layers.4.mlp.down_proj \
    --tracin-block-dim 1024 --whiten --whiten-damping 0.01 --dtype bfloat16
# (full retrieval, `--mode full`, not run for lack of session time)
$FT bench --index "$RUNS/index-main-rows-mlp" --mode rerank --split train --queries 200 --seeds 3 \
    --only fine-tune-learned --out results/attribution/main-rows-mlp-fine-tune-learned-rerank > /dev/null
(cd results/attribution && OMP_WAIT_POLICY=PASSIVE ../../$PY rows_whiten.py main-rows-mlp-fine-tune-learned-rerank \
    --parts --weights 0.1,0.25,0.5 --out main-rows-mlp-parts.json)
# 4. (the next session, 2026-12-07 evening) Why ingest's whitening gave less than the refit: ingest's fit (saved in
#    the MLP index's state files) applied to the rows index's own vectors, beside five other samples of 4,096.
(cd results/attribution &&
  OMP_WAIT_POLICY=PASSIVE ../../$PY rows_whiten.py main-rows-fine-tune-learned-rerank --damping 0.01 --samples 4096 \
      --sample-seeds 1,2,3,4,5 --whiteners-from "$RUNS/index-main-rows-mlp" --out main-rows-whiten-ingest-fit.json)
# 5. The rows index's pre-train-learned slice (FTRACE's Table 2 rows), rerank and full.
for mode in rerank full; do
  $FT bench --index "$RUNS/index-main-rows" --mode "$mode" --queries 200 --seeds 3 --split train \
      --only pre-train-learned --out "results/attribution/main-rows-pre-train-learned-$mode" > /dev/null
done
