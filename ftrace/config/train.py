"""`ftrace train`: fine-tune a model on an index's or a corpus's sentences."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Literal

from pydantic import Field, field_validator, model_validator

from ftrace.config.base import Device, Dtype, Strict, Threads, cli
from ftrace.config.data import MAX_TOKENS, CorpusSelection
from ftrace.config.vectors import ExampleLoss


class TrainConfig(Strict):
    """`ftrace train`: fine-tune the model on training sentences, saving checkpoints to trace with.

    Everything but `device`, `save_every` and where the data comes from / goes is the run's identity: resuming or
    re-running an output directory with any other value is refused."""

    index: Annotated[Path | None, cli("Train on this index's sentences with its model; checkpoints go to "
                                      "INDEX/train unless --out is given.", "--index", "-i")] = None
    corpus: CorpusSelection | None = None
    out: Annotated[Path | None, cli("Output directory (default INDEX/train).")] = None
    model: Annotated[str | None, cli("Model to fine-tune (default: the index's model, else smollm2-135m).")] = None
    optimizer: Annotated[Literal["adamw", "adafactor"], cli("adamw, or adafactor (transformers').")] = "adamw"
    lr: Annotated[float, Field(ge=0), cli("Peak learning rate (adafactor: fixed, no relative step).")] = 2e-4
    weight_decay: Annotated[float, Field(ge=0), cli("Weight decay.")] = 0.0
    warmup: Annotated[int, Field(ge=0), cli("Steps of linear warmup; then linear decay to 0.")] = 0
    epochs: Annotated[int, Field(ge=1), cli("Passes over the training examples.")] = 2
    max_steps: Annotated[int | None, Field(ge=1), cli("Stop after this many steps at the latest.")] = None
    batch_size: Annotated[int, Field(ge=1), cli("Examples per optimizer step.")] = 16
    seed: Annotated[int, Field(ge=0), cli("Seed of the data order and of everything random.")] = 0
    checkpoints: Annotated[int, Field(ge=1), cli("Fine-tuned checkpoints, evenly spaced (plus the base model "
                                                 "as step 0).")] = 3
    # FTRACE traced its model's early checkpoints (6-19% of the way): a fact learned long ago has a saturated gradient
    checkpoint_at: Annotated[list[float] | None,
                             cli("Checkpoints at these fractions of the run instead of evenly spaced, e.g. "
                                 "0.06,0.12,0.19,0.5 (the final step is always one).", "--checkpoint-at",
                                 split=True)] = None
    # not the run's identity: how often it is saved to resume from changes nothing it computes
    save_every: Annotated[int, Field(ge=0), cli("Also save the weights and optimizer every this many steps between "
                                                "checkpoints (OUT/resume/, not traced), so that a stopped run "
                                                "resumes from there (0: at checkpoints only).", min=0)] = 200
    eval_facts: Annotated[int, Field(ge=0), cli("At every checkpoint, check this many of the corpus's facts (a "
                                                "seeded sample of its queries) for a right answer, recorded in "
                                                "its state.json: the learning curve (0: none).", min=0)] = 0
    example_loss: Annotated[ExampleLoss, cli("sentence: LM loss of the whole sentence; object: loss of the fact's "
                                             "object tokens given the sentence prefix.", "--example-loss",
                                             renamed_from=("--loss",))] = "sentence"
    max_tokens: Annotated[int, Field(ge=2), cli("Tokens per example; longer sentences are truncated.",
                                                renamed_from=("--max-length",))] = MAX_TOKENS
    device: Device = "auto"
    dtype: Dtype = "float32"  # the weights trained (float16 has no loss scaling: prefer bfloat16)
    # pure bfloat16 weights round most AdamW updates of lr ~2e-4 away; autocast keeps float32 weights and updates
    autocast: Annotated[Literal["bfloat16"] | None,
                        cli("Mixed precision: forward and backward in this dtype (torch.autocast), the weights and "
                            "the optimizer in float32 (--dtype float32: exact updates; faster than float32 on a CPU "
                            "with AMX or a GPU).", "--autocast")] = None
    threads: Threads = None

    @field_validator("checkpoint_at")
    @classmethod
    def _fractions(cls, v: list[float] | None) -> list[float] | None:
        if v is not None and not all(0 < f <= 1 for f in v):
            raise ValueError("give fractions of the run in (0, 1], e.g. 0.06,0.12,0.19")
        return sorted(set(v)) if v else None

    @model_validator(mode="after")
    def _autocast_keeps_float32_weights(self) -> TrainConfig:
        if self.autocast and self.dtype != "float32":
            raise ValueError(f"--autocast {self.autocast}: mixed precision keeps the weights in float32; give "
                             f"--dtype float32 (or leave --autocast out to train {self.dtype} weights)")
        return self

    @model_validator(mode="after")
    def _one_source(self) -> TrainConfig:
        """Where the sentences come from: an index, or a corpus with an output directory. (Giving neither is refused
        by `ftrace train` itself, not here: the library's `train()` takes the corpus as an argument.)"""
        if self.index is not None and self.corpus is not None:
            raise ValueError("give --index (train on an index's sentences) or --corpus, not both")
        if self.corpus is not None and "corpus" not in self.corpus.model_fields_set:
            raise ValueError("--relation, --split and --limit select from a --corpus: give --corpus too")
        if self.corpus is not None and self.out is None:
            raise ValueError("--corpus needs --out DIR (where the checkpoints go)")
        if self.corpus is not None:
            self.corpus.check_passages(self.max_tokens)
        return self

    def identity(self) -> dict:
        """What must match for a run directory to be resumed."""
        return self.model_dump(exclude={"device", "save_every", "index", "corpus", "out"})
