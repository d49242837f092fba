import os
from pathlib import Path

import pytest

SHARED = Path(os.environ.get("FTRACE_SHARED_DATA", Path(__file__).resolve().parents[1].parent / "shared" / "data"))
LAMA = SHARED / "lama-trex"
TREX = SHARED / "t-rex-sample" / "sample-output.json"

_skip_without_shared = pytest.mark.skipif(
    not LAMA.is_dir(), reason=f"shared data not found at {SHARED} (set FTRACE_SHARED_DATA); CI always has it")


def needs_shared(test):
    """Marks a test `shared_data` and skips it, saying why, where ../shared/data is absent."""
    return pytest.mark.shared_data(_skip_without_shared(test))


def needs_cuda(test):
    """Marks a test `gpu` (`pytest -m gpu` runs these on a lent GPU machine) and skips it where no CUDA device is."""
    import torch

    skip = pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device on this machine")
    return pytest.mark.gpu(skip(test))


@pytest.fixture(scope="session")
def sample():
    from ftrace.corpus import load_sample

    return load_sample()


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory, sample):
    """A tiny random Llama whose tokenizer was trained on the sample corpus."""
    from ftrace.testing import make_tiny_model

    texts = [s.text for s in sample.sentences] + [f"{q.prompt} {q.target}" for q in sample.queries]
    return str(make_tiny_model(tmp_path_factory.mktemp("tiny") / "model", texts))


@pytest.fixture(scope="session")
def sample_index(tmp_path_factory, tiny_model_dir):
    """The sample corpus ingested with the tiny model into Qdrant Edge + Lucene."""
    from ftrace.config import IngestConfig
    from ftrace.ingest.pipeline import ingest

    index = tmp_path_factory.mktemp("idx") / "sample"
    ingest(IngestConfig.model_validate({"index": index, "model": tiny_model_dir, "embed": {"layers": [0, 2]},
                                        "batch_size": 16}))
    return index
