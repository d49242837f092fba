"""The `ftrace` command line. Each command takes its config (`ftrace.config`): the options are built
from the config's fields, parsed into the config (pydantic validates it, before any model loads) and
handed to one function (`ftrace.options`). Heavy modules are imported inside the commands, so `--help` is fast."""

from __future__ import annotations

import json
import logging
import os
import signal
import sys
from pathlib import Path
from typing import Any

import typer

from ftrace import FtraceError
from ftrace.config import BenchConfig, InfoConfig, IngestConfig, QueryConfig, ServeConfig, TrainConfig
from ftrace.options import Interrupted, command_from_config

# plain (click) help: typer's rich panels print `<bool>` beside every flag and cut long option names
app = typer.Typer(add_completion=False, no_args_is_help=True, rich_markup_mode=None,
                  help="Fact tracing: find the training sentences behind a language model's prediction.")


def _on_sigterm(signum: int, frame: Any) -> None:
    raise Interrupted()


# --- commands ------------------------------------------------------------------------------------------

@app.command()
@command_from_config(IngestConfig, recorded=True)
def ingest(config: IngestConfig) -> None:
    """Index a corpus: BM25 (Lucene) plus per-example model vectors (Qdrant)."""
    if config.add is not None:
        from ftrace.ingest.addition import add_corpus

        add_corpus(config)
        return
    from ftrace.ingest.pipeline import ingest as run
    from ftrace.runrecord import RECORD, write_record

    index = Path(config.index)
    was_complete = _complete(index)
    run(config)  # reads the corpus first (streamed into the index's staging store): a bad one is refused there
    # the run that built (or finished) the index; a shard's run is part of the final ingest's
    if config.shard is None and _complete(index) and not (was_complete and (index / RECORD).exists()):
        write_record(index, "ingest", config)


def _complete(index: Path) -> bool:
    from ftrace.index.files import MANIFEST
    from ftrace.index.manifest import Manifest

    return (index / MANIFEST).is_file() and Manifest.read(index).complete


@app.command()
@command_from_config(QueryConfig)
def query(config: QueryConfig) -> None:
    """Trace one prediction: nearest training sentences by BM25, model vectors and their fusions (asked of
    `ftrace serve` when one holds the index)."""
    from ftrace.query.remote import tracing

    prompts = None
    if config.prompts is not None:  # read first: a bad file is refused before the index opens
        from ftrace.query.batch import check_out, read_prompts

        prompts = read_prompts(config.prompts)
        check_out(config.out)
    with tracing(config) as trace:
        if prompts is None:
            from ftrace.query.render import render

            result = trace(config)
            typer.echo(result.model_dump_json(indent=2) if config.as_json else render(result))
        else:
            from ftrace.query.batch import trace_all, write_results

            write_results(trace_all(prompts, lambda p: trace(config.model_copy(update={
                "prompt": p.prompt, "target": p.target, "prompts": None, "out": None}))), config.out)


@app.command()
@command_from_config(ServeConfig)
def serve(config: ServeConfig) -> None:
    """Serve an index over HTTP: POST /trace (as `query --json`), GET /info, /health, an explorer page at /."""
    from ftrace.serve.app import serve as run

    run(config)


@app.command()
@command_from_config(InfoConfig)
def info(config: InfoConfig) -> None:
    """Show what made an index (its manifest) and what it holds now (counts, completeness, size); asked of
    `ftrace serve` when one holds the index."""
    from ftrace.index.layout import IndexDir
    from ftrace.index.locks import reading, served_by

    index = config.index

    server = served_by(index)
    if server is not None:
        from ftrace.query.remote import info_served

        typer.echo(json.dumps(info_served(server, index), indent=2))
        return
    reading(index)
    d = IndexDir(index)
    typer.echo(json.dumps({**d.manifest.model_dump(), "status": d.status()}, indent=2))


@app.command()
@command_from_config(BenchConfig, recorded=True)
def bench(config: BenchConfig) -> None:
    """Evaluate fact tracing on the index's queries (FTRACE MRR/Recall@10, TrackStar Recall@10)."""
    from ftrace.bench.runner import run_bench
    from ftrace.runrecord import write_record

    if not Path(config.index).exists():
        raise FtraceError(f"--index {config.index}: no such directory; build one with `ftrace ingest`")
    run = run_bench(config)
    from ftrace.bench.paths import shown_paths

    write_record(run.out, "bench", run.config, shown_paths)  # as run: e.g. --split all where the index has none
    if config.as_json:
        typer.echo(json.dumps(run.results, indent=2, ensure_ascii=False))
    else:
        typer.echo((run.out / "table.md").read_text())
        typer.echo(f"wrote {run.out}/results.json, table.md, plot.png, rankings.jsonl, config.json", err=True)


@app.command()
@command_from_config(TrainConfig, recorded=True)
def train(config: TrainConfig) -> None:
    """Fine-tune the model on the training sentences, saving checkpoints (weights, second moments) to trace."""
    from ftrace.runrecord import write_record
    from ftrace.train.trainer import train_command

    run = train_command(config)
    write_record(run.out, "train", config)
    typer.echo(f"{run.out}: {len(run.checkpoints)} checkpoints (steps 0..{run.total_steps})")


def main() -> None:  # pragma: no cover - the `ftrace` console script and `python -m ftrace.cli`
    """Run the command, then leave without the interpreter's teardown: a finished command has written its
    files and closed its stores, and unloading torch's ~3,000 modules would add 0.5-2 s to every run."""
    # Idle OpenMP threads sleep instead of spinning (unless the environment says otherwise): two model jobs on
    # the same cores otherwise burn each other's time spinning (perf/results/shared_machine-cpu.md).
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    signal.signal(signal.SIGTERM, _on_sigterm)  # `ftrace serve`'s uvicorn installs its own while it serves
    try:
        app()
        code: Any = 0
    except SystemExit as e:
        code = e.code
    if isinstance(code, str):  # what Python does with SystemExit("message")
        print(code, file=sys.stderr)
        code = 1
    logging.shutdown()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code or 0)


if __name__ == "__main__":  # pragma: no cover
    main()
