"""What an index's vectors are: the embedding and the gradient (TracIn / TrackStar) featurizers' settings,
and the example loss."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Literal

from pydantic import Field, field_validator

from ftrace.config.base import Strict, cli

MAX_VECTOR_SIZE = 65_535  # Qdrant's largest dense vector: a gradient vector's size, summed over its blocks
MAX_SPARSE_SIZE = 1 << 32  # a Qdrant sparse vector's indices are u32: the rows projection's size, all checkpoints
BLOCK_DIM = 4096  # a factored block's numbers by default (--tracin-dim; --tracin-block-dim beside a rows lookup)

# The example loss: the one name (--example-loss) for what a training example's loss scores, in ingest and train
ExampleLoss = Literal["sentence", "object"]
# how a block's gradient becomes its numbers (ftrace/features/gradients/projection.py)
Projection = Literal["factored", "sketch", "dense", "rows"]
# ingest's example loss when neither --example-loss, an existing index nor a training run says: FTRACE's masked
# object, 0.29 against the whole sentence's 0.21 tracin MRR on train-split facts (results/attribution/README.md#the-
# example-loss); a corpus that states no objects gets the whole sentence
DEFAULT_EXAMPLE_LOSS: ExampleLoss = "object"
# --checkpoint-select's named rules (ftrace.runs.select); anything else names checkpoint steps
NAMED_SELECTIONS = ("all", "ftrace", "final", "base")


def selected_steps(select: str) -> list[int] | None:
    """The steps a --checkpoint-select names ("121" or "121,2014"), or None for a named rule."""
    if select in NAMED_SELECTIONS:
        return None
    try:
        steps = sorted({int(s) for s in select.split(",")})
    except ValueError:
        steps = []
    if not steps or steps[0] < 0:
        raise ValueError(f"choose {', '.join(NAMED_SELECTIONS)} or checkpoint steps (e.g. 121,2014)")
    return steps


class EmbeddingConfig(Strict):
    # hidden_states index: 0 = the embedding layer's output (FTRACE's best), i = output of block i.
    layers: Annotated[list[int], cli("Hidden-state layers to pool (0 = embedding layer).", "--embed-layers",
                                     split=True)] = [0]
    # a plain mean of a model's token vectors is dominated by the direction all of them share and weighs "the" like
    # "Toyota": idf pooling 0.69 against the mean's 0.24 embed MRR on train-split facts (results/attribution/README.md
    # #embed); an existing index keeps its own (ftrace.ingest.pipeline.resolve_defaults)
    pooling: Annotated[Literal["mean", "idf"],
                       cli("idf: each token's hidden state weighted by its inverse document frequency, the corpus's "
                           "mean token subtracted, both fitted at ingest on --embed-samples sentences; mean: FTRACE's "
                           "plain mean (default: an existing index's own, else idf).", "--embed-pooling")] = "idf"
    samples: Annotated[int, Field(ge=1), cli("Seeded sample of sentences the idf pooling is fitted on (unused by "
                                             "the mean).", "--embed-samples", min=1)] = 4096


class GradientConfig(Strict):
    """What one gradient featurizer computes (recorded verbatim in the manifest's vector spec)."""

    # fnmatch patterns over module names; the default is the (tied) embedding matrix.
    layers: Annotated[list[str], cli("Module name patterns whose weight gradients are projected "
                                     "(default: the input embedding).", "--tracin-layers", split=True)] = \
        ["model.embed_tokens"]
    # size of EACH block's projection; the sum over blocks must be <= MAX_VECTOR_SIZE
    dim: Annotated[int, Field(ge=1), cli("Projection size per layer block (total at most 65535); with "
                                         "--tracin-projection rows, numbers per row (exact at the hidden size or "
                                         "more).", "--tracin-dim", min=1)] = BLOCK_DIM
    # a rows index's other blocks (e.g. MLP Linears: no rows to keep) are factored, dense parts of its sparse vector
    block_dim: Annotated[int | None, Field(ge=1), cli("With --tracin-projection rows: the factored projection size "
                                                      "of each block that is not an embedding lookup (e.g. an "
                                                      f"MLP's; default {BLOCK_DIM}).", "--tracin-block-dim",
                                                      min=1)] = None
    seed: Annotated[int, cli("Seed of the random projection.", "--tracin-seed")] = 0
    projection: Annotated[Projection,
                          cli("factored (LoGra-style, default); sketch (TensorSketch: a little slower, keeps the "
                              "exact cosines' order better, e.g. Spearman 0.81 against 0.72 at 4096); dense: the "
                              "reference, for small layers (a dense matrix per block); or rows: an embedding "
                              "lookup's gradient as it is, the rows of the example's own tokens, in a sparse vector "
                              "(--tracin-tied input or an untied input embedding; --tracin-dim: numbers per row, "
                              "exact at the hidden size or more, else each row projected).",
                              "--tracin-projection")] = "factored"
    # torch file: Adam/AdamW state_dict or {parameter name: exp_avg_sq}
    optimizer_state: Annotated[str | None, cli("Adam/AdamW state (torch file): divide gradients by sqrt of "
                                               "second moments.", "--optimizer-state")] = None
    # divisor sqrt(v) + eps + floor x the block's mean sqrt(v): parameters the optimizer barely moved
    # (e.g. the rows of tokens a fine-tune never saw, v ~ 0) are not multiplied by ~1/eps
    optimizer_floor: Annotated[float, Field(ge=0), cli("With an optimizer state: add this times the block's mean "
                                                       "sqrt(second moment) to the divisor (0: Adam's eps only); for "
                                                       "a short run's state, whose many ~0 moments make noise.",
                                                       "--optimizer-floor")] = 0.0
    # TrackStar R^-1/2, fitted on a calibration sample
    whiten: Annotated[bool, cli("TrackStar whitening by R^-1/2, fitted on a calibration sample.", "--whiten")] = False
    # lambda = whiten_damping x the mean eigenvalue of R over the calibration sample's span (whitening.py)
    whiten_damping: Annotated[float, Field(gt=0), cli("Whitening regulariser: (R + lambda I)^-1/2 with lambda = this "
                                                      "x the mean eigenvalue of R.", "--whiten-damping")] = 0.1
    # a weight shared by an Embedding and another module (SmolLM2's input embedding = LM head)
    tied: Annotated[Literal["both", "input", "output"],
                    cli("Gradient of a tied weight: both (the true gradient), input (its embedding lookup only) "
                        "or output (its LM-head use only: no backward pass, about 2.5x faster for 0.045 lower MRR, "
                        "for a quick first index).", "--tracin-tied")] = "both"
    # the loss of each stored training example (ftrace.model.objective); queries always score their
    # target tokens. The CLI option is TracInConfig's.
    example_loss: ExampleLoss = DEFAULT_EXAMPLE_LOSS


class TracInConfig(GradientConfig):
    """The ingest-time "tracin" vector: gradients at one or more checkpoints, optionally whitened."""

    enabled: Annotated[bool, cli("Store projected loss gradients (TracIn/TrackStar).", "--tracin/--no-tracin")] = True
    # at least a block's dimensions (4,096), so that R has full rank: on the trained model's index 512 gained
    # nothing and 4,096 gained +0.02 MRR (results/attribution/README.md#whitening)
    whiten_samples: Annotated[int, Field(ge=1), cli("Training examples in the whitening calibration sample (at least "
                                                    "the block size, so R has full rank; capped at the corpus).",
                                                    "--whiten-samples", min=1)] = 4096
    # TrackStar's task-specific R (its appendix A.1.3): the directions every query shares (a relation's template, the
    # answer space) weigh less. On the trained model's rows index: +0.036 MRR over R from training gradients alone,
    # lam chosen on facts not reported; a query fitted into R weighs its own subject down, so the bench leaves the
    # sample's queries out (results/attribution/README.md#trackstars-task-specific-whitening-the-query-gradients-
    # autocorrelation-mixed-in)
    whiten_queries: Annotated[int, Field(ge=0), cli("With --whiten: also fit R on the query gradients of this many of "
                                                    "the corpus's queries, drawn with the seed (TrackStar's "
                                                    "task-specific whitening); `ftrace bench` leaves them out of its "
                                                    "draws. 0: training gradients only.", "--whiten-queries",
                                                    min=0)] = 0
    whiten_query_mix: Annotated[float, Field(ge=0, le=1),
                                cli("With --whiten-queries: R = this x the queries' R + (1 - this) x the training "
                                    "examples' R (0.99: chosen at --whiten-damping 0.01 on a trained model's "
                                    "fine-tune-learned facts).", "--whiten-query-mix")] = 0.99
    checkpoints: Annotated[list[str] | None, cli("Checkpoint(s) to take gradients at (repeat); default: --model.",
                                                 "--checkpoint")] = None
    train_dir: Annotated[Path | None, cli("An `ftrace train` output directory: gradients at its checkpoints, "
                                          "answers and embeddings from its final checkpoint.", "--train-run",
                                          metavar="TRAIN_DIR", renamed_from=("--checkpoints",))] = None
    select: Annotated[str, cli("With --train-run: all (every fine-tuned checkpoint), ftrace (FTRACE's 3 spaced in "
                               "inverse perplexity), final, base (step 0: gradients before fine-tuning, answers "
                               "and embeddings still from the final checkpoint), or the steps of chosen "
                               "checkpoints (e.g. 121,2014).", "--checkpoint-select")] = "ftrace"

    @field_validator("select")
    @classmethod
    def _select(cls, v: str) -> str:
        steps = selected_steps(v)
        return v if steps is None else ",".join(map(str, steps))  # one spelling in records and logs
    # off by default: after short runs dividing by the moments hurt (a 90-step run, results/train; the 300-step
    # pilot, -0.14 MRR), after the 2,014-step main run it helped (+0.17): results/attribution/README.md
    checkpoint_optimizer: Annotated[bool, cli("With --train-run: divide each checkpoint's gradients by its own "
                                              "Adam second moments (TrackStar's correction: +0.17 MRR at four "
                                              "checkpoints of a 2,014-step run; off by default: after short runs "
                                              "it made tracin worse, -0.14 after 300 steps).",
                                              "--checkpoint-optimizer/--no-checkpoint-optimizer")] = False
    # None: the model's input embedding, whatever its module name
    layers: Annotated[list[str] | None,
                      cli("Module name patterns whose weight gradients are projected (default: the input embedding).",
                          "--tracin-layers", split=True)] = None  # type: ignore[assignment]
    # None: decided by `loss_for` (ftrace.ingest.pipeline.resolve_defaults, before anything else reads it)
    example_loss: Annotated[ExampleLoss | None,
                            cli("Training examples' loss: sentence (LM loss of the whole sentence) or object (the "
                                "object tokens of the sentence's first fact found in it, given the text before; "
                                "whole sentence where none). Default: an existing index's own, else the training "
                                f"run's with --train-run, else {DEFAULT_EXAMPLE_LOSS} (sentence for a corpus that "
                                "states no objects).", "--example-loss",
                                renamed_from=("--tracin-loss",))] = None  # type: ignore[assignment]

    def loss_for(self, run: ExampleLoss | None = None, index: ExampleLoss | None = None,
                 objects: bool = True) -> ExampleLoss:
        """The one rule for the gradients' example loss: --example-loss, else the index's own (re-running or resuming
        an ingest keeps what the index was built with), else the training run's (the loss its checkpoints learned
        from: a fitted checkpoint's gradient under the other one points elsewhere, results/attribution), else
        DEFAULT_EXAMPLE_LOSS where the corpus states `objects` at all, else the whole sentence."""
        return self.example_loss or index or run or (DEFAULT_EXAMPLE_LOSS if objects else "sentence")

    def gradient(self, input_embedding: str, run_loss: ExampleLoss | None = None) -> GradientConfig:
        """The featurizer's own part of these settings (`input_embedding`: the default layer; the example loss by
        `loss_for`, given the training run's)."""
        return GradientConfig(**self.model_dump(include=set(GradientConfig.model_fields) - {"layers", "example_loss"}),
                              layers=self.layers or [input_embedding], example_loss=self.loss_for(run_loss))
