"""The `ftrace` command line. Each command takes its config (`ftrace.config`): the options are built
from the config's fields, parsed into the config (pydantic validates it, before any model loads) and
handed to one function. Heavy modules are imported inside the commands, so `--help` is fast."""

from __future__ import annotations

import inspect
import json
import logging
import os
import signal
import sys
import types
import typing
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from functools import wraps
from pathlib import Path
from typing import Annotated, Any, Literal, TypeVar

import typer
from pydantic import BaseModel, ValidationError

from ftrace import FtraceError
from ftrace.config import (
    BenchConfig,
    Cli,
    InfoConfig,
    IngestConfig,
    QueryConfig,
    ServeConfig,
    TrainConfig,
    option_name,
)

# plain (click) help: typer's rich panels print `<bool>` beside every flag and cut long option names
app = typer.Typer(add_completion=False, no_args_is_help=True, rich_markup_mode=None,
                  help="Fact tracing: find the training sentences behind a language model's prediction.")

C = TypeVar("C", bound=BaseModel)


class Interrupted(KeyboardInterrupt):
    """SIGTERM, raised like Ctrl-C's KeyboardInterrupt: the command unwinds (stores flushed and closed, locks
    released) and ends in one line."""


RESUMABLE = ("ingest", "bench", "train")  # commands that pick up where an interrupted run stopped


def _on_sigterm(signum: int, frame: Any) -> None:
    raise Interrupted()


def friendly(fn: Callable[..., Any]) -> Callable[..., Any]:
    """Print an FtraceError as one line on stderr and exit 1; Ctrl-C (SIGINT) and SIGTERM as one line, exit 130
    or 143 (128 + the signal), after the command has unwound: what it stored is kept, and it resumes."""
    @wraps(fn)
    def run(*args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except FtraceError as e:
            typer.echo(f"error: {e}", err=True)
            raise typer.Exit(1) from None
        except KeyboardInterrupt as e:
            sig = signal.SIGTERM if isinstance(e, Interrupted) else signal.SIGINT
            resumes = "; what was stored is kept: run the same command again to resume" if fn.__name__ in RESUMABLE \
                else ""
            typer.echo(f"interrupted ({sig.name}){resumes}", err=True)
            raise typer.Exit(128 + sig) from None
    return run


# --- options from configs ----------------------------------------------------------------------------

@dataclass
class _Option:
    path: tuple[str, ...]  # field path in the config, e.g. ("tracin", "dim")
    mark: Cli
    annotation: Any
    default: Any  # the config's default (... when required)
    optional_section: bool = False  # in a section that is None unless one of its options is given
    recordable: bool = False  # a run record (--config) may give it: required by the config, not by the parser

    @property
    def primary(self) -> str:
        return self.mark.names[0].split("/")[0] if self.mark.names else "--" + self.path[-1].replace("_", "-")

    @property
    def param(self) -> str:
        return self.path[-1] if self.mark.argument else self.primary.lstrip("-").replace("-", "_")

    @property
    def shown(self) -> str:
        """How messages name it: its primary option (--k), or the argument in capitals (PROMPT)."""
        return option_name(self.path[-1], self.mark)

    @property
    def help(self) -> str:
        """The mark's help, with its lower bound (checked by the config, like every other bound: one line, exit 1,
        rather than click's usage error)."""
        return self.mark.help if self.mark.min is None else f"{self.mark.help} At least {self.mark.min:g}."

    def former(self) -> dict[str, str]:
        """Parameter name -> option, for each former name of this option (hidden, still accepted)."""
        return {"former_" + old.lstrip("-").replace("-", "_"): old for old in self.mark.renamed_from}

    def typer_annotation(self, former: str | None = None) -> Any:
        """The type typer parses: lists as repeatable strings, choices as plain strings (the config
        validates them, with the same one-line errors as every other check); with `former`, that hidden
        former name of the option."""
        t, optional = _strip_optional(self.annotation)
        origin = typing.get_origin(t)
        choices = None
        if origin is list:
            base: Any = list[str]
        elif origin is Literal:
            base = str
            choices = "[" + "|".join(map(str, typing.get_args(t))) + "]"  # shown in --help
        else:
            base = t
        if self.mark.argument:
            info = typer.Argument(help=self.mark.help, show_default=False)
        elif former:
            info = typer.Option(former, hidden=True)
        else:
            info = typer.Option(*self.mark.names or (self.primary,), help=self.help,
                                metavar=self.mark.metavar or choices, show_default=base is not list[str])
        nullable = optional or origin is list or self.optional_section or former is not None or self.recordable
        return Annotated[base | None if nullable else base, info]

    def typer_default(self) -> Any:
        if self.optional_section:
            return None
        if self.default is ... or typing.get_origin(_strip_optional(self.annotation)[0]) is list:
            return inspect.Parameter.empty if self.default is ... and not self.recordable else None
        return self.default


def _strip_optional(t: Any) -> tuple[Any, bool]:
    if typing.get_origin(t) in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(t) if a is not type(None)]
        if len(args) == 1:
            return args[0], True
    return t, False


def config_options(cls: type[BaseModel], path: tuple[str, ...] = (), optional: bool = False) -> Iterator[_Option]:
    """The CLI options of a config: its fields marked `Cli`, sections (nested configs) flattened; a
    section that may be None is given only when one of its options is."""
    for name, field in cls.model_fields.items():
        t, nullable = _strip_optional(field.annotation)
        if isinstance(t, type) and issubclass(t, BaseModel):
            yield from config_options(t, (*path, name), optional or nullable)
            continue
        marks = [m for m in field.metadata if isinstance(m, Cli)]
        if marks:
            default = ... if field.is_required() else field.get_default(call_default_factory=True)
            yield _Option((*path, name), marks[0], field.annotation, default, optional)


def parse_config(cls: type[C], options: list[_Option], values: dict[str, Any],
                 recorded: dict[str, Any] | None = None) -> C:
    """The config from the options the user gave (`values`: option values, defaults left out, so the
    config's own defaults and `model_fields_set` stay meaningful) over a run record's values (`recorded`,
    from --config: every value it holds counts as given); a validation error becomes one line naming the
    option, or the record's field."""
    data: dict[str, Any] = json.loads(json.dumps(recorded or {}))  # a copy: options replace its values
    for opt in options:
        v = values.get(opt.param)
        if v is None:
            continue
        if opt.mark.split and isinstance(v, list):
            v = [x.strip() for item in v for x in item.split(",") if x.strip()]
        node = data
        for key in opt.path[:-1]:
            if not isinstance(node.get(key), dict):  # absent, or an optional section a record holds as null
                node[key] = {}
            node = node[key]
        node[opt.path[-1]] = v
    try:
        return cls.model_validate(data)
    except ValidationError as e:
        raise FtraceError(_describe(e, options, values, recorded is not None)) from None


def _describe(err: ValidationError, options: list[_Option], values: dict[str, Any], recorded: bool = False) -> str:
    e = err.errors()[0]
    msg = e["msg"].removeprefix("Value error, ")
    loc = tuple(str(p) for p in e["loc"])
    for opt in options:
        if loc[:len(opt.path)] == opt.path:
            v = values.get(opt.param)
            if v is None and recorded:
                return f"{opt.shown} (from --config): {msg}"
            if v is None:  # required, and not given
                return f"{opt.shown}: {msg.lower()}"
            shown = repr(v) if isinstance(v, str) else ",".join(map(str, v)) if isinstance(v, list) else v
            return f"{opt.shown} {shown}: {msg}"
    where = ".".join(loc)
    return f"{'--config: ' if recorded else ''}{where + ': ' if where else ''}{msg}"


def _renamed(options: list[_Option], given: dict[str, Any]) -> dict[str, Any]:
    """`given` with each former option name replaced by the option's name, saying so in one line."""
    for opt in options:
        for param, old in opt.former().items():
            if param not in given:
                continue
            if opt.param in given:
                raise FtraceError(f"{old} and {opt.primary}: {old} is the former name of {opt.primary}; give one")
            typer.echo(f"note: {old} is now {opt.primary}", err=True)
            given[opt.param] = given.pop(param)
    return given


def command_from_config(cls: type[C], recorded: bool = False) -> Callable[[Callable[[C], Any]], Callable[..., Any]]:
    """Turn `fn(config)` into a typer command whose options are the config's `Cli` fields; with `recorded`, the
    command writes run records and takes `--config FILE` (`ftrace.runrecord`)."""
    options = list(config_options(cls))
    for o in options:
        o.recordable = recorded and not o.mark.argument

    def wrap(fn: Callable[[C], Any]) -> Callable[..., Any]:
        def command(ctx: typer.Context, **values: Any) -> Any:
            # only what was given on the command line reaches the config: its defaults stay its own
            given = _renamed(options, {k: v for k, v in values.items()
                                       if (source := ctx.get_parameter_source(k)) is not None
                                       and source.name != "DEFAULT"})
            record = values.get("config_file")
            if record is not None:
                from ftrace.runrecord import read_record

                config = parse_config(cls, options, given, read_record(record, fn.__name__))
            else:
                config = parse_config(cls, options, given)
            if getattr(config, "threads", None):  # torch is imported only when asked to
                import torch

                torch.set_num_threads(config.threads)  # type: ignore[attr-defined]
            return fn(config)

        params = [inspect.Parameter("ctx", inspect.Parameter.POSITIONAL_OR_KEYWORD, annotation=typer.Context)]
        params += [inspect.Parameter(o.param, inspect.Parameter.KEYWORD_ONLY, default=o.typer_default(),
                                     annotation=o.typer_annotation()) for o in options]
        params += [inspect.Parameter(param, inspect.Parameter.KEYWORD_ONLY, default=None,
                                     annotation=o.typer_annotation(former=old))
                   for o in options for param, old in o.former().items()]
        if recorded:
            params.append(inspect.Parameter("config_file", inspect.Parameter.KEYWORD_ONLY, default=None, annotation=(
                Annotated[Path | None, typer.Option("--config", metavar="FILE", help=(
                    "Run again as recorded in FILE (an earlier run's OUT/config.json); options given beside it "
                    "replace its values."))])))
        command.__signature__ = inspect.Signature(params)  # type: ignore[attr-defined]
        command.__annotations__ = {p.name: p.annotation for p in params}
        command.__name__, command.__doc__ = fn.__name__, fn.__doc__
        return friendly(command)

    return wrap


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
