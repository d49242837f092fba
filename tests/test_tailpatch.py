"""Tail-patch influence (`ftrace bench --metric tailpatch|all`) on the tiny random Llama: the step is
AdamW's, the model's weights never change, the oracle set raises the target, the reports, resume."""

import json

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from ftrace.bench.runner import run_bench
from ftrace.bench.tailpatch import TailPatcher
from ftrace.cli import app
from ftrace.config import BenchConfig, IngestConfig, TrainConfig
from ftrace.ingest.pipeline import ingest
from ftrace.model import load_model
from ftrace.runs import load_trainer, read_state
from ftrace.train import checkpoint_dirs, train


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory, sample, tiny_model_dir):
    """The tiny model fine-tuned on the sample's fact objects (a few high-lr steps)."""
    out = tmp_path_factory.mktemp("tp") / "run"
    train(TrainConfig(model=tiny_model_dir, lr=1e-2, max_steps=12, batch_size=8, example_loss="object", checkpoints=1,
                      weight_decay=0.1, warmup=2), sample, out)
    return out


@pytest.fixture(scope="module")
def index(run_dir, tmp_path_factory):
    path = tmp_path_factory.mktemp("tp-idx") / "idx"
    ingest(IngestConfig.model_validate({"index": path, "tracin": {"train_dir": run_dir, "select": "final", "dim": 64}}))
    return path


def patcher_for(run_dir, lr=None) -> TailPatcher:
    final = checkpoint_dirs(run_dir)[-1]
    return TailPatcher.for_index(load_model(str(final)), str(run_dir), 256, lr)


def test_the_step_is_adamws_and_the_weights_never_change(run_dir, sample):
    patcher = patcher_for(run_dir)
    model = patcher.model
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    examples = patcher.examples(sample.sentences[:6])
    assert examples, "the sample's first sentences state facts whose objects they contain"
    grads = patcher.gradient(examples)
    stepped = patcher.stepped(grads)

    # the same step with torch.optim.AdamW from the run's saved state, on a copy of the weights
    final = checkpoint_dirs(run_dir)[-1]
    copy = load_model(str(final)).model
    opt = torch.optim.AdamW([p for p in copy.parameters() if p.requires_grad], foreach=False)
    opt.load_state_dict(load_trainer(final)["optimizer"])
    opt.param_groups[0]["lr"] = patcher.s.lr  # the saved group holds the scheduler's next lr (0 at the end)
    for p, g in zip([p for p in copy.parameters() if p.requires_grad], grads, strict=True):
        p.grad = g
    opt.step()
    for name, p in copy.named_parameters():
        torch.testing.assert_close(stepped[name], p.detach(), rtol=0, atol=1e-7, msg=name)
    assert any(not torch.equal(stepped[n], before[n]) for n in before)

    assert patcher.s.weight_decay == 0.1 and patcher.s.steps_taken == 12
    # the run's configured lr, not its last step's (a linear schedule ends near 0, where a step moves nothing)
    last = read_state(final)["lr"]
    assert patcher.s.lr == 1e-2 and last < 1e-2 / 5 and "configured" in patcher.s.lr_source

    # the functional call (tied embedding / LM head included) scores like the really stepped copy
    q = sample.queries[0]
    after = patcher.patch(q.prompt, q.target, sample.sentences[:6])["after"]
    stepped_lm = load_model(str(final))
    stepped_lm.model = copy
    assert TailPatcher(stepped_lm, patcher.s, 256).logprobs([q.prompt], [q.target])[0] == pytest.approx(after, abs=1e-5)
    assert all(torch.equal(p, before[n]) for n, p in model.named_parameters())  # bit-identical


def test_a_fresh_optimizer_steps_like_adamws_first_step(tiny_model_dir, sample):
    lm = load_model(tiny_model_dir)
    patcher = TailPatcher.for_index(lm, None, 256, lr=1e-3)
    grads = patcher.gradient(patcher.examples(sample.sentences[:4]))
    assert grads and all(g is not None and bool(g.abs().sum() > 0) for g in grads)  # a real gradient everywhere
    stepped = patcher.stepped(grads)
    copy = load_model(tiny_model_dir).model
    before = {n: p.detach().clone() for n, p in copy.named_parameters()}
    params = [p for p in copy.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=1e-3, weight_decay=0.0, foreach=False)
    for p, g in zip(params, grads, strict=True):
        p.grad = g
    opt.step()
    for name, p in copy.named_parameters():
        assert not torch.equal(p.detach(), before[name]), name  # the step moved every weight ...
        torch.testing.assert_close(stepped[name], p.detach(), rtol=0, atol=1e-7, msg=name)  # ... as AdamW does


def test_the_oracle_raises_the_target_more_than_random_sentences(run_dir, sample):
    patcher = patcher_for(run_dir, lr=1e-3)
    by_id = sample.by_id()
    qs = [q for q in sample.queries if q.proponents][:8]
    gain: dict[str, list[float]] = {"oracle": [], "random": []}
    for i, q in enumerate(qs):
        none = patcher.patch(q.prompt, q.target, [])["after"]  # the momentum-only step
        oracle = [by_id[s] for s in q.proponents[:10]]
        random = [s for s in sample.sentences[i * 10 + 50:i * 10 + 60] if s.id not in q.proponents]
        gain["oracle"].append(patcher.patch(q.prompt, q.target, oracle)["after"] - none)
        gain["random"].append(patcher.patch(q.prompt, q.target, random)["after"] - none)
    assert sum(g > 0 for g in gain["oracle"]) >= 6, gain
    assert sum(gain["oracle"]) > sum(gain["random"]), gain


@pytest.mark.slow
def test_bench_reports_tailpatch_beside_attribution_and_resumes(index, tmp_path):
    out = tmp_path / "b"
    c = BenchConfig(index=index, mode="full", metric="all", queries=4, seeds=2, split=None, depth=20, tailpatch_k=3,
                    tailpatch_lr=1e-3, out=out)
    r = run_bench(c).results
    t = r["tailpatch"]
    methods = r["methods"]
    assert t["sets"] == [*methods, "oracle", "random", "momentum"]
    assert t["step"]["lr"] == 1e-3 and t["step"]["steps_taken"] == 12 and t["step"]["example_loss"] == "object"
    assert t["steps"]["computed"] == t["steps"]["distinct"] > 0
    for sl, rows in t["metrics"].items():
        for row in rows.values():
            n = t["queries"][sl]
            assert row["delta_logp"]["n"] == n
            if n:
                assert 0 <= row["rose (delta_logp)"] <= 1
    assert t["metrics"]["all"]["momentum"]["delta_logp_vs_momentum"]["mean"] == 0
    assert set(t["significance"]["all"]) == {s for s in t["sets"] if s != "bm25"}
    assert 0 <= t["significance"]["all"]["oracle"]["wins"] <= 1
    table = (out / "table.md").read_text()
    assert "## Tail-patch influence (TrackStar): top 3 per method" in table and "| oracle |" in table
    assert ("| Set | examples | Δ log p | Δ log p beyond momentum | Δ p | rose | beats bm25 | p (t-test) | "
            "p (Wilcoxon) | MRR | Recall@10 |") in table
    assert "## all (queries per seed" in table  # the attribution tables are there too
    assert (out / "plot.png").stat().st_size > 0
    rows = [json.loads(line) for line in (out / "rankings.jsonl").read_text().splitlines()]
    assert all("delta_logp" in row["tailpatch"] and row["tailpatch"]["examples"] >= 0 for row in rows)

    again = run_bench(c).results["tailpatch"]  # resumed from OUT/tailpatch.jsonl: no step recomputed
    assert again["steps"]["computed"] == 0 and again["metrics"] == t["metrics"]


def test_tailpatch_needs_full_mode(index):
    r = CliRunner().invoke(app, ["bench", "--index", str(index), "--metric", "tailpatch"])
    assert r.exit_code == 1
    lines = r.output.strip().splitlines()
    assert len(lines) == 1 and "--metric tailpatch" in lines[0] and "--mode full" in lines[0], r.output


def test_summary_averages_seeds_then_compares_queries():
    from ftrace.bench.influence import summarize
    from ftrace.corpus import Query

    qa, qb, qc = (Query(id=i, prompt=i, target="t", proponents=["s"]) for i in "abc")
    per_seed = {0: [qa, qb, qc], 1: [qa]}
    d = {  # (seed, query) -> set -> Δ log p
        (0, "a"): {"bm25": 0.1, "tracin": 0.3, "momentum": 0.05},
        (1, "a"): {"bm25": 0.3, "tracin": 0.1, "momentum": 0.05},
        (0, "b"): {"bm25": 0.2, "tracin": 0.1, "momentum": 0.0},
        (0, "c"): {"bm25": 0.0, "tracin": 0.4, "momentum": 0.1},
    }
    per_run = {(seed, q, s): {"delta_logp": v, "after": -1.0 + v, "examples": 3}
               for (seed, q), sets in d.items() for s, v in sets.items()}
    before = {q: -1.0 for q in "abc"}
    draws = {(seed, q.id) for seed, qs in per_seed.items() for q in qs}
    r = summarize(per_seed, per_run, ["bm25", "tracin", "momentum"], before,
                  {"all": draws, "x": {d for d in draws if d[1] in "ab"}, "seed 1": {(1, "a")}}, "student")
    # query a: both sets average to 0.2 over its two seeds; so tracin 0.2, 0.1, 0.4 vs bm25 0.2, 0.2, 0.0
    tr = r["metrics"]["all"]["tracin"]
    assert tr["delta_logp"]["mean"] == pytest.approx(0.7 / 3) and tr["delta_logp"]["n"] == 3
    assert tr["delta_logp"]["std"] == pytest.approx(float(np.std([0.2, 0.1, 0.4], ddof=1)))
    assert tr["delta_logp_vs_momentum"]["mean"] == pytest.approx((0.15 + 0.1 + 0.3) / 3)
    assert tr["rose (delta_logp)"] == 1 and tr["examples"]["mean"] == 3
    vs = r["significance"]["all"]["tracin"]
    assert vs["wins"] == pytest.approx(1 / 3) and vs["losses"] == pytest.approx(1 / 3)
    assert vs["mean_difference"] == pytest.approx((0 - 0.1 + 0.4) / 3) and vs["median_difference"] == pytest.approx(0)
    assert r["queries"] == {"all": 3, "x": 2, "seed 1": 1}
    assert r["metrics"]["seed 1"]["tracin"]["delta_logp"]["mean"] == pytest.approx(0.1)  # a's draw by seed 1 only
    assert r["metrics"]["x"]["momentum"]["delta_logp_vs_momentum"]["mean"] == 0
