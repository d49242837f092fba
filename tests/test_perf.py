"""perf/gradient_throughput.py end to end on the tiny model: length-sorted batches, repeats with
min / median / max, ratios to the no-hooks floor, one results file (JSON + markdown) per run."""

import importlib.util
import json
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[1] / "perf" / "gradient_throughput.py"


@pytest.fixture(scope="module")
def bench():
    spec = importlib.util.spec_from_file_location("gradient_throughput", SCRIPT)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_throughput_results_file(bench, tiny_model_dir, tmp_path):
    res = bench.main(["--model", tiny_model_dir, "--examples", "8", "--batch-size", "4", "--repeats", "1",
                      "--methods", "plain,no-hooks,ftrace-embed", "--out-dir", str(tmp_path)])
    out = tmp_path / "gradient_throughput-cpu.json"
    assert json.loads(out.read_text()) == json.loads(json.dumps(res))
    md = out.with_suffix(".md").read_text()
    assert "| ftrace-embed |" in md and "x no-hooks" in md
    assert res["device"] == "cpu" and res["machine"]["device"] == "cpu" and res["card"] is None
    assert res["sorted_by_length"] and res["batches"] == 2 and res["repeats"] == 1
    assert res["examples"] == 8 and res["tokens"] <= res["padded_positions"]
    by = {r["method"]: r for r in res["results"]}
    assert set(by) == {"plain", "no-hooks", "ftrace-embed"}
    for r in by.values():
        e = r["examples_per_s"]
        assert e["min"] <= e["median"] <= e["max"] and e["median"] > 0 and r["tokens_per_s"]["median"] > 0
        assert len(r["seconds"]) == 1 and r["examples"] == 8
        assert "peak_rss_mb" in r
    assert by["no-hooks"]["x_no_hooks"] == pytest.approx(1.0)
    assert by["plain"]["x_plain"] == pytest.approx(1.0)
    assert by["ftrace-embed"]["x_no_hooks"] == pytest.approx(
        by["ftrace-embed"]["examples_per_s"]["median"] / by["no-hooks"]["examples_per_s"]["median"])
    assert by["ftrace-embed"]["size"] == 4096 and by["ftrace-embed"]["x_naive"] is None


def test_throughput_random_init(bench, tiny_model_dir, tmp_path):
    out = tmp_path / "r.json"
    res = bench.main(["--random-init", tiny_model_dir, "--dtype", "bfloat16", "--examples", "4", "--repeats", "2",
                      "--naive-examples", "2", "--methods", "no-hooks", "ftrace-linear,naive-linear",
                      "--out", str(out)])
    assert out.exists() and out.with_suffix(".md").exists()
    assert res["weights"].startswith("random weights, real architecture") and res["dtype"] == "bfloat16"
    by = {r["method"]: r for r in res["results"]}
    assert by["naive-linear"]["examples"] == 2 and len(by["ftrace-linear"]["seconds"]) == 2
    assert by["ftrace-linear"]["x_naive"] > 0
    assert [t["reference"] for t in res["targets"]] == ["no-hooks"]  # bergson was not asked for
