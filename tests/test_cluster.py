"""docker/compose.yaml (a 3-node Qdrant cluster and `ftrace serve`) cannot be started here (no Docker): it is
parsed and its wiring checked; the collection layout it asks for goes through qdrant-client's local mode,
which takes the same calls as a server."""

import importlib.util
from pathlib import Path

import pytest
import yaml
from typer.testing import CliRunner

import ftrace.ingest.pipeline as pipeline
from ftrace.cli import app
from ftrace.index.manifest import Manifest
from ftrace.index.vectors import ClientStore

DOCKER = Path(__file__).resolve().parents[1] / "docker"


def cli(*args):
    return CliRunner().invoke(app, [str(a) for a in args])


@pytest.fixture(scope="module")
def compose():
    return yaml.safe_load((DOCKER / "compose.yaml").read_text())


def test_compose_runs_a_three_node_cluster(compose):
    services = compose["services"]
    nodes = sorted(s for s in services if s.startswith("qdrant-"))
    assert nodes == ["qdrant-0", "qdrant-1", "qdrant-2"]
    for i, name in enumerate(nodes):
        node = services[name]
        assert node["environment"]["QDRANT__CLUSTER__ENABLED"] == "true"
        assert node["image"].startswith("qdrant/qdrant:v")
        cmd = node["command"]
        assert cmd[cmd.index("--uri") + 1] == f"http://{name}:6335"  # how the others reach this peer
        if i:
            assert cmd[cmd.index("--bootstrap") + 1] == "http://qdrant-0:6335" and node["depends_on"] == ["qdrant-0"]
        assert node["volumes"] == [f"{name}:/qdrant/storage"] and name in compose["volumes"]


def test_compose_ingests_into_the_cluster_then_serves(compose, monkeypatch):
    services = compose["services"]
    ingest, serve = services["ingest"], services["serve"]
    wait = ingest["entrypoint"]
    assert wait[1] == "/opt/ftrace/docker/wait-for-cluster.py" and wait[2:6] == ["http://qdrant-0:6333", "3", "--",
                                                                                  "ftrace"]
    assert "COPY docker/wait-for-cluster.py" in (DOCKER / "Dockerfile").read_text()
    seen = []  # the compose file's ingest options, through ftrace's own parser
    monkeypatch.setattr(pipeline, "ingest", lambda config, corpus: seen.append(config))
    r = cli(*ingest["command"])
    assert r.exit_code == 0, r.output
    [c] = seen
    assert c.store.backend == "remote" and c.store.url == "http://qdrant-0:6333"
    assert (c.store.shard_number, c.store.replication_factor) == (6, 2)
    assert serve["command"][:3] == ["serve", "--index", str(c.index)]
    assert serve["depends_on"] == {"ingest": {"condition": "service_completed_successfully"}}
    assert serve["command"][serve["command"].index("--host") + 1] == "0.0.0.0"


def test_the_cluster_wait_counts_joined_peers():
    spec = importlib.util.spec_from_file_location("wait_for_cluster", DOCKER / "wait-for-cluster.py")
    assert spec and spec.loader
    wait = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(wait)
    answer = {"result": {"status": "enabled", "peer_id": 7, "peers": {"7": {"uri": "http://qdrant-0:6335/"},
                                                                      "9": {"uri": "http://qdrant-1:6335/"}}},
              "status": "ok"}
    assert wait.peers(answer) == 2
    assert wait.peers({"result": {"status": "disabled"}, "status": "ok"}) == 0


def test_the_collection_layout_reaches_qdrant_and_the_manifest(tmp_path, tiny_model_dir):
    store = ClientStore("c", path=tmp_path / "q")
    params = store.collection_params({"embed": 32}, True, shard_number=6, replication_factor=2)
    assert (params["shard_number"], params["replication_factor"]) == (6, 2)
    store.create({"embed": 32}, True, shard_number=6, replication_factor=2)  # the call a server gets
    assert store.exists()
    store.create({"embed": 32}, True)  # a second shard process racing to create it: no error
    store.close()
    index = tmp_path / "idx"
    r = cli("ingest", "--index", index, "--model", tiny_model_dir, "--no-tracin", "--qdrant", "local",
            "--qdrant-shards", "6", "--qdrant-replicas", "2")
    assert r.exit_code == 0, r.output
    m = Manifest.read(index)
    assert (m.store.shard_number, m.store.replication_factor) == (6, 2) and "shard_number" not in m.identity()["store"]
    r = cli("ingest", "--index", tmp_path / "edge", "--model", tiny_model_dir, "--qdrant-shards", "2")
    assert r.exit_code == 1 and "--qdrant-shards/--qdrant-replicas set a Qdrant server's collection layout" in r.output
    assert not (tmp_path / "edge").exists()
