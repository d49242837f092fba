"""The `ftrace` command line: thin wrappers that parse options and call one function each."""

from __future__ import annotations

import json
import sys
from functools import wraps
from pathlib import Path
from typing import Annotated, Optional

import typer

from ftrace import FtraceError

app = typer.Typer(add_completion=False, no_args_is_help=True,
                  help="Fact tracing: find the training sentences behind a language model's prediction.")

DEFAULT_INDEX = Path("indexes/sample")
IndexOpt = Annotated[Path, typer.Option("--index", "-i", help="Index directory.")]


def _split(values: list[str] | None) -> list[str] | None:
    if not values:
        return None
    return [v.strip() for item in values for v in item.split(",") if v.strip()]


def _layers(values: list[str] | None) -> list[int] | None:
    items = _split(values)
    if items is None:
        return None
    try:
        return [int(v) for v in items]
    except ValueError:
        raise FtraceError(f"--embed-layers {','.join(items)}: layers are integers (0 = embedding layer)") from None


def friendly(fn):
    """Print an FtraceError as one line on stderr and exit 1."""
    @wraps(fn)
    def run(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except FtraceError as e:
            typer.echo(f"error: {e}", err=True)
            raise typer.Exit(1) from None
    return run


@app.command()
@friendly
def ingest(
    index: IndexOpt = DEFAULT_INDEX,
    corpus: Annotated[str, typer.Option(help="'sample', a .jsonl corpus, a LAMA T-REx directory or a raw T-REx .json file.")] = "sample",
    relation: Annotated[Optional[list[str]], typer.Option("--relation", "-r", help="LAMA relations to load (e.g. P176); repeat or comma-separate.")] = None,
    split: Annotated[Optional[list[str]], typer.Option("--split", help="LAMA splits (train, dev, test).")] = None,
    limit: Annotated[Optional[int], typer.Option(help="First N facts of each LAMA relation/split file.")] = None,
    model: Annotated[str, typer.Option(help="'smollm2-135m' (built in) or a Hugging Face causal LM id or path.")] = "smollm2-135m",
    embed_layers: Annotated[Optional[list[str]], typer.Option(help="Hidden-state layers to pool (0 = embedding layer).")] = None,
    tracin: Annotated[bool, typer.Option("--tracin/--no-tracin", help="Store projected loss gradients (TracIn/TrackStar).")] = True,
    tracin_layers: Annotated[Optional[list[str]], typer.Option(help="Module name patterns whose weight gradients are projected (default: the input embedding).")] = None,
    tracin_dim: Annotated[int, typer.Option(min=1, help="Projection size per layer block (total at most 65535).")] = 4096,
    tracin_seed: Annotated[int, typer.Option(help="Seed of the random projection.")] = 0,
    tracin_projection: Annotated[str, typer.Option(help="factored (LoGra-style, default) or dense (reference, small layers).")] = "factored",
    optimizer_state: Annotated[Optional[str], typer.Option(help="Adam/AdamW state (torch file): divide gradients by sqrt of second moments.")] = None,
    whiten: Annotated[bool, typer.Option("--whiten", help="TrackStar whitening by R^-1/2, fitted on a calibration sample.")] = False,
    whiten_samples: Annotated[int, typer.Option(min=1, help="Training examples in the whitening calibration sample.")] = 512,
    checkpoint: Annotated[Optional[list[str]], typer.Option("--checkpoint", help="Checkpoint(s) to take gradients at (repeat); default: --model.")] = None,
    batch_size: Annotated[int, typer.Option(min=1)] = 32,
    qdrant: Annotated[str, typer.Option(help="Vector back end: edge (in process), local (qdrant-client local mode), remote.")] = "edge",
    qdrant_url: Annotated[Optional[str], typer.Option(help="Qdrant server or cluster URL (implies --qdrant remote).")] = None,
    collection: Annotated[str, typer.Option(help="Qdrant collection name (client back ends).")] = "ftrace",
    float32: Annotated[bool, typer.Option("--float32", help="Store vectors as float32 (default float16).")] = False,
    hnsw: Annotated[bool, typer.Option("--hnsw", help="Build an HNSW index after ingest (default: exact search).")] = False,
):
    """Index a corpus: BM25 (Lucene) plus per-example model vectors (Qdrant)."""
    from ftrace.ingest.pipeline import IngestSettings
    from ftrace.ingest.pipeline import ingest as run

    settings = IngestSettings(
        index=index, corpus=corpus, relations=_split(relation), splits=_split(split) or ["train", "dev", "test"],
        limit=limit, model=model, embed_layers=_layers(embed_layers) or [0], batch_size=batch_size,
        tracin=tracin, tracin_layers=_split(tracin_layers), tracin_dim=tracin_dim, tracin_seed=tracin_seed,
        tracin_projection=tracin_projection, optimizer_state=optimizer_state, whiten=whiten,
        whiten_samples=whiten_samples, checkpoints=checkpoint or None,
        qdrant="remote" if qdrant_url else qdrant, qdrant_url=qdrant_url, collection=collection,
        float16=not float32, hnsw=hnsw)
    run(settings)


@app.command()
@friendly
def query(
    prompt: Annotated[str, typer.Argument(help="What the model completes, e.g. 'Toyota Avanza is produced by'.")],
    index: IndexOpt = DEFAULT_INDEX,
    target: Annotated[Optional[str], typer.Option(help="The answer to trace (default: the model's greedy answer).")] = None,
    k: Annotated[int, typer.Option("--k", "-k", min=1, help="Sentences to show.")] = 10,
    method: Annotated[str, typer.Option(help="bm25, embed, tracin, or a fusion such as bm25+embed or tracin+bm25.")] = "bm25+embed",
    fusion: Annotated[str, typer.Option(help="sum (min-max normalised, weighted) or rrf.")] = "sum",
    weight: Annotated[float, typer.Option(help="Fusion weight of the first method (the second gets 1 - weight).")] = 0.5,
    depth: Annotated[int, typer.Option(min=1, help="Candidates each method retrieves before fusion.")] = 100,
    model: Annotated[Optional[str], typer.Option(help="Must match the index's model (checked).")] = None,
    embed_layers: Annotated[Optional[list[str]], typer.Option(help="Must match the index's layers (checked).")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="JSON output for scripts.")] = False,
):
    """Trace one prediction: nearest training sentences by BM25, model vectors and their fusions."""
    from ftrace.query.render import render
    from ftrace.query.tracer import Tracer

    if not prompt.strip():
        raise FtraceError("PROMPT is empty: give the text the model completes, e.g. 'Toyota Avanza is produced by'")
    tracer = Tracer(index, model=model, embed_layers=_layers(embed_layers))
    try:
        result = tracer.query(prompt, target=target, k=k, method=method, fusion=fusion, weight=weight, depth=depth)
    finally:
        tracer.close()
    typer.echo(result.model_dump_json(indent=2) if as_json else render(result))


@app.command()
@friendly
def info(index: IndexOpt = DEFAULT_INDEX):
    """Show what made an index (its manifest)."""
    from ftrace.index.manifest import Manifest

    typer.echo(json.dumps(Manifest.read(index).model_dump(), indent=2))


def _register_bench() -> None:
    from ftrace.bench.command import bench

    app.command(help=bench.__doc__)(friendly(bench))


_register_bench()


def main() -> None:  # pragma: no cover
    sys.exit(app())


if __name__ == "__main__":  # pragma: no cover
    main()
