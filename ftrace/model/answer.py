"""The model's own answer to a prompt: greedy decoding, cut at the end of the first phrase."""

from __future__ import annotations

import re

import torch

from ftrace.model.loading import LoadedModel

_STOP = re.compile(r"[\n.,;:!?]")


@torch.no_grad()
def greedy_answer(lm: LoadedModel, prompt: str, max_new_tokens: int = 8) -> str:
    enc = lm.tokenizer(prompt, return_tensors="pt")
    out = lm.model.generate(**enc, max_new_tokens=max_new_tokens, do_sample=False,
                            pad_token_id=lm.tokenizer.pad_token_id)
    text = lm.tokenizer.decode(out[0, enc["input_ids"].shape[1]:], skip_special_tokens=True)
    return _STOP.split(text, maxsplit=1)[0].strip()
