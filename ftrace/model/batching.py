"""Tokenised loss batches shared by every featuriser.

A `LossBatch` is right-padded; `labels[b, t]` is the token at position t when position t counts
towards the loss (predicted from position t-1), else -100. Training examples count every token of
the sentence; queries count only the target tokens after the prompt, with no end-of-sequence token
(FTRACE found that adding one hurts).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch

from ftrace.config import MAX_TOKENS
from ftrace.corpus.records import find_object

IGNORE = -100


@dataclass
class LossBatch:
    input_ids: torch.Tensor  # (B, T) long
    attention_mask: torch.Tensor  # (B, T) long, 1 = real token
    labels: torch.Tensor  # (B, T) long, IGNORE where not scored

    def __len__(self) -> int:
        return self.input_ids.shape[0]

    def to(self, device: torch.device | str) -> LossBatch:
        return LossBatch(self.input_ids.to(device), self.attention_mask.to(device), self.labels.to(device))


def _pad(rows: Sequence[tuple[list[int], list[int]]], pad_id: int) -> LossBatch:
    width = max(len(ids) for ids, _ in rows)
    ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(rows), width), dtype=torch.long)
    labels = torch.full((len(rows), width), IGNORE, dtype=torch.long)
    for b, (tok, lab) in enumerate(rows):
        ids[b, : len(tok)] = torch.tensor(tok)
        mask[b, : len(tok)] = 1
        labels[b, : len(lab)] = torch.tensor(lab)
    return LossBatch(ids, mask, labels)


def example_batch(tokenizer, texts: Sequence[str], max_tokens: int = MAX_TOKENS) -> LossBatch:
    """Language-model loss over each whole sentence."""
    rows = []
    for text in texts:
        tok = tokenizer(text, truncation=True, max_length=max_tokens)["input_ids"]
        lab = list(tok)
        lab[0] = IGNORE  # the first token has no prediction
        rows.append((tok, lab))
    return _pad(rows, tokenizer.pad_token_id)


def query_rows(tokenizer, prompt: str, target: str, max_tokens: int = MAX_TOKENS) -> tuple[list[int], list[int], bool]:
    """(input ids, labels, truncated) of one query: the target tokens (with their leading space)
    scored after the prompt. A prompt too long for `max_tokens` loses its BEGINNING (the end, next
    to the answer, is what matters), keeping any special tokens the tokenizer puts first."""
    p = tokenizer(prompt)["input_ids"]
    t = tokenizer(" " + target.strip(), add_special_tokens=False)["input_ids"]
    truncated = len(p) + len(t) > max_tokens
    if truncated:
        text = tokenizer(prompt, add_special_tokens=False)["input_ids"]
        head = next((i for i in range(len(p) - len(text) + 1) if p[i:i + len(text)] == text), 0)
        tail = p[head + len(text):]  # special tokens around the text (e.g. BOS) are kept
        room = max(1, max_tokens - len(t) - head - len(tail))  # an over-long target keeps one prompt token
        p = p[:head] + text[-room:] + tail
    return p + t, [IGNORE] * len(p) + t, truncated


def query_batch(tokenizer, prompts: Sequence[str], targets: Sequence[str], max_tokens: int = MAX_TOKENS) -> LossBatch:
    """Loss of the target tokens given the prompt (see `query_rows`)."""
    rows = [query_rows(tokenizer, p, t, max_tokens)[:2] for p, t in zip(prompts, targets, strict=True)]
    return _pad(rows, tokenizer.pad_token_id)


def token_lengths(tokenizer, texts: Sequence[str]) -> list[int]:
    return [len(ids) for ids in tokenizer(list(texts))["input_ids"]]


def budget_batches(lengths: Sequence[int], batch_size: int, budget: int, square_from: int = 0) -> list[slice]:
    """Split examples, in their order, into consecutive batches of at most `batch_size` examples whose padded
    size (examples x the longest one's length) stays within `budget` tokens; an example longer than that is a
    batch of its own. Memory then grows with the budget, not with the longest sentence. With `square_from` L, a
    batch of sentences longer than L also keeps examples x length² within budget x L: the attention weights a
    backward pass keeps grow with the square of the length, and past L a batch keeps no more of them than a full
    batch of L-token sentences. The split depends only on the lengths (ingest plans every batch from all the
    examples, and a resumed ingest redoes the plan's unfinished batches)."""
    out: list[slice] = []
    start = width = 0
    for i, n in enumerate(lengths):
        wider = max(width, n)
        count = i - start + 1
        over = count * wider > budget or (square_from and wider > square_from
                                          and count * wider * wider > budget * square_from)
        if i > start and (i - start >= batch_size or over):
            out.append(slice(start, i))
            start, wider = i, n
        width = wider
    if len(lengths):
        out.append(slice(start, len(lengths)))
    return out


def object_span_rows(tokenizer, texts: Sequence[str], objects: Sequence[str],
                     max_tokens: int = MAX_TOKENS) -> list[tuple[list[int], list[int]] | None]:
    """(input ids, labels) per text with exactly the tokens overlapping the first occurrence of the
    object labelled (the loss of the object given the sentence before it); None where the object is
    absent, or only covered by the first token (never labelled) or by tokens cut by `max_tokens`."""
    if not getattr(tokenizer, "is_fast", False):
        raise ValueError("object spans need a fast tokenizer (character offsets)")
    if not texts:  # a tokenizer called with no text raises IndexError
        return []
    enc = tokenizer(list(texts), truncation=True, max_length=max_tokens, return_offsets_mapping=True)
    rows: list[tuple[list[int], list[int]] | None] = []
    for text, obj, ids, offsets in zip(texts, objects, enc["input_ids"], enc["offset_mapping"], strict=True):
        span = find_object(text, obj)
        if span is None:
            rows.append(None)
            continue
        a, b = span
        # end > start skips special tokens, whose offsets are (0, 0).
        lab = [tok if i > 0 and e > s and s < b and e > a else IGNORE
               for i, (tok, (s, e)) in enumerate(zip(ids, offsets, strict=True))]
        rows.append((list(ids), lab) if any(t != IGNORE for t in lab) else None)
    return rows
