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


def example_batch(tokenizer, texts: Sequence[str], max_length: int = 128) -> LossBatch:
    """Language-model loss over each whole sentence."""
    rows = []
    for text in texts:
        tok = tokenizer(text, truncation=True, max_length=max_length)["input_ids"]
        lab = list(tok)
        lab[0] = IGNORE  # the first token has no prediction
        rows.append((tok, lab))
    return _pad(rows, tokenizer.pad_token_id)


def query_batch(tokenizer, prompts: Sequence[str], targets: Sequence[str], max_length: int = 128) -> LossBatch:
    """Loss of the target tokens given the prompt (target tokenised with its leading space)."""
    rows = []
    for prompt, target in zip(prompts, targets, strict=True):
        p = tokenizer(prompt, truncation=True, max_length=max_length)["input_ids"]
        t = tokenizer(" " + target.strip(), add_special_tokens=False)["input_ids"]
        rows.append((p + t, [IGNORE] * len(p) + t))
    return _pad(rows, tokenizer.pad_token_id)


def token_lengths(tokenizer, texts: Sequence[str]) -> list[int]:
    return [len(ids) for ids in tokenizer(list(texts))["input_ids"]]
