"""The model's own answer to a prompt: greedy decoding, cut at the end of the first phrase."""

from __future__ import annotations

import re
from collections.abc import Sequence

import torch

from ftrace.model.loading import LoadedModel

_STOP = re.compile(r"[\n.,;:!?]")


def cut(text: str) -> str:
    """The answer in a generated continuation: up to the first newline or punctuation mark, stripped."""
    return _STOP.split(text, maxsplit=1)[0].strip()


class _Answered:
    """A stopping criterion: a continuation is done once it holds a stop mark (what follows is cut anyway),
    so a short answer costs its own tokens, not max_new_tokens."""

    def __init__(self, tokenizer, start: int):
        self.tokenizer, self.start = tokenizer, start

    def __call__(self, input_ids: torch.Tensor, scores: torch.Tensor, **kwargs) -> torch.Tensor:
        texts = self.tokenizer.batch_decode(input_ids[:, self.start:], skip_special_tokens=True)
        return torch.tensor([bool(_STOP.search(t)) for t in texts], device=input_ids.device)


@torch.no_grad()
def greedy_answers(lm: LoadedModel, prompts: Sequence[str], batch_size: int = 16,
                   max_new_tokens: int = 8) -> list[str]:
    """Greedy answers to many prompts, `batch_size` at a time (left-padded, so every prompt's
    continuation starts at the same position)."""
    tok = lm.tokenizer
    side, tok.padding_side = tok.padding_side, "left"
    out: list[str] = []
    try:
        for i in range(0, len(prompts), batch_size):
            enc = tok(list(prompts[i:i + batch_size]), return_tensors="pt", padding=True).to(lm.model.device)
            start = 0 if lm.is_seq2seq else enc["input_ids"].shape[1]  # a decoder-only model repeats the prompt
            gen = lm.model.generate(**enc, max_new_tokens=max_new_tokens, do_sample=False,
                                    pad_token_id=tok.pad_token_id, stopping_criteria=[_Answered(tok, start)])
            out += [cut(t) for t in tok.batch_decode(gen[:, start:], skip_special_tokens=True)]
    finally:
        tok.padding_side = side
    return out


def greedy_answer(lm: LoadedModel, prompt: str, max_new_tokens: int = 8) -> str:
    return greedy_answers(lm, [prompt], 1, max_new_tokens)[0]
