"""`ftrace query`: what a trace asks (the method, its fusion, the prompt and target), shared by serve and
the bench's defaults."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Literal

from pydantic import Field, ValidationInfo, field_validator, model_validator

from ftrace.config.base import DEFAULT_INDEX, Device, IndexPath, QueryDtype, Strict, Threads, cli

# A fusion's defaults, for queries and the bench alike: equal weights, and a cascade re-ranking the second method's top
# 20 (ftrace.query.methods)
FUSION_WEIGHT = 0.5
CASCADE_K = 20
CascadeK = Annotated[int, Field(ge=1), cli("Cascade fusion: how many of the second method's top sentences "
                                          "the sum re-ranks.", "--cascade-k", min=1)]


# what a blank prompt or target is told to give instead
BLANK_HINTS = {"prompt": "the text the model completes, e.g. 'Toyota Avanza is produced by'",
               "target": "the answer to trace, or leave it out to trace the model's own answer"}


class TraceOptions(Strict):
    """One trace, validated once: what `ftrace query` and a `/trace` request ask of an index (`Tracer.query`)."""

    prompt: Annotated[str, cli("What the model completes, e.g. 'Toyota Avanza is produced by'.", argument=True)]
    target: Annotated[str | None, cli("The answer to trace (default: the model's greedy answer).")] = None
    k: Annotated[int, Field(ge=1), cli("Sentences to show.", "--k", "-k", min=1)] = 10
    # None: the index's own choice (`ftrace bench --save-default`, with its tuned fusion and weight), else bm25
    method: Annotated[str | None, cli("bm25, embed, tracin, or a fusion of two such as embed+bm25 or tracin+bm25 "
                                      "(default: the one the index's benchmark chose, else bm25).")] = None
    fusion: Annotated[Literal["sum", "rrf", "cascade"] | None,
                      cli("sum (min-max normalised, weighted), rrf, or cascade (the second method's top "
                          "--cascade-k re-ranked by the sum, above the rest). Default: the index's choice for "
                          "its default method, else sum.")] = None
    weight: Annotated[float | None, Field(ge=0.0, le=1.0),
                      cli("Fusion weight of the first method (the second gets 1 - weight). Default: the index's "
                          f"tuned weight for its default method, else {FUSION_WEIGHT}.")] = None
    cascade_k: Annotated[int | None, Field(ge=1),
                         cli("Cascade fusion: how many of the second method's top sentences the sum re-ranks "
                             f"(default: the index's choice, else {CASCADE_K}).", "--cascade-k", min=1)] = None
    depth: Annotated[int, Field(ge=1), cli("Candidates each method retrieves before fusion.", min=1)] = 100

    @field_validator("prompt", "target")
    @classmethod
    def _not_blank(cls, v: str | None, info: ValidationInfo) -> str | None:
        if v is not None and not v.strip():
            raise ValueError(f"blank; give {BLANK_HINTS[info.field_name or '']}")
        return v


class QueryConfig(TraceOptions):
    # one prompt, or a file of them (--prompts)
    # optional here: --prompts instead
    prompt: Annotated[str | None, cli("What the model completes, e.g. 'Toyota Avanza is produced by' (or --prompts "
                                      "FILE).", argument=True)] = None  # type: ignore[assignment]
    prompts: Annotated[Path | None, cli("Trace every prompt of FILE in one process: a .txt file of one prompt a "
                                        "line, or records {prompt, target?, id?} (.jsonl[.gz|.zst], .parquet); "
                                        "JSONL on stdout, or --out.", metavar="FILE")] = None
    out: Annotated[Path | None, cli("With --prompts: write OUT.jsonl (a result a prompt) and OUT.csv (a row a "
                                    "hit) instead of printing JSONL.", metavar="OUT")] = None
    index: IndexPath = DEFAULT_INDEX
    model: Annotated[str | None, cli("Must match the index's model (checked).")] = None
    embed_layers: Annotated[list[int] | None, cli("Must match the index's layers (checked).", split=True)] = None
    device: Device = "auto"
    dtype: QueryDtype = None
    threads: Threads = None
    as_json: Annotated[bool, Field(exclude=True), cli("JSON output for scripts.", "--json")] = False

    @model_validator(mode="after")
    def _one_or_a_file(self) -> QueryConfig:
        if (self.prompt is None) == (self.prompts is None):
            raise ValueError("give a PROMPT or --prompts FILE" if self.prompt is None else
                             "give a PROMPT or --prompts FILE, not both")
        if self.prompts is not None and self.target is not None:
            raise ValueError("--target with --prompts: give each prompt's target in the file")
        if self.out is not None and self.prompts is None:
            raise ValueError("--out goes with --prompts (one prompt's result is printed; --json for JSON)")
        return self
