"""Bad selections are refused, not run (issue 16): each in one line on stderr (`error: ...`), exit status 1, before
any model work, naming the option (over HTTP: the JSON field). And what `ftrace train` says, and refuses, about
the disk its checkpoints take."""

import json
import shutil
from collections import namedtuple
from types import SimpleNamespace

import pytest
import torch
from typer.testing import CliRunner

from ftrace.cli import app
from ftrace.config import BenchConfig, IngestConfig, QueryConfig, ServeConfig, TrainConfig
from ftrace.corpus import CorpusError, load_corpus
from ftrace.index.locks import IndexPathError, reading, writer
from ftrace.options import config_options

runner = CliRunner()
AVANZA = "Toyota Avanza is produced by"


def cli(*args):
    return runner.invoke(app, [str(a) for a in args])


def refused(r, *messages: str) -> str:
    """Exit status 1, nothing on stdout, one line on stderr: `error: ...` holding each of `messages`."""
    lines = r.stderr.strip().splitlines()
    assert r.exit_code == 1 and len(lines) == 1 and lines[0].startswith("error: "), (r.exit_code, r.output)
    assert not r.stdout.strip(), r.output
    for m in messages:
        assert m in lines[0], (m, lines[0])
    return lines[0]


# --- 1. --limit below 1 -------------------------------------------------------------------------------

@pytest.mark.parametrize("limit", ["0", "-1"])
def test_limit_below_one_is_refused(tmp_path, limit):
    r = cli("ingest", "--index", tmp_path / "idx", "--limit", limit)
    refused(r, f"--limit {limit}: Input should be greater than or equal to 1")
    r = cli("train", "--corpus", "sample", "--out", tmp_path / "run", "--limit", limit)
    refused(r, f"--limit {limit}: Input should be greater than or equal to 1")
    assert not any(tmp_path.iterdir())  # no "complete" empty index, no run


# --- 2. LAMA selections on other corpora -------------------------------------------------------------

@pytest.fixture
def corpora(tmp_path):
    """A plain jsonl corpus, a raw T-REx file and a small LAMA T-REx directory."""
    plain = tmp_path / "plain.jsonl"
    plain.write_text('{"text": "Toyota Avanza is produced by Toyota."}\n')
    trex = tmp_path / "docs.json"
    trex.write_text(json.dumps([{"docid": "d", "text": "Paris is in France.", "sentences_boundaries": [[0, 19]],
                                 "triples": []}]))
    lama = tmp_path / "lama"
    (lama / "P1").mkdir(parents=True)
    (lama / "relations.jsonl").write_text('{"relation": "P1", "template": "[X] is produced by [Y] ."}\n')
    (lama / "P1" / "dev.jsonl").write_text(json.dumps({
        "sub_label": "Toyota Avanza", "obj_label": "Toyota", "predicate_id": "P1",
        "evidences": [{"obj_surface": "Toyota", "masked_sentence": "Toyota Avanza is made by [MASK]."}]}) + "\n")
    return {"sample": "sample", "plain": str(plain), "trex": str(trex), "lama": str(lama)}


KINDS = {"sample": "is a corpus of records", "plain": "is a corpus of records",
         "trex": "is a raw T-REx file"}


@pytest.mark.parametrize("kind", list(KINDS))
@pytest.mark.parametrize("option, value", [("--relation", "P176"), ("--split", "dev"), ("--limit", "5")])
def test_lama_selection_of_another_corpus_is_refused(tmp_path, corpora, kind, option, value):
    spec = corpora[kind]
    r = cli("ingest", "--index", tmp_path / "idx", "--corpus", spec, option, value)
    refused(r, f"{option} {value}: the corpus {spec!r} {KINDS[kind]}; --relation, --split and --limit select facts "
               "of a LAMA T-REx directory")
    r = cli("train", "--corpus", spec, "--out", tmp_path / "run", option, value)
    refused(r, f"{option} {value}: the corpus {spec!r} {KINDS[kind]}")
    assert not (tmp_path / "idx").exists() and not (tmp_path / "run").exists()


def test_lama_selection_is_checked_by_load_corpus(corpora):
    for kind in KINDS:
        with pytest.raises(CorpusError, match="--relation P1,P2: the corpus"):
            load_corpus(corpora[kind], relations=["P1", "P2"])
    # all three splits are the default: giving them is no selection
    assert load_corpus("sample", splits=["train", "dev", "test"]).sentences
    lama = load_corpus(corpora["lama"], relations=["P1"], splits=["dev"], limit=1)
    assert [q.target for q in lama.queries] == ["Toyota"] and len(lama.sentences) == 1
    # a LAMA selection holding nothing is refused, not built into an empty index
    with pytest.raises(CorpusError, match="relation.s. P1, split.s. test: no evidence sentences selected"):
        load_corpus(corpora["lama"], relations=["P1"], splits=["test"])


def test_empty_lama_selection_is_refused_in_one_line(tmp_path, corpora):
    r = cli("ingest", "--index", tmp_path / "idx", "--corpus", corpora["lama"], "--split", "test")
    refused(r, "no evidence sentences selected")
    r = cli("ingest", "--index", tmp_path / "idx", "--corpus", corpora["lama"], "--split", ",")
    refused(r, "--split")
    assert not (tmp_path / "idx").exists()


# --- 3. --index naming a file ------------------------------------------------------------------------

def test_ingest_into_a_file_is_refused(tmp_path):
    file = tmp_path / "index.txt"
    file.write_text("mine")
    refused(cli("ingest", "--index", file), f"--index {file}: is a file")
    refused(cli("ingest", "--index", file / "sub"), f"--index {file / 'sub'}: lies under {file}, which is a file")
    refused(cli("ingest", "--index", file, "--shard", "0/2"), "is a file")
    assert file.read_text() == "mine" and sorted(p.name for p in tmp_path.iterdir()) == ["index.txt"]
    # where ftrace writes or reads an index, whoever calls it
    for path in (file, file / "sub"):
        with pytest.raises(IndexPathError, match="--index takes a directory"), writer(path):
            pass
        with pytest.raises(IndexPathError, match="--index takes a directory"):
            reading(path)


@pytest.mark.parametrize("command", [["query", AVANZA], ["info"], ["bench"], ["serve", "--port", "0"]])
def test_readers_of_a_file_are_refused(tmp_path, command):
    file = tmp_path / "index.txt"
    file.write_text("mine")
    refused(cli(*command, "--index", file), f"{file}: is a file; --index takes a directory")


# --- 4. lower bounds: one line and exit 1, as every other bad value ------------------------------------

COMMANDS = {"ingest": (IngestConfig, []), "query": (QueryConfig, [AVANZA]), "serve": (ServeConfig, []),
            "bench": (BenchConfig, ["--index", "nowhere"]), "train": (TrainConfig, [])}
BOUNDED = [(command, opt.primary, opt.mark.min) for command, (cls, _) in COMMANDS.items()
           for opt in config_options(cls) if opt.mark.min is not None]


def test_every_bounded_option_is_found():
    assert {(c, o) for c, o, _ in BOUNDED} >= {("query", "--k"), ("query", "--depth"), ("query", "--cascade-k"),
                                               ("ingest", "--limit"), ("ingest", "--batch-size"),
                                               ("ingest", "--tracin-dim"), ("ingest", "--whiten-samples"),
                                               ("bench", "--queries"), ("train", "--limit")}


@pytest.mark.parametrize("command, option, low", BOUNDED, ids=[f"{c} {o}" for c, o, _ in BOUNDED])
def test_a_value_below_the_bound_is_one_line_exit_1(tmp_path, command, option, low):
    value = int(low) - 1
    r = cli(command, *COMMANDS[command][1], option, value)
    refused(r, f"{option} {value}: Input should be greater than or equal to {low:g}")
    assert "Usage:" not in r.output


def test_a_checkpoint_selection_is_a_rule_or_steps(tmp_path):
    r = cli("ingest", "--index", tmp_path / "idx", "--checkpoint-select", "121,early")
    refused(r, "--checkpoint-select '121,early': choose all, ftrace, final, base or checkpoint steps (e.g. 121,2014)")
    assert not (tmp_path / "idx").exists()


def test_help_still_shows_the_bound():
    out = cli("query", "--help").output
    assert "Sentences to show. At least 1." in " ".join(out.split())


# --- 5. HTTP: strict numbers, messages naming JSON fields --------------------------------------------

def test_http_messages_name_the_json_fields():
    from ftrace.serve.app import http_message

    cases = {
        "--method 'bm26': this index has ['bm25', 'embed'] (and their a+b fusions), not 'bm26'":
            "method 'bm26': this index has ['bm25', 'embed'] (and their a+b fusions), not 'bm26'",
        "PROMPT '  ': blank; give the text the model completes":
            "prompt '  ': blank; give the text the model completes",
        "--target ' ': blank": "target ' ': blank",
        "--k 0: must be at least 1": "k 0: must be at least 1",
        "--depth 0: must be at least 1": "depth 0: must be at least 1",
        "--weight 2: must be within [0, 1]": "weight 2: must be within [0, 1]",
        "--fusion 'max': choose sum, rrf or cascade": "fusion 'max': choose sum, rrf or cascade",
        "--cascade-k 0: must be at least 1": "cascade_k 0: must be at least 1",
        "the model's answer to 'x' is empty; give the answer to trace with --target":
            "the model's answer to 'x' is empty; give the answer to trace with target",
        # a user's quoted value is shown as sent
        "--method '--k+bm25': a method is a single method": "method '--k+bm25': a method is a single method",
        # options a request cannot set keep their name
        "--index x: is a file": "--index x: is a file",
    }
    for cli_message, http in cases.items():
        assert http_message(cli_message) == http


def test_request_numbers_are_strict():
    from pydantic import ValidationError

    from ftrace.serve.app import TraceRequest

    for field, value in (("k", True), ("k", "5"), ("k", 5.5), ("depth", False), ("cascade_k", True),
                         ("weight", True), ("weight", "0.5")):
        with pytest.raises(ValidationError):
            TraceRequest.model_validate({"prompt": AVANZA, field: value})
    ok = TraceRequest.model_validate({"prompt": AVANZA, "k": 5, "weight": 1})  # a JSON integer is a number
    assert (ok.k, ok.weight) == (5, 1.0)


@pytest.fixture(scope="module")
def client(tmp_path_factory, sample_index):
    """The app over a warm Service on a copy of the sample index, in process."""
    from fastapi.testclient import TestClient

    from ftrace.serve.app import create_app
    from ftrace.serve.service import Service

    index = tmp_path_factory.mktemp("inputs-serve") / "idx"
    shutil.copytree(sample_index, index)
    service = Service(index, "cpu", "http://testserver")
    try:
        yield TestClient(create_app(service))
    finally:
        service.close()


@pytest.mark.parametrize("body, status, message", [
    ({"prompt": AVANZA, "k": True}, 422, "k true: Input should be a valid integer"),
    ({"prompt": AVANZA, "k": "5"}, 422, "k '5': Input should be a valid integer"),
    ({"prompt": AVANZA, "weight": True}, 422, "weight true: Input should be a valid number"),
    ({"prompt": AVANZA, "depth": False}, 422, "depth false: Input should be a valid integer"),
    ({"prompt": AVANZA, "method": "bm26"}, 400, "method 'bm26': this index has ['bm25', 'embed', 'tracin']"),
    ({"prompt": "  "}, 422, "prompt '  ': blank"),
    ({"prompt": AVANZA, "target": " "}, 422, "target ' ': blank"),
])
def test_bad_requests_name_json_fields(client, body, status, message):
    r = client.post("/trace", json=body)
    detail = r.json()["detail"]
    assert r.status_code == status and detail.startswith(message) and "\n" not in detail, r.json()
    assert "--" not in detail and "PROMPT" not in detail


def test_a_good_request_still_works(client):
    r = client.post("/trace", json={"prompt": AVANZA, "target": "Toyota", "method": "bm25", "k": 3, "weight": 1})
    assert r.status_code == 200 and len(r.json()["rows"]) == 3, r.json()


# --- 6. /docs offline ----------------------------------------------------------------------------

def test_docs_pages_load_nothing_from_the_network():
    from fastapi.testclient import TestClient

    from ftrace.serve.app import create_app

    http = TestClient(create_app(SimpleNamespace(close=lambda: None)))  # /docs does not touch the service
    for page, assets in (("/docs", ["swagger-ui-bundle.js", "swagger-ui.css", "favicon.png"]),
                         ("/redoc", ["redoc.standalone.js"])):
        r = http.get(page)
        assert r.status_code == 200 and "text/html" in r.headers["content-type"]
        assert "http://" not in r.text and "https://" not in r.text, r.text  # no CDN, no Google fonts
        for asset in assets:
            assert f'"/docs-assets/{asset}"' in r.text, r.text
            served = http.get(f"/docs-assets/{asset}")
            assert served.status_code == 200 and len(served.content) > 1000
    assert b"SwaggerUIBundle" in http.get("/docs-assets/swagger-ui-bundle.js").content
    assert "/trace" in http.get("/openapi.json").json()["paths"]


# --- 7. train: the disk its checkpoints take --------------------------------------------------------

def test_checkpoint_sizes_follow_parameters_and_dtype(tiny_model_dir):
    from ftrace.model import load_model
    from ftrace.train.checkpoints import CheckpointSizes

    model = load_model(tiny_model_dir).model
    n = sum(p.numel() for p in model.parameters())
    adamw = CheckpointSizes.of(model, torch.float32, "adamw")
    assert (adamw.weights, adamw.moments, adamw.resume) == (4 * n, 4 * n, 4 * n)
    half = CheckpointSizes.of(model, torch.bfloat16, "adamw")
    assert (half.weights, half.moments, half.resume) == (2 * n, 4 * n, 2 * n)  # moments are saved in float32
    assert CheckpointSizes.of(model, torch.float32, "adafactor").resume < n  # row and column factors only
    # step 0 (the base model) has weights only; the latest resume state and the one it replaces
    assert adamw.needed([0, 4, 8]) == 3 * 4 * n + 2 * 4 * n + 2 * 4 * n and adamw.needed([]) == 0


def train_args(tiny_model_dir, out):
    return ["train", "--corpus", "sample", "--out", out, "--model", tiny_model_dir, "--max-steps", "2",
            "--checkpoints", "1", "--batch-size", "8", "--device", "cpu"]


def test_train_says_the_disk_it_needs_and_stores_second_moments_once(tmp_path, tiny_model_dir):
    from ftrace.model import load_model
    from ftrace.runs.checkpoints import load_trainer
    from ftrace.runs.layout import MOMENTS, SHARED, TRAINER
    from ftrace.train.checkpoints import CheckpointSizes, size

    r = cli(*train_args(tiny_model_dir, tmp_path / "run"))
    assert r.exit_code == 0, r.output
    [line] = [x for x in r.stderr.splitlines() if x.startswith("disk: ")]
    needed = CheckpointSizes.of(load_model(tiny_model_dir).model, torch.float32, "adamw").needed([0, 2])
    assert line.startswith(f"disk: about {size(needed)} in {tmp_path / 'run'} for 2 checkpoints (steps 0, 2)"), line
    assert line.endswith(" free")
    # the last checkpoint's resume state holds AdamW's first moments; its second ones are exp_avg_sq.pt's
    final = tmp_path / "run" / "step-2"
    raw = torch.load(final / TRAINER, weights_only=True)
    moments = torch.load(final / MOMENTS, weights_only=True)
    assert raw[SHARED] and all("exp_avg_sq" not in s and "exp_avg" in s for s in raw["optimizer"]["state"].values())
    assert (final / TRAINER).stat().st_size < 1.5 * (final / MOMENTS).stat().st_size
    trainer = load_trainer(final)  # what resuming and tail-patch read: the full optimizer state again
    assert SHARED not in trainer
    full = trainer["optimizer"]["state"]
    assert [dtype for _, dtype in raw[SHARED].values()] == ["float32"] * len(full)
    assert all(torch.equal(full[i]["exp_avg_sq"], moments[name]) for i, (name, _) in raw[SHARED].items())


def test_former_option_names_still_work_and_runs_are_recorded(tmp_path, tiny_model_dir):
    """Renamed options (issue 17) say what replaced them and still work; train and ingest record their config,
    and `--config` runs the record again (here: already complete, nothing redone)."""
    out = tmp_path / "run"
    r = cli(*train_args(tiny_model_dir, out), "--max-length", "64", "--loss", "sentence")
    assert r.exit_code == 0, r.output
    assert "note: --max-length is now --max-tokens" in r.stderr and "note: --loss is now --example-loss" in r.stderr
    run = json.loads((out / "run.json").read_text())
    assert run["config"]["max_tokens"] == 64 and run["config"]["example_loss"] == "sentence"
    record = json.loads((out / "config.json").read_text())
    assert record["command"] == "train" and record["config"]["max_tokens"] == 64
    r = cli("train", "--config", str(out / "config.json"))
    assert r.exit_code == 0 and "already complete" in r.stderr, r.output
    r = cli(*train_args(tiny_model_dir, out), "--max-length", "64", "--max-tokens", "64")
    assert r.exit_code == 1 and "--max-length is the former name of --max-tokens; give one" in r.output, r.output

    index = tmp_path / "index"
    r = cli("ingest", "--index", str(index), "--model", tiny_model_dir, "--tracin-loss", "sentence", "--tracin-dim",
            "16", "--device", "cpu")
    assert r.exit_code == 0 and "note: --tracin-loss is now --example-loss" in r.stderr, r.output
    record = json.loads((index / "config.json").read_text())
    assert record["command"] == "ingest" and record["config"]["tracin"]["dim"] == 16
    r = cli("ingest", "--config", str(index / "config.json"))
    assert r.exit_code == 0 and "already complete" in r.stderr, r.output
    r = cli("ingest", "--index", str(tmp_path / "other"), "--checkpoints", str(out / "nothing"))
    assert r.exit_code == 1 and "note: --checkpoints is now --train-run" in r.stderr, r.output


def test_train_refuses_a_disk_without_room(tmp_path, tiny_model_dir, monkeypatch):
    Usage = namedtuple("Usage", "total used free")
    monkeypatch.setattr(shutil, "disk_usage", lambda path: Usage(10**12, 10**12 - 1000, 1000))
    r = cli(*train_args(tiny_model_dir, tmp_path / "run"))
    refused(r, f"{tmp_path / 'run'}: needs about", "for 2 checkpoints (steps 0, 2)", "only 1 kB is free there")
    assert not (tmp_path / "run").exists()  # nothing written


# --- --threads: the model's threads, refused below 1, in no record ------------------------------------

@pytest.mark.parametrize("command", ["ingest", "query", "serve", "bench", "train"])
def test_threads_below_one_is_refused(tmp_path, command):
    args = [AVANZA] if command == "query" else []
    refused(cli(command, "--index", tmp_path / "idx", "--threads", "0", *args), "--threads 0: ")
    assert not any(tmp_path.iterdir())


def test_threads_set_the_model_threads_and_stay_out_of_records(sample_index):
    before = torch.get_num_threads()
    try:
        r = cli("query", "--index", sample_index, "--threads", "1", "--method", "embed", "--target", "Toyota", AVANZA)
        assert r.exit_code == 0, r.output
        assert torch.get_num_threads() == 1
    finally:
        torch.set_num_threads(before)
    assert "threads" not in QueryConfig(prompt=AVANZA, threads=2).model_dump()
    assert all(cls.model_fields["threads"].exclude for cls in (IngestConfig, ServeConfig, BenchConfig, TrainConfig))
