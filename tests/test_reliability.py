"""Reliability (issue 11): real `ftrace` processes on real Qdrant Edge and Lucene with a tiny model.

kill -9 at three points of an ingest, then resume (vectors bit-identical to a clean ingest); one writer at
a time (a second ingest, a query and info are refused at once, naming the writer's pid and progress); many
concurrent readers; every class of bad input (one line naming file and line, exit 1, nothing written); and
refusals to change an index leave its files byte for byte as they were.

A crash is a real SIGKILL at a chosen point: the process runs the CLI after a few lines that patch one
function to kill itself there (`patched`). With FTRACE_RELIABILITY_LOG set, every scenario appends its
outcome (the actual message) to that file as a JSON line; `perf/reliability.py` turns it into the report.
"""

import hashlib
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from ftrace.config import IngestConfig
from ftrace.index.files import LOCK_FILES, PROGRESS
from ftrace.index.layout import IndexDir
from ftrace.index.locks import IndexBusyError, StoreLock, writer
from ftrace.index.manifest import Manifest, ManifestError
from ftrace.index.vectors import open_store, point_id
from ftrace.model.batching import budget_batches, token_lengths
from ftrace.model.objective import index_examples
from ftrace.query.tracer import Tracer
from ftrace.testing import record

ROOT = Path(__file__).resolve().parents[1]
AVANZA = "Toyota Avanza is produced by"
READERS = int(os.environ.get("FTRACE_TEST_READERS", "8"))
SAME = ["--embed-layers", "0,2", "--batch-size", "16"]  # the settings of the `sample_index` fixture


# --- processes ---------------------------------------------------------------------------------------

def env(**extra):
    return {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false",
            "PYTHONPATH": str(ROOT), **extra}


def start(*args, patch: str = "", **extra):
    """`ftrace ARGS` as a process; with `patch`, that code runs first (after `die()` is defined)."""
    head = ([sys.executable, "-c", f"{KILLER}\n{patch}\nfrom ftrace.cli import main\nmain()"] if patch
            else [sys.executable, "-m", "ftrace.cli"])
    return subprocess.Popen([*head, *map(str, args)], cwd=ROOT, env=env(**extra), stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, preexec_fn=ctrl_c_as_at_a_terminal)


def ctrl_c_as_at_a_terminal():
    """SIGINT's default disposition in the child, as a terminal gives it: a shell starts a background job (e.g. the
    suite run with `&`) with SIGINT ignored, which Python then keeps, and Ctrl-C would be lost."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def finish(p, timeout=600):  # generous: a loaded machine slows many processes alike
    out, err = p.communicate(timeout=timeout)
    return p.returncode, out, err


def run(*args, **extra):
    return finish(start(*args, **extra))


def run_all(commands):
    """{name: args or (args, patch)} started together, then {name: (returncode, stdout, stderr)}."""
    procs = {k: start(*a) if isinstance(a, list) else start(*a[0], patch=a[1]) for k, a in commands.items()}
    return {k: finish(p) for k, p in procs.items()}


def ingest_args(index, model, *more):
    return ["ingest", "--index", index, "--model", model, *SAME, *more]


def query_args(index):
    return ["query", AVANZA, "--index", index, "--method", "embed+bm25", "--target", "Toyota", "--json"]


def error_line(err):
    """The one `error:` line a failure prints (ingest logs its corpus line before it); asserts no traceback."""
    lines = [ln for ln in err.splitlines() if ln.strip()]
    assert "Traceback" not in err and [ln for ln in lines if ln.startswith("error:")] == lines[-1:], err[-3000:]
    return lines[-1]


def checksums(index):
    return {str(p.relative_to(index)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(Path(index).rglob("*")) if p.is_file() and p.name not in LOCK_FILES}


def stored_vectors(index):
    """Every stored vector of the index, per vector name, in corpus order (as stored: float16)."""
    ids = [e.id for e in index_examples(IndexDir(Path(index)).corpus.sentences)]
    store = open_store("edge", index)
    try:
        recs = store.shard.retrieve([point_id(i) for i in ids], with_payload=["example_id"], with_vector=True)
    finally:
        store.close()
    got = {r.payload["example_id"]: r.vector for r in recs}
    assert len(got) == len(ids)
    return {name: np.array([got[i][name] for i in ids]) for name in got[ids[0]]}


def shown(line, **paths):
    """A message as the report shows it: without "error: ", temporary paths named (longest first), as code."""
    text = line.removeprefix("error: ")
    for name, path in sorted(paths.items(), key=lambda kv: -len(str(kv[1]))):
        text = text.replace(str(path), name)
    return f"`` {text} ``"


# Code run before the CLI: `die()` is kill -9 of the process itself, at a point the patches choose.
KILLER = "import os, signal, time\ndef die():\n    os.kill(os.getpid(), signal.SIGKILL)\n"
KILL_POINTS = {  # where -> (the code that kills there, what a query says meanwhile)
    "right after the first manifest write (no BM25, no vectors yet)": ("""
from ftrace.index.manifest import Manifest, ManifestError
real = Manifest.write
def write(self, index_dir):
    real(self, index_dir)
    die()
Manifest.write = write
""", "(337 examples planned)"),
    "in the middle of the BM25 build (150 of 337 documents added)": ("""
import ftrace.ingest.pipeline as pipeline
real = pipeline.build_lucene
def build(path, docs, total=None, threads=2):
    real(path, (d if i < 150 else die() for i, d in enumerate(docs)), total, threads)
pipeline.build_lucene = build
""", "(337 examples planned)"),
    # the progress file lags the shard by the batch being stored when the process died
    "in the middle of the vectors (3 batches of 16 stored, shard not flushed or closed)": ("""
from ftrace.index.vectors import EdgeStore
real, calls = EdgeStore.upsert, []
def upsert(self, *args):
    real(self, *args)
    calls.append(1)
    if len(calls) == 3:
        die()
EdgeStore.upsert = upsert
""", "(32 of 337 stored)"),
}
# A writer slow enough to be met: it sleeps after storing each batch.
SLOW_WRITER = """
from ftrace.index.vectors import EdgeStore
real = EdgeStore.upsert
def upsert(self, *args):
    real(self, *args)
    time.sleep(0.3)
EdgeStore.upsert = upsert
"""


@pytest.fixture
def index(tmp_path, sample_index):
    copy = tmp_path / "idx"
    shutil.copytree(sample_index, copy)
    return copy


def wait_for_progress(index, writer_proc, at_least, timeout=120):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        assert writer_proc.poll() is None, writer_proc.communicate()[1][-3000:]
        try:
            if json.loads((index / PROGRESS).read_text())["stored"] >= at_least:
                return
        except (OSError, ValueError):
            pass
        time.sleep(0.05)
    raise AssertionError("the writer stored nothing in time")


# --- crashes ---------------------------------------------------------------------------------------

@pytest.mark.slow
def test_kill_9_at_three_points_then_resume_gives_the_clean_index(tmp_path, sample_index, tiny_model_dir, sample):
    dirs = {where: tmp_path / f"killed-{i}" for i, where in enumerate(KILL_POINTS)}
    killed = run_all({w: (ingest_args(d, tiny_model_dir), KILL_POINTS[w][0]) for w, d in dirs.items()})
    assert all(rc == -9 for rc, _, _ in killed.values()), killed
    first, mid_bm25, _ = dirs.values()
    assert not any(Manifest.read(d).complete for d in dirs.values())
    assert not (first / "bm25").exists() and not (first / "qdrant").exists()
    assert [p.is_dir() for p in mid_bm25.glob("bm25.tmp-*")] == [True] and not (mid_bm25 / "bm25").exists()

    seen = {}
    for w, d in dirs.items():  # a reader is told (in process here: readers as processes are tested below)
        with pytest.raises(ManifestError) as e:
            Tracer(d)
        seen[w] = str(e.value)
        assert seen[w] == f"{d}: ingest did not finish {KILL_POINTS[w][1]}; run `ftrace ingest` again to resume it"

    # the reference: an uninterrupted ingest in a process like the resumed ones (a resume redoes the batches of
    # the uninterrupted plan, so the vectors match bit for bit whatever the processor's BLAS does with shapes)
    resumed = run_all({**{w: ingest_args(d, tiny_model_dir) for w, d in dirs.items()},
                       "clean": ingest_args(tmp_path / "clean", tiny_model_dir)})
    assert resumed["clean"][0] == 0, resumed["clean"][2][-3000:]
    clean = stored_vectors(tmp_path / "clean")
    for w, d in dirs.items():
        rc, _, err = resumed[w]
        assert rc == 0, err[-3000:]
        m = Manifest.read(d)
        assert m.complete and not m.differences(Manifest.read(sample_index)) and not (d / PROGRESS).exists()
        assert IndexDir(d).corpus == IndexDir(sample_index).corpus
        assert not list(d.glob("bm25.tmp-*"))  # the killed build's directory, removed by the next
        got = stored_vectors(d)
        assert got.keys() == clean.keys()
        for name in clean:
            np.testing.assert_array_equal(got[name], clean[name])  # bit-identical
        bm25, ref = IndexDir(d).open_bm25(), IndexDir(sample_index).open_bm25()
        try:
            assert bm25.count() == ref.count() == len(sample.sentences)
            assert bm25.search("Toyota Avanza", 20) == ref.search("Toyota Avanza", 20)
        finally:
            bm25.close()
            ref.close()
        resuming = [ln for ln in err.splitlines() if ln.startswith("resuming")]
        record("kill -9 during ingest, then `ftrace ingest` again", w,
               f"a query meanwhile: {shown(seen[w], INDEX=d)}; resumed"
               + (f" ({shown(resuming[0])})" if resuming else "") + "; vectors bit-identical to a clean ingest, "
               "same BM25 results")
    assert "resuming: 48 examples already stored; 289 to featurise" in resumed[list(dirs)[2]][2]


@pytest.mark.slow
def test_sigint_and_sigterm_at_three_points_stop_cleanly_then_resume(tmp_path, tiny_model_dir):
    """Ctrl-C (SIGINT) and SIGTERM, each at the three points of the kill -9 test: one line, exit 128 + the signal,
    no traceback and no JVM crash log (the JVM leaves both signals to Python: -Xrs), the index resumable."""
    runs = {(w, sig): tmp_path / f"{sig}-{i}" for i, w in enumerate(KILL_POINTS) for sig in ("SIGINT", "SIGTERM")}
    signalled = run_all({(w, sig): (ingest_args(d, tiny_model_dir),
                                    f"def die():\n    os.kill(os.getpid(), signal.{sig})\n{KILL_POINTS[w][0]}")
                         for (w, sig), d in runs.items()})
    for (w, sig), (rc, _, err) in signalled.items():
        lines = err.strip().splitlines()
        assert rc == 128 + {"SIGINT": 2, "SIGTERM": 15}[sig], (w, sig, err[-2000:])
        assert lines[-1] == f"interrupted ({sig}); what was stored is kept: run the same command again to resume"
        assert "Traceback" not in err and "fatal error" not in err.lower(), err[-2000:]
        assert not Manifest.read(runs[w, sig]).complete
    assert not list(ROOT.glob("hs_err_pid*.log")) and not list(tmp_path.rglob("hs_err_pid*.log"))
    resumed = run_all({**{k: ingest_args(d, tiny_model_dir) for k, d in runs.items()},
                       "clean": ingest_args(tmp_path / "clean", tiny_model_dir)})
    assert all(rc == 0 for rc, _, _ in resumed.values()), {k: v[2][-2000:] for k, v in resumed.items() if v[0]}
    clean = stored_vectors(tmp_path / "clean")
    for (w, sig), d in runs.items():
        got = stored_vectors(d)
        for name in clean:
            np.testing.assert_array_equal(got[name], clean[name])
        record("Ctrl-C or SIGTERM during ingest, then `ftrace ingest` again", f"{sig} {w}",
               f"exit {signalled[w, sig][0]}, `` {signalled[w, sig][2].strip().splitlines()[-1]} ``; resumed, "
               "vectors bit-identical to a clean ingest")


@pytest.mark.slow
def test_thread_counts_what_holds(tmp_path, tiny_model_dir):
    """What a machine's thread setting changes: the same setting twice gives bit-identical vectors; 1 and 2 torch
    threads may split reductions differently, so the vectors agree within one float16 step (the stored type)."""
    runs = {"1": ("1", tmp_path / "t1"), "2": ("2", tmp_path / "t2"), "2 again": ("2", tmp_path / "t2b")}
    procs = {k: start(*ingest_args(d, tiny_model_dir), OMP_NUM_THREADS=n, MKL_NUM_THREADS=n)
             for k, (n, d) in runs.items()}
    for k, p in procs.items():
        rc, _, err = finish(p)
        assert rc == 0, (k, err[-2000:])
    got = {k: stored_vectors(d) for k, (_, d) in runs.items()}
    for name in got["2"]:
        np.testing.assert_array_equal(got["2"][name], got["2 again"][name])
        a, b = got["1"][name], got["2"][name]
        step = np.spacing(np.abs(b).astype(np.float16)).astype(np.float32)
        assert np.all(np.abs(a - b) <= step), f"{name}: {np.abs(a - b).max()}"
    same = all(np.array_equal(got["1"][n], got["2"][n]) for n in got["2"])
    record("thread counts", "1 vs 2 torch threads", "bit-identical" if same else "within one float16 step")


# --- one writer, many readers --------------------------------------------------------------------

@pytest.mark.slow
def test_a_writer_refuses_a_second_ingest_and_readers_at_once(tmp_path, tiny_model_dir, sample):
    target = tmp_path / "writing"
    w = start(*ingest_args(target, tiny_model_dir, "--batch-size", "8"), patch=SLOW_WRITER)
    try:
        wait_for_progress(target, w, 8)
        t0 = time.monotonic()
        results = run_all({"a second ingest": ingest_args(target, tiny_model_dir), "a query": query_args(target),
                           "ftrace info": ["info", "--index", target]})
        waited = time.monotonic() - t0
        assert w.poll() is None, "the writer finished before the others were refused: make it slower"
        with pytest.raises(IndexBusyError, match=f"is being written by pid {w.pid}"):  # in-process, too
            with writer(target):
                pass
    finally:
        rc, _, err = finish(w)
    assert rc == 0, err[-3000:]
    since = f"{target}: is being written by pid {w.pid} since "
    for what, (rc, _, err) in results.items():
        line = error_line(err)
        assert rc == 1 and line.startswith(f"error: {since}"), line
        assert "cannot load" not in err and "vectors" not in err  # refused before any model work
        if what == "a second ingest":
            assert line.endswith("; wait for it to finish")
        else:
            stored, total = line.split(" (")[1].split(" stored)")[0].split(" of ")
            assert 8 <= int(stored) < int(total) == len(sample.sentences), line
            assert line.endswith(" stored); query it when ingest finishes")
        record("one writer at a time", f"{what} while `ftrace ingest` writes",
               f"exit {rc} (all three within {waited:.1f} s), the writer went on: "
               f"{shown(line, INDEX=target)}")
    assert Manifest.read(target).complete and not (target / PROGRESS).exists()
    assert IndexDir(target).status()["points"] == len(sample.sentences)
    with writer(target):  # the lock went with the writer
        pass


@pytest.mark.slow
def test_concurrent_readers_all_succeed(index):
    t0 = time.monotonic()
    results = list(run_all({i: query_args(index) for i in range(READERS)}).values())
    wall = time.monotonic() - t0
    errors = [err[-500:] for rc, _, err in results if rc != 0]
    assert not errors, errors[0]
    assert all(json.loads(out)["rows"] for _, out, _ in results)
    assert len({json.dumps(json.loads(out)["rows"]) for _, out, _ in results}) == 1  # all saw the same index
    record("concurrent readers", f"{READERS} `ftrace query` processes started at once on one index",
           f"{READERS - len(errors)} succeeded, {len(errors)} errors, identical results; all done in {wall:.0f} s "
           "(they take turns on the Qdrant Edge shard)")


def test_a_refused_or_failed_ingest_leaves_no_directory(tmp_path):
    fresh = tmp_path / "fresh"
    with pytest.raises(RuntimeError):
        with writer(fresh):
            assert (fresh / ".write.lock").exists()
            raise RuntimeError("model failed to load")
    assert not fresh.exists()


@pytest.mark.slow
def test_a_held_vector_store_is_waited_for_then_refused(index):
    lock = StoreLock(index)
    lock.acquire()
    try:
        rc, _, err = run(*query_args(index), FTRACE_STORE_WAIT_S="0.5")
    finally:
        lock.release()
    line = error_line(err)
    assert rc == 1 and f"the vector store is in use by pid {os.getpid()}" in line, line
    assert "serve the index with one process" in line
    record("concurrent readers", "a query while another process holds the vector store longer than "
           "FTRACE_STORE_WAIT_S (0.5 s here)", f"exit 1 after the wait: {shown(line, INDEX=index)}")


# --- bad input -----------------------------------------------------------------------------------

BAD_CORPORA = {  # name -> (file content, the line named, what the message says)
    "broken JSON": (b'{"text": "Fine."}\n{"text": \n', 2, "not valid JSON (Expecting value at column 10)"),
    "control character in a string": (b'{"text": "a\tb"}\n', 1, "not valid JSON (Invalid control character at "
                                      "column 12)"),
    "non-UTF-8 byte": (b'{"text": "Fine."}\n{"text": "caf\xe9"}\n', 2, "not UTF-8 text (byte 0xe9)"),
    "missing field (query without target)": (b'{"text": "Fine."}\n{"prompt": "Paris is in"}\n', 2,
                                             "target: Field required"),
    "neither text nor prompt": (b'{"text": "Fine."}\n{"txt": "typo"}\n', 2, "a record needs either 'text'"),
    "empty file": (b"", None, "no text records"),
    "duplicate sentence ids": (b'{"id": "a", "text": "One."}\n{"id": "a", "text": "Two."}\n', 2,
                               "duplicate id 'a' (first on line 1)"),
    "huge line (a 35 MB record)": (b'{"text": "Fine."}\n{"text": "' + b"word " * 7_000_000 + b'"}\n', 2,
                                   "line longer than 33,554,432 bytes"),
    "wrong type (text is a number)": (b'{"text": 42}\n', 1, "text: text must be a string, got int"),
    "wrong type (facts not triples)": (b'{"text": "One.", "facts": [["a", "b"]]}\n', 1, "facts.0"),
    "not an object": (b'["One."]\n', 1, "expected a JSON object, got list"),
}


@pytest.mark.slow
def test_every_bad_input_is_one_line_exit_1_and_nothing_written(tmp_path, tiny_model_dir):
    cases = {}
    for i, (name, (content, line, says)) in enumerate(BAD_CORPORA.items()):
        path = tmp_path / f"bad-{i}.jsonl"
        path.write_bytes(content)
        where = f"{path}:{line}: " if line else f"{path}: "
        cases[name] = (["--corpus", path, "--model", tiny_model_dir], where + says)
    cases["unknown Hugging Face model id"] = (["--model", "ftrace-tests/no-such-model"],
                                               "--model 'ftrace-tests/no-such-model': cannot load a Hugging Face "
                                               "causal LM (")
    t0 = time.monotonic()
    results = run_all({name: ["ingest", "--index", tmp_path / f"out-{i}", *args]
                       for i, (name, (args, _)) in enumerate(cases.items())})
    for i, (name, (rc, _, err)) in enumerate(results.items()):
        line = error_line(err)
        assert rc == 1 and cases[name][1] in line, (name, line)
        assert not (tmp_path / f"out-{i}").exists(), name
        record("bad input to `ftrace ingest`", name, f"exit 1, nothing written: {shown(line, DIR=tmp_path)}")
    # all refused before a model loads: a hub id no longer waits out transformers' retries (about 26 s)
    assert time.monotonic() - t0 < 60


@pytest.mark.slow
def test_refusals_to_change_an_index_leave_its_files_unchanged(tmp_path, sample_index, tiny_model_dir, sample):
    from ftrace.testing import make_tiny_model

    texts = [s.text for s in sample.sentences] + [f"{q.prompt} {q.target}" for q in sample.queries]
    other = make_tiny_model(tmp_path / "other-model", texts, seed=1)
    small = tmp_path / "small.jsonl"
    small.write_text('{"text": "Paris is the capital of France."}\n')
    changes = {  # what the refusal names
        "another model (same architecture, other weights)": (["--model", other, *SAME], "(model.name: index has '"),
        "other embedding layers": (["--model", tiny_model_dir, "--embed-layers", "1", "--batch-size", "16"],
                                   "(vectors.embed.layers: index has [0, 2], asked for [1]; vectors.embed.size: "
                                   "index has 64, asked for 32)"),
        "no gradient vectors": (["--model", tiny_model_dir, *SAME, "--no-tracin"],
                                "(vectors.tracin: in the index, not asked for)"),
        # (another --max-tokens also cuts this corpus's longer records into other passages: test_end_to_end's)
        "another projection size and float32 storage": (
            ["--model", tiny_model_dir, *SAME, "--tracin-dim", "64", "--float32"],
            "(vectors.tracin.config.dim: index has 4096, asked for 64; store.float16: index has True, asked for "
            "False)"),
        "another corpus": (["--model", tiny_model_dir, *SAME, "--corpus", small], "(corpus: index has '"),
    }
    copies = {}
    for i, name in enumerate(changes):
        copies[name] = tmp_path / f"copy-{i}"
        shutil.copytree(sample_index, copies[name])
    before = checksums(sample_index)
    results = run_all({name: ["ingest", "--index", copies[name], *args] for name, (args, _) in changes.items()})
    for name, (rc, _, err) in results.items():
        line = error_line(err)
        assert rc == 1 and f"{copies[name]}: holds an index built differently (" in line, line
        assert changes[name][1] in line and "{'" not in line, line  # names what differs, dumps no spec
        assert checksums(copies[name]) == before, name
        record("refusal to change an index (checksums of every file unchanged)", name,
               f"exit 1: {shown(line, INDEX=copies[name], MODEL=tiny_model_dir, OTHER_MODEL=other)}")
    rc, out, err = run(*query_args(copies["another corpus"]))
    assert rc == 0 and json.loads(out)["rows"], err[-3000:]


# --- the token budget ------------------------------------------------------------------------------

def test_the_token_budget_splits_only_batches_of_long_sentences(sample, tiny_model_dir):
    from ftrace.model import load_model

    c = IngestConfig()
    lengths = sorted(token_lengths(load_model(tiny_model_dir).tokenizer, [s.text for s in sample.sentences]))
    lengths += [c.max_tokens] * 10  # ten sentences cut to --max-tokens
    parts = budget_batches(lengths, c.batch_size, c.batch_tokens)
    assert [i for p in parts for i in range(p.start, p.stop)] == list(range(len(lengths)))  # each once, in order
    for p, after in zip(parts, parts[1:], strict=False):
        size = p.stop - p.start
        assert size * lengths[p.stop - 1] <= c.batch_tokens  # within the budget...
        assert size == c.batch_size or (size + 1) * lengths[after.start] > c.batch_tokens  # ...and as full as fits
        if lengths[p.stop - 1] <= c.batch_tokens // c.batch_size:  # up to 32 tokens: as without a budget
            assert size == c.batch_size
    per = c.batch_tokens // c.max_tokens  # long ones a batch (1024 // 256)
    assert [p.stop - p.start for p in parts[-2:]] == [per, 10 % per or per]
    assert budget_batches([5, 50, 5], 8, 20) == [slice(0, 1), slice(1, 2), slice(2, 3)]  # too long: alone


def test_past_square_from_a_batch_keeps_no_more_attention_than_a_full_batch_at_that_length():
    """Ingest's plan: up to SQUARE_FROM tokens the token budget alone; past it, examples x length² stays within
    budget x SQUARE_FROM too, and each batch is as full as both allow."""
    from ftrace.config import SQUARE_FROM
    from ftrace.ingest.pipeline import batch_plan

    c = IngestConfig()
    lengths = sorted(list(range(8, c.max_tokens + 1)) * 6)  # six sentences of every length
    plain, capped = budget_batches(lengths, c.batch_size, c.batch_tokens), batch_plan(lengths, c)
    short = [p for p in plain if lengths[p.stop - 1] <= SQUARE_FROM]
    assert capped[:len(short)] == short  # the same batches up to SQUARE_FROM tokens
    assert [i for p in capped for i in range(p.start, p.stop)] == list(range(len(lengths)))
    for p, after in zip(capped[len(short):], capped[len(short) + 1:], strict=False):
        size, width, next_width = p.stop - p.start, lengths[p.stop - 1], lengths[after.start]
        assert size * width <= c.batch_tokens and size * width**2 <= c.batch_tokens * SQUARE_FROM
        assert (size + 1) * next_width > c.batch_tokens or (size + 1) * next_width**2 > c.batch_tokens * SQUARE_FROM
    assert [p.stop - p.start for p in capped if lengths[p.start] == c.max_tokens] == [2, 2, 2]  # 256: 512 a batch


@pytest.mark.slow
def test_a_tight_token_budget_gives_the_same_vectors(tmp_path, sample_index, tiny_model_dir):
    from ftrace.ingest.pipeline import ingest

    index = tmp_path / "tight"
    ingest(IngestConfig.model_validate({"index": index, "model": tiny_model_dir, "embed": {"layers": [0, 2]},
                                        "batch_size": 16, "batch_tokens": 120}))  # 1 to 4 examples a batch
    got, clean = stored_vectors(index), stored_vectors(sample_index)
    # the batched sums and matmuls round differently in other batch shapes, by at most 1 float16 step
    for name in ("embed", "tracin"):
        np.testing.assert_allclose(got[name], clean[name], rtol=2 ** -10, atol=2 ** -24)
    differ = {name: int((got[name] != clean[name]).sum()) for name in ("embed", "tracin")}
    record("token budget per batch", "the sample ingested with --batch-tokens 120 (1-4 examples a batch) vs 16 a "
           "batch", f"{differ['embed']} of {got['embed'].size:,} embed components (idf-pooled) and {differ['tracin']} "
           f"of {got['tracin'].size:,} tracin components differ, each by at most one float16 step")
