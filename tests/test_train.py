"""ftrace train: checkpoints, determinism, resume, refusals, object spans, second moments, selection.

All runs use the tiny random Llama on the sample corpus with a high learning rate and a handful of
steps, so the whole file takes well under a minute on two CPU cores.
"""

import json
import os
from pathlib import Path

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from ftrace import FtraceError
from ftrace.cli import app
from ftrace.config import TrainConfig
from ftrace.corpus import Corpus, Example, Sentence
from ftrace.model import load_model
from ftrace.model.batching import IGNORE, object_span_rows
from ftrace.model.objective import Objective, lm_loss
from ftrace.train import TrainError, checkpoint_dirs, select_checkpoints, traced_run, train
from ftrace.train import checkpoints as ckpt
from ftrace.train.examples import build_examples
from ftrace.train.optim import second_moments

STEPS = 12  # with 3 checkpoints: steps 0, 4, 8, 12


def config(model: str, **kw) -> TrainConfig:
    return TrainConfig(**{"model": model, "lr": 1e-2, "max_steps": STEPS, "batch_size": 8, **kw})


def weights(ckpt_dir: Path) -> dict[str, torch.Tensor]:
    return load_model(str(ckpt_dir)).model.state_dict()


def same_weights(a: Path, b: Path) -> bool:
    wa, wb = weights(a), weights(b)
    return wa.keys() == wb.keys() and all(torch.equal(wa[k], wb[k]) for k in wa)


def snapshot(root: Path) -> dict[str, tuple[int, int]]:
    """Every file under root with its size and mtime: to show a refused call touched nothing."""
    return {str(p.relative_to(root)): (p.stat().st_size, p.stat().st_mtime_ns)
            for p in sorted(root.rglob("*"))}


@pytest.fixture(scope="module")
def full_run(tmp_path_factory, sample, tiny_model_dir):
    out = tmp_path_factory.mktemp("train") / "run"
    return out, train(config(tiny_model_dir), sample, out)


def test_checkpoints_are_complete_and_loadable(full_run, tiny_model_dir):
    out, run = full_run
    dirs = checkpoint_dirs(out)
    assert [d.name for d in dirs] == ["step-0", "step-4", "step-8", "step-12"]
    assert dirs == run.checkpoints
    states = [json.loads((d / "state.json").read_text()) for d in dirs]
    assert [s["step"] for s in states] == [0, 4, 8, 12] and all(s["complete"] for s in states)
    assert not (out / "run.lock").exists()  # held while training, removed when it stops
    assert states[0]["second_moments"] is None and not (dirs[0] / "exp_avg_sq.pt").exists()
    assert states[0]["train_loss"] is None and states[-1]["lr"] > 0
    # Only the latest checkpoint keeps the resume state.
    assert [(d / "trainer.pt").exists() for d in dirs] == [False, False, False, True]
    base = load_model(tiny_model_dir)
    params = dict(base.model.named_parameters())
    for d in dirs[1:]:
        moments = torch.load(d / "exp_avg_sq.pt", weights_only=True)
        assert moments.keys() == params.keys()
        assert all(moments[k].shape == params[k].shape and (moments[k] >= 0).all() for k in params)
    final = load_model(str(dirs[-1]))
    assert final.fingerprint != base.fingerprint
    assert same_weights(dirs[0], Path(tiny_model_dir))
    record = json.loads((out / "run.json").read_text())
    assert record["complete"] and record["total_steps"] == STEPS and record["examples"] == 337
    assert [c["step"] for c in record["checkpoints"]] == [0, 4, 8, 12]
    assert record["model"]["fingerprint"] == base.fingerprint
    lines = (out / "loss.jsonl").read_text().splitlines()
    assert [json.loads(line)["step"] for line in lines] == list(range(1, STEPS + 1))
    assert (out / "loss.png").read_bytes()[:4] == b"\x89PNG"


def test_loss_decreases(full_run, sample, tiny_model_dir):
    out, _ = full_run
    losses = [json.loads((d / "state.json").read_text())["train_loss"] for d in checkpoint_dirs(out)[1:]]
    assert losses[-1] < losses[0] - 0.5
    # The same held-fixed batch scores better under the final weights than under the base model.
    from ftrace.model.batching import example_batch

    texts = [s.text for s in sample.sentences[:32]]
    with torch.no_grad():
        before, after = (lm_loss(m.model, example_batch(m.tokenizer, texts)).item()
                         for m in (load_model(tiny_model_dir), load_model(str(out / f"step-{STEPS}"))))
    assert after < before - 0.5


@pytest.mark.slow
def test_same_seed_same_weights(full_run, tmp_path, sample, tiny_model_dir):
    out, _ = full_run
    again = train(config(tiny_model_dir), sample, tmp_path / "again")
    assert same_weights(again.checkpoints[-1], out / f"step-{STEPS}")
    other = train(config(tiny_model_dir, seed=1), sample, tmp_path / "seed1")  # other batches
    assert not same_weights(other.checkpoints[-1], out / f"step-{STEPS}")


@pytest.mark.slow
def test_resume_after_interruption_is_bit_identical(full_run, tmp_path, sample, tiny_model_dir, monkeypatch):
    out, _ = full_run
    real = ckpt.write_checkpoint

    def killed_at_step_8(where, step, *args, **kwargs):
        if step == 8:  # die half-way through writing the second checkpoint
            partial = where / f"step-8.tmp-{os.getpid() + 1}"
            partial.mkdir()
            (partial / "model.safetensors").write_bytes(b"half")
            raise KeyboardInterrupt
        return real(where, step, *args, **kwargs)

    run_dir = tmp_path / "run"
    monkeypatch.setattr(ckpt, "write_checkpoint", killed_at_step_8)
    with pytest.raises(KeyboardInterrupt):
        train(config(tiny_model_dir), sample, run_dir)
    monkeypatch.setattr(ckpt, "write_checkpoint", real)
    assert [d.name for d in checkpoint_dirs(run_dir)] == ["step-0", "step-4"]
    assert not json.loads((run_dir / "run.json").read_text())["complete"]

    resumed = train(config(tiny_model_dir), sample, run_dir)
    assert resumed.resumed_from == 4
    assert not any(".tmp-" in p.name for p in run_dir.iterdir())
    assert same_weights(run_dir / f"step-{STEPS}", out / f"step-{STEPS}")
    # The per-step losses, including the steps retrained after the kill, match too.
    assert (run_dir / "loss.jsonl").read_text() == (out / "loss.jsonl").read_text()
    for name in ("exp_avg_sq.pt", "state.json"):
        a, b = (torch.load(d / f"step-{STEPS}" / name, weights_only=True) if name.endswith(".pt")
                else json.loads((d / f"step-{STEPS}" / name).read_text()) for d in (run_dir, out))
        assert a.keys() == b.keys() and all(
            torch.equal(a[k], b[k]) if isinstance(a[k], torch.Tensor) else a[k] == b[k] for k in a)


def test_resume_from_the_state_saved_between_checkpoints(full_run, tmp_path, sample, tiny_model_dir, monkeypatch):
    """--save-every 3 saves resume/ at steps 3, 6 and 9 (4, 8, 12 are checkpoints); killed while writing step-8, the
    run goes on from step 6, not 4, and ends as the uninterrupted run without --save-every did."""
    out, _ = full_run
    real = ckpt.write_checkpoint

    def killed_at_step_8(where, step, *args, **kwargs):
        if step == 8:
            raise KeyboardInterrupt
        return real(where, step, *args, **kwargs)

    run_dir = tmp_path / "run"
    monkeypatch.setattr(ckpt, "write_checkpoint", killed_at_step_8)
    with pytest.raises(KeyboardInterrupt):
        train(config(tiny_model_dir, save_every=3), sample, run_dir)
    monkeypatch.setattr(ckpt, "write_checkpoint", real)
    assert [d.name for d in checkpoint_dirs(run_dir)] == ["step-0", "step-4"]
    assert json.loads((run_dir / "resume" / "state.json").read_text())["step"] == 6

    resumed = train(config(tiny_model_dir, save_every=3), sample, run_dir)
    assert resumed.resumed_from == 6
    assert not (run_dir / "resume").exists()  # removed by the checkpoints after it
    assert same_weights(run_dir / f"step-{STEPS}", out / f"step-{STEPS}")
    assert (run_dir / "loss.jsonl").read_text() == (out / "loss.jsonl").read_text()
    # step-8's train_loss is the mean over steps 5-8: the two before the kill count too
    for step in (8, STEPS):
        a, b = (json.loads((d / f"step-{step}" / "state.json").read_text()) for d in (run_dir, out))
        assert a == b


def test_rerun_after_completion_does_nothing(full_run, sample, tiny_model_dir, capsys):
    out, _ = full_run
    before = snapshot(out)
    again = train(config(tiny_model_dir), sample, out)
    assert again.already_complete and [d.name for d in again.checkpoints][-1] == f"step-{STEPS}"
    assert snapshot(out) == before
    assert "nothing to do" in capsys.readouterr().err


def test_different_run_is_refused_untouched(full_run, sample, tiny_model_dir):
    out, _ = full_run
    before = snapshot(out)
    with pytest.raises(TrainError, match=r"lr: run has 0\.01, asked for 0\.001") as e:
        train(config(tiny_model_dir).model_copy(update={"lr": 1e-3}), sample, out)
    assert "\n" not in str(e.value)
    smaller = Corpus(source=sample.source, sentences=sample.sentences[:-1])
    with pytest.raises(TrainError, match="corpus_fingerprint: run has"):
        train(config(tiny_model_dir), smaller, out)
    with pytest.raises(TrainError, match="model_fingerprint: run has"):  # same name, other weights
        run = json.loads((out / "run.json").read_text())
        other = {**run, "identity": {**run["identity"], "model_fingerprint": "0" * 16}}
        (out / "run.json").write_text(json.dumps(other))
        try:
            train(config(tiny_model_dir), sample, out)
        finally:
            (out / "run.json").write_text(json.dumps(run, indent=2) + "\n")
    after = snapshot(out)
    after["run.json"] = before["run.json"]  # rewritten by this test itself
    assert after == before


def test_bad_input_is_refused(tmp_path, sample, tiny_model_dir):
    runner = CliRunner()
    for args, msg in [(["--optimizer", "sgd"], "--optimizer 'sgd': Input should be 'adamw' or 'adafactor'"),
                      (["--example-loss", "subject"], "--example-loss 'subject'"),
                      (["--device", "tpu"], "--device 'tpu'"),
                      (["--checkpoints", "0"], "--checkpoints 0"), (["--batch-size", "0"], "--batch-size 0"),
                      (["--epochs", "0"], "--epochs 0: Input should be greater than or equal to 1"),
                      (["--max-steps", "0"], "--max-steps 0"),
                      ([], "give --index INDEX, or --corpus CORPUS with --out DIR"),
                      (["--corpus", "sample"], "--corpus needs --out DIR"),
                      (["--relation", "P19", "--out", tmp_path / "x"], "give --corpus too"),
                      (["--index", tmp_path / "nothing"], "not an ftrace index")]:
        r = runner.invoke(app, ["train", *map(str, args)])
        assert r.exit_code == 1 and msg in r.output, (args, r.output)
        assert len(r.output.strip().splitlines()) == 1
    assert not any(tmp_path.iterdir())
    if not torch.cuda.is_available():
        with pytest.raises(FtraceError, match="--device cuda: no CUDA device is available"):
            train(config(tiny_model_dir, device="cuda"), sample, tmp_path / "cuda")
    foreign = tmp_path / "foreign"
    foreign.mkdir()
    (foreign / "notes.txt").write_text("mine")
    with pytest.raises(TrainError, match="not an ftrace train run"):
        train(config(tiny_model_dir), sample, foreign)
    assert [p.name for p in foreign.iterdir()] == ["notes.txt"]
    no_objects = Corpus(source="x", sentences=[Sentence(id="a", text="Paris is big.",
                                                         facts=[("X", "r", "Rome")])])
    with pytest.raises(TrainError, match="no sentence of the corpus states a fact whose object appears"):
        train(config(tiny_model_dir, example_loss="object"), no_objects, tmp_path / "obj")


def test_object_spans_label_exactly_the_object(tiny_model_dir):
    tok = load_model(tiny_model_dir).tokenizer
    texts = ["The Googleplex in Mountain View serves as the main headquarters of Google.",
             "He was born in pisa, in Tuscany.",  # only a case-insensitive match
             "Mombasa lies on the coast of the Indian Ocean.",
             "Whales are mammals."]
    objects = ["Mountain View", "Pisa", "Indian Ocean", "Kenya"]
    rows = object_span_rows(tok, texts, objects, max_tokens=64)
    assert rows[3] is None  # absent
    for (ids, labels), obj in zip(rows[:3], objects[:3], strict=True):
        scored = [i for i, lab in enumerate(labels) if lab != IGNORE]
        assert scored == list(range(scored[0], scored[-1] + 1)) and scored[-1] < len(ids) - 1  # mid-sentence
        assert tok.decode([ids[i] for i in scored]).strip().lower() == obj.lower()
    examples = [Example(id=str(i), sentence_id=str(i), text=t, object=o)
                for i, (t, o) in enumerate(zip(texts, objects, strict=True))]
    batch, fallbacks = Objective("object", tok, max_tokens=64).batch(examples)
    assert fallbacks == 1 and batch.labels.shape == batch.input_ids.shape
    for b, row in enumerate(rows[:3]):  # the batch scores exactly the rows' labels; the absent object, its sentence
        assert batch.labels[b, :len(row[1])].tolist() == row[1]
    assert (batch.labels[3] != IGNORE).sum() == batch.attention_mask[3].sum() - 1


def test_object_examples_skip_sentences_without_their_object(tiny_model_dir):
    tok = load_model(tiny_model_dir).tokenizer
    corpus = Corpus(source="x", sentences=[
        Sentence(id="a", text="Apple developed macOS and iOS.", facts=[("macOS", "developer", "Apple"),
                                                                       ("iOS", "developer", "Apple"),
                                                                       ("macOS", "platform", "iOS")]),
        Sentence(id="b", text="Beethoven kept composing.", facts=[]),
        Sentence(id="c", text="Mombasa is a port.", facts=[("Mombasa", "country", "Kenya")]),
        Sentence(id="d", text="The cat sat.", facts=[("cat", "article", "The")]),  # first token only
    ])
    exset = build_examples(corpus, Objective("object", tok, max_tokens=64))
    assert tok.tokenize("The cat sat.")[0] == "The"
    # One example per distinct object; the first token of a text is never scored.
    assert [(e.sentence_id, e.object) for e in exset.examples] == [("a", "Apple"), ("a", "iOS")]
    assert exset.skipped_sentences == 3


def test_adafactor_second_moments(tmp_path, sample, tiny_model_dir):
    run = train(config(tiny_model_dir, optimizer="adafactor", max_steps=2, checkpoints=1), sample,
                tmp_path / "af")
    model = load_model(str(run.checkpoints[-1])).model
    moments = torch.load(run.checkpoints[-1] / "exp_avg_sq.pt", weights_only=True)
    assert {k: tuple(v.shape) for k, v in moments.items()} == {
        k: tuple(p.shape) for k, p in model.named_parameters()}
    # The reconstruction is exactly what Adafactor's update divides by.
    from transformers.optimization import Adafactor

    torch.manual_seed(0)
    layer = torch.nn.Linear(6, 5)
    opt = Adafactor(layer.parameters(), lr=1e-2, relative_step=False, scale_parameter=False,
                    warmup_init=False)
    for _ in range(2):
        layer(torch.randn(4, 6)).square().sum().backward()
        opt.step()
    state = opt.state[layer.weight]
    v = second_moments(opt, layer)["weight"]
    expected = Adafactor._approx_sq_grad(state["exp_avg_sq_row"], state["exp_avg_sq_col"])
    assert torch.allclose(v.rsqrt(), expected)
    assert torch.equal(second_moments(opt, layer)["bias"], opt.state[layer.bias]["exp_avg_sq"])


def _fake_run(root: Path, losses: list[float | None]) -> None:
    for step, loss in enumerate(losses):
        d = root / f"step-{step * 10}"
        d.mkdir(parents=True)
        (d / "state.json").write_text(json.dumps({"step": step * 10, "train_loss": loss, "complete": True}))


def test_select_checkpoints(tmp_path):
    _fake_run(tmp_path / "r", [None, 4.0, 3.0, 2.5, 2.2, 2.1, 2.0])
    (tmp_path / "r" / "step-70.tmp-1").mkdir()  # incomplete: never listed
    assert [d.name for d in select_checkpoints(tmp_path / "r", "all")] == [f"step-{10 * i}" for i in range(7)]
    # Inverse perplexities exp(-loss): 0.018 .. 0.135; the middle target 0.077 is nearest step-30's 0.082.
    assert [d.name for d in select_checkpoints(tmp_path / "r", "ftrace")] == ["step-10", "step-30", "step-60"]
    _fake_run(tmp_path / "few", [None, 3.0, 2.0])
    assert [d.name for d in select_checkpoints(tmp_path / "few", "ftrace")] == ["step-10", "step-20"]
    with pytest.raises(TrainError):
        select_checkpoints(tmp_path / "r", "best")


def test_traced_run_selections(full_run):
    out, _ = full_run
    names = {w: [p.name for p in traced_run(out, w).checkpoints] for w in ("all", "ftrace", "final", "base")}
    assert names == {"all": ["step-4", "step-8", "step-12"], "ftrace": ["step-4", "step-8", "step-12"],
                     "final": ["step-12"], "base": ["step-0"]}
    base = traced_run(out, "base")
    assert base.final.name == "step-12" and base.moments == [None]  # answers still from the final checkpoint
    chosen = traced_run(out, "12,4")  # checkpoints by step, in step order, each with its own moments
    assert [p.name for p in chosen.checkpoints] == ["step-4", "step-12"] and chosen.final.name == "step-12"
    assert [m.parent.name for m in chosen.moments] == ["step-4", "step-12"]
    with pytest.raises(TrainError, match="no checkpoint at step 5 .it has 0, 4, 8, 12"):
        traced_run(out, "4,5")
    with pytest.raises(TrainError, match="choose all, ftrace, final, base or checkpoint steps"):
        traced_run(out, "early")


# --- train -> checkpoints -> ingest -> query ------------------------------------------------------

@pytest.mark.slow
def test_ingest_and_query_from_a_training_run(full_run, tmp_path, sample, tiny_model_dir):
    from ftrace.config import GradientConfig
    from ftrace.features.gradients import GradientFeaturizer
    from ftrace.index.manifest import Manifest
    from ftrace.model import example_batch
    from ftrace.query.tracer import Tracer

    out, _ = full_run
    runner = CliRunner()
    index = tmp_path / "traced"
    r = runner.invoke(app, ["ingest", "--index", str(index), "--train-run", str(out), "--checkpoint-select", "all",
                            "--checkpoint-optimizer", "--tracin-dim", "64", "--batch-size", "64"])
    assert r.exit_code == 0, r.output
    m = Manifest.read(index)
    steps = [str((out / f"step-{n}").resolve()) for n in (4, 8, 12)]
    assert m.model.name == steps[-1] and m.model.checkpoints == steps  # the base (step 0) is never traced
    assert m.model.base == tiny_model_dir and m.model.train_dir == str(out.resolve())
    optimizer = m.vectors["tracin"]["corrections"]["optimizer"]
    assert [o["path"] for o in optimizer] == [f"{s}/exp_avg_sq.pt" for s in steps]
    assert len({o["sha256"] for o in optimizer}) == 3  # each checkpoint its own second moments

    # the stored vector is the mean over checkpoints, each corrected by ITS OWN optimizer state
    tracer = Tracer(index)
    try:
        texts = [s.text for s in sample.sentences[:4]]
        stored = tracer.featurizer("tracin").vectors(example_batch(tracer.lm.tokenizer, texts))
        per = []
        for s in steps:
            lm = load_model(s)
            cfg = GradientConfig(layers=["model.embed_tokens"], dim=64, optimizer_state=f"{s}/exp_avg_sq.pt")
            per.append(GradientFeaturizer(lm.model, cfg).vectors(example_batch(lm.tokenizer, texts)))
        np.testing.assert_allclose(stored, np.concatenate(per, 1) / np.sqrt(3), atol=1e-5)
        wrong = GradientFeaturizer(load_model(steps[0]).model, GradientConfig(
            layers=["model.embed_tokens"], dim=64, optimizer_state=f"{steps[2]}/exp_avg_sq.pt")).vectors(
            example_batch(tracer.lm.tokenizer, texts))
        assert np.abs(wrong - per[0]).max() > 1e-3  # another checkpoint's moments give other vectors
    finally:
        tracer.close()
    r = runner.invoke(app, ["query", "Toyota Avanza is produced by", "--index", str(index), "--method", "tracin+bm25",
                            "--target", "Toyota"])
    assert r.exit_code == 0, r.output

    # refusals: one line each, nothing written
    (tmp_path / "copy").mkdir()
    for args, msg in [(["--train-run", str(tmp_path / "copy")], "no complete ftrace train run"),
                      (["--train-run", str(out), "--model", "other-model"], "leave --model out"),
                      (["--train-run", str(out), "--checkpoint", tiny_model_dir], "not both")]:
        r = runner.invoke(app, ["ingest", "--index", str(tmp_path / "refused"), *args])
        assert r.exit_code == 1 and msg in r.output, (args, r.output)
        assert not (tmp_path / "refused").exists()
    moments = out / "step-8" / "exp_avg_sq.pt"
    moments.rename(tmp_path / "moved.pt")
    try:
        r = runner.invoke(app, ["ingest", "--index", str(tmp_path / "refused"), "--train-run", str(out),
                                "--checkpoint-select", "all", "--checkpoint-optimizer"])
        assert r.exit_code == 1 and "has no saved second moments" in r.output, r.output
        assert not (tmp_path / "refused").exists()
    finally:
        (tmp_path / "moved.pt").rename(moments)


def test_an_older_run_json_is_read_under_the_new_names(tmp_path):
    """run.json from before the renames (loss, max_length, no dtype) reads as today's, in one place."""
    from ftrace.runs import read_run

    out = tmp_path / "old"
    out.mkdir()
    old = {"loss": "object", "max_length": 64}
    (out / "run.json").write_text(json.dumps({"format": 1, "identity": {"config": dict(old)}, "config": dict(old)}))
    run = read_run(out)
    assert run["identity"]["config"] == {"example_loss": "object", "max_tokens": 64, "dtype": "float32",
                                         "checkpoint_at": None, "eval_facts": 0, "autocast": None}
    assert run["config"]["example_loss"] == "object" and run["config"]["max_tokens"] == 64


@pytest.mark.parametrize("example_loss, dtype", [("sentence", "float32"), ("object", "float32"),
                                                 ("sentence", "bfloat16")])
def test_grouped_step_has_the_one_batch_gradient(sample, tiny_model_dir, example_loss, dtype):
    """A training step's loss and gradient, computed in length-sorted groups that are each padded to their own
    longest row (one long sentence no longer pads the rest), equal those of the batch padded as one (in bfloat16,
    to bfloat16's rounding: the groups are summed in float32)."""
    from ftrace.model.objective import accumulate_gradient

    lm = load_model(tiny_model_dir, dtype=dtype)
    objective = Objective(example_loss, lm.tokenizer)
    examples = objective.training_examples(sample.sentences[:40])[:12]
    examples.append(examples[0].model_copy(update={"text": " ".join(s.text for s in sample.sentences[:6])}))
    batch, _ = objective.batch(examples)
    assert batch.input_ids.shape[1] > 3 * float(batch.attention_mask.sum(1).float().median())  # padding dominates

    lm.model.zero_grad()
    loss = lm_loss(lm.model, batch)
    loss.backward()
    whole = {n: p.grad.clone() for n, p in lm.model.named_parameters()}
    lm.model.zero_grad()
    grouped = accumulate_gradient(lm.model, batch, group_tokens=64)  # several groups
    assert grouped == pytest.approx(loss.item(), rel=1e-5 if dtype == "float32" else 1e-2)
    for n, p in lm.model.named_parameters():
        assert p.grad.dtype == p.dtype
        if dtype == "float32":
            torch.testing.assert_close(p.grad, whole[n], rtol=1e-4, atol=1e-6, msg=n)
        else:  # the cosine of the whole gradient: bfloat16 keeps about 3 significant digits
            cos = torch.nn.functional.cosine_similarity(p.grad.float().flatten(), whole[n].float().flatten(), dim=0)
            assert cos > 0.99, (n, float(cos))


@pytest.mark.slow
def test_a_trained_fact_traces_to_its_own_sentence(tmp_path, sample, tiny_model_dir, capsys):
    """Issue 27: after a few epochs of object-loss training on a handful of sentences, an index of the run takes
    the run's loss by default (and says so), and at the trained checkpoints each trained fact's own sentence scores
    positive under tracin and above every sentence that states another object."""
    from ftrace.config import IngestConfig
    from ftrace.corpus import stated_objects
    from ftrace.index.manifest import Manifest
    from ftrace.ingest.pipeline import ingest
    from ftrace.query.tracer import Tracer

    sentences = [s for s in sample.sentences if s.facts and s.facts[0][1] in ("capital", "author")]
    corpus = Corpus(source="capital+author", sentences=sentences,
                    queries=[q for q in sample.queries if q.fact and q.fact[1] in ("capital", "author")])
    corpus.link_proponents()
    run = tmp_path / "run"
    train(TrainConfig(model=tiny_model_dir, lr=1e-2, epochs=6, batch_size=8, example_loss="object", checkpoints=3),
          corpus, run)
    index = tmp_path / "index"
    capsys.readouterr()
    ingest(IngestConfig.model_validate({"index": index, "tracin": {"train_dir": run, "dim": 256},
                                        "batch_size": 16}), corpus)
    said = capsys.readouterr().err
    assert "example loss object (the run's)" in said and "--checkpoint-select ftrace" in said, said
    assert "object span" in Manifest.read(index).vectors["tracin"]["loss"]

    def ranks(index: Path) -> list[tuple[int, float]]:
        """Per trained fact and own sentence: its tracin rank among the sentences stating another object, and its
        score."""
        objects = {s.id: set(stated_objects(s)) for s in sentences}
        out = []
        tracer = Tracer(index)
        try:
            for q in corpus.queries:
                scores = tracer.score("tracin", q.prompt, q.target, list(objects))
                others = [scores[s] for s, objs in objects.items() if q.target not in objs]
                for p in (p for p in q.proponents if q.target in objects[p]):
                    out.append((1 + sum(o > scores[p] for o in others), scores[p]))
        finally:
            tracer.close()
        return out

    own, score = zip(*ranks(index), strict=True)
    assert len(own) >= 10 and np.mean(own) <= 1.2 and max(own) <= 3 and min(score) > 0, (own, score)
    # the same checkpoints under the whole-sentence loss (said to differ from the run's) trace far worse
    other = tmp_path / "sentence-loss"
    ingest(IngestConfig.model_validate({"index": other, "tracin": {"train_dir": run, "dim": 256,
                                                                   "example_loss": "sentence"}}), corpus)
    assert "note: the run trained on the object loss" in capsys.readouterr().err
    worse = [r for r, _ in ranks(other)]
    assert np.mean(worse) > 2 * np.mean(own), (own, worse)
    # the same command without --example-loss on that index keeps the index's own loss (not refused as different)
    ingest(IngestConfig.model_validate({"index": other, "tracin": {"train_dir": run, "dim": 256}}), corpus)
    said = capsys.readouterr().err
    assert "example loss sentence (the index's)" in said and "already complete" in said, said


def test_early_checkpoints_and_the_learning_curve(tmp_path, sample, tiny_model_dir, capsys):
    """--checkpoint-at puts checkpoints at fractions of the run (and the final step); --eval-facts records at each
    one which of a seeded sample of the corpus's facts the model answers right, the same as the bench's rule."""
    from ftrace.model.answer import answers_right
    from ftrace.train.facts import fact_sample

    run = train(config(tiny_model_dir, checkpoint_at=[0.5, 0.1, 0.25], eval_facts=20), sample, tmp_path / "run")
    assert [d.name for d in run.checkpoints] == ["step-0", "step-2", "step-3", "step-6", "step-12"]
    said = capsys.readouterr().err
    assert "base model; facts right" in said and said.count("facts right") == 5
    states = [json.loads((d / "state.json").read_text()) for d in run.checkpoints]
    picked = fact_sample(sample, 20, seed=0)
    assert len({q.id for q in picked}) == 20 and fact_sample(sample, 20, seed=0) == picked
    for d, s in zip(run.checkpoints, states, strict=True):
        right = answers_right(load_model(str(d)), [q.prompt for q in picked], [q.target for q in picked])
        ids = [q.id for q, r in zip(picked, right, strict=True) if r]
        assert s["facts"] == {"right": sum(right), "of": 20, "right_ids": ids}
    assert json.loads((tmp_path / "run" / "run.json").read_text())["checkpoints"][1]["facts"] == states[1]["facts"]
    with pytest.raises(ValueError, match="fractions of the run"):
        config(tiny_model_dir, checkpoint_at=[0.5, 1.5])


def test_autocast_trains_float32_weights_in_bfloat16_passes(full_run, tmp_path, sample, tiny_model_dir):
    """--autocast bfloat16: the passes run in bfloat16 (the losses differ from float32's in rounding only), the weights
    and the optimizer stay float32, and the run learns as the float32 one does."""
    out, _ = full_run
    run = train(config(tiny_model_dir, autocast="bfloat16"), sample, tmp_path / "mixed")
    final = load_model(str(run.checkpoints[-1])).model
    assert all(p.dtype == torch.float32 for p in final.parameters())
    plain = [json.loads(line)["loss"] for line in (out / "loss.jsonl").read_text().splitlines()]
    mixed = [json.loads(line)["loss"] for line in (tmp_path / "mixed" / "loss.jsonl").read_text().splitlines()]
    assert plain != mixed and np.allclose(plain, mixed, rtol=0.05)
    assert not same_weights(run.checkpoints[-1], out / f"step-{STEPS}")


def test_a_second_trainer_in_the_same_directory_is_refused(tmp_path):
    from ftrace.train.layout import locked

    with locked(tmp_path):
        assert (tmp_path / "run.lock").exists()
        with pytest.raises(TrainError, match="another ftrace train is running here"), locked(tmp_path):
            pass
        assert (tmp_path / "run.lock").exists()  # the refused one leaves the holder's lock alone
    assert not (tmp_path / "run.lock").exists()
    with locked(tmp_path):  # and the directory can be trained in again
        pass
