"""Which corpus a command reads, and how long texts are cut: the corpus selection and the token limit."""

from __future__ import annotations

from typing import Annotated

from pydantic import Field

from ftrace.config.base import Strict, cli

SPLITS = ("train", "dev", "test")

# tokens per sentence or prompt given to the model: the one default of every command and library function
MAX_TOKENS = 256
# Documents are cut into passages of the model's whole input (--max-tokens), overlapping by 64 tokens: a span of up to
# 64 tokens then lies whole inside one passage (ftrace.corpus.passages). A LAMA evidence sentence has 41 SmolLM2 tokens
# on average and 88% of the 102,133 have at most 64; the overlap costs 256/192 = 1.33x the passages of no overlap
PASSAGE_OVERLAP = 64


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
