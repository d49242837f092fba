#!/usr/bin/env bash
# Issue 27, the 3x random-target still missed: the rows projection (`--tracin-projection rows`), the input side of the
# tied embedding stored as its gradient's own rows in a Qdrant sparse vector, no rows mixed (exact_tracin.py found the
# projection into one dense vector losing a seventh of the signal at one checkpoint). 2026-12-07.
# 1. Its numbers a row, chosen on the SHORT run's bench (every 12th of its 600 draws, step 383), where exact_tracin.py
#    had scored the same draws: the rows featurizer against the exact cosines, at 576 (exact), 144, 64 and 16 a row.
# 2. The main run's index with that one change (the main-input index of variants.sh: 4 checkpoints, each with its
#    Adam moments, the input side of the tied embedding), benched on the main run's 600 draws; reported against it.
# RUNS: where the main run lives (main_run.sh); its training must have finished (step 2,014). Run 2026-12-07 (the
# check 12 minutes beside the training; the index 51 minutes, its first 17 beside the test suite; each bench 5).
set -euo pipefail
FT=${FT:-.venv/bin/ftrace}
PY=${PY:-.venv/bin/python}
RUNS=${RUNS:-$HOME/ftrace-runs}
PER_ROW=${PER_ROW:-144}
SEL=(--corpus ../shared/data/lama-trex --relation P131,P527,P37,P30,P136,P1303 --split train)
(cd results/attribution && OMP_WAIT_POLICY=PASSIVE ../../$PY rows_check.py short-adam-sketch-fine-tune-learned-rerank \
    --checkpoint step-383 --exact short-adam-sketch-exact-383.json --every 12 --per-row 576,144,64,16 \
    --out short-adam-sketch-rows-383.json)
$FT ingest --index "$RUNS/index-main-rows" "${SEL[@]}" --train-run "$RUNS/attribution-main" \
    --checkpoint-select 121,242,383,2014 --checkpoint-optimizer --tracin-tied input --tracin-projection rows \
    --tracin-dim "$PER_ROW" --dtype bfloat16
for mode in rerank full; do
  $FT bench --index "$RUNS/index-main-rows" --mode "$mode" --split train --queries 200 --seeds 3 \
      --only fine-tune-learned --out "results/attribution/main-rows-fine-tune-learned-$mode" > /dev/null
done
