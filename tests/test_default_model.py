"""The built-in SmolLM2-135M on the shared P176 relation: the issue's acceptance check.

Uses only the embedding layer (no forward pass per training example), so it runs in about a
minute on 2 cores, most of it the one-time GGUF conversion.
"""

import json

import pytest
from conftest import LAMA, needs_shared
from typer.testing import CliRunner

from ftrace.cli import app

pytestmark = pytest.mark.slow  # real processes, servers or the real model: the full tier


@pytest.fixture(scope="module")
def p176_index(tmp_path_factory):
    index = tmp_path_factory.mktemp("p176") / "index"
    r = CliRunner().invoke(app, ["ingest", "--index", str(index), "--corpus", str(LAMA), "--relation", "P176",
                                     "--no-tracin"])
    assert r.exit_code == 0, r.output
    return index


@pytest.mark.slow
@needs_shared
def test_default_model_answers_and_traces_toyota_avanza(p176_index):
    for method in ("bm25", "embed+bm25"):
        r = CliRunner().invoke(app, ["query", "Toyota Avanza is produced by", "--index", str(p176_index),
                                     "--method", method, "--json"])
        assert r.exit_code == 0, r.output
        out = json.loads(r.output)
        assert out["target_from"] == "model" and out["target"] == "Toyota"
        assert out["ground_truth"] and any(row["proponent"] for row in out["rows"][:10]), method
