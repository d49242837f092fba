"""The `ftrace bench` command (registered in ftrace.cli with `app.command()(friendly(bench))`).

Imports nothing heavy at module level: the model, ranx and matplotlib load only when it runs.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Optional

import typer

from ftrace import FtraceError


def _items(values: list[str] | None) -> list[str] | None:
    if not values:
        return None
    return [v.strip() for item in values for v in item.split(",") if v.strip()] or None


def bench(
    index: Annotated[Path, typer.Option("--index", "-i", help="Index directory (from `ftrace ingest`).")],
    mode: Annotated[str, typer.Option(help="rerank: score FTRACE candidate sets; full: retrieve from the whole corpus.")] = "rerank",
    queries: Annotated[int, typer.Option(min=1, help="Queries per seed, drawn with the seed from those with >= 1 proponent.")] = 100,
    seeds: Annotated[int, typer.Option(min=1, help="Seeds 0..S-1; tables show mean ± std over seeds.")] = 3,
    split: Annotated[str, typer.Option(help="Queries of this split (e.g. dev); 'all' for every query.")] = "dev",
    tune_split: Annotated[Optional[str], typer.Option(help="Split to tune fusion weights on (grid 0, 0.1, ..., 1; max MRR). Default: weight 0.5.")] = None,
    methods: Annotated[Optional[list[str]], typer.Option(help="Methods, comma-separated: bm25, embed, tracin, a+b fusions, random-target. Default: all the index has.")] = None,
    depth: Annotated[int, typer.Option(min=1, help="Full mode: sentences each method retrieves (and ranking length).")] = 100,
    out: Annotated[Optional[Path], typer.Option(help="Output directory (default results/bench/<index name>-<mode>).")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print results.json instead of the table.")] = False,
):
    """Evaluate fact tracing on the index's queries (FTRACE MRR/Recall@10, TrackStar Recall@10)."""
    from ftrace.bench.runner import BenchSettings, run_bench

    if mode not in ("rerank", "full"):
        raise FtraceError(f"--mode {mode!r}: choose rerank or full")
    if not Path(index).exists():
        raise FtraceError(f"--index {index}: no such directory; build one with `ftrace ingest`")
    settings = BenchSettings(index=index, mode=mode, queries=queries, seeds=seeds,
                             split=None if split.strip().lower() in ("all", "none", "") else split.strip(),
                             tune_split=tune_split, methods=_items(methods), depth=depth, out=out)
    results = run_bench(settings)
    out_dir = settings.out_dir()
    if as_json:
        typer.echo(json.dumps(results, indent=2, ensure_ascii=False))
    else:
        typer.echo((out_dir / "table.md").read_text())
        typer.echo(f"wrote {out_dir}/results.json, table.md, plot.png, rankings.jsonl", err=True)
