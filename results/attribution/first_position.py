"""Issue 27: does the first position's input-embedding gradient make the rows score's unrelated full-retrieval hits?

Half of tracin's full-retrieval hits above the proponent that share no subject, object or relation with the query
(main-rows-fine-tune-learned-full) begin with the query's first token ("Midnite Follies ..." for "Midzhur Peak is
located in"). A causal LM's first position has no left context (an attention sink), so its gradient may be large and
about position, not content. Checked here on the exact input-side rows gradients (no projection, whitening or Adam
moments) of one checkpoint, from one backward pass per batch: every position ("all"), all but the first ("skip0"), the
first alone ("only0"); full retrieval over a corpus subset (the sampled queries' proponents and random sentences),
MRR of the first proponent, paired t-test over the queries.

    python results/attribution/first_position.py RUN/step-242 200 3000 results/attribution/first-position-242.json
"""
import json
import sys
import time

import numpy as np
import scipy.sparse as sp
import torch
from scipy.stats import ttest_rel

from ftrace.corpus import load_corpus
from ftrace.model import load_model
from ftrace.model.batching import query_batch
from ftrace.model.objective import Objective, index_examples

ckpt, nq, nrand = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
torch.manual_seed(0)
rng = np.random.default_rng(0)
c = load_corpus("../shared/data/lama-trex", ["P131","P527","P37","P30","P136","P1303"], ["train"], None)
qs = [q for q in c.queries if q.proponents]
qs = [qs[i] for i in rng.permutation(len(qs))[:nq]]
want = {p for q in qs for p in q.proponents}
others = [s.id for s in c.sentences if s.id not in want]
keep = want | {others[i] for i in rng.permutation(len(others))[:nrand]}
sents = [s for s in c.sentences if s.id in keep]
examples = index_examples(sents)
lm = load_model(ckpt)
model, tok = lm.model.to(torch.bfloat16), lm.tokenizer
model.eval()
emb = model.get_input_embeddings()
D = emb.weight.shape[1]
obj = Objective("object", tok, 256)
VARIANTS = ("all", "skip0", "only0")

def rows(batch):
    x = emb(batch.input_ids).detach().requires_grad_()
    logits = model(inputs_embeds=x, attention_mask=batch.attention_mask, use_cache=False).logits.float()
    lab, lg = batch.labels[:, 1:], logits[:, :-1]
    ce = torch.nn.functional.cross_entropy(lg.reshape(-1, lg.shape[-1]), lab.reshape(-1), ignore_index=-100,
                                           reduction="none").view(lab.shape)
    n = (lab != -100).sum(1).clamp(min=1)
    (ce.sum(1) / n).sum().backward()
    g = x.grad.float()
    out = {v: [] for v in VARIANTS}
    for b in range(len(batch.input_ids)):
        L = int(batch.attention_mask[b].sum())
        ids, gb = batch.input_ids[b, :L].numpy(), g[b, :L].numpy()
        for v in VARIANTS:
            sel = slice(1, L) if v == "skip0" else slice(0, 1) if v == "only0" else slice(0, L)
            u, inv = np.unique(ids[sel], return_inverse=True)
            G = np.zeros((len(u), D), np.float32)
            np.add.at(G, inv, gb[sel])
            out[v].append((u, G))
    return out

def matrix(entries):
    data, ind, ptr = [], [], [0]
    for u, G in entries:
        nrm = np.linalg.norm(G) or 1.0
        ind.append((u[:, None] * D + np.arange(D)).ravel())
        data.append((G / nrm).ravel())
        ptr.append(ptr[-1] + G.size)
    shape = (len(entries), emb.weight.shape[0] * D)
    return sp.csr_matrix((np.concatenate(data), np.concatenate(ind), np.array(ptr)), shape=shape)

t0 = time.time()
S = {v: [] for v in VARIANTS}
order = np.argsort([len(e.text) for e in examples])
for i in range(0, len(order), 16):
    part = [examples[j] for j in order[i:i + 16]]
    for v, e in rows(obj.batch(part)[0]).items():
        S[v].extend(e)
    if i % 800 == 0:
        print(f"{i}/{len(order)} {time.time() - t0:.0f}s", flush=True)
ids_sorted = [examples[j].id.rsplit(":", 1)[0] for j in order]
Q = {v: [] for v in VARIANTS}
for i in range(0, len(qs), 16):
    part = qs[i:i + 16]
    for v, e in rows(query_batch(tok, [q.prompt for q in part], [q.target for q in part])).items():
        Q[v].extend(e)
res = {}
pos = {sid: k for k, sid in enumerate(ids_sorted)}
for v in VARIANTS:
    sc = (matrix(Q[v]) @ matrix(S[v]).T).toarray()
    rr = []
    for qi, q in enumerate(qs):
        props = [pos[p] for p in q.proponents if p in pos]
        best = sc[qi, props].max()
        rr.append(1.0 / (1 + (sc[qi] > best).sum()))
    res[v] = rr
    print(v, "MRR", round(float(np.mean(rr)), 4), flush=True)
for v in ("skip0", "only0"):
    print(f"{v} - all", np.mean(res[v]) - np.mean(res["all"]), ttest_rel(res[v], res["all"]).pvalue)
json.dump({"checkpoint": "/".join(ckpt.rstrip("/").split("/")[-2:]), "queries": [q.id for q in qs],
           "sentences": len(sents), "rr": res, "seconds": time.time() - t0}, open(sys.argv[4], "w"))
