"""Projected per-example gradients against naive per-example autograd on a real tiny Llama."""

from __future__ import annotations

import copy
import json
import subprocess
import sys
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from ftrace import FtraceError
from ftrace.config import GradientConfig
from ftrace.corpus import Corpus, Example, Sentence, match_key, stated_objects
from ftrace.features.gradients import GradientFeaturizer, combine_checkpoints, tied_norm_ratio
from ftrace.model import example_batch, load_model, query_batch
from ftrace.model.batching import IGNORE, LossBatch, object_span_rows
from ftrace.model.objective import Objective, index_examples
from ftrace.testing import make_tiny_model

MAKERS = ["Toyota", "Honda", "Nokia", "IBM", "Apple", "Sony", "Boeing", "Airbus", "Nintendo", "Fiat"]
THINGS = ["Avanza", "Civic", "X6", "ThinkPad", "iPod", "Walkman", "747", "A380", "Switch", "Panda"]
TEMPLATES = ["The {m} {t} is produced by {m}.", "{t} was made by {m} in Japan.",
             "{m} released the {t} in 2009, and it sold well.", "Before the {t}, {m} sold other devices."]
TEXTS = [tpl.format(m=m, t=t) for tpl in TEMPLATES for m, t in zip(MAKERS, THINGS, strict=True)]

LINEARS = ["model.embed_tokens", "model.layers.0.self_attn.q_proj", "model.layers.0.mlp.down_proj",
           "model.layers.1.self_attn.v_proj", "model.layers.1.mlp.gate_proj"]  # in model order


@pytest.fixture(scope="module")
def lm(tmp_path_factory):
    path = make_tiny_model(tmp_path_factory.mktemp("tiny"), TEXTS, seed=0)
    return load_model(str(path))


def padded(rows, pad_id: int) -> LossBatch:
    """A right-padded batch of (ids, labels) rows, built here: the reference the objective's batches are checked
    against."""
    width = max(len(ids) for ids, _ in rows)
    ids = torch.full((len(rows), width), pad_id)
    mask = torch.zeros((len(rows), width), dtype=torch.long)
    labels = torch.full((len(rows), width), IGNORE)
    for b, (tok, lab) in enumerate(rows):
        ids[b, :len(tok)], mask[b, :len(tok)], labels[b, :len(lab)] = torch.tensor(tok), 1, torch.tensor(lab)
    return LossBatch(ids, mask, labels)


def naive_grads(lm, batch, names):
    """Per example: loss.backward() on that example alone, the weights' .grad (tied LM head included)."""
    model = lm.model
    params = dict(model.named_parameters())
    out = {n: [] for n in names}
    for b in range(len(batch)):
        n_tok = int(batch.attention_mask[b].sum())
        ids = batch.input_ids[b:b + 1, :n_tok]
        labels = batch.labels[b:b + 1, :n_tok]
        model.zero_grad(set_to_none=True)
        logits = model(input_ids=ids, attention_mask=torch.ones_like(ids)).logits
        loss = torch.nn.functional.cross_entropy(logits[0, :-1], labels[0, 1:], ignore_index=IGNORE,
                                                 reduction="sum")
        loss.backward()
        for n in names:
            out[n].append(params[n].grad.detach().clone())
    model.zero_grad(set_to_none=True)
    return {n: torch.stack(v) for n, v in out.items()}


def factored_reference(feat, grads):
    """P_r^T G P_c per block, flattened, from the naive gradients."""
    refs = []
    for b in feat.blocks:
        mats = feat.projection(b.name)
        projected = torch.einsum("ir,bij,jc->brc", mats["rows"], grads[b.name], mats["cols"])
        refs.append(projected.reshape(len(grads[b.name]), -1))
    return refs


def finish(blocks):
    """Per-block unit, concatenated, unit: what vectors() documents."""
    parts = [torch.nn.functional.normalize(p, dim=-1) for p in blocks]
    return torch.nn.functional.normalize(torch.cat(parts, 1), dim=-1).numpy()


def close(got, ref, rtol=1e-4):
    ref = np.asarray(ref)
    np.testing.assert_allclose(got, ref, rtol=rtol, atol=rtol * 0.1 * np.abs(ref).max())


def test_factored_equals_projection_of_naive_gradient_per_block(lm):
    feat = GradientFeaturizer(lm.model, GradientConfig(layers=LINEARS, dim=64, seed=3))
    assert [b.name for b in feat.blocks] == [p + ".weight" for p in LINEARS]
    # the tied LM head is part of the embedding block
    assert feat.blocks[0].param is lm.model.lm_head.weight
    assert [u.module_name for u in feat.blocks[0].uses] == ["model.embed_tokens", "lm_head"]
    batch = example_batch(lm.tokenizer, TEXTS[:6])
    grads = naive_grads(lm, batch, [b.name for b in feat.blocks])
    refs = factored_reference(feat, grads)
    raw = feat.projections(batch, normalize_blocks=False)
    start = 0
    for b, ref in zip(feat.blocks, refs, strict=True):
        assert ref.abs().max() > 0
        close(raw[:, start:start + b.size], ref)
        start += b.size
    assert start == feat.size == raw.shape[1]
    vec = feat.vectors(batch)
    close(vec, finish(refs))
    np.testing.assert_allclose(np.linalg.norm(vec, axis=1), 1.0, rtol=1e-5)


def test_lm_head_on_labelled_positions_only_equals_full_logits(lm):
    feat = GradientFeaturizer(lm.model, GradientConfig(layers=LINEARS, dim=64))
    batch = example_batch(lm.tokenizer, [TEXTS[1], TEXTS[2] + " " + TEXTS[3], TEXTS[4]])
    fast = feat.projections(batch, normalize_blocks=False)
    feat.collector.fast_head = False  # logits of every position through model(), the generic path
    full = feat.projections(batch, normalize_blocks=False)
    close(fast, full)


@pytest.mark.parametrize("projection,dim", [("factored", 16), ("sketch", 41)])
def test_gpt2_conv1d_and_position_embeddings(lm, projection, dim):
    """Conv1D weights (in x out) and an embedding that is not downstream of the token embedding."""
    from transformers import GPT2Config, GPT2LMHeadModel

    torch.manual_seed(0)
    gpt2 = GPT2LMHeadModel(GPT2Config(vocab_size=len(lm.tokenizer), n_positions=128, n_embd=16, n_layer=1,
                                      n_head=2, attn_pdrop=0.0, embd_pdrop=0.0, resid_pdrop=0.0)).eval()
    layers = ["transformer.wte", "transformer.wpe", "transformer.h.0.attn.c_attn", "transformer.h.0.mlp.c_proj"]
    feat = GradientFeaturizer(gpt2, GradientConfig(layers=layers, dim=dim, projection=projection))
    assert [u.kind for b in feat.blocks for u in b.uses] == ["embedding", "linear", "embedding", "conv1d", "conv1d"]
    batch = example_batch(lm.tokenizer, [TEXTS[7], TEXTS[8] + " " + TEXTS[9]])
    grads = naive_grads(SimpleNamespace(model=gpt2), batch, [b.name for b in feat.blocks])
    refs = (factored_reference if projection == "factored" else sketch_reference)(feat, grads)
    assert all(r.abs().max() > 0 for r in refs)
    close(feat.projections(batch, normalize_blocks=False), torch.cat(refs, 1))


def test_dense_projection_matches_naive_reference(lm):
    feat = GradientFeaturizer(lm.model, GradientConfig(layers=["model.embed_tokens", "model.layers.1.mlp.up_proj"],
                                                       dim=48, projection="dense"))
    batch = example_batch(lm.tokenizer, TEXTS[3:8])
    grads = naive_grads(lm, batch, [b.name for b in feat.blocks])
    refs = [grads[b.name].reshape(len(batch), -1) @ feat.projection(b.name)["dense"] for b in feat.blocks]
    close(feat.projections(batch, normalize_blocks=False), torch.cat(refs, 1))
    close(feat.vectors(batch), finish(refs))


def sketch_reference(feat, grads, scale=None):
    """The TensorSketch of each materialised gradient: entry (i, j) of G (divided by `scale`[block] where given)
    added, with sign s_r(i) s_c(j), to bucket (h_r(i) + h_c(j)) mod k."""
    refs = []
    for b in feat.blocks:
        m, k = feat.projection(b.name), b.size
        G = grads[b.name] if scale is None else grads[b.name] / scale[b.name]
        signs = torch.outer(m["rows"], m["cols"]).reshape(-1)
        at = ((m["rows_at"][:, None] + m["cols_at"][None, :]) % k).reshape(-1)
        out = torch.zeros(len(G), k, dtype=torch.float64)
        out.index_add_(1, at, (G.reshape(len(G), -1) * signs).double())
        refs.append(out.float())
    return refs


def test_sketch_projection_is_the_tensor_sketch_of_the_naive_gradient(lm):
    feat = GradientFeaturizer(lm.model, GradientConfig(layers=LINEARS, dim=97, seed=5, projection="sketch"))
    assert [b.size for b in feat.blocks] == [97] * len(LINEARS)  # any size, odd too: no factoring
    batch = example_batch(lm.tokenizer, TEXTS[6:11])
    grads = naive_grads(lm, batch, [b.name for b in feat.blocks])
    refs = sketch_reference(feat, grads)
    assert all(r.abs().max() > 0 for r in refs)
    close(feat.projections(batch, normalize_blocks=False), torch.cat(refs, 1))
    close(feat.vectors(batch), finish(refs))
    assert feat.spec()["projection"] == "sketch"


def test_sketch_tied_sides_add_up_and_whitening_applies(lm, tmp_path):
    """The tied embedding's two uses add up in the sketch as in the gradient; whitening works on sketched blocks
    and round-trips through the state file."""
    layers = ["model.embed_tokens", "model.layers.0.mlp.down_proj"]
    batch = example_batch(lm.tokenizer, TEXTS[:5])
    raw = {t: GradientFeaturizer(lm.model, GradientConfig(layers=layers, dim=33, tied=t, projection="sketch"))
           .projections(batch, normalize_blocks=False) for t in ("both", "input", "output")}
    close(raw["input"][:, :33] + raw["output"][:, :33], raw["both"][:, :33])
    assert np.abs(raw["input"][:, :33]).max() > 0 and np.abs(raw["output"][:, :33]).max() > 0
    config = GradientConfig(layers=layers, dim=33, projection="sketch", whiten=True)
    feat = GradientFeaturizer(lm.model, config)
    feat.fit_whitening([example_batch(lm.tokenizer, TEXTS[i:i + 20]) for i in (0, 20)])
    white = feat.vectors(batch)
    plain = GradientFeaturizer(lm.model, config.model_copy(update={"whiten": False})).vectors(batch)
    assert np.abs(white - plain).max() > 0.05
    feat.save(tmp_path / "state.pt")
    again = GradientFeaturizer(lm.model, config)
    again.load(tmp_path / "state.pt")
    np.testing.assert_allclose(again.vectors(batch), white, atol=1e-6)


def test_sketch_keeps_exact_cosines_closer_than_the_factored_projection(lm):
    """The reason the sketch exists: on the tied embedding's few-token gradients, whose hidden-state side is much
    alike from example to example, the factored projection's cosines stray far more (docs/gradients.md)."""
    batch = example_batch(lm.tokenizer, TEXTS[:24])
    name = "model.embed_tokens.weight"
    G = naive_grads(lm, batch, [name])[name].reshape(len(batch), -1)
    G = torch.nn.functional.normalize(G, dim=1)
    exact = (G @ G.T).numpy()
    errors = {}
    for kind in ("factored", "sketch"):
        errs = []
        for seed in range(4):
            v = GradientFeaturizer(lm.model, GradientConfig(dim=256, seed=seed, projection=kind)).vectors(batch)
            errs.append(np.abs(v @ v.T - exact)[np.triu_indices(len(batch), 1)].mean())
        errors[kind] = float(np.mean(errs))
    assert errors["sketch"] < 0.8 * errors["factored"], errors  # 0.62 with these seeds; 0.53-0.75 with others


def test_padding_and_batch_composition_do_not_change_a_vector(lm):
    feat = GradientFeaturizer(lm.model, GradientConfig(layers=LINEARS, dim=64))
    short = "The Sony Walkman is produced by Sony."
    longer = [TEXTS[10] + " " + TEXTS[20] + " " + TEXTS[30], TEXTS[5] + " " + TEXTS[15]]
    alone = feat.vectors(example_batch(lm.tokenizer, [short]))
    mixed_batch = example_batch(lm.tokenizer, [longer[0], short, longer[1]])
    assert mixed_batch.attention_mask[1].sum() < mixed_batch.attention_mask.shape[1]  # really padded
    mixed = feat.vectors(mixed_batch)
    np.testing.assert_allclose(mixed[1], alone[0], atol=2e-6)
    # the long examples themselves match their solo vectors too
    np.testing.assert_allclose(mixed[0], feat.vectors(example_batch(lm.tokenizer, [longer[0]]))[0], atol=2e-6)


def test_dot_product_is_cosine_of_projected_naive_gradients(lm):
    batch = example_batch(lm.tokenizer, [TEXTS[0], TEXTS[10], TEXTS[25]])
    one = GradientFeaturizer(lm.model, GradientConfig(dim=256))  # default: the embedding block only
    grads = naive_grads(lm, batch, [b.name for b in one.blocks])
    (ref,) = factored_reference(one, grads)
    v = one.vectors(batch)
    cos = torch.nn.functional.cosine_similarity(ref[0], ref[1], dim=0).item()
    assert abs(float(v[0] @ v[1]) - cos) < 1e-4
    assert abs(float(v[0] @ v[2]) - cos) > 1e-3  # a different pair scores differently
    # several blocks: dot = mean of per-block cosines
    many = GradientFeaturizer(lm.model, GradientConfig(layers=LINEARS, dim=64))
    grads = naive_grads(lm, batch, [b.name for b in many.blocks])
    refs = factored_reference(many, grads)
    mean_cos = np.mean([torch.nn.functional.cosine_similarity(r[0], r[2], dim=0).item() for r in refs])
    w = many.vectors(batch)
    assert abs(float(w[0] @ w[2]) - mean_cos) < 1e-4


@pytest.mark.slow
def test_same_seed_same_vectors_in_another_process_different_seed_differs(lm, tmp_path):
    batch = example_batch(lm.tokenizer, TEXTS[:4])
    a = GradientFeaturizer(lm.model, GradientConfig(layers=LINEARS, dim=64, seed=7)).vectors(batch)
    b = GradientFeaturizer(lm.model, GradientConfig(layers=LINEARS, dim=64, seed=7)).vectors(batch)
    c = GradientFeaturizer(lm.model, GradientConfig(layers=LINEARS, dim=64, seed=8)).vectors(batch)
    np.testing.assert_array_equal(a, b)
    assert np.abs(a - c).max() > 0.05
    here = GradientFeaturizer(lm.model, GradientConfig(layers=LINEARS, dim=64, seed=7)).projection(
        "model.embed_tokens.weight")["rows"]
    code = ("from ftrace.features.gradients.projection import gaussian; import sys;"
            f"m = gaussian(7, 'model.embed_tokens.weight', 'rows', {here.shape[0]}, {here.shape[1]}); "
            "sys.stdout.write(m.numpy().tobytes().hex())")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                         env={"PYTHONHASHSEED": "123", "PATH": ""}).stdout
    assert bytes.fromhex(out) == here.numpy().tobytes()


def test_query_batches_score_only_the_target(lm):
    feat = GradientFeaturizer(lm.model, GradientConfig(layers=LINEARS, dim=64))
    prompts, targets = ["The Toyota Avanza is produced by", "The X6 was made by"], ["Toyota", "Nokia"]
    batch = query_batch(lm.tokenizer, prompts, targets)
    assert (batch.labels != IGNORE).sum() < batch.attention_mask.sum() - len(batch)  # prompt tokens ignored
    grads = naive_grads(lm, batch, [b.name for b in feat.blocks])
    q = feat.vectors(batch)
    close(q, finish(factored_reference(feat, grads)))
    # scoring the whole sentence is a different vector
    full = feat.vectors(example_batch(lm.tokenizer, [p + " " + t for p, t in zip(prompts, targets, strict=True)]))
    assert np.abs(full - q).max() > 0.05


def test_no_parameter_grads_and_mode_restored(lm):
    model = lm.model
    model.train()
    try:
        feat = GradientFeaturizer(model, GradientConfig(layers=LINEARS, dim=16))
        feat.vectors(example_batch(lm.tokenizer, TEXTS[:3]))
        assert model.training
        assert all(p.grad is None for p in model.parameters())
    finally:
        model.eval()


def test_whitening_gives_identity_autocorrelation_and_round_trips(lm, tmp_path):
    cfg = GradientConfig(layers=["model.embed_tokens", "model.layers.0.mlp.up_proj"], dim=9, whiten=True)
    feat = GradientFeaturizer(lm.model, cfg)
    batches = [example_batch(lm.tokenizer, TEXTS[i:i + 10]) for i in range(0, len(TEXTS), 10)]
    with pytest.raises(FtraceError, match="whiten"):
        feat.vectors(batches[0])  # not fitted yet
    before = np.concatenate([feat.projections(b) for b in batches])
    feat.fit_whitening(batches, damping=1e-4)
    after = np.concatenate([feat.projections(b) for b in batches])
    assert feat.spec()["corrections"]["whitening"]["fitted"] is True
    assert feat.spec()["corrections"]["whitening"]["samples"] == len(TEXTS)
    start = 0
    for b in feat.blocks:
        U, W = before[:, start:start + b.size], after[:, start:start + b.size]
        R_before, R_after = U.T @ U / len(U), W.T @ W / len(W)
        assert np.abs(R_before - np.eye(b.size)).max() > 0.1  # it really was not white
        np.testing.assert_allclose(R_after, np.eye(b.size), atol=0.02)
        start += b.size
    vec = feat.vectors(batches[0])
    np.testing.assert_allclose(np.linalg.norm(vec, axis=1), 1.0, rtol=1e-5)
    # stored with the index, reloaded for queries in a fresh featuriser
    feat.save(tmp_path / "grad.pt")
    again = GradientFeaturizer(lm.model, cfg)
    again.load(tmp_path / "grad.pt")
    np.testing.assert_allclose(again.vectors(batches[0]), vec, atol=1e-6)
    other = GradientFeaturizer(lm.model, cfg.model_copy(update={"seed": 1}))
    with pytest.raises(FtraceError, match="seed"):
        other.load(tmp_path / "grad.pt")
    with pytest.raises(FtraceError, match="whiten"):
        GradientFeaturizer(lm.model, cfg.model_copy(update={"whiten": False})).fit_whitening(batches)


@pytest.fixture(scope="module")
def adam_state(lm, tmp_path_factory):
    """A real Adam state after two steps on a copy of the model."""
    model = copy.deepcopy(lm.model)
    opt = torch.optim.Adam(model.parameters(), lr=1e-3, eps=1e-6)
    for i in range(2):
        batch = example_batch(lm.tokenizer, TEXTS[i * 8:(i + 1) * 8])
        out = model(input_ids=batch.input_ids, attention_mask=batch.attention_mask, labels=batch.labels)
        out.loss.backward()
        opt.step()
        opt.zero_grad()
    path = tmp_path_factory.mktemp("opt") / "optimizer.pt"
    torch.save(opt.state_dict(), path)
    sq = {n: opt.state[p]["exp_avg_sq"] for n, p in model.named_parameters()}
    return path, sq


def test_optimizer_correction_dense_exact_factored_and_sketch_rank1(lm, adam_state, tmp_path):
    path, sq = adam_state
    layers = ["model.embed_tokens", "model.layers.1.self_attn.q_proj"]
    batch = example_batch(lm.tokenizer, TEXTS[30:35])
    dense = GradientFeaturizer(lm.model, GradientConfig(layers=layers, dim=40, projection="dense",
                                                        optimizer_state=str(path)))
    grads = naive_grads(lm, batch, [b.name for b in dense.blocks])
    refs = [(grads[b.name] / (sq[b.name].sqrt() + 1e-6)).reshape(len(batch), -1) @ dense.projection(b.name)["dense"]
            for b in dense.blocks]
    close(dense.projections(batch, normalize_blocks=False), torch.cat(refs, 1))
    plain = GradientFeaturizer(lm.model, GradientConfig(layers=layers, dim=40, projection="dense"))
    assert np.abs(dense.vectors(batch) - plain.vectors(batch)).max() > 0.05
    assert dense.spec()["corrections"]["optimizer"]["eps"] == pytest.approx(1e-6)
    # factored: G / S with S ~= a b^T (row means, column means / mean), same naive gradients
    names = tmp_path / "sq.pt"
    torch.save(sq, names)  # the {parameter name: exp_avg_sq} form (eps 1e-8)
    for source, eps in ((path, 1e-6), (names, 1e-8)):
        fac = GradientFeaturizer(lm.model, GradientConfig(layers=layers, dim=36, optimizer_state=str(source)))
        refs = []
        for b in fac.blocks:
            S = sq[b.name].double().sqrt() + eps
            approx = torch.outer(S.mean(1), S.mean(0) / S.mean()).float()
            m = fac.projection(b.name)
            projected = torch.einsum("ir,bij,jc->brc", m["rows"], grads[b.name] / approx, m["cols"])
            refs.append(projected.reshape(len(batch), -1))
        close(fac.projections(batch, normalize_blocks=False), torch.cat(refs, 1), rtol=2e-4)
    uncorrected = GradientFeaturizer(lm.model, GradientConfig(layers=layers, dim=36)).vectors(batch)
    assert np.abs(fac.vectors(batch) - uncorrected).max() > 0.05
    # sketch: the same rank-1 approximation, folded into the signs
    sketch = GradientFeaturizer(lm.model, GradientConfig(layers=layers, dim=50, projection="sketch",
                                                         optimizer_state=str(path)))
    approx = {}
    for b in sketch.blocks:
        S = sq[b.name].double().sqrt() + 1e-6
        approx[b.name] = torch.outer(S.mean(1), S.mean(0) / S.mean()).float()
    close(sketch.projections(batch, normalize_blocks=False), torch.cat(sketch_reference(sketch, grads, approx), 1),
          rtol=2e-4)
    # a floor relative to the block's mean sqrt(v): exact on the dense path, and a huge floor undoes the correction
    floored = GradientFeaturizer(lm.model, GradientConfig(layers=layers, dim=40, projection="dense",
                                                          optimizer_state=str(path), optimizer_floor=0.5))
    refs = [(grads[b.name] / (sq[b.name].sqrt() + 1e-6 + 0.5 * sq[b.name].double().sqrt().mean().float()))
            .reshape(len(batch), -1) @ floored.projection(b.name)["dense"] for b in floored.blocks]
    close(floored.projections(batch, normalize_blocks=False), torch.cat(refs, 1))
    assert floored.spec()["corrections"]["optimizer"]["floor"] == 0.5
    huge = GradientFeaturizer(lm.model, GradientConfig(layers=layers, dim=36, optimizer_state=str(names),
                                                       optimizer_floor=1e6)).vectors(batch)
    np.testing.assert_allclose(huge, uncorrected, atol=1e-4)


def test_bad_arguments_raise_ftrace_errors_naming_them(lm, tmp_path):
    with pytest.raises(FtraceError, match="dim 70000"):
        GradientFeaturizer(lm.model, GradientConfig(dim=70000))
    every = ["model.layers.*.self_attn.*_proj", "model.layers.*.mlp.*_proj", "model.embed_tokens"]
    # blocks are capped at their weight's size; the tiny model's weights hold 31,232 numbers in all
    assert GradientFeaturizer(lm.model, GradientConfig(layers=every, dim=16384)).size == 31232
    wider = load_model(str(make_tiny_model(tmp_path / "wide", TEXTS, hidden_size=64)))
    with pytest.raises(FtraceError, match="dim 16384 x 15 blocks = 90112 numbers"):
        GradientFeaturizer(wider.model, GradientConfig(layers=every, dim=16384))
    with pytest.raises(FtraceError, match="layers pattern 'model.decoder.*'"):
        GradientFeaturizer(lm.model, GradientConfig(layers=["model.decoder.*"]))
    with pytest.raises(FtraceError, match="'model.norm' matches only LlamaRMSNorm"):
        GradientFeaturizer(lm.model, GradientConfig(layers=["model.norm"]))
    with pytest.raises(FtraceError, match="optimizer_state .*no such file"):
        GradientFeaturizer(lm.model, GradientConfig(optimizer_state=str(tmp_path / "missing.pt")))
    with pytest.raises(FtraceError, match="whiten: block model.embed_tokens.weight keeps 12800 numbers.*--tracin-dim"):
        GradientFeaturizer(lm.model, GradientConfig(dim=12800, whiten=True))
    with pytest.raises(FtraceError, match="projection 'dense'"):
        GradientFeaturizer(lm.model, GradientConfig(dim=65000, projection="dense"))


def test_spec_describes_the_vectors(lm):
    feat = GradientFeaturizer(lm.model, GradientConfig(layers=["lm_head", "model.layers.*.mlp.down_proj"], dim=100))
    spec = json.loads(json.dumps(feat.spec()))
    assert [b["name"] for b in spec["blocks"]] == ["model.embed_tokens.weight", "model.layers.0.mlp.down_proj.weight",
                                                   "model.layers.1.mlp.down_proj.weight"]
    assert spec["blocks"][0]["modules"] == ["model.embed_tokens", "lm_head"]
    assert spec["blocks"][1]["shape"] == [32, 64] and spec["blocks"][1]["factors"] == [10, 10]
    assert spec["size"] == feat.size == 300
    assert spec["projection"] == "factored" and spec["seed"] == 0
    assert spec["corrections"] == {"optimizer": None, "whitening": {"enabled": False, "fitted": False}}


def test_combine_checkpoints_averages_per_checkpoint_scores(lm):
    batch = example_batch(lm.tokenizer, TEXTS[:3])
    per = [GradientFeaturizer(lm.model, GradientConfig(dim=64, seed=s)).vectors(batch) for s in (0, 1, 2)]
    both = combine_checkpoints(per)
    assert both.shape == (3, 192)
    assert float(both[0] @ both[1]) == pytest.approx(np.mean([float(v[0] @ v[1]) for v in per]), abs=1e-6)
    np.testing.assert_allclose(np.linalg.norm(both, axis=1), 1.0, rtol=1e-5)
    with pytest.raises(FtraceError, match="combine_checkpoints"):
        combine_checkpoints([per[0], per[1][:2]])


def test_whitening_with_fewer_samples_than_dims_does_not_blow_up_unseen_directions(lm):
    """8 calibration examples, a 64-number block: R has rank 8. The 56 directions the sample never saw
    are scaled like the mean eigenvalue, not by lambda^-1/2: a near-duplicate pair stays close (the
    old lambda = 1e-3 trace(R) / k took it from 0.85 to 0.02)."""
    cfg = GradientConfig(dim=64, whiten=True)  # the embedding block, 8 x 8
    feat = GradientFeaturizer(lm.model, cfg)
    assert feat.size == 64
    calibration = [example_batch(lm.tokenizer, TEXTS[:8])]
    pair = example_batch(lm.tokenizer, ["The Toyota Avanza is produced by Toyota.",
                                        "The Toyota Avanza is made by Toyota."])
    raw = feat.projections(pair)  # per-block unit, not whitened yet
    assert float(raw[0] @ raw[1]) > 0.8
    feat.fit_whitening(calibration)
    white = feat.vectors(pair)
    assert float(white[0] @ white[1]) > 0.5
    fitted = feat.spec()["corrections"]["whitening"]
    assert fitted["rank"] == {"model.embed_tokens.weight": 8} and fitted["samples"] == 8
    assert fitted["damping"] == cfg.whiten_damping == 0.1 and "mean eigenvalue" in fitted["lambda"]
    # W exactly: trace(R) = 1 (unit vectors), so the mean in-span eigenvalue is 1/8 and lambda = 0.1/8;
    # the complement (56 directions) is scaled by (1/8 + lambda)^-1/2, no direction more than sqrt(11) times that
    ev = np.linalg.eigvalsh(feat.blocks[0].whitener.double().numpy())
    outside = (1 / 8 * 1.1) ** -0.5
    assert np.isclose(ev, outside, rtol=1e-4).sum() == 56
    assert ev.max() <= outside * np.sqrt(11) * (1 + 1e-4)
    # within the sample's span the calibration vectors come out white (as damping -> 0)
    sharp = GradientFeaturizer(lm.model, cfg.model_copy(update={"whiten_damping": 1e-4}))
    sharp.fit_whitening(calibration)
    U, W = sharp.projections(calibration[0], whiten=False), sharp.projections(calibration[0])
    basis = np.linalg.svd(U, full_matrices=False)[2]  # (8, 64): orthonormal rows spanning the sample
    np.testing.assert_allclose(basis @ (W.T @ W / len(W)) @ basis.T, np.eye(8), atol=0.02)
    np.testing.assert_allclose(W.T @ W / len(W), basis.T @ basis, atol=0.02)  # nothing outside the span


def untied(lm):
    """A copy of the model whose LM head has its own (equal) weight."""
    model = copy.deepcopy(lm.model)
    model.lm_head.weight = torch.nn.Parameter(model.model.embed_tokens.weight.detach().clone())
    assert model.lm_head.weight is not model.model.embed_tokens.weight
    return SimpleNamespace(model=model)


def test_tied_embedding_split_into_input_and_output_terms(lm):
    layers = ["model.embed_tokens", "model.layers.0.mlp.down_proj"]
    batch = example_batch(lm.tokenizer, TEXTS[:5])
    feats = {t: GradientFeaturizer(lm.model, GradientConfig(layers=layers, dim=64, tied=t))
             for t in ("both", "input", "output")}
    assert [u.module_name for u in feats["input"].blocks[0].uses] == ["model.embed_tokens"]
    assert [u.module_name for u in feats["output"].blocks[0].uses] == ["lm_head"]
    assert [b.tied for b in feats["input"].blocks] == [True, False]
    spec = feats["output"].spec()
    assert spec["tied"] == "output" and spec["blocks"][0]["modules"] == ["lm_head"]
    grads = naive_grads(untied(lm), batch, ["model.embed_tokens.weight", "lm_head.weight"])
    m = feats["both"].projection("model.embed_tokens.weight")
    ref = {side: torch.einsum("ir,bij,jc->brc", m["rows"], grads[name], m["cols"]).reshape(len(batch), -1)
           for side, name in (("input", "model.embed_tokens.weight"), ("output", "lm_head.weight"))}
    raw = {t: f.projections(batch, normalize_blocks=False) for t, f in feats.items()}
    k = feats["both"].blocks[0].size
    close(raw["input"][:, :k], ref["input"])
    close(raw["output"][:, :k], ref["output"])
    close(raw["input"][:, :k] + raw["output"][:, :k], raw["both"][:, :k])
    for t in ("input", "output"):  # an untied block is the same whatever `tied` says
        close(raw[t][:, k:], raw["both"][:, k:])
    # the mean norm ratio ||output side|| / ||input side|| of the tied block
    ratio = tied_norm_ratio(lm.model, batch, GradientConfig(layers=layers, dim=64))
    assert list(ratio) == ["model.embed_tokens.weight"]
    expected = (ref["output"].norm(dim=1) / ref["input"].norm(dim=1)).mean().item()
    assert 0 < ratio["model.embed_tokens.weight"] < np.inf
    assert ratio["model.embed_tokens.weight"] == pytest.approx(expected, rel=1e-3)
    print(f"tiny model: mean ||output-side|| / ||input-side|| = {ratio['model.embed_tokens.weight']:.3f}")
    with pytest.raises(FtraceError, match="no block .* is tied"):
        tied_norm_ratio(lm.model, batch, GradientConfig(layers=["model.layers.0.mlp.down_proj"], dim=16))


def test_corpus_examples_carry_the_first_fact_object_found_in_the_text():
    corpus = Corpus(source="t", sentences=[
        Sentence(id="a", text="The Avanza is made by Toyota in Indonesia.",
                 facts=[("Avanza", "made_in", "Japan"), ("Avanza", "maker", "toyota"), ("x", "y", "Indonesia")]),
        Sentence(id="b", text="Nothing here.", facts=[("N", "r", "Paris")]),
        Sentence(id="c", text="No facts.")])
    assert [(e.id, e.object) for e in index_examples(corpus.sentences)] == [("a:lm", "toyota"), ("b:lm", None),
                                                                            ("c:lm", None)]
    # one "object" rule: the index scores the first stated object, training and the tail-patch each of them
    assert [stated_objects(s) for s in corpus.sentences] == [["toyota", "Indonesia"], [], []]


def test_training_and_the_index_score_the_same_tokens_of_a_one_object_sentence(lm):
    """One objective: a sentence stating one object is the same loss row in training and in the index; a batch
    takes each example's rule, whatever the first example's (a training batch once took the first's for all)."""
    one = Sentence(id="a", text=TEXTS[10], facts=[("x", "maker", "Toyota")])
    objective = Objective("object", lm.tokenizer)
    (trained,) = objective.training_examples([one])
    (indexed,) = index_examples([one])
    (a, none), (b, also_none) = objective.batch([trained]), objective.batch([indexed])
    assert (none, also_none) == (0, 0) and torch.equal(a.input_ids, b.input_ids) and torch.equal(a.labels, b.labels)
    plain = Example(id="p", sentence_id="p", text=TEXTS[0])
    mixed, fallbacks = objective.batch([plain, trained])
    assert fallbacks == 1 and torch.equal(mixed.labels[1, :a.labels.shape[1]], a.labels[0])
    assert (mixed.labels[0] != IGNORE).sum() == mixed.attention_mask[0].sum() - 1  # the whole sentence


def test_one_rule_matches_targets_answers_and_prompts_an_article_aside():
    assert match_key("  Toyota\tMotor ") == match_key("toyota motor") == "toyota motor"
    assert match_key("the United States") == match_key("United States")  # one rule: answers, targets, prompts
    assert match_key("The  eiffel Tower is located in") == match_key("Eiffel Tower is located in")
    assert match_key("The") == "the"


def test_object_span_examples_take_the_gradient_of_the_object_tokens(lm):
    """The object loss: the object's tokens given the text before them; the whole sentence where no
    object token can be scored (no object, object absent, object only in the first token)."""
    texts = [TEXTS[10], TEXTS[11], TEXTS[0], TEXTS[21], "Honda released the Walkman in 2009.", TEXTS[12]]
    objects = ["Toyota", "Honda", None, "Apple", "Honda", "Nokia"]  # Honda: one first token
    examples = [Example(id=str(i), sentence_id=str(i), text=t, object=o)
                for i, (t, o) in enumerate(zip(texts, objects, strict=True))]
    batch, fallbacks = Objective("object", lm.tokenizer).batch(examples)
    sentence, none = Objective("sentence", lm.tokenizer).batch(examples)
    assert (fallbacks, none) == (3, 0)
    assert torch.equal(batch.input_ids, sentence.input_ids)  # same rows, only the labels differ
    spans, whole = [0, 1, 5], [2, 3, 4]
    by_object = padded(object_span_rows(lm.tokenizer, [texts[i] for i in spans], [objects[i] or "" for i in spans]),
                       lm.tokenizer.pad_token_id)
    for j, i in enumerate(spans):
        assert 0 < (by_object.labels[j] != IGNORE).sum() < (sentence.labels[i] != IGNORE).sum()
    # naive per-example gradients of each example's own loss, built independently
    feat = GradientFeaturizer(lm.model, GradientConfig(layers=LINEARS, dim=64))
    ref: dict[str, torch.Tensor] = {}
    for rows, part in ((spans, by_object), (whole, example_batch(lm.tokenizer, [texts[i] for i in whole]))):
        for name, g in naive_grads(lm, part, [b.name for b in feat.blocks]).items():
            ref.setdefault(name, torch.zeros(len(examples), *g.shape[1:]))[rows] = g
    close(feat.projections(batch, normalize_blocks=False), torch.cat(factored_reference(feat, ref), 1))
    assert np.abs(feat.vectors(batch) - feat.vectors(sentence))[spans].max() > 0.05
    assert "object span" in GradientFeaturizer(lm.model, GradientConfig(example_loss="object")).spec()["loss"]
    # a batch in which no example states an object (it crashed a 21k-sentence ingest): every one falls back
    objectless = [e.model_copy(update={"object": None}) for e in examples]
    batch, fallbacks = Objective("object", lm.tokenizer).batch(objectless)
    assert fallbacks == len(examples) and torch.equal(batch.labels, sentence.labels)


def as_dense(vectors, size):
    """Sparse vectors as an (N, size) array."""
    out = np.zeros((len(vectors), size), dtype=np.float64)
    for i, v in enumerate(vectors):
        out[i, v.indices] = v.values
    return out


def test_rows_projection_is_the_exact_input_side_gradient_sparse(lm, adam_state):
    """The rows projection stores the embedding lookup's gradient itself (the naive gradient of an untied input
    embedding), optimizer-corrected by the rank-1 S ~= a c^T as the factored projection is, as sparse vectors holding
    the example's own token rows only; fewer numbers a row project each row's columns; several checkpoints sit side
    by side, as dense ones do."""
    path, sq = adam_state
    batch = example_batch(lm.tokenizer, TEXTS[:5])
    name = "model.embed_tokens.weight"
    R, C = lm.model.model.embed_tokens.weight.shape
    grads = naive_grads(untied(lm), batch, [name])[name].double()
    S = sq[name].double().sqrt() + 1e-6
    for state, ref in ((None, grads), (str(path), grads / torch.outer(S.mean(1), S.mean(0) / S.mean()))):
        feat = GradientFeaturizer(lm.model, GradientConfig(dim=4096, projection="rows", tied="input",
                                                           optimizer_state=state))
        assert feat.sparse and feat.size == R * C and feat.blocks[0].factors == (R, C)
        got = feat.vectors(batch)
        for v, b in zip(got, range(len(batch)), strict=True):  # the example's own tokens' rows, no other
            tokens = set(batch.input_ids[b][batch.attention_mask[b].bool()].tolist())
            assert set((v.indices // C).tolist()) <= tokens and len(v.indices) <= len(tokens) * C
            assert np.all(np.diff(v.indices) > 0)
        want = torch.nn.functional.normalize(ref.reshape(len(batch), -1), dim=-1).numpy()
        np.testing.assert_allclose(as_dense(got, R * C), want, atol=1e-5)
        assert got[0].dot(got[1]) == pytest.approx(float(want[0] @ want[1]), abs=1e-5)
    # 8 numbers a row: each row's columns through the seeded (C x 8) Gaussian
    small = GradientFeaturizer(lm.model, GradientConfig(dim=8, projection="rows", tied="input"))
    cols = small.projection(name)["cols"].double()
    want = torch.nn.functional.normalize((grads @ cols).reshape(len(batch), -1), dim=-1).numpy()
    np.testing.assert_allclose(as_dense(small.vectors(batch), R * 8), want, atol=1e-5)
    # two checkpoints: side by side / sqrt(2), so the dot product is the mean of their cosines
    from ftrace.features.gradients import TracInFeaturizer
    one = {"name": "m", "fingerprint": "x"}
    two = TracInFeaturizer([lm.model, lm.model], [one, one], GradientConfig(projection="rows", tied="input"))
    both, each = two.vectors(batch), two.per_checkpoint[0].vectors(batch)
    assert two.sparse and two.size == 2 * R * C and both[0].indices.max() >= R * C
    assert both[0].dot(both[1]) == pytest.approx(each[0].dot(each[1]), abs=1e-6)
    with pytest.raises(FtraceError, match="rows.*--tracin-tied input"):
        GradientFeaturizer(lm.model, GradientConfig(projection="rows"))
    with pytest.raises(FtraceError, match="rows.*lm_head"):
        GradientFeaturizer(lm.model, GradientConfig(layers=["lm_head"], projection="rows", tied="output"))


def test_rows_whitening_is_the_kronecker_form_with_a_row_weight_and_round_trips(lm, tmp_path):
    """--whiten on the rows projection (whitening.py's rows form): row t of each example's unit gradient scaled by
    (r_t + lambda)^-1/2, r_t its mean energy over the calibration sample, and the columns mapped by
    (A + lambda' I)^-1/2, A = E[G^T G]; checked against the naive input-side gradient; a row the sample never touched
    gets the largest weight; the fitted state round-trips, and vectors before a fit are refused."""
    name, damping = "model.embed_tokens.weight", 0.05
    R, C = lm.model.model.embed_tokens.weight.shape
    config = GradientConfig(dim=4096, projection="rows", tied="input", whiten=True, whiten_damping=damping)
    feat = GradientFeaturizer(lm.model, config)
    calibration = [example_batch(lm.tokenizer, TEXTS[i:i + 20]) for i in (0, 20)]
    with pytest.raises(FtraceError, match="fit_whitening"):
        feat.vectors(calibration[0])
    feat.fit_whitening(calibration)
    G = torch.cat([naive_grads(untied(lm), b, [name])[name] for b in calibration]).double()
    G = G / G.flatten(1).norm(dim=1)[:, None, None]
    energy = (G ** 2).sum((0, 2)) / len(G)
    seen = energy > 0
    row_w = (energy + damping * energy[seen].mean()).rsqrt()
    A = torch.einsum("nrc,nrd->cd", G, G) / len(G)
    e, U = torch.linalg.eigh(A)
    assert e.min() > 1e-6 * e.max()  # full rank: (A + lambda' I)^-1/2 plainly
    W = (U * (e + damping * e.mean()).rsqrt()) @ U.T
    spec = feat.spec()["corrections"]["whitening"]
    assert spec["fitted"] and spec["samples"] == len(G) and spec["rows_touched"][name] == int(seen.sum()) < R
    np.testing.assert_allclose(feat.blocks[0].row_whitener.double().numpy(), row_w.numpy(), rtol=1e-4)
    assert float(feat.blocks[0].row_whitener.max()) == pytest.approx(float(row_w[~seen][0]), rel=1e-5)
    batch = example_batch(lm.tokenizer, TEXTS[:5])
    ref = naive_grads(untied(lm), batch, [name])[name].double()
    want = torch.nn.functional.normalize(((ref * row_w[None, :, None]) @ W).reshape(len(batch), -1), dim=-1)
    got = feat.vectors(batch)
    np.testing.assert_allclose(as_dense(got, R * C), want.numpy(), atol=1e-5)
    plain = GradientFeaturizer(lm.model, config.model_copy(update={"whiten": False})).vectors(batch)
    assert abs(got[0].dot(got[1]) - plain[0].dot(plain[1])) > 1e-3  # whitening changed the cosine
    feat.save(tmp_path / "state.pt")
    again = GradientFeaturizer(lm.model, config)
    again.load(tmp_path / "state.pt")
    np.testing.assert_allclose(as_dense(again.vectors(batch), R * C), as_dense(got, R * C), atol=1e-6)



@pytest.mark.parametrize("projection", ["rows", "factored"])
def test_query_gradients_mix_into_the_whitening(lm, tmp_path, projection):
    """--whiten-queries (TrackStar's task-specific R): R = mix x the queries' + (1 - mix) x the training examples',
    factor by factor on the rows projection (row energies, columns' covariance) and whole on a dense block; mix 0
    is the plain whitening; the state records it and round-trips."""
    from ftrace.features.gradients.whitening import _dense_moments, _row_moments, whitening_matrix

    damping, mix = 0.05, 0.7
    config = GradientConfig(dim=4096 if projection == "rows" else 16, projection=projection,
                            tied="input" if projection == "rows" else "both", whiten=True, whiten_damping=damping)
    calibration = [example_batch(lm.tokenizer, TEXTS[i:i + 20]) for i in (0, 20)]
    prompts, targets = zip(*(t.rstrip(".").rsplit(" ", 1) for t in TEXTS[:12]), strict=True)
    queries = [query_batch(lm.tokenizer, list(prompts[i:i + 6]), list(targets[i:i + 6])) for i in (0, 6)]
    feat = GradientFeaturizer(lm.model, config)
    collect = feat.collector.collect_rows if projection == "rows" else feat.collector.collect
    moments = _row_moments if projection == "rows" else _dense_moments
    train, q = (moments(feat.blocks, map(collect, b)) for b in (calibration, queries))
    feat.fit_whitening(calibration, queries=queries, mix=mix)
    block = feat.blocks[0]
    spec = feat.spec()["corrections"]["whitening"]
    assert spec["queries"] == 12 and spec["query_mix"] == mix and spec["samples"] == 40
    if projection == "rows":
        r = mix * q[0][0][0] + (1 - mix) * train[0][0][0]
        A = mix * q[0][1][0] + (1 - mix) * train[0][1][0]
        want_rows = (r + damping * r[r > 0].mean()).rsqrt()
        np.testing.assert_allclose(block.row_whitener.double().numpy(), want_rows.numpy(), rtol=1e-4)
        assert not torch.allclose(r, train[0][0][0])  # the queries' template rows weigh in
    else:
        A = mix * q[0][0][0] + (1 - mix) * train[0][0][0]
    np.testing.assert_allclose(block.whitener.double().numpy(), whitening_matrix(A, damping)[0].numpy(), atol=1e-5)
    batch = example_batch(lm.tokenizer, TEXTS[:5])
    got = feat.vectors(batch)
    plain = GradientFeaturizer(lm.model, config)
    plain.fit_whitening(calibration)
    unmixed = GradientFeaturizer(lm.model, config)
    unmixed.fit_whitening(calibration, queries=queries, mix=0.0)
    as_array = (lambda v: as_dense(v, feat.size)) if projection == "rows" else np.asarray
    np.testing.assert_allclose(as_array(unmixed.vectors(batch)), as_array(plain.vectors(batch)), atol=1e-6)
    assert np.abs(as_array(got) - as_array(plain.vectors(batch))).max() > 1e-3
    feat.save(tmp_path / "state.pt")
    again = GradientFeaturizer(lm.model, config)
    again.load(tmp_path / "state.pt")
    np.testing.assert_allclose(as_array(again.vectors(batch)), as_array(got), atol=1e-6)
    assert again.spec()["corrections"]["whitening"]["query_mix"] == mix


def test_rows_projection_takes_other_blocks_factored_beside_the_rows(lm, tmp_path):
    """A rows index's blocks that no lookup uses (an MLP's Linear) are factored at --tracin-block-dim and stored as
    dense parts of the sparse vector: the vector is the rows-only vector and the factored block's, each a unit part,
    side by side; whitening fits each in its own form; layers with no lookup at all are refused."""
    mlp = "model.layers.0.mlp.down_proj"
    R, C = lm.model.model.embed_tokens.weight.shape
    batch = example_batch(lm.tokenizer, TEXTS[:5])
    both = GradientFeaturizer(lm.model, GradientConfig(layers=["model.embed_tokens", mlp], projection="rows",
                                                       tied="input", block_dim=16))
    assert [b.kind for b in both.blocks] == ["rows", "factored"] and both.blocks[1].size == 16
    assert both.size == R * C + 16
    rows = GradientFeaturizer(lm.model, GradientConfig(projection="rows", tied="input")).vectors(batch)
    dense = GradientFeaturizer(lm.model, GradientConfig(layers=[mlp], dim=16)).vectors(batch)
    want = np.concatenate([as_dense(rows, R * C), dense], 1) / np.sqrt(2)
    np.testing.assert_allclose(as_dense(both.vectors(batch), R * C + 16), want, atol=1e-5)
    calibration = [example_batch(lm.tokenizer, TEXTS[i:i + 20]) for i in (0, 20)]
    whitened = GradientFeaturizer(lm.model, both.config.model_copy(update={"whiten": True}))
    whitened.fit_whitening(calibration)
    (emb, lin) = whitened.blocks
    assert emb.row_whitener is not None and emb.whitener.shape == (C, C)
    assert lin.row_whitener is None and lin.whitener.shape == (16, 16)
    alone = GradientFeaturizer(lm.model, GradientConfig(layers=[mlp], dim=16, whiten=True))
    alone.fit_whitening(calibration)  # the factored block's part is whitened as a dense index's would be
    got = as_dense(whitened.vectors(batch), R * C + 16)
    np.testing.assert_allclose(got[:, R * C:], alone.vectors(batch) / np.sqrt(2), atol=1e-5)
    whitened.fit_whitening(calibration)  # a refit starts from the plain vectors: the same whitening, not twice
    np.testing.assert_allclose(as_dense(whitened.vectors(batch), R * C + 16), got, atol=1e-5)
    whitened.save(tmp_path / "state.pt")
    again = GradientFeaturizer(lm.model, whitened.config)
    again.load(tmp_path / "state.pt")  # both blocks' whiteners come back
    np.testing.assert_allclose(as_dense(again.vectors(batch), R * C + 16), got, atol=1e-6)
    with pytest.raises(FtraceError, match="--tracin-block-dim 16: only with --tracin-projection rows"):
        GradientFeaturizer(lm.model, GradientConfig(layers=[mlp], block_dim=16))
    with pytest.raises(FtraceError, match="rows.*selects none"):
        GradientFeaturizer(lm.model, GradientConfig(layers=[mlp], projection="rows"))
