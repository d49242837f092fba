#!/usr/bin/env bash
# Issue 27, after the main run: what else carries the gradient signal. Three indexes of the main run's corpus, one
# checkpoint each, the gradients of 15 blocks from one backward pass (the tied embedding, as before, and the down_proj
# of 14 of the 30 MLPs: layers 2, 4, ..., 28), 4,096 dimensions each; the bench of the main run on each (the same 600
# draws), each block's part scored alone by per_part.py (with a layer chosen on three relations and reported on the
# other three), and tracin+bm25 with its weight tuned the same way. Run 2026-12-06 (about 25-45 min an index beside
# other jobs on 2 cores); whitening was measured on final-adam's stored vectors instead of a fourth index (below).
# RUNS: where the main run lives (main_run.sh).
set -euo pipefail
FT=${FT:-.venv/bin/ftrace}
PY=${PY:-.venv/bin/python}
RUNS=${RUNS:-$HOME/ftrace-runs}
SEL=(--corpus ../shared/data/lama-trex --relation P131,P527,P37,P30,P136,P1303 --split train)
LAYERS=model.embed_tokens
for l in 2 4 6 8 10 12 14 16 18 20 22 24 26 28; do LAYERS="$LAYERS,model.layers.$l.mlp.down_proj"; done
for v in "final --checkpoint-select final" "base --checkpoint-select base" \
         "final-adam --checkpoint-select final --checkpoint-optimizer"; do
  set -- $v; name=$1; shift
  $FT ingest --index "$RUNS/index-$name" "${SEL[@]}" --train-run "$RUNS/attribution-main" --tracin-layers "$LAYERS" \
      --dtype bfloat16 "$@"
  $FT bench --index "$RUNS/index-$name" --mode rerank --split train --queries 200 --seeds 3 --only fine-tune-learned \
      --out "results/attribution/variant-$name-rerank" > /dev/null
  $PY results/attribution/per_part.py "results/attribution/variant-$name-rerank" --group mlp='model.layers.*' \
      --folds P131,P527,P37/P30,P136,P1303 --out "results/attribution/variant-$name-parts.json"
done
A=P131,P527,P37; B=P30,P136,P1303
# tuned INDEX OUT: the fusion weights tuned on three relations' fine-tune-learned facts, reported on the other three's
# (OUT-1-rerank, OUT-2-rerank: both halves)
tuned() {
  local index=$1 out=$2 half
  for half in "1 $A $B" "2 $B $A"; do
    set -- $half
    $FT bench --index "$index" --mode rerank --split train --queries 200 --seeds 3 --only fine-tune-learned \
        --relation "$2" --tune-relation "$3" --tune-split train \
        --methods bm25,embed,tracin,tracin+bm25,embed+bm25,random-target --out "$out-$1-rerank" > /dev/null
  done
}
tuned "$RUNS/index-final" results/attribution/variant-final-tuned
# Whitening, from the final-adam index's stored vectors (no new index: per_part.py whitens them as ingest would),
# 2026-12-06, 47 min on 2 cores; --query-cache keeps the queries' vectors for a second run on the same bench run.
$PY results/attribution/per_part.py results/attribution/variant-final-adam-rerank --group mlp='model.layers.*' \
    --folds $A/$B --whiten 0.01,0.1,1 --whiten-samples 512,4096 \
    --query-cache "$RUNS/final-adam-queries.npz" --out results/attribution/variant-final-adam-whiten-parts.json

# Kronecker-factored whitening (K-FAC's form of R) of the same stored vectors, 2026-12-06 (about 50 min beside an
# ingest and a bench); --query-cache as above.
$PY results/attribution/per_part.py results/attribution/variant-final-adam-rerank --group mlp='model.layers.*' \
    --folds $A/$B --kfac 0.01,0.1,1 --whiten-samples 4096 \
    --query-cache "$RUNS/final-adam-queries.npz" --out results/attribution/variant-final-adam-kfac-parts.json
# The earliest checkpoint (step 121, 6% of the run) with its own Adam second moments, the same 15 blocks (31 min
# beside the K-FAC study), its bench, then its vectors joined to final-adam's as one index of both checkpoints.
$FT ingest --index "$RUNS/index-early-adam" "${SEL[@]}" --train-run "$RUNS/attribution-main" --tracin-layers "$LAYERS" \
    --dtype bfloat16 --checkpoint-select 121 --checkpoint-optimizer
$FT bench --index "$RUNS/index-early-adam" --mode rerank --split train --queries 200 --seeds 3 --only fine-tune-learned \
    --out results/attribution/variant-early-adam-rerank > /dev/null
$PY results/attribution/per_part.py results/attribution/variant-early-adam-rerank --group mlp='model.layers.*' \
    --folds $A/$B --with "$RUNS/index-final-adam" --out results/attribution/variant-early-final-adam-parts.json

# The main run's index rebuilt with each checkpoint's own Adam second moments: the embedding block (ingest's default)
# at FTRACE's early checkpoints and the final one, FTRACE's recipe; 2026-12-06, alone on the cores (1 h 31 min on a
# host at 0.43x the fast day). Its fine-tune-learned benches as the main run's, and the per-checkpoint parts (with the
# fold check), and tracin+bm25 with its weight tuned on the other three relations. (The pre-train-learned benches
# were not run: time.)
$FT ingest --index "$RUNS/index-main-adam" "${SEL[@]}" --train-run "$RUNS/attribution-main" \
    --checkpoint-select 121,242,383,2014 --checkpoint-optimizer --dtype bfloat16
for mode in rerank full; do
  $FT bench --index "$RUNS/index-main-adam" --mode "$mode" --split train --queries 200 --seeds 3 --only fine-tune-learned \
      --out "results/attribution/main-adam-fine-tune-learned-$mode" > /dev/null
done
$PY results/attribution/per_part.py results/attribution/main-adam-fine-tune-learned-rerank --folds $A/$B \
    --out results/attribution/main-adam-per-checkpoint.json
tuned "$RUNS/index-main-adam" results/attribution/main-adam-tuned

# Two single changes to that recipe (2026-12-07): the input side of the tied embedding alone (FTRACE's mT5 has an untied
# input embedding), its benches as above (59 min beside short profiling jobs); and the 300-step pilot's index with
# Adam's moments (does the short-run finding of results/train hold under the object loss?), the pilot's bench.
$FT ingest --index "$RUNS/index-main-input" "${SEL[@]}" --train-run "$RUNS/attribution-main" \
    --checkpoint-select 121,242,383,2014 --checkpoint-optimizer --tracin-tied input --dtype bfloat16
for mode in rerank full; do
  $FT bench --index "$RUNS/index-main-input" --mode "$mode" --split train --queries 200 --seeds 3 --only fine-tune-learned \
      --out "results/attribution/main-input-fine-tune-learned-$mode" > /dev/null
done
$FT ingest --index "$RUNS/index-pilot-adam" "${SEL[@]}" --limit 40 --train-run runs/attribution/pilot-object \
    --dtype bfloat16 --checkpoint-optimizer
$FT bench --index "$RUNS/index-pilot-adam" --mode rerank --split train --queries 200 --seeds 3 \
    --out results/attribution/pilot-adam-rerank > /dev/null

# The early MLP blocks beside the embedding block at the main run's four checkpoints, each with its Adam moments
# (2026-12-07; the ingest 61 min, its first ten minutes beside the test suite): its benches, each part scored alone (with the fold
# check), the same parts K-FAC-whitened, and tracin+bm25 with its weight tuned on the other three relations.
EARLY=model.embed_tokens,model.layers.2.mlp.down_proj,model.layers.4.mlp.down_proj
$FT ingest --index "$RUNS/index-main-early" "${SEL[@]}" --train-run "$RUNS/attribution-main" \
    --checkpoint-select 121,242,383,2014 --checkpoint-optimizer --tracin-layers "$EARLY" --dtype bfloat16
for mode in rerank full; do
  $FT bench --index "$RUNS/index-main-early" --mode "$mode" --split train --queries 200 --seeds 3 --only fine-tune-learned \
      --out "results/attribution/main-early-fine-tune-learned-$mode" > /dev/null
done
$FT bench --index "$RUNS/index-main-early" --mode rerank --split train --queries 200 --seeds 3 --only pre-train-learned \
    --out results/attribution/main-early-pre-train-learned-rerank > /dev/null
PARTS=(--group mlp='model.layers.*' --group 'embed+layer2=*s.[w2]*' --group 'embed+layer4=*s.[w4]*' --folds $A/$B)
$PY results/attribution/per_part.py results/attribution/main-early-fine-tune-learned-rerank "${PARTS[@]}" \
    --out results/attribution/main-early-per-part.json
$PY results/attribution/per_part.py results/attribution/main-early-fine-tune-learned-rerank "${PARTS[@]}" \
    --kfac 0.01 --whiten-samples 4096 --query-cache "$RUNS/main-early-queries.npz" \
    --out results/attribution/main-early-kfac-per-part.json
tuned "$RUNS/index-main-early" results/attribution/main-early-tuned
