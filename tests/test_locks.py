"""Concurrent processes on one index (issue 11): real `ftrace` subprocesses, real Qdrant Edge and Lucene."""

import hashlib
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from ftrace.index.locks import LOCK_FILES, IndexBusyError, StoreLock, writer

ROOT = Path(__file__).resolve().parents[1]
AVANZA = "Toyota Avanza is produced by"


def env(**extra):
    return {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false",
            "PYTHONPATH": str(ROOT), **extra}


def start(*args, **extra):
    return subprocess.Popen([sys.executable, "-m", "ftrace.cli", *map(str, args)], cwd=ROOT, env=env(**extra),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def run(*args, **extra):
    p = start(*args, **extra)
    out, err = p.communicate(timeout=120)
    return p.returncode, out, err


def query_args(index):
    return ["query", AVANZA, "--index", index, "--method", "bm25+embed", "--target", "Toyota", "--json"]


def one_error_line(err):
    """The failure is one `error:` line (ingest logs its corpus line before it), no traceback."""
    lines = err.splitlines()
    return "Traceback" not in err and [ln for ln in lines if ln.startswith("error:")] == lines[-1:]


def checksums(index):
    return {str(p.relative_to(index)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(index.rglob("*")) if p.is_file() and p.name not in LOCK_FILES}


@pytest.fixture
def index(tmp_path, sample_index):
    copy = tmp_path / "idx"
    shutil.copytree(sample_index, copy)
    return copy


def test_concurrent_queries_all_succeed(index):
    procs = [start(*query_args(index)) for _ in range(6)]
    results = [(p.wait(timeout=120), *p.communicate()) for p in procs]
    for rc, out, err in results:
        assert rc == 0, err[-2000:]
        assert json.loads(out)["rows"], out
    assert len({json.dumps(json.loads(out)["rows"]) for _, out, _ in results}) == 1  # all saw the same index


def test_a_writer_refuses_a_second_ingest_and_readers(index, tiny_model_dir):
    before = checksums(index)
    with writer(index):
        rc, _, err = run("ingest", "--index", index, "--model", tiny_model_dir)
        assert rc == 1 and one_error_line(err), err
        assert f"{index}: is being written by pid {os.getpid()} since " in err and "wait for it to finish" in err
        rc, _, err = run(*query_args(index))
        assert rc == 1 and one_error_line(err), err
        assert f"is being written by pid {os.getpid()}" in err and "examples planned); query it when" in err
        with pytest.raises(IndexBusyError, match="is being written"):  # in-process, too
            with writer(index):
                pass
    assert checksums(index) == before
    rc, out, err = run(*query_args(index))  # released on exit
    assert rc == 0 and json.loads(out)["rows"], err[-2000:]


def test_a_refused_or_failed_ingest_leaves_no_directory(tmp_path):
    fresh = tmp_path / "fresh"
    with pytest.raises(RuntimeError):
        with writer(fresh):
            assert (fresh / ".write.lock").exists()
            raise RuntimeError("model failed to load")
    assert not fresh.exists()


def test_a_held_vector_store_is_waited_for_then_refused(index):
    lock = StoreLock(index)
    lock.acquire()
    try:
        rc, _, err = run(*query_args(index), FTRACE_STORE_WAIT_S="0.5")
    finally:
        lock.release()
    assert rc == 1 and one_error_line(err), err
    assert f"the vector store is in use by pid {os.getpid()}" in err and "serve the index with one process" in err
