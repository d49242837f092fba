"""Device handling: --device resolution, and on a machine with CUDA, featurizers and answers on the GPU
give what they give on the CPU (skipped, saying so, where there is no CUDA device)."""

import copy

import numpy as np
import pytest
import torch
from conftest import needs_cuda

from ftrace import FtraceError
from ftrace.config import EmbeddingConfig, GradientConfig
from ftrace.features.embedding import EmbeddingFeaturizer
from ftrace.features.gradients import GradientFeaturizer
from ftrace.model import example_batch, load_model, query_batch
from ftrace.model.answer import greedy_answers
from ftrace.model.loading import resolve_device

cuda = needs_cuda
LAYERS = ["model.embed_tokens", "model.layers.*.mlp.down_proj", "model.layers.0.self_attn.q_proj"]


@cuda
def test_models_load_onto_the_gpu_with_the_same_fingerprint(tiny_model_dir):
    here, there = load_model(tiny_model_dir), load_model(tiny_model_dir, "cuda")
    assert next(there.model.parameters()).device.type == "cuda" and here.fingerprint == there.fingerprint
    assert load_model(tiny_model_dir, "auto").model.device.type == "cuda"


def test_device_resolution():
    assert resolve_device("cpu") == torch.device("cpu")
    assert resolve_device("auto").type == ("cuda" if torch.cuda.is_available() else "cpu")
    if not torch.cuda.is_available():
        with pytest.raises(FtraceError, match="--device cuda:1: no CUDA device is available"):
            resolve_device("cuda:1")


@pytest.fixture(scope="module")
def cpu_and_gpu(tiny_model_dir):
    lm = load_model(tiny_model_dir)
    gpu = copy.deepcopy(lm.model).to("cuda")
    return lm, gpu


@cuda
def test_gradient_vectors_on_the_gpu_equal_the_cpu(cpu_and_gpu, sample):
    lm, gpu = cpu_and_gpu
    texts = [s.text for s in sample.sentences[:12]]
    for config in (GradientConfig(layers=LAYERS, dim=64), GradientConfig(dim=256, tied="input"),
                   GradientConfig(layers=LAYERS, dim=97, projection="sketch")):
        batch = example_batch(lm.tokenizer, texts)
        here = GradientFeaturizer(lm.model, config).vectors(batch)
        there = GradientFeaturizer(gpu, config).vectors(batch)
        np.testing.assert_allclose(there, here, atol=2e-4)
    q = query_batch(lm.tokenizer, ["Toyota Avanza is produced by"], ["Toyota"])
    config = GradientConfig(dim=256)
    np.testing.assert_allclose(GradientFeaturizer(gpu, config).vectors(q),
                               GradientFeaturizer(lm.model, config).vectors(q), atol=2e-4)


@cuda
def test_embeddings_and_answers_on_the_gpu_equal_the_cpu(cpu_and_gpu, sample):
    lm, gpu = cpu_and_gpu
    batch = example_batch(lm.tokenizer, [s.text for s in sample.sentences[:12]])
    config = EmbeddingConfig(layers=[0, 1, 2])
    np.testing.assert_allclose(EmbeddingFeaturizer(gpu, config).vectors(batch),
                               EmbeddingFeaturizer(lm.model, config).vectors(batch), atol=1e-4)
    prompts = [q.prompt for q in sample.queries[:10]]
    on_gpu = copy.copy(lm)
    on_gpu.model = gpu
    assert greedy_answers(on_gpu, prompts) == greedy_answers(lm, prompts)


@cuda
def test_tailpatch_on_the_gpu_equals_the_cpu(cpu_and_gpu, sample):
    from ftrace.bench.tailpatch import TailPatcher

    lm, gpu = cpu_and_gpu
    on_gpu = copy.copy(lm)
    on_gpu.model = gpu
    here, there = (TailPatcher.for_index(m, None, 256, lr=1e-3) for m in (lm, on_gpu))
    q = sample.queries[0]
    before = here.logprobs([q.prompt], [q.target])[0]
    assert there.logprobs([q.prompt], [q.target])[0] == pytest.approx(before, abs=1e-4)
    a = here.patch(q.prompt, q.target, sample.sentences[:8])["after"] - before
    b = there.patch(q.prompt, q.target, sample.sentences[:8])["after"] - before
    assert b == pytest.approx(a, rel=0.05, abs=1e-4) and a != 0
    assert all(p.device.type == "cuda" for p in gpu.parameters())
