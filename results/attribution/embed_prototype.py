"""Issue 27, item 4's first look: why is a mean-pooled embedding-layer vector (FTRACE's EMBED) so weak here? A numpy
prototype over the same corpus as embed.sh (P20, P27, P31, P39, train + dev: 6,910 sentences), full retrieval, the
first proponent's reciprocal rank over a seeded draw of 600 TRAIN-split facts (the choice; dev is reported by
embed.sh through `ftrace bench`). SmolLM2-135M-Instruct's input embedding in float32; a sentence's vector pools its
tokens' rows, a query's the tokens of "prompt target" (or the prompt alone). Variants: token weights (none, idf over
the corpus or a seeded sample, idf squared, SIF a / (a + p(token))), centring (none, the corpus's mean token, the
mean sentence vector) and removing the first principal component (SIF).

    python results/attribution/embed_prototype.py     # -> results/attribution/embed_prototype.md
"""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import numpy as np

from ftrace.corpus import load_corpus
from ftrace.model.loading import load_model

HERE = Path(__file__).resolve().parent
SHARED = HERE.parents[2] / "shared" / "data" / "lama-trex"


def main() -> None:
    corpus = load_corpus(str(SHARED), ["P20", "P27", "P31", "P39"], ["train", "dev"], None).link_proponents()
    lm = load_model("smollm2-135m", "cpu", "float32")
    E = lm.model.get_input_embeddings().weight.detach().float().numpy()
    tok = lm.tokenizer
    ids = [tok(s.text, truncation=True, max_length=256)["input_ids"] for s in corpus.sentences]
    at = {s.id: i for i, s in enumerate(corpus.sentences)}
    train = [q for q in corpus.queries if q.split == "train" and q.proponents]
    queries = [train[i] for i in np.random.default_rng(0).choice(len(train), 600, replace=False)]

    def idf_of(rows: list[list[int]]) -> np.ndarray:
        df = Counter(t for r in rows for t in set(r))
        idf = np.full(len(E), np.log((len(rows) + 1) / 0.5), np.float32)
        for t, k in df.items():
            idf[t] = np.log((len(rows) + 1) / (k + 0.5))
        return idf

    count = Counter(t for r in ids for t in r)
    p = np.zeros(len(E), np.float32)
    for t, k in count.items():
        p[t] = k / sum(count.values())
    mean_token = E[[t for r in ids for t in r]].mean(0)
    sample = [ids[i] for i in np.random.default_rng(0).choice(len(ids), 512, replace=False)]
    weights = {"none": np.ones(len(E), np.float32), "idf": idf_of(ids), "idf (512-sentence sample)": idf_of(sample),
               "idf squared": idf_of(ids) ** 2, "SIF a=1e-3": 1e-3 / (1e-3 + p), "SIF a=1e-4": 1e-4 / (1e-4 + p)}

    def mrr(weight: np.ndarray, centre: str, text: str, pc: bool = False) -> float:
        shift = mean_token if centre == "mean token" else 0.0

        def pool(row: list[int]) -> np.ndarray:
            w = weight[row]
            return ((E[row] - shift) * w[:, None]).sum(0) / w.sum()

        S = np.stack([pool(r) for r in ids])
        Q = np.stack([pool(tok(q.prompt + (" " + q.target if text == "prompt + target" else ""))["input_ids"])
                      for q in queries])
        if centre == "mean sentence":
            mu = S.mean(0)
            S, Q = S - mu, Q - mu
        if pc:
            u = np.linalg.svd(S, full_matrices=False)[2][0]
            S, Q = S - np.outer(S @ u, u), Q - np.outer(Q @ u, u)
        S = S / np.linalg.norm(S, axis=1, keepdims=True)
        rr = []
        for q, v in zip(queries, Q, strict=True):
            scores = S @ (v / np.linalg.norm(v))
            rr.append(1 / (1 + min(int((scores > scores[at[s]]).sum()) for s in q.proponents)))
        return float(np.mean(rr))

    rows = []
    for name, w in weights.items():
        for centre in ("none", "mean token", "mean sentence"):
            for text in ("prompt + target", "prompt"):
                variant = name.startswith(("idf (", "idf sq", "SIF"))
                if variant and (centre != "mean token" or text != "prompt + target"):
                    continue
                rows.append(f"| {name} | {centre} | {text} | {mrr(w, centre, text):.3f} |")
                print(rows[-1], flush=True)
        if name.startswith("SIF"):
            rows.append(f"| {name}, first principal component removed | mean token | prompt + target | "
                        f"{mrr(w, 'mean token', 'prompt + target', pc=True):.3f} |")
            print(rows[-1], flush=True)
    out = HERE / "embed_prototype.md"
    out.write_text("# Embed pooling: a numpy prototype (train-split facts, full retrieval)\n\n"
                   "Command: `python results/attribution/embed_prototype.py`. " + __doc__.split("\n\n")[0].split(
                       "? ", 1)[1].replace("\n", " ") + "\n\n| token weights | centring | query text | MRR |\n"
                   "|---|---|---|---|\n" + "\n".join(rows) + "\n")


if __name__ == "__main__":
    main()
