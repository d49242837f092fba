"""docker/compose.yaml (a 3-node Qdrant cluster and `ftrace serve`) cannot be started here (no Docker): it is
parsed and its wiring checked; the collection layout it asks for goes through qdrant-client's local mode,
which takes the same calls as a server."""

import importlib.util
import re
from pathlib import Path

import pytest
import yaml
from qdrant_client import QdrantClient
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


def hosts_named(value) -> set[str]:
    """The hosts of every http:// URL in a compose value (strings, lists, dicts)."""
    if isinstance(value, dict):
        return set().union(*map(hosts_named, value.values())) if value else set()
    if isinstance(value, list):
        return set().union(*map(hosts_named, value)) if value else set()
    return set(re.findall(r"http://([\w.-]+):\d+", str(value)))


def test_compose_wiring_is_consistent(compose):
    """What a typo would break, checked from the file's own structure: every URL, dependency and volume names
    something the file defines; the cluster's peers form one cluster (each announces the P2P URL the others
    bootstrap from, on the P2P port it enables)."""
    services, volumes = compose["services"], set(compose.get("volumes") or {})
    for name, svc in services.items():
        assert hosts_named(svc) <= set(services), (name, hosts_named(svc) - set(services))
        assert set(svc.get("depends_on") or ()) <= set(services), name
        for v in svc.get("volumes") or ():
            source = v.split(":")[0]
            assert source.startswith((".", "/")) or source in volumes, (name, v)
    peers = {n: s for n, s in services.items() if "QDRANT__CLUSTER__ENABLED" in (s.get("environment") or {})}
    assert len(peers) >= 3  # a cluster that survives losing a node with 2 replicas
    port = {n: str(s["environment"].get("QDRANT__CLUSTER__P2P__PORT", 6335)) for n, s in peers.items()}
    announced = {}
    for name, node in peers.items():
        assert node["environment"]["QDRANT__CLUSTER__ENABLED"] == "true"
        cmd = node["command"]
        announced[name] = cmd[cmd.index("--uri") + 1]
        assert announced[name] == f"http://{name}:{port[name]}", name  # reachable by the others, as itself
    roots = [n for n, node in peers.items() if "--bootstrap" not in node["command"]]
    assert len(roots) == 1, roots  # one node starts the cluster, every other joins it
    for name, node in peers.items():
        if name != roots[0]:
            cmd = node["command"]
            assert cmd[cmd.index("--bootstrap") + 1] == announced[roots[0]] and roots[0] in node["depends_on"]


def test_compose_ingests_into_the_cluster_then_serves(compose, monkeypatch):
    services = compose["services"]
    ingest, serve = services["ingest"], services["serve"]
    wait = ingest["entrypoint"]
    assert wait[1] == "/opt/ftrace/docker/wait-for-cluster.py" and wait[2:6] == ["http://qdrant-0:6333", "3", "--",
                                                                                  "ftrace"]
    assert "COPY docker/wait-for-cluster.py" in (DOCKER / "Dockerfile").read_text()
    seen = []  # the compose file's ingest options, through ftrace's own parser
    monkeypatch.setattr(pipeline, "ingest", lambda config: seen.append(config))
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


def test_the_collection_layout_reaches_qdrant_and_the_manifest(tmp_path, tiny_model_dir, monkeypatch):
    store = ClientStore("c", path=tmp_path / "q")
    store.create({"embed": 32}, True, shard_number=6, replication_factor=2)  # the call a server gets
    assert store.exists()
    store.create({"embed": 32}, True)  # a second shard process racing to create it: no error
    store.close()
    sent = []  # what `ftrace ingest --qdrant-shards 6 --qdrant-replicas 2` asks of Qdrant (local mode ignores it)
    real = QdrantClient.create_collection
    monkeypatch.setattr(QdrantClient, "create_collection",
                        lambda self, name, **kw: sent.append((name, kw)) or real(self, name, **kw))
    index = tmp_path / "idx"
    r = cli("ingest", "--index", index, "--model", tiny_model_dir, "--no-tracin", "--qdrant", "local",
            "--qdrant-shards", "6", "--qdrant-replicas", "2")
    assert r.exit_code == 0, r.output
    [(name, kw)] = sent
    assert name == "ftrace" and (kw["shard_number"], kw["replication_factor"]) == (6, 2)
    assert kw["vectors_config"]["embed"].size == 32 and kw["vectors_config"]["embed"].datatype.value == "float16"
    m = Manifest.read(index)
    assert (m.store.shard_number, m.store.replication_factor) == (6, 2) and "shard_number" not in m.identity()["store"]
    r = cli("ingest", "--index", tmp_path / "edge", "--model", tiny_model_dir, "--qdrant-shards", "2")
    assert r.exit_code == 1 and "--qdrant-shards/--qdrant-replicas set a Qdrant server's collection layout" in r.output
    assert not (tmp_path / "edge").exists()
