"""Every command's settings, declared once: pydantic models composed per command.

A setting is a field: its type, default, validation and help live here, and `ftrace.cli` turns the
fields marked with `Cli(...)` into the command's options (`cli.command_from_config`). Sections
(corpus selection, embedding, gradients, store) are models of their own, reused by the commands
that need them; the featurizers take their section (e.g. `GradientConfig`) as it is.

Names: "gradient" is the machinery (projected per-example loss gradients, kind "gradient" in
manifests); "tracin" is the stored vector and the retrieval method built from it (TracIn /
TrackStar scores), hence the `--tracin-*` options.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Literal

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, field_validator, model_validator

from ftrace.plumbing import directory_problem

DEFAULT_MODEL = "smollm2-135m"
DEFAULT_INDEX = Path("indexes/sample")
SPLITS = ("train", "dev", "test")
MAX_VECTOR_SIZE = 65_535  # Qdrant's largest dense vector: a gradient vector's size, summed over its blocks


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


# tokens per sentence or prompt given to the model: the one default of every command and library function
MAX_TOKENS = 256
# Documents are cut into passages of the model's whole input (--max-tokens), overlapping by 64 tokens: a span of up to
# 64 tokens then lies whole inside one passage (ftrace.corpus.passages). A LAMA evidence sentence has 41 SmolLM2 tokens
# on average and 88% of the 102,133 have at most 64; the overlap costs 256/192 = 1.33x the passages of no overlap
PASSAGE_OVERLAP = 64


# --- sections ------------------------------------------------------------------------------------

class CorpusSelection(Strict):
    corpus: Annotated[str, cli("'sample', records (a .jsonl, .jsonl.gz, .jsonl.zst or .parquet file, a datasets "
                               "save_to_disk directory, or a directory of such files), a LAMA T-REx directory or a "
                               "raw T-REx .json file.")] = "sample"
    relations: Annotated[list[str] | None, cli("LAMA relations to load (e.g. P176); repeat or comma-separate.",
                                               "--relation", "-r", split=True)] = None
    splits: Annotated[list[str], Field(min_length=1), cli("LAMA splits (train, dev, test).", "--split",
                                                          split=True)] = list(SPLITS)
    # at least 1: --limit 0 would build an empty index, and call it complete
    limit: Annotated[int | None, Field(ge=1), cli("First N facts of each LAMA relation/split file.", min=1)] = None
    text_field: Annotated[str, Field(min_length=1), cli("A record's text field (a corpus of records).")] = "text"
    id_field: Annotated[str, Field(min_length=1), cli("A record's id field (a corpus of records; a record without "
                                                      "one is named by a hash of its text).")] = "id"
    passage_tokens: Annotated[int | None, Field(ge=16), cli("A record longer than this many of the model's tokens is "
                                                            "cut into passages (default: --max-tokens; LAMA and T-REx "
                                                            "sentences are kept whole).", min=16)] = None
    stride: Annotated[int | None, Field(ge=1), cli(f"Tokens from one passage's start to the next (default: "
                                                   f"--passage-tokens - {PASSAGE_OVERLAP}, or 3/4 of a passage under "
                                                   f"{4 * PASSAGE_OVERLAP}: consecutive passages share a sentence's "
                                                   "length).", min=1)] = None

    def passages(self, max_tokens: int) -> tuple[int, int]:
        """(size, stride) of the passages long records are cut into, for a model given `max_tokens` tokens."""
        size = self.passage_tokens or max_tokens
        return size, self.stride or size - min(PASSAGE_OVERLAP, size // 4)

    def check_passages(self, max_tokens: int) -> None:
        """Refuse passages the model would not see whole, or that would leave text out."""
        size, stride = self.passages(max_tokens)
        if size > max_tokens:
            raise ValueError(f"--passage-tokens {size}: more than --max-tokens {max_tokens}, the model would see only "
                             "the first part of each passage")
        if stride > size:
            raise ValueError(f"--stride {stride}: longer than a passage ({size} tokens), it would leave text between "
                             "passages out")


# The example loss: the one name (--example-loss) for what a training example's loss scores, in ingest and train
ExampleLoss = Literal["sentence", "object"]
# ingest's example loss when neither --example-loss, an existing index nor a training run says: FTRACE's masked
# object, 0.29 against the whole sentence's 0.21 tracin MRR on train-split facts (results/attribution/README.md#the-
# example-loss); a corpus that states no objects gets the whole sentence
DEFAULT_EXAMPLE_LOSS: ExampleLoss = "object"
# Past this length an ingest batch holds fewer tokens (budget_batches' square_from): a whole-corpus ingest's memory
# peaked on its longest batches, where the attention weights the backward keeps (examples x length²) grow; 2.9% of
# LAMA's tokens lie in sentences longer than it (results/scale/README.md#ingest)
SQUARE_FROM = 128


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
    dim: Annotated[int, Field(ge=1), cli("Projection size per layer block (total at most 65535).", "--tracin-dim",
                                         min=1)] = 4096
    seed: Annotated[int, cli("Seed of the random projection.", "--tracin-seed")] = 0
    projection: Annotated[Literal["factored", "dense"],
                          cli("factored (LoGra-style, default) or dense: the reference the factored one is tested "
                              "against, for small layers (a dense matrix per block).",
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
    # the loss of each stored training example (ftrace.features.gradients.examples); queries always score their
    # target tokens. The CLI option is TracInConfig's.
    example_loss: ExampleLoss = DEFAULT_EXAMPLE_LOSS


class TracInConfig(GradientConfig):
    """The ingest-time "tracin" vector: gradients at one or more checkpoints, optionally whitened."""

    enabled: Annotated[bool, cli("Store projected loss gradients (TracIn/TrackStar).", "--tracin/--no-tracin")] = True
    whiten_samples: Annotated[int, Field(ge=1), cli("Training examples in the whitening calibration sample.",
                                                    "--whiten-samples", min=1)] = 512
    checkpoints: Annotated[list[str] | None, cli("Checkpoint(s) to take gradients at (repeat); default: --model.",
                                                 "--checkpoint")] = None
    train_dir: Annotated[Path | None, cli("An `ftrace train` output directory: gradients at its checkpoints, "
                                          "answers and embeddings from its final checkpoint.", "--train-run",
                                          metavar="TRAIN_DIR", renamed_from=("--checkpoints",))] = None
    select: Annotated[Literal["all", "ftrace", "final", "base"],
                      cli("With --train-run: every fine-tuned checkpoint, FTRACE's 3 spaced in inverse "
                          "perplexity, the final one, or the base model (step 0: gradients before "
                          "fine-tuning, answers and embeddings still from the final checkpoint).",
                          "--checkpoint-select")] = "ftrace"
    # off by default: after a short fine-tune most rows of a tied embedding have second moments ~0, and
    # dividing by them turned the vectors into noise (results/train/README.md)
    checkpoint_optimizer: Annotated[bool, cli("With --train-run: divide each checkpoint's gradients by its own "
                                              "Adam second moments (TrackStar's correction; off: after a short run "
                                              "they are ~0 for most rows and the vectors become noise).",
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


class StoreConfig(Strict):
    """Where the vectors live (recorded in the manifest)."""

    backend: Annotated[Literal["edge", "local", "remote"],
                       cli("Vector back end: edge (in process), local (qdrant-client local mode), remote.",
                           "--qdrant")] = "edge"
    collection: Annotated[str, cli("Qdrant collection name (client back ends).", "--collection")] = "ftrace"
    url: Annotated[str | None, cli("Qdrant server or cluster URL (implies --qdrant remote).", "--qdrant-url")] = None
    float16: Annotated[bool, cli("Vector storage type (default float16).", "--float16/--float32")] = True
    hnsw: Annotated[bool, cli("Build an HNSW index after ingest (default: exact search).", "--hnsw")] = False
    # a Qdrant server's collection layout (docker/README.md): shards spread points over the cluster's
    # nodes, replicas keep copies of each shard on other nodes
    shard_number: Annotated[int, Field(ge=1), cli("Qdrant server: shards of the collection.", "--qdrant-shards",
                                                  min=1)] = 1
    replication_factor: Annotated[int, Field(ge=1), cli("Qdrant server: copies of each shard.", "--qdrant-replicas",
                                                        min=1)] = 1

    @model_validator(mode="after")
    def _url_means_remote(self) -> StoreConfig:
        if self.url and self.backend == "edge":
            self.backend = "remote"
        if self.backend == "edge" and (self.shard_number, self.replication_factor) != (1, 1):
            raise ValueError("--qdrant-shards/--qdrant-replicas set a Qdrant server's collection layout: give "
                             "--qdrant-url (or --qdrant local)")
        return self


# --- commands -------------------------------------------------------------------------------------

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


# what `ftrace ingest --add` takes besides the index's own settings: where and how fast it runs
ADD_OPTIONS = {"index", "add", "corpus", "device", "batch_size", "batch_tokens", "threads"}


class IngestConfig(Strict):
    index: IndexPath = DEFAULT_INDEX
    corpus: CorpusSelection = CorpusSelection()
    model: Annotated[str | None, cli("'smollm2-135m' (built in, the default) or a Hugging Face causal LM id or "
                                     "path; with --train-run, the run's final checkpoint.")] = None
    embed: EmbeddingConfig = EmbeddingConfig()
    tracin: TracInConfig = TracInConfig()
    store: StoreConfig = StoreConfig()
    batch_size: Annotated[int, Field(ge=1), cli("Examples per forward/backward batch.", min=1)] = 32
    # memory grows with examples x padded length (SmolLM2: ~1.6-2.2 MB a token, perf/results/batch_memory-cpu*.md),
    # so long sentences (sorted together) come in smaller batches. 1024 (32 x 32) instead of 2048: 1,500 long LAMA
    # sentences in bfloat16 peaked at 4.5 instead of 7.0 GiB, in a time within run-to-run noise
    # (results/scale/README.md#ingest); past SQUARE_FROM tokens batches shrink further; the vectors
    # do not depend on it beyond float rounding
    batch_tokens: Annotated[int, Field(ge=1), cli("Token budget per batch: at most this many examples x padded "
                                                  "length (a longer sentence is a batch of its own); past "
                                                  f"{SQUARE_FROM} tokens, examples x length² within it x "
                                                  f"{SQUARE_FROM}.", min=1)] = 1024
    device: Device = "auto"
    dtype: Dtype = "float32"
    threads: Threads = None
    max_tokens: Annotated[int, Field(ge=8),
                          cli("Tokens per sentence and query given to the model; longer sentences lose their end "
                              "(counted at ingest), longer prompts their beginning.")] = MAX_TOKENS
    add: Annotated[str | None, cli("Append this corpus (any --corpus form) to the complete index --index, "
                                   "featurised as the index was (its model, checkpoints, vectors and passages).",
                                   metavar="CORPUS")] = None
    shard: Annotated[str | None, cli("Featurise only shard I of N (0-based, e.g. 0/4), one process or GPU each; "
                                     "then `ftrace ingest` without --shard finishes the index.",
                                     metavar="I/N")] = None

    @field_validator("index")
    @classmethod
    def _index_is_a_directory(cls, v: Path) -> Path:
        """A file is refused here, before the corpus loads (`ftrace.index.locks` checks again where it writes)."""
        problem = directory_problem(v)
        if problem:
            raise ValueError(f"{problem}; give a directory (an index, or a new path to build one in)")
        return v

    @field_validator("shard")
    @classmethod
    def _shard(cls, v: str | None) -> str | None:
        if v is None:
            return v
        m = re.fullmatch(r"\s*(\d+)\s*/\s*(\d+)\s*", v)
        if not m:
            raise ValueError("give I/N: shard I (0-based) of N, e.g. 0/4")
        i, n = int(m[1]), int(m[2])
        if not 0 <= i < n:
            raise ValueError(f"shard {i} of {n}: I runs from 0 to N-1" if n else "N must be at least 1")
        return f"{i}/{n}"

    @property
    def shard_of(self) -> tuple[int, int] | None:
        """(I, N) for --shard I/N, else None."""
        return None if self.shard is None else (int(self.shard.split("/")[0]), int(self.shard.split("/")[1]))

    @model_validator(mode="after")
    def _consistent(self) -> IngestConfig:
        if self.store.backend == "remote" and not self.store.url:
            raise ValueError("--qdrant remote needs --qdrant-url")
        if self.tracin.train_dir is not None and self.tracin.checkpoints:
            raise ValueError("--checkpoint and --train-run: give model checkpoints or a training run, not both")
        self.corpus.check_passages(self.max_tokens)
        if self.add is not None:
            asked = sorted({f"the {f} options" if f in ("embed", "tracin", "store") else "--" + f.replace("_", "-")
                            for f in self.model_fields_set - ADD_OPTIONS}
                           | {"--" + f.replace("_", "-") for f in self.corpus.model_fields_set
                              if f not in ("text_field", "id_field")})
            if asked:
                raise ValueError(f"--add extends the index as it was built; leave out {asked[0]} (what may go "
                                 "with --add: --device, --batch-size, --batch-tokens, --threads, --text-field, "
                                 "--id-field)")
        return self


# A fusion's defaults, for queries and the bench alike: equal weights, and a cascade re-ranking the second method's top
# 20 (ftrace.query.methods)
FUSION_WEIGHT = 0.5
CASCADE_K = 20
CascadeK = Annotated[int, Field(ge=1), cli("Cascade fusion: how many of the second method's top sentences "
                                          "the sum re-ranks.", "--cascade-k", min=1)]


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

    @field_validator("prompt")
    @classmethod
    def _prompt_given(cls, v: str | None) -> str | None:
        if v is not None and not v.strip():
            raise ValueError("blank; give the text the model completes, e.g. 'Toyota Avanza is produced by'")
        return v

    @field_validator("target")
    @classmethod
    def _target_given(cls, v: str | None) -> str | None:
        if v is not None and not v.strip():
            raise ValueError("blank; give the answer to trace, or leave it out to trace the model's own answer")
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


class ServeConfig(Strict):
    """`ftrace serve`: one process owns an index (model, Lucene and Qdrant opened once) and answers over HTTP."""

    index: IndexPath = DEFAULT_INDEX
    host: Annotated[str, cli("Address to listen on (0.0.0.0: every interface).")] = "127.0.0.1"
    port: Annotated[int, Field(ge=0, le=65535), cli("TCP port.")] = 8000
    device: Device = "auto"
    dtype: QueryDtype = None
    threads: Threads = None
    # a request is answered 503 after this long, queueing included, and the worker drops it at its next step
    request_timeout: Annotated[float, Field(gt=0), cli("Seconds a /trace request may take, time in the queue "
                                                       "included; then it is answered 503 and dropped.")] = 30.0


class CandidateSizes(Strict):
    """FTRACE's re-ranking candidate groups besides the proponents."""

    bm25: int = 100
    same_target: int = 100
    random: int = 100


GRID = [round(i / 10, 1) for i in range(11)]


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
                                                           "training run's last step; 2e-4 for an index no run "
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
        return self.out or Path(self.index) / "bench" / self.mode

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


class TrainConfig(Strict):
    """`ftrace train`: fine-tune the model on training sentences, saving checkpoints to trace with.

    Everything but `device` and where the data comes from / goes is the run's identity: resuming or
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
        return self.model_dump(exclude={"device", "index", "corpus", "out"})
