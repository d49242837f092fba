"""What every command's settings are made of: the CLI marks on fields (`Cli`), strict models, and the
options several commands share (the index, the device, the dtype, the threads)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Literal

from pydantic import AfterValidator, BaseModel, ConfigDict, Field

DEFAULT_MODEL = "smollm2-135m"
DEFAULT_INDEX = Path("indexes/sample")


@dataclass(frozen=True)
class Cli:
    """Marks a config field as a CLI option (or, with argument=True, the positional argument).

    names: option names (default: --field-name); "--a/--no-a" for a boolean flag pair.
    split: a list option that may be repeated and comma-separated ("--split dev,test").
    renamed_from: former names of the option: still accepted, hidden from --help, and each use says in one
    line what replaced it.
    """

    help: str
    names: tuple[str, ...] = ()
    argument: bool = False
    split: bool = False
    min: float | None = None
    metavar: str | None = None
    renamed_from: tuple[str, ...] = ()


def cli(help: str, *names: str, split: bool = False, min: float | None = None, argument: bool = False,
        metavar: str | None = None, renamed_from: tuple[str, ...] = ()) -> Cli:
    return Cli(help=help, names=names, split=split, min=min, argument=argument, metavar=metavar,
               renamed_from=renamed_from)


def option_name(field: str, mark: Cli) -> str:
    """How the CLI and its messages name a field: its first option name (--k), or the argument in capitals
    (PROMPT)."""
    if mark.argument:
        return field.upper()
    return mark.names[0].split("/")[0] if mark.names else "--" + field.replace("_", "-")


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")



IndexPath = Annotated[Path, AfterValidator(Path.expanduser),  # "~/..." as results files name it (bench.paths)
                      cli("Index directory.", "--index", "-i")]
# where the model runs; vectors and answers are the same on every device (up to float rounding)
Device = Annotated[str, Field(pattern=r"^(auto|cpu|cuda(:\d+)?|mps)$"),
                   cli("auto (CUDA when present), cpu, cuda[:N] or mps.", "--device")]
# the model weights' dtype on the device; projections, whitening and stored vectors stay float32
Dtype = Annotated[Literal["float32", "bfloat16", "float16"],
                  cli("Model weights' dtype: float32, bfloat16 or float16 (projections stay float32).", "--dtype")]
QueryDtype = Annotated[Literal["float32", "bfloat16", "float16"] | None,
                       cli("Model weights' dtype (default: the one the index was built with).", "--dtype")]
# how many cores the model's math uses; not part of any record (results do not depend on it beyond rounding)
Threads = Annotated[int | None, Field(ge=1, exclude=True),
                    cli("Threads for the model's math (default: one per core). Fewer leave cores to other jobs.",
                        "--threads", min=1)]
