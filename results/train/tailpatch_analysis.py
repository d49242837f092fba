"""Within each query, does the top-10 set with more sentences whose object is the target raise the target
more? Reads results/bench/dev2-ft-base-P19-full/rankings.jsonl (dev2-tailpatch.sh) and the index's corpus;
distinct (query, set) pairs only (the w = 0 fusions repeat BM25's set). Run from the repository root:
.venv/bin/python results/train/tailpatch_analysis.py"""
import collections
import json

import numpy as np
from scipy import stats

from ftrace.corpus import load_corpus
from ftrace.corpus.records import match_key

c = load_corpus("indexes/dev2-ft-base/corpus.jsonl", None, None, None)
objs = {s.id: {match_key(f[2]) for f in s.facts} for s in c.sentences}
qs = {q.id: q for q in c.queries}
with open("results/bench/dev2-ft-base-P19-full/rankings.jsonl") as f:
    rows = [json.loads(line) for line in f]
per_q = collections.defaultdict(dict)
for r in rows:
    top = tuple(sorted(i for i, _ in r["top"][:10]))
    t = match_key(qs[r["query"]].target)
    per_q[r['query']][top] = (sum(t in objs[i] for i in top), r['tailpatch']['delta_logp'])
taus, pooled = [], []
for sets in per_q.values():
    v = np.array(list(sets.values()))
    if len(v) >= 3 and v[:,0].std() > 0:
        taus.append(stats.kendalltau(v[:,0], v[:,1]).statistic)
    pooled += list(zip(v[:, 0] - v[:, 0].mean(), v[:, 1] - v[:, 1].mean(), strict=True))  # centred per query
taus = np.array([t for t in taus if not np.isnan(t)])
print("queries", len(taus), "mean Kendall tau", taus.mean().round(3), "tau > 0", (taus > 0).mean().round(2),
      "Wilcoxon p", stats.wilcoxon(taus).pvalue)
p = np.array(pooled)
print("distinct (query, set) rows", len(p), "within-query Spearman", stats.spearmanr(p[:, 0], p[:, 1]))
