"""The package's shape: which layer may import which, and the linters' verdict."""

import ast
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "ftrace"

# layer -> packages it must never import (the data flow: corpus -> model -> features -> index ->
# ingest / query -> bench, serve; train feeds ingest)
FORBIDDEN = {
    "query": ("ftrace.ingest", "ftrace.bench", "ftrace.train"),
    "bench": ("ftrace.ingest",),
    "serve": ("ftrace.ingest", "ftrace.bench", "ftrace.train"),  # over query: one warm Tracer
    "features": ("ftrace.ingest", "ftrace.query", "ftrace.bench", "ftrace.train", "ftrace.index"),
    "ingest": ("ftrace.query", "ftrace.bench"),
    "index": ("ftrace.ingest", "ftrace.query", "ftrace.bench", "ftrace.features", "ftrace.train"),
    "model": ("ftrace.ingest", "ftrace.query", "ftrace.bench", "ftrace.features", "ftrace.index", "ftrace.train"),
    "corpus": ("ftrace.ingest", "ftrace.query", "ftrace.bench", "ftrace.features", "ftrace.index", "ftrace.model",
               "ftrace.train"),
    "train": ("ftrace.ingest", "ftrace.query", "ftrace.bench", "ftrace.features"),
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


@pytest.mark.parametrize("layer", sorted(FORBIDDEN))
def test_layers_import_only_downstream(layer):
    files = sorted((PACKAGE / layer).rglob("*.py"))
    assert files, f"ftrace/{layer} has no modules"
    bad = [f"{f.relative_to(PACKAGE)} imports {m}" for f in files for m in sorted(imports(f))
           if m.startswith(FORBIDDEN[layer])]
    assert not bad, "\n".join(bad)


def test_the_import_check_sees_a_violation(tmp_path):
    bad = tmp_path / "bad.py"
    bad.write_text("def f():\n    from ftrace.ingest.pipeline import ingest\n")
    assert "ftrace.ingest.pipeline" in imports(bad)


@pytest.mark.slow
@pytest.mark.skipif(shutil.which("ruff", path=str(Path(sys.executable).parent)) is None,
                    reason="ruff is not installed (bash scripts/install.sh --test installs it)")
def test_ruff_and_mypy_are_clean():
    root = PACKAGE.parent
    bindir = Path(sys.executable).parent
    ruff = subprocess.run([str(bindir / "ruff"), "check", "ftrace", "tests", "perf"], cwd=root,
                          capture_output=True, text=True)
    assert ruff.returncode == 0, ruff.stdout + ruff.stderr
    mypy = subprocess.run([str(bindir / "mypy")], cwd=root, capture_output=True, text=True)
    assert mypy.returncode == 0, mypy.stdout + mypy.stderr


def test_cli_options_come_from_the_configs_and_only_given_values_reach_them(monkeypatch):
    from typer.testing import CliRunner

    import ftrace.ingest.pipeline as pipeline
    from ftrace.cli import app, config_options
    from ftrace.config import IngestConfig

    names = {o.primary for o in config_options(IngestConfig)}
    assert {"--corpus", "--relation", "--embed-layers", "--tracin", "--tracin-dim", "--qdrant", "--max-tokens",
            "--checkpoints"} <= names
    seen = []
    monkeypatch.setattr(pipeline, "ingest", lambda config, corpus: seen.append(config))
    r = CliRunner().invoke(app, ["ingest", "--relation", "P19,P36", "--relation", "P17", "--tracin-dim", "64",
                                 "--no-tracin", "--float32"])
    assert r.exit_code == 0, r.output
    (c,) = seen
    assert c.corpus.relations == ["P19", "P36", "P17"] and c.tracin.dim == 64 and not c.tracin.enabled
    assert not c.store.float16 and c.embed.layers == [0] and c.corpus.corpus == "sample"
    assert c.corpus.model_fields_set == {"relations"}  # defaults are the config's, not re-sent by the CLI
    r = CliRunner().invoke(app, ["ingest", "--embed-layers", "0,x"])
    assert r.exit_code == 1 and "--embed-layers 0,x" in r.output and len(r.output.strip().splitlines()) == 1
