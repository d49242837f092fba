"""`ftrace bench`: FTRACE's evaluation (candidate sets, slices, fusion tuning, the tail-patch)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Literal

from pydantic import AfterValidator, Field, field_validator, model_validator

from ftrace.config.base import Device, QueryDtype, Strict, Threads, cli
from ftrace.config.query import CASCADE_K, FUSION_WEIGHT, CascadeK


class CandidateSizes(Strict):
    """FTRACE's re-ranking candidate groups besides the proponents."""

    bm25: int = 100
    same_target: int = 100
    random: int = 100


GRID = [round(i / 10, 1) for i in range(11)]
BENCH_DIR = "bench"  # a bench's default output, INDEX/bench/<mode> (ftrace.index.files lists it beside the index's)


class BenchConfig(Strict):
    index: Annotated[Path, AfterValidator(Path.expanduser), cli("Index directory (from `ftrace ingest`).", "--index",
                                                                "-i")]
    mode: Annotated[Literal["rerank", "full"],
                    cli("rerank: score FTRACE candidate sets; full: retrieve from the whole corpus.")] = "rerank"
    queries: Annotated[int, Field(ge=1), cli("Queries per seed, drawn with the seed from those with >= 1 "
                                             "proponent.", min=1)] = 100
    seeds: Annotated[int, Field(ge=1), cli("Seeds 0..S-1; tables show mean ± std over seeds.", min=1)] = 3
    split: Annotated[list[str] | None, cli("Queries of these splits (default: dev; e.g. dev,test); 'all' for every "
                                           "query.", split=True)] = ["dev"]
    relations: Annotated[list[str] | None, cli("Only queries of these relations (LAMA ids, e.g. P19).", "--relation",
                                               split=True)] = None
    only: Annotated[Literal["pre-train-learned", "fine-tune-learned", "fine-tune-learned-strict",
                            "not-learned"] | None,
                    cli("Draw queries (and tuning queries) from this learned slice only, e.g. pre-train-learned "
                        "(FTRACE's: the facts the model already answers) or fine-tune-learned-strict (fine-tune-"
                        "learned, and none of the base model's 3 beam-search answers right: FTRACE's code).")] = None
    tune_split: Annotated[list[str] | None, cli("Splits to tune fusion weights on (grid 0, 0.1, ..., 1; max MRR) or "
                                                "fit --fusion learned on ('all': every split). Default: weight "
                                                f"{FUSION_WEIGHT}.",
                                                split=True)] = None
    tune_relations: Annotated[list[str] | None, cli("Relations to tune fusion weights on, or fit --fusion learned "
                                                    "on (with or without --tune-split); choose ones you do not report.",
                                                    "--tune-relation", split=True)] = None
    methods: Annotated[list[str] | None, cli("Methods, comma-separated: bm25, embed, tracin, a+b fusions, "
                                             "random-target. Default: all the index has.", split=True)] = None
    fusion: Annotated[Literal["sum", "rrf", "cascade", "learned"],
                      cli("How every a+b method fuses: sum, rrf, cascade (with a tuned or default weight) or "
                          "learned (logistic regression fitted on the --tune-split/--tune-relation queries).")] = "sum"
    cascade_k: CascadeK = CASCADE_K
    depth: Annotated[int, Field(ge=1), cli("Full mode: sentences each method retrieves (and ranking length).",
                                           min=1)] = 100
    metric: Annotated[Literal["attribution", "tailpatch", "all"],
                      cli("attribution: MRR and Recall@10 of the proponents; tailpatch: TrackStar's influence, the "
                          "change of the target's log-probability after one training step on each method's top k "
                          "(needs --mode full); all: both, side by side.")] = "attribution"
    tailpatch_k: Annotated[int, Field(ge=1), cli("Tail-patch: sentences per step (each method's top k).",
                                                 min=1)] = 10
    tailpatch_lr: Annotated[float | None, Field(gt=0), cli("Tail-patch learning rate (default: the lr of the "
                                                           "training run's config, its peak; 2e-4 for an index no run "
                                                           "made).")] = None
    out: Annotated[Path | None, cli("Output directory (default INDEX/bench/<mode>).")] = None
    save_default: Annotated[bool, cli("Record the best method by MRR over all queries (with its tuned fusion "
                                      "weight) in the index as `ftrace query`'s default.", "--save-default")] = False
    device: Annotated[Device, Field(exclude=True)] = "auto"
    dtype: QueryDtype = None
    threads: Threads = None
    as_json: Annotated[bool, Field(exclude=True), cli("Print results.json instead of the table.", "--json")] = False
    sizes: CandidateSizes = CandidateSizes()
    grid: list[float] = GRID
    default_weight: float = FUSION_WEIGHT
    stat_test: Literal["student", "fisher"] = "student"  # main paired test; the other is reported too

    @field_validator("split", "tune_split", mode="before")
    @classmethod
    def _splits(cls, v: object) -> object:
        """One split may be given as a string, as on the command line ("dev", "dev,test"); all, none or nothing
        in any case is written 'all'."""
        items = [x for x in v.split(",")] if isinstance(v, str) else v
        if not isinstance(items, list):
            return v
        items = [x.strip() if isinstance(x, str) else x for x in items]
        return ["all" if isinstance(x, str) and x.lower() in ("all", "none", "") else x for x in items]

    @model_validator(mode="after")
    def _normalise(self) -> BenchConfig:
        if self.split is not None and (not self.split or "all" in self.split):
            self.split = None
        if self.save_default and self.fusion == "learned":
            raise ValueError("--save-default --fusion learned: `ftrace query` cannot apply a learned fusion; choose "
                             "sum, rrf or cascade")
        if self.save_default and (self.mode != "full" or self.only or self.relations):
            raise ValueError("--save-default: `ftrace query` retrieves from the whole corpus for any query, so the "
                             "default is chosen by --mode full over all queries (no --only, no --relation)")
        if self.metric != "attribution" and self.mode != "full":
            raise ValueError(f"--metric {self.metric}: tail-patch steps on each method's top k from the whole corpus; "
                             "give --mode full")
        if self.metric != "attribution" and self.tailpatch_k > self.depth:
            raise ValueError(f"--tailpatch-k {self.tailpatch_k}: at most --depth ({self.depth}), the sentences each "
                             "method retrieves")
        if not self.grid or any(not 0.0 <= w <= 1.0 for w in self.grid):
            raise ValueError(f"fusion weight grid {self.grid}: weights lie within [0, 1]")
        return self

    def out_dir(self) -> Path:
        """--out, else beside the index it evaluates (a user's runs belong with their index, not in ftrace's own
        results/)."""
        return self.out or Path(self.index) / BENCH_DIR / self.mode

    def command(self) -> str:
        parts = ["ftrace bench", f"--index {self.index}", f"--mode {self.mode}", f"--queries {self.queries}",
                 f"--seeds {self.seeds}", f"--out {self.out_dir()}"]
        if self.mode == "full":
            parts.append(f"--depth {self.depth}")
        parts.append(f"--split {','.join(self.split)}" if self.split else "--split all")
        if self.relations:
            parts.append(f"--relation {','.join(self.relations)}")
        if self.only:
            parts.append(f"--only {self.only}")
        if self.tune_split:
            parts.append(f"--tune-split {','.join(self.tune_split)}")
        if self.tune_relations:
            parts.append(f"--tune-relation {','.join(self.tune_relations)}")
        if self.methods:
            parts.append(f"--methods {','.join(self.methods)}")
        if self.fusion != "sum":
            parts.append(f"--fusion {self.fusion}")
        if self.fusion == "cascade":
            parts.append(f"--cascade-k {self.cascade_k}")
        if self.metric != "attribution":
            parts.append(f"--metric {self.metric} --tailpatch-k {self.tailpatch_k}")
            if self.tailpatch_lr is not None:
                parts.append(f"--tailpatch-lr {self.tailpatch_lr:g}")
        if self.dtype:
            parts.append(f"--dtype {self.dtype}")
        if self.save_default:
            parts.append("--save-default")
        return " ".join(parts)
