"""`ftrace serve`: a real uvicorn server (the CLI in a subprocess) over a copy of the tiny-model sample
index, real HTTP, real Qdrant Edge and Lucene, and the explorer page in headless Chromium."""

import html
import json
import shutil
import socket
import subprocess
import time
import urllib.error
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from http.client import HTTPConnection
from pathlib import Path
from urllib.parse import urlencode, urlsplit

import pytest
from typer.testing import CliRunner

from ftrace.cli import app
from ftrace.index.locks import serving
from ftrace.testing import cli_imports, record, start_server

pytestmark = pytest.mark.slow  # real processes, servers or the real model: the full tier

ROOT = Path(__file__).resolve().parents[1]
AVANZA = "Toyota Avanza is produced by"
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
runner = CliRunner()


def http(url, body=None):
    """(status, parsed JSON, headers) of a GET, or of a POST of `body` (a dict, or raw bytes)."""
    data = body if isinstance(body, bytes) or body is None else json.dumps(body).encode()
    req = urllib.request.Request(url, data=data, headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(req, timeout=60) as r:
            return r.status, json.loads(r.read()), r.headers
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read()), e.headers


@pytest.fixture(scope="module")
def server(tmp_path_factory, sample_index):
    index = tmp_path_factory.mktemp("serve") / "idx"
    shutil.copytree(sample_index, index)  # the original stays free for `ftrace query` to compare with
    env = {"OMP_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false", "PYTHONPATH": str(ROOT)}
    served = start_server(index, index.parent / "serve.log", "--device", "cpu", env=env)
    yield served
    served.stop()


def cli_query(index, body):
    """`ftrace query --json` with the options of a /trace body."""
    args = ["query", body["prompt"], "--index", str(index), "--json", "--device", "cpu"]
    for key, value in body.items():
        if key != "prompt":
            args += [f"--{key.replace('_', '-')}", str(value)]
    r = runner.invoke(app, args)
    assert r.exit_code == 0, r.output
    return json.loads(r.output)


def same_result(a, b):
    """Equal JSON, scores up to float rounding (two processes may sum in another order)."""
    assert {k: v for k, v in a.items() if k != "rows"} == {k: v for k, v in b.items() if k != "rows"}
    assert [(r["rank"], r["sentence_id"], r["proponent"], r["text"]) for r in a["rows"]] == \
        [(r["rank"], r["sentence_id"], r["proponent"], r["text"]) for r in b["rows"]]
    for x, y in zip(a["rows"], b["rows"], strict=True):
        assert x["score"] == pytest.approx(y["score"], abs=1e-5)
        assert x["scores"] == pytest.approx(y["scores"], abs=1e-5, nan_ok=True)


BODIES = [
    {"prompt": AVANZA, "target": "Toyota"},
    {"prompt": AVANZA, "target": "Toyota", "method": "tracin+bm25", "fusion": "rrf", "weight": 0.3, "k": 5},
    {"prompt": AVANZA, "method": "embed", "k": 4},  # the model's answer
    {"prompt": "The Eiffel Tower is located in", "target": "Paris", "method": "bm25+tracin", "fusion": "cascade",
     "cascade_k": 5, "depth": 30},
]


def test_health_and_info(server, sample_index):
    assert http(f"{server.url}/health")[:2] == (200, {"status": "ok", "index": str(server.index)})
    status, info, _ = http(f"{server.url}/info")
    assert status == 200
    r = runner.invoke(app, ["info", "--index", str(sample_index)])
    expected = json.loads(r.output)
    assert {k: v for k, v in info.items() if k not in ("status", "serve")} == \
        {k: v for k, v in expected.items() if k != "status"}
    for key in ("complete", "points", "bm25_documents", "examples_expected"):
        assert info["status"][key] == expected["status"][key]
    assert info["serve"]["methods"] == ["bm25", "embed", "tracin"] and info["serve"]["device"] == "cpu"
    assert info["serve"]["url"] == server.url and info["serve"]["pid"] == server.proc.pid
    status, docs, _ = http(f"{server.url}/openapi.json")
    assert status == 200 and {"/trace", "/info", "/health"} <= set(docs["paths"])
    fields = docs["components"]["schemas"]["TraceRequest"]["properties"]
    assert set(fields) == {"prompt", "target", "k", "method", "fusion", "weight", "cascade_k", "depth"}


@pytest.mark.parametrize("body", BODIES, ids=["default", "rrf", "model-answer", "cascade"])
def test_trace_matches_query_json(server, sample_index, body):
    status, out, headers = http(f"{server.url}/trace", body)
    assert status == 200, out
    same_result(out, cli_query(sample_index, body))
    timing = dict(part.split(";dur=") for part in headers["Server-Timing"].split(", "))
    assert float(timing["total"]) > 0 and ("bm25" in timing) == ("bm25" in out["method"])
    assert ("answer" in timing) == ("target" not in body)


@pytest.mark.parametrize("body, status, message", [
    ({"target": "Toyota"}, 422, "prompt: Field required"),
    ({"prompt": AVANZA, "method": "bm26"}, 400, "method 'bm26': this index has ['bm25', 'embed', 'tracin']"),
    ({"prompt": AVANZA, "weight": 2}, 422, "weight 2: Input should be less than or equal to 1"),
    ({"prompt": AVANZA, "weight": "heavy"}, 422, "weight 'heavy': Input should be a valid number"),
    ({"prompt": AVANZA, "k": 0}, 422, "k 0: Input should be greater than or equal to 1"),
    ({"prompt": AVANZA, "fusion": "max"}, 422, "fusion 'max': Input should be 'sum', 'rrf' or 'cascade'"),
    ({"prompt": AVANZA, "index": "/etc"}, 422, "index: not an option of this request"),
    ({"prompt": "  "}, 422, "prompt '  ': blank"),
    (b"{not json", 422, "request body: not valid JSON"),
    (b"", 422, "request body: Field required"),
])
def test_bad_requests_get_one_line_4xx(server, body, status, message):
    got, out, _ = http(f"{server.url}/trace", body)
    assert got == status and message in out["detail"] and "\n" not in out["detail"], out


def test_concurrent_requests_are_answered_consistently(server):
    bodies = BODIES[:2] * 4  # 8 at once, two different queries interleaved
    alone = [http(f"{server.url}/trace", b)[1] for b in BODIES[:2]]
    with ThreadPoolExecutor(len(bodies)) as pool:
        results = list(pool.map(lambda b: http(f"{server.url}/trace", b), bodies))
    assert all(status == 200 for status, _, _ in results), [r[1] for r in results if r[0] != 200]
    for i, (_, out, _) in enumerate(results):
        assert out == alone[i % 2]  # one process, one thread: bit-identical to the same query alone
    assert http(f"{server.url}/health")[0] == 200


def test_a_huge_prompt_is_cut_and_does_not_hold_the_server(server):
    """A 5,000-word prompt keeps its last --max-tokens tokens, for the answer as for the vectors, so a small
    request sent beside it is answered within a second or two; a body over 64 KiB is refused in one line."""
    huge = {"prompt": " ".join(["the city of"] * 1700) + " " + AVANZA, "method": "tracin+bm25"}  # model answer
    small = {"prompt": AVANZA, "target": "Toyota", "method": "bm25"}
    with ThreadPoolExecutor(2) as pool:
        first = pool.submit(lambda: http(f"{server.url}/trace", huge))
        time.sleep(0.05)
        started = time.monotonic()
        status, out, _ = pool.submit(lambda: http(f"{server.url}/trace", small)).result()
        waited = time.monotonic() - started
        big_status, big, headers = first.result()
    assert status == 200 and waited < 2.0, (status, waited)
    assert big_status == 200 and "the model saw only its end" in big["note"], big
    timing = dict(part.split(";dur=") for part in headers["Server-Timing"].split(", "))
    assert float(timing["answer"]) < 2000  # milliseconds: the answer was generated from the cut prompt
    record("bounded requests to `ftrace serve`", "a 5,100-word prompt (model answer), a small request 50 ms later",
           f"both 200; the small one answered in {waited:.2f} s; the big one's answer took "
           f"{float(timing['answer']):.0f} ms: `` {big['note']} ``")
    status, out, _ = http(f"{server.url}/trace", {"prompt": "x" * 70_000})
    assert status == 413 and out["detail"].startswith("request body: 70,0") and "\n" not in out["detail"]
    record("bounded requests to `ftrace serve`", "a 70 KB body", f"{status}: `` {out['detail']} ``")
    url = urlsplit(server.url)
    conn = HTTPConnection(url.hostname, url.port, timeout=30)
    conn.request("POST", "/trace", body=iter([b'{"prompt": "', b"x" * 70_000, b'"}']), encode_chunked=True,
                 headers={"content-type": "application/json"})
    resp = conn.getresponse()
    detail = json.loads(resp.read())["detail"]
    conn.close()
    assert resp.status == 411 and "Content-Length" in detail and "\n" not in detail
    record("bounded requests to `ftrace serve`", "a chunked body (no Content-Length)", f"411: `` {detail} ``")


def test_a_request_over_its_time_is_answered_503_and_dropped(tmp_path, sample_index, monkeypatch):
    """--request-timeout: the client hears 503 at the limit; the worker drops the request at its next step, so the
    next request is served."""
    from fastapi.testclient import TestClient

    from ftrace.query.tracer import Tracer
    from ftrace.serve.app import create_app
    from ftrace.serve.service import Service

    real, real_retrieve, after, woke = Tracer.query_vectors, Tracer.retrieve, [], []

    def slow(self, prompt, *args, **kwargs):
        if prompt == "slow":
            time.sleep(1.5)
            woke.append(prompt)
        return real(self, prompt, *args, **kwargs)

    def retrieve(self, method, prompt, *args, **kwargs):
        after.append(prompt)  # the step after the vectors: a dropped request never gets here
        return real_retrieve(self, method, prompt, *args, **kwargs)

    monkeypatch.setattr(Tracer, "query_vectors", slow)
    monkeypatch.setattr(Tracer, "retrieve", retrieve)
    index = tmp_path / "idx"
    shutil.copytree(sample_index, index)
    service = Service(index, "cpu", "http://testserver")
    try:
        client = TestClient(create_app(service, timeout=1.0))
        started = time.monotonic()
        r = client.post("/trace", json={"prompt": "slow", "target": "Toyota", "method": "tracin"})
        assert r.status_code == 503 and "longer than 1 s (--request-timeout)" in r.json()["detail"]
        took, r_slow = time.monotonic() - started, r.json()["detail"]
        # at the deadline, not before it, and while the slow work (1.5 s of sleep, then the vectors) was still
        # asleep: orderings, which hold however busy the machine is
        assert took > 0.9 and not woke
        r = client.post("/trace", json={"prompt": AVANZA, "target": "Toyota", "method": "tracin", "k": 3})
        assert r.status_code == 200 and len(r.json()["rows"]) == 3, r.json()
        assert "slow" not in after and AVANZA in after  # the slow one was dropped at its next step
        assert service.tracer.deadline is None
        record("bounded requests to `ftrace serve`", "a request whose query vectors take 1.5 s, --request-timeout 1",
               f"503 after {took:.2f} s: `` {r_slow} ``; the next request: 200 (the worker had dropped the slow one)")
    finally:
        service.close()


def test_a_served_index_refuses_a_second_server_at_once(server):
    started = time.monotonic()
    r = runner.invoke(app, ["serve", "--index", str(server.index), "--port", "0"])
    assert r.exit_code == 1 and len(r.output.strip().splitlines()) == 1, r.output
    assert f"is served by `ftrace serve` (pid {server.proc.pid}) at {server.url}" in r.output, r.output
    assert time.monotonic() - started < 10  # at once, not after the store lock's wait


def test_query_and_info_on_a_served_index_ask_the_server(server, sample_index):
    """`ftrace query` on a served index is the server's /trace, in a process that loads no model and starts no
    JVM (no torch, transformers or jnius imported); `ftrace info` is its /info."""
    body = BODIES[1]
    args = ["query", body["prompt"], "--index", str(server.index), "--json", "--target", body["target"],
            "--method", body["method"], "--fusion", body["fusion"], "--weight", str(body["weight"]), "--k", "5",
            "--device", "cpu", "--dtype", "float32"]  # as the server runs: asked, not refused
    p, heavy = cli_imports(args, ROOT, {"PYTHONPATH": str(ROOT), "PATH": "/usr/bin:/bin"})
    assert p.returncode == 0, p.stderr[-3000:]
    same_result(json.loads(p.stdout), cli_query(sample_index, body))
    assert f"{server.index}: is served by `ftrace serve` (pid {server.proc.pid}) at {server.url}: it answered" \
        in p.stderr
    assert heavy == [], heavy
    # the model's own answer, in this process as a user runs it, and rendered for people
    r = runner.invoke(app, ["query", AVANZA, "--index", str(server.index), "--json", "--method", "embed"])
    assert r.exit_code == 0, r.output
    assert json.loads(r.stdout) == http(f"{server.url}/trace", {"prompt": AVANZA, "method": "embed"})[1]
    r = runner.invoke(app, ["query", AVANZA, "--index", str(server.index), "--method", "embed+bm25", "--k", "30"])
    assert r.exit_code == 0 and "prompt: 'Toyota Avanza is produced by'" in r.stdout, r.output
    r = runner.invoke(app, ["info", "--index", str(server.index)])
    assert r.exit_code == 0, r.output
    info = json.loads(r.stdout)
    assert info["serve"]["url"] == server.url and info["serve"]["pid"] == server.proc.pid
    assert info["status"]["complete"]


@pytest.mark.parametrize("extra, message", [
    (["--method", "bm26"], "{where}, which answered 400: --method 'bm26': this index has ['bm25', 'embed', 'tracin']"),
    (["--dtype", "bfloat16"], "--dtype bfloat16: {where}, in float32; ask it with --dtype float32, or stop it"),
    (["--device", "cuda"], "--device cuda: {where}, on cpu; ask it without --device, or stop it"),
    (["--model", "gpt2"], "{index}: built with model"),
    (["--k", "0"], "--k 0: "),  # the options' own checks come first, as without a server
])
def test_a_query_the_server_would_answer_otherwise_fails_in_one_line(server, extra, message):
    r = runner.invoke(app, ["query", AVANZA, "--index", str(server.index), "--target", "Toyota", *extra])
    where = f"{server.index}: is served by `ftrace serve` (pid {server.proc.pid}) at {server.url}"
    assert r.exit_code != 0 and message.format(index=server.index, where=where) in r.output, r.output
    assert len(r.output.strip().splitlines()) == 1, r.output


def test_a_query_waits_for_a_starting_server_then_says_why_it_failed(sample_index, tmp_path, monkeypatch):
    """A server holds the index before it listens (its model loads meanwhile): a query waits for it, up to
    FTRACE_STORE_WAIT_S, and says so; one that stops before answering is reported as stopped. The lock and the
    socket are real; the server is this test, which never listens."""
    index = tmp_path / "idx"
    shutil.copytree(sample_index, index)
    monkeypatch.setenv("FTRACE_STORE_WAIT_S", "1")
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))  # bound, not listening: connections are refused, as while a server starts
        url = f"http://127.0.0.1:{sock.getsockname()[1]}"
        with serving(index, url, "cpu", "float32"):
            started = time.monotonic()
            r = runner.invoke(app, ["query", AVANZA, "--index", str(index), "--target", "Toyota"])
            took = time.monotonic() - started
        assert r.exit_code == 1 and 1 <= took < 10, (took, r.output)
        assert "which is starting: waiting for it" in r.stderr, r.output
        assert "which is still starting after 1 s (FTRACE_STORE_WAIT_S)" in r.stderr, r.output
        with ThreadPoolExecutor(1) as pool, serving(index, url, "cpu", "float32") as _:
            asked = pool.submit(runner.invoke, app, ["info", "--index", str(index)])
            time.sleep(0.5)
        # the lock is released (the server stopped) while the query waits
        r = asked.result()
    assert r.exit_code == 1 and "which stopped before answering; run the command again" in r.output, r.output


def test_serve_refusals(server, tmp_path):
    port = server.url.rsplit(":", 1)[1]
    for args, message in ((["--index", str(tmp_path / "none"), "--port", "0"], "not an ftrace index"),
                          (["--index", str(server.index), "--port", port], f"--port {port}: cannot listen there"),
                          (["--port", "70000"], "--port 70000: Input should be less than or equal to 65535")):
        r = runner.invoke(app, ["serve", *args])
        assert r.exit_code == 1 and message in r.output and len(r.output.strip().splitlines()) == 1, r.output


def chromium(tmp_path, url, *flags):
    """Headless Chromium on `url`, virtual time running until the page's fetches are done."""
    r = subprocess.run([CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars",
                        f"--user-data-dir={tmp_path / 'chromium-profile'}", "--virtual-time-budget=20000",
                        "--window-size=1280,900", *flags, url], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr[-2000:]
    return r.stdout


@pytest.mark.skipif(CHROMIUM is None, reason="chromium not found: `apt-get install chromium` (Debian), which "
                                             "`bash scripts/install.sh --test` does as root where apt is available")
def test_explorer_page_renders_results_in_chromium(server, tmp_path):
    import matplotlib.image

    body = {"prompt": AVANZA, "target": "Toyota", "method": "embed+bm25", "k": 6}
    expected = http(f"{server.url}/trace", body)[1]
    page = f"{server.url}/?{urlencode(body)}"
    dom = chromium(tmp_path, page, "--dump-dom")
    assert 'data-state="done"' in dom, dom[-3000:]
    assert '<span id="answer">Toyota</span>' in dom
    ids = [chunk.split('"', 1)[0] for chunk in dom.split('data-sentence-id="')[1:]]
    assert ids == [r["sentence_id"] for r in expected["rows"]]
    for row in expected["rows"]:
        assert row["text"] in dom
    assert dom.count('class="proponent-mark"') == sum(bool(r["proponent"]) for r in expected["rows"]) > 0
    for bar in ("fused", "bm25", "embed"):
        assert dom.count(f'class="bar" data-method="{bar}"') == len(expected["rows"])

    shot = tmp_path / "explorer.png"
    chromium(tmp_path, page, f"--screenshot={shot}")
    pixels = matplotlib.image.imread(shot)[..., :3]
    assert pixels.shape[:2] == (900, 1280)
    accent = (abs(pixels - [0x2F / 255, 0x6F / 255, 0xB0 / 255]).max(axis=-1) < 0.02).sum()
    assert accent > 2000, f"{shot}: the fused score bars (and the button) are missing"  # drawn, not just in the DOM

    dom = chromium(tmp_path, f"{server.url}/?{urlencode({'prompt': AVANZA, 'k': 0})}", "--dump-dom")
    assert 'data-state="error"' in dom and "k 0: Input should be greater than or equal to 1" in dom


def test_stopping_the_server_frees_the_index(server):
    # uvicorn's graceful shutdown closes the service, then re-raises SIGTERM: one line, exit 128 + 15
    assert server.stop() == 143
    assert server.log.read_text().strip().splitlines()[-1] == "interrupted (SIGTERM)"
    assert f"closed {server.index}" in server.log.read_text(), server.log.read_text()[-3000:]
    r = runner.invoke(app, ["query", AVANZA, "--index", str(server.index), "--target", "Toyota", "--json"])
    assert r.exit_code == 0 and json.loads(r.output)["rows"], r.output


@pytest.mark.skipif(CHROMIUM is None, reason="chromium not found: `apt-get install chromium` (Debian), which "
                                             "`bash scripts/install.sh --test` does as root where apt is available")
def test_the_explorer_shows_a_passage_in_its_document(tmp_path, sample, tiny_model_dir):
    """A hit of a document corpus: its document and character span, and the document's text around it (from its
    neighbouring passages), the passage highlighted."""
    records = [{"id": f"doc-{i}", "text": " ".join(s.text for s in sample.sentences[i:i + 25])} for i in (0, 25)]
    corpus = tmp_path / "docs.jsonl"
    corpus.write_text("".join(json.dumps(r) + "\n" for r in records))
    index = tmp_path / "idx"
    r = runner.invoke(app, ["ingest", "--index", str(index), "--corpus", str(corpus), "--model", tiny_model_dir,
                            "--passage-tokens", "64", "--no-tracin"])
    assert r.exit_code == 0, r.output
    served = start_server(index, tmp_path / "serve.log", "--device", "cpu",
                          env={"OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)})
    try:
        body = {"prompt": AVANZA, "target": "Toyota", "method": "bm25", "k": 3}
        rows = http(f"{served.url}/trace", body)[1]["rows"]
        dom = chromium(tmp_path, f"{served.url}/?{urlencode(body)}", "--dump-dom")
    finally:
        served.stop()
    assert 'data-state="done"' in dom and ">passage</th>" in dom, dom[-3000:]
    for row in rows:
        start, end = row["span"]
        assert f"{row['document']} · characters {start}–{end}" in dom
        assert html.escape(row["text"], quote=False) in dom.split(f'data-sentence-id="{row["sentence_id"]}"')[1]
    assert dom.count("<mark>") == len(rows) and "<details>" in dom
