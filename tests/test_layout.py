"""The package's shape: which layer may import which (ruff and mypy run from .ci/run)."""

import ast
import re
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "ftrace"

# layer -> the ftrace layers it may import (besides ftrace itself and the top-level modules every layer may use:
# ftrace.config, ftrace.plumbing, ftrace.runrecord, ftrace.sparse): the README's
# diagram,
#   corpus -+-> model -> features -+-> ingest  <- runs (train runs, read only) <- train
#           +-> index -------------+-> query -> bench (<- runs: the tail-patch), serve
SHARED = {"config", "plumbing", "runrecord", "sparse"}
ALLOWED = {
    "config": set(),  # shared by every layer, so it imports none (only ftrace.plumbing)
    "corpus": set(),
    "model": {"corpus"},
    "features": {"corpus", "model"},
    "index": {"corpus"},
    "runs": set(),
    "train": {"corpus", "model", "index", "runs"},
    "ingest": {"corpus", "model", "features", "index", "runs"},
    "query": {"corpus", "model", "features", "index"},
    "bench": {"corpus", "model", "features", "index", "query", "runs"},
    "serve": {"corpus", "index", "query"},
}


def imports(path: Path) -> set[str]:
    """Every module a file imports, at module level or inside functions."""
    out = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            out.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module:
            out.add(node.module)
    return out


def layers_imported(layer: str) -> dict[str, set[str]]:
    """file -> the ftrace layers it imports (ftrace itself and the SHARED modules left out)."""
    out = {}
    for f in sorted((PACKAGE / layer).rglob("*.py")):
        used = {m.split(".")[1] for m in imports(f) if m.startswith("ftrace.")} - {*SHARED, layer}
        if used:
            out[str(f.relative_to(PACKAGE))] = used
    return out


def test_every_layer_is_in_the_allow_list():
    found = {p.name for p in PACKAGE.iterdir() if p.is_dir() and (p / "__init__.py").exists()}
    assert found == set(ALLOWED)


@pytest.mark.parametrize("layer", sorted(ALLOWED))
def test_layers_import_only_what_the_diagram_allows(layer):
    assert (PACKAGE / layer).is_dir(), f"ftrace/{layer} is missing"
    bad = [f"{f} imports ftrace.{x}" for f, used in layers_imported(layer).items()
           for x in sorted(used - ALLOWED[layer])]
    assert not bad, "\n".join(bad)


def test_the_import_check_sees_a_violation(tmp_path):
    bad = tmp_path / "bad.py"
    bad.write_text("def f():\n    from ftrace.ingest.pipeline import ingest\n")
    assert "ftrace.ingest.pipeline" in imports(bad)


def spelled_index_files(path: Path) -> list[str]:
    """The string literals (and f-string pieces) of a module that spell a file of an index directory."""
    from ftrace.index import files

    # the file names (directories such as bm25/ and qdrant/ share their names with the back ends' timings)
    names = {files.MANIFEST, files.CORPUS, files.LEGACY_CORPUS, files.STAGING, files.MERGING, *files.LOCK_FILES,
             *files.FEATURE_STATES.values()}
    stems = {n.split("{")[0] for n in files.FEATURE_STATES.values()}  # "tracin-state-" of an f-string
    return [node.value for node in ast.walk(ast.parse(path.read_text(), str(path)))
            if isinstance(node, ast.Constant) and isinstance(node.value, str)
            and (node.value in names or node.value in stems)]


def test_one_module_names_the_files_of_an_index(tmp_path):
    spelled = {str(f.relative_to(PACKAGE)): found for f in sorted(PACKAGE.rglob("*.py"))
               if f.name != "files.py" and (found := spelled_index_files(f))}
    assert not spelled, f"index file names spelled outside ftrace/index/files.py: {spelled}"
    bad = tmp_path / "bad.py"
    bad.write_text('from pathlib import Path\nP = Path("x") / "manifest.json"\nQ = f"tracin-state-{1}.pt"\n')
    assert spelled_index_files(bad) == ["manifest.json", "tracin-state-"]


def test_cli_options_come_from_the_configs_and_only_given_values_reach_them(monkeypatch, tmp_path):
    import json

    from typer.testing import CliRunner

    import ftrace.ingest.pipeline as pipeline
    from ftrace.cli import app
    from ftrace.config import IngestConfig
    from ftrace.options import config_options

    names = {o.primary for o in config_options(IngestConfig)}
    assert {"--corpus", "--relation", "--embed-layers", "--tracin", "--tracin-dim", "--qdrant", "--max-tokens",
            "--train-run"} <= names
    lama = tmp_path / "lama"  # a LAMA T-REx directory of three relations, one fact each
    (lama).mkdir()
    rels = ["P19", "P36", "P17"]
    (lama / "relations.jsonl").write_text("".join(json.dumps({"relation": r, "template": "[X] r [Y] ."}) + "\n"
                                                  for r in rels))
    for r in rels:
        (lama / r).mkdir()
        (lama / r / "dev.jsonl").write_text(json.dumps({
            "sub_label": "A", "obj_label": "B", "predicate_id": r,
            "evidences": [{"obj_surface": "B", "masked_sentence": f"A {r} [MASK] ."}]}) + "\n")
    seen = []
    monkeypatch.setattr(pipeline, "ingest", lambda config: seen.append(config))
    r = CliRunner().invoke(app, ["ingest", "--corpus", str(lama), "--relation", "P19,P36", "--relation", "P17",
                                 "--tracin-dim", "64", "--no-tracin", "--float32"])
    assert r.exit_code == 0, r.output
    (c,) = seen
    assert c.corpus.relations == ["P19", "P36", "P17"] and c.tracin.dim == 64 and not c.tracin.enabled
    assert not c.store.float16 and c.embed.layers == [0] and c.corpus.corpus == str(lama)
    assert c.corpus.model_fields_set == {"corpus", "relations"}  # defaults are the config's, not re-sent by the CLI
    r = CliRunner().invoke(app, ["ingest", "--embed-layers", "0,x"])
    assert r.exit_code == 1 and "--embed-layers 0,x" in r.output and len(r.output.strip().splitlines()) == 1


def test_no_results_file_names_the_machine_it_was_made_on():
    """Results name paths relative to the repository (or ~/...): never this machine's absolute paths."""
    root = PACKAGE.parent
    machine = re.compile(r"(?<![\w.~])/(work|root|home|tmp|Users)/")
    found = [f"{p.relative_to(root)}:{n}" for d in ("results", "perf/results") for p in sorted((root / d).rglob("*"))
             if p.is_file() and p.suffix in (".json", ".md", ".jsonl", ".csv")
             for n, line in enumerate(p.read_text(errors="replace").splitlines(), 1) if machine.search(line)]
    assert not found, found[:5]
