#!/usr/bin/env bash
# Issue 27, item 1's first step: the learning curve of a small continued training, sentence loss against object loss.
# SmolLM2-135M-Instruct (dequantised from its Q4_1 GGUF), float32 weights (bfloat16 weights round most AdamW updates
# of 2e-4 away), trained on the TRAIN-split sentences of the first 40 facts of six relations no one here developed
# on (P131 located in, P527 has part, P37 official language, P30 continent, P136 genre, P1303 instrument): 834
# sentences, 240 facts. 6 epochs, checkpoints at 1/16, 1/8, 1/4, 1/2, 3/4 and the end; at each, every one of the
# 240 facts is checked for a right answer (--eval-facts). The two runs share the 2 cores, one thread each.
# Then the run's corpus is indexed at its checkpoints (FTRACE's 3 by inverse perplexity) under the run's own loss
# (ingest's defaults: embed idf-pooled at the final checkpoint) and benched on its train-split facts. Run from the repository root (runs/ and indexes/ are git-ignored).
set -euo pipefail
FT=${FT:-.venv/bin/ftrace}
SEL=(--corpus ../shared/data/lama-trex --relation P131,P527,P37,P30,P136,P1303 --split train --limit 40)
for loss in sentence object; do
  $FT train "${SEL[@]}" --out "runs/attribution/pilot-$loss" --example-loss "$loss" --epochs 6 --lr 2e-4 \
      --batch-size 16 --checkpoint-at 0.0625,0.125,0.25,0.5,0.75 --eval-facts 240 --threads 1 \
      > "runs/attribution/pilot-$loss.log" 2>&1 &
done
wait
# In the session of these results the sentence-loss run was stopped after its 3-epoch checkpoint (step 159) to leave the
# cores to the object-loss run; `ftrace train` with the same command resumes it exactly. The object-loss run is traced:
IDX=indexes/attribution/pilot-object
$FT ingest --index "$IDX" "${SEL[@]}" --train-run runs/attribution/pilot-object --dtype bfloat16
for mode in rerank full; do
  $FT bench --index "$IDX" --mode "$mode" --split train --queries 200 --seeds 3 \
      --out "results/attribution/pilot-object-$mode" > /dev/null
done
