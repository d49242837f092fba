"""Typer commands from configs: the pydantic-to-CLI bridge. A config's `Cli(...)` fields become the command's options
(`config_options`); what the command line gives is parsed into the config (`parse_config`: pydantic validates it,
its errors become one line naming the option), and the command runs as `fn(config)` with errors and signals ending
in one line (`friendly`). perf/results/cli_bridge-cpu.md compares it with the libraries that do this (tyro,
pydantic-settings)."""

from __future__ import annotations

import inspect
import json
import signal
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
from ftrace.config import Cli, option_name

C = TypeVar("C", bound=BaseModel)


class Interrupted(KeyboardInterrupt):
    """SIGTERM, raised like Ctrl-C's KeyboardInterrupt: the command unwinds (stores flushed and closed, locks
    released) and ends in one line."""


RESUMABLE = ("ingest", "bench", "train")  # commands that pick up where an interrupted run stopped


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
