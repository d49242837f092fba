"""Sharded featurisation (`ftrace ingest --shard I/N`): real `ftrace` processes side by side on the tiny
model, real Qdrant Edge / qdrant-client local mode and Lucene, then the final `ftrace ingest`."""

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from ftrace.cli import app
from ftrace.index.manifest import Manifest
from ftrace.index.vectors import open_store
from ftrace.ingest.shards import split
from ftrace.model.objective import index_examples

ROOT = Path(__file__).resolve().parents[1]
AVANZA = "Toyota Avanza is produced by"
NAMES = ["embed", "tracin"]


def env():
    return {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false",
            "PYTHONPATH": str(ROOT)}


def ingest_args(index, model, *extra):
    # the settings of the session's `sample_index`, so the results can be compared with it
    return ["ingest", "--index", index, "--model", model, "--embed-layers", "0,2", "--batch-size", "16", *extra]


def start(args, prelude=""):
    code = f"{prelude}\nimport sys\nfrom ftrace.cli import app\napp(sys.argv[1:])"
    return subprocess.Popen([sys.executable, "-c", code, *map(str, args)], cwd=ROOT, env=env(),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def cli(*args):
    return CliRunner().invoke(app, [str(a) for a in args])


def vectors(index, backend="edge"):
    store = open_store(backend, index)
    out = {}
    try:
        for ids, vecs, _ in store.points(NAMES):
            out.update({i: {n: v[j] for n, v in vecs.items()} for j, i in enumerate(ids)})
    finally:
        store.close()
    return out


def assert_within_float16_rounding(got, want):
    """Every example, every number within one float16 step of the other's (the stored type)."""
    assert set(got) == set(want)
    for name in NAMES:
        a = np.stack([got[i][name] for i in sorted(want)])
        b = np.stack([want[i][name] for i in sorted(want)])
        step = np.spacing(np.abs(b).astype(np.float16)).astype(np.float32)
        assert np.all(np.abs(a - b) <= step), f"{name}: {np.abs(a - b).max()}"


@pytest.mark.parametrize("n", [1, 2, 3, 4, 7, 16])
def test_shard_split_covers_every_example_exactly_once(n, sample):
    for items in (list(range(0)), list(range(1)), list(range(5)), list(range(1001)),
                  index_examples(sample.sentences)):
        parts = [split(items, i, n) for i in range(n)]
        flat = [x for p in parts for x in p]
        assert sorted(map(id, flat)) == sorted(map(id, items)) and len(flat) == len(items)  # each exactly once
        assert max(map(len, parts)) - min(map(len, parts)) <= 1
        assert parts == [split(items, i, n) for i in range(n)]  # deterministic


@pytest.mark.parametrize(("value", "message"), [
    ("3/2", "--shard '3/2': shard 3 of 2: I runs from 0 to N-1"),
    ("x", "--shard 'x': give I/N: shard I (0-based) of N, e.g. 0/4"),
    ("0/0", "--shard '0/0': N must be at least 1"),
    ("-1/2", "--shard '-1/2': give I/N"),
])
def test_a_bad_shard_value_is_refused_in_one_line(tmp_path, value, message):
    r = cli("ingest", "--index", tmp_path / "idx", "--shard", value)
    assert r.exit_code == 1 and r.output.startswith(f"error: {message}") and len(r.output.splitlines()) == 1
    assert not (tmp_path / "idx").exists()


@pytest.mark.slow
def test_three_processes_build_the_index_a_plain_ingest_builds(tmp_path, sample_index, tiny_model_dir):
    index = tmp_path / "sharded"
    procs = [start(ingest_args(index, tiny_model_dir, "--shard", f"{i}/3")) for i in range(3)]
    for p in procs:
        _, err = p.communicate(timeout=300)
        assert p.returncode == 0, err[-3000:]
    r = cli("info", "--index", index)
    assert json.loads(r.output)["status"]["shards"] == {f"{i}/3": "complete" for i in range(3)}
    r = cli("query", AVANZA, "--index", index)
    assert r.exit_code == 1 and "did not finish" in r.output  # not queryable before the final ingest
    r = cli("ingest", "--index", index, "--model", tiny_model_dir, "--embed-layers", "0,2")
    assert r.exit_code == 0, r.output
    assert not (index / "shards").exists()
    m, plain = Manifest.read(index), Manifest.read(sample_index)
    assert m.complete and m.identity() == plain.identity()
    got, want = vectors(index), vectors(sample_index)
    # shards batch other examples together: other matrix shapes, which BLAS may round differently on some
    # processors (bit-identical on Intel Xeon, not on AMD EPYC); every vector is within one float16 step
    assert_within_float16_rounding(got, want)
    runs = [json.loads(cli("query", AVANZA, "--index", d, "--target", "Toyota", "--json").output)["rows"]
            for d in (index, sample_index)]
    assert [r["sentence_id"] for r in runs[0]] == [r["sentence_id"] for r in runs[1]]


KILL_AT_THIRD_BATCH = """
import os, signal
from ftrace.features.embedding import EmbeddingFeaturizer
real, calls = EmbeddingFeaturizer.vectors, []
def dying(self, batch):
    calls.append(1)
    if len(calls) == 3:
        os.kill(os.getpid(), signal.SIGKILL)  # no cleanup of any kind, as with a lost node
    return real(self, batch)
EmbeddingFeaturizer.vectors = dying
"""


@pytest.mark.slow
def test_a_killed_shard_resumes_and_the_final_ingest_says_what_is_missing(tmp_path, sample_index, tiny_model_dir):
    index = tmp_path / "sharded"
    local = ["--qdrant", "local"]  # qdrant-client's local mode: the calls a Qdrant server gets
    p = start(ingest_args(index, tiny_model_dir, "--shard", "1/2", *local), KILL_AT_THIRD_BATCH)
    _, err = p.communicate(timeout=300)
    assert p.returncode == -9, err[-3000:]
    r = cli("query", AVANZA, "--index", index)  # the shard's progress, from its staging directory
    assert r.exit_code == 1 and ("ingest did not finish (32 of 337 stored by 1 shard); finish its shards "
                                  "(`ftrace ingest --shard I/2`), then run `ftrace ingest`") in r.output, r.output
    r = cli(*ingest_args(index, tiny_model_dir, *local))
    assert r.exit_code == 1, r.output
    assert (f"error: {index}: sharded ingest unfinished: shard 0/2 has not run; shard 1/2 was interrupted. Run or "
            "resume each with `ftrace ingest --shard I/2`") in r.output
    r = cli(*ingest_args(index, tiny_model_dir, "--shard", "0/3", *local))
    assert r.exit_code == 1 and "holds shards of a 2-way split (shards/); use --shard I/2" in r.output
    r = cli(*ingest_args(index, tiny_model_dir, "--shard", "1/2", *local))
    assert r.exit_code == 0, r.output
    assert "resuming: 32 examples already stored; 136 to featurise" in r.output  # two batches of 16 survived
    r = cli(*ingest_args(index, tiny_model_dir, "--shard", "0/2", *local))
    assert r.exit_code == 0, r.output
    r = cli(*ingest_args(index, tiny_model_dir, *local))
    assert r.exit_code == 0, r.output
    assert Manifest.read(index).complete and not (index / "shards").exists()
    assert_within_float16_rounding(vectors(index, "local"), vectors(sample_index))
