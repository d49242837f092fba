"""--dtype: the model's weights in bfloat16 (or float16) on the device, projections and whitening in float32;
on the CPU with the tiny model, bfloat16 vectors are close to float32 ones, and the index records the dtype."""

import json

import numpy as np
import pytest
import torch
from conftest import needs_cuda
from typer.testing import CliRunner

from ftrace.cli import app
from ftrace.config import EmbeddingConfig, GradientConfig
from ftrace.features.embedding import EmbeddingFeaturizer
from ftrace.features.gradients import GradientFeaturizer
from ftrace.index.manifest import Manifest
from ftrace.index.vectors import open_store
from ftrace.model import example_batch, load_model
from ftrace.model.objective import index_examples
from ftrace.query.tracer import Tracer

AVANZA = "Toyota Avanza is produced by"
cuda = needs_cuda


def cli(*args):
    return CliRunner().invoke(app, [str(a) for a in args])


def cosines(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return (a * b).sum(1) / np.linalg.norm(a, axis=1) / np.linalg.norm(b, axis=1)


@pytest.fixture(scope="module")
def models(tiny_model_dir):
    return load_model(tiny_model_dir), load_model(tiny_model_dir, "cpu", "bfloat16")


def test_bfloat16_weights_keep_the_fingerprint(models):
    f32, b16 = models
    assert {p.dtype for p in b16.model.parameters()} == {torch.bfloat16}
    assert {p.dtype for p in f32.model.parameters()} == {torch.float32}
    assert b16.fingerprint == f32.fingerprint  # of the float32 weights: the same index model


@pytest.mark.slow
def test_bfloat16_vectors_are_close_to_float32_ones(models, sample):
    f32, b16 = models
    batch = example_batch(f32.tokenizer, [s.text for s in sample.sentences[:24]])
    featurizers = [lambda m: EmbeddingFeaturizer(m, EmbeddingConfig(layers=[0, 2], pooling="mean")),
                   lambda m: GradientFeaturizer(m, GradientConfig(layers=["model.embed_tokens"], dim=256)),
                   lambda m: GradientFeaturizer(m, GradientConfig(layers=["model.layers.*.mlp.*"], dim=64))]
    for make in featurizers:
        a, b = make(f32.model).vectors(batch), make(b16.model).vectors(batch)
        assert a.dtype == b.dtype == np.float32  # what is stored is float32 math on bfloat16 activations
        assert cosines(a, b).min() > 0.999 and 0 < np.abs(a - b).max() < 0.01  # close, yet not the same


@cuda
@pytest.mark.parametrize("dtype", ["bfloat16", "float16"])
def test_half_precision_on_the_gpu_is_close_to_float32_on_the_cpu(models, sample, tiny_model_dir, dtype):
    from ftrace.model.answer import greedy_answers

    f32 = models[0]
    gpu = load_model(tiny_model_dir, "cuda", dtype)
    assert {(p.device.type, p.dtype) for p in gpu.model.parameters()} == {("cuda", getattr(torch, dtype))}
    batch = example_batch(f32.tokenizer, [s.text for s in sample.sentences[:24]])
    for make in (lambda m: EmbeddingFeaturizer(m, EmbeddingConfig(layers=[0, 2], pooling="mean")),
                 lambda m: GradientFeaturizer(m, GradientConfig(layers=["model.embed_tokens",
                                                                        "model.layers.*.mlp.down_proj"], dim=64))):
        assert cosines(make(f32.model).vectors(batch), make(gpu.model).vectors(batch)).min() > 0.999
    answers = greedy_answers(gpu, [q.prompt for q in sample.queries[:8]])
    assert len(answers) == 8 and all(isinstance(a, str) for a in answers)


@pytest.mark.slow
def test_an_index_records_its_dtype_and_queries_use_it(tmp_path, sample_index, tiny_model_dir):
    index = tmp_path / "bf16"
    r = cli("ingest", "--index", index, "--model", tiny_model_dir, "--embed-layers", "0,2", "--dtype", "bfloat16")
    assert r.exit_code == 0, r.output
    m = Manifest.read(index)
    assert m.model.dtype == "bfloat16" and m.identity()["model"]["dtype"] == "bfloat16"
    assert Manifest.read(sample_index).model.dtype == "float32"
    stores = [open_store("edge", d) for d in (index, sample_index)]
    try:
        ids = [e.id for e in index_examples(Tracer(sample_index).corpus.sentences)]
        got, want = ({i: v for batch in s.points(["embed", "tracin"]) for i, v in zip(batch[0], batch[1]["embed"],
                                                                                       strict=True)}
                     for s in stores)
        assert cosines(np.stack([got[i] for i in ids]), np.stack([want[i] for i in ids])).min() > 0.999
    finally:
        for s in stores:
            s.close()
    r = cli("ingest", "--index", index, "--model", tiny_model_dir, "--embed-layers", "0,2")
    assert r.exit_code == 1 and "model.dtype: index has 'bfloat16', asked for 'float32'" in r.output
    tracer = Tracer(index)
    assert tracer.dtype == "bfloat16" and next(tracer.lm.model.parameters()).dtype == torch.bfloat16
    r = cli("query", AVANZA, "--index", index, "--target", "Toyota", "--json", "--dtype", "float32")
    assert r.exit_code == 0 and json.loads(r.output)["rows"], r.output


def test_a_bad_dtype_is_refused_in_one_line(tmp_path):
    for command in (["ingest", "--index", tmp_path / "i"], ["query", AVANZA, "--index", tmp_path / "i"],
                    ["train", "--index", tmp_path / "i"]):
        r = cli(*command, "--dtype", "float64")
        assert r.exit_code == 1 and r.output.startswith("error: --dtype 'float64': Input should be 'float32'"), r.output
    assert not (tmp_path / "i").exists()


def test_training_in_bfloat16_is_its_own_run(tmp_path, sample, tiny_model_dir):
    from ftrace.config import TrainConfig
    from ftrace.train import TrainError, train

    settings = {"model": tiny_model_dir, "lr": 1e-2, "max_steps": 2, "batch_size": 8, "checkpoints": 1}
    run = train(TrainConfig(**settings, dtype="bfloat16"), sample, tmp_path / "run")
    record = json.loads((tmp_path / "run" / "run.json").read_text())
    assert record["identity"]["config"]["dtype"] == "bfloat16"
    base, final = (load_model(str(d)).model.state_dict() for d in (run.checkpoints[0], run.checkpoints[-1]))
    moved = [k for k in base if not torch.equal(base[k], final[k])]
    assert moved and all(torch.equal(final[k], final[k].bfloat16().float()) for k in final)  # bfloat16 weights
    with pytest.raises(TrainError, match="config.dtype: run has 'bfloat16', asked for 'float32'"):
        train(TrainConfig(**settings), sample, tmp_path / "run")
