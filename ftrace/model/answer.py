"""The model's own answer to a prompt (greedy decoding, cut at the end of the first phrase), and whether it is
right, decided for many prompts at once without generating (`answers_right`)."""

from __future__ import annotations

import contextlib
import re
from collections.abc import Iterator, Sequence

import torch

from ftrace.corpus.records import ARTICLES, match_key
from ftrace.model.batching import budget_batches
from ftrace.model.loading import LoadedModel

_STOP = re.compile(r"[\n.,;:!?]")
MAX_NEW_TOKENS = 8  # the longest answer generated
BATCH_TOKENS = 4096  # answers_right: padded tokens a batch (its logits: that many x the vocabulary)
# answers_right's implementation of RULE; a new version makes cached verdicts (bench's "@right") stale
# 2: a forced argmax that is part of a character (a byte token) is left to generation
# 3: a leading article aside (the one `match_key` rule): "the United States" is right for "United States"
RIGHT_RULE_VERSION = 3

RULE = ("right when the normalised target (lowercase, whitespace collapsed, stripped, a leading article aside) equals "
        "the normalised greedy answer or is its prefix followed by a space or punctuation: 'Toyota Motor', 'Toyota's' "
        "and 'the Toyota' count for 'Toyota', 'Toyotas' does not")


def answer_is_right(answer: str, target: str) -> bool:
    """RULE, on a generated answer (already `cut`)."""
    a, t = match_key(answer), match_key(target)
    return bool(t) and a.startswith(t) and (len(a) == len(t) or not a[len(t)].isalnum())


def has_stop(text: str) -> bool:
    """Whether a continuation holds a newline or punctuation mark: the answer ends there (`cut`)."""
    return _STOP.search(text) is not None


def cut(text: str) -> str:
    """The answer in a generated continuation: up to the first newline or punctuation mark, stripped, and its first
    words alone where they repeat with more after ("Philadelphia Philadelphia PA Philadelphia" -> "Philadelphia"; a
    name of repeated words, "Walla Walla", is kept: no LAMA object repeats a word)."""
    words = _STOP.split(text, maxsplit=1)[0].split()
    for k in range(1, (len(words) - 1) // 2 + 1):  # k words, again, and more after them
        if words[k:2 * k] == words[:k]:
            return " ".join(words[:k])
    return " ".join(words)


class _Answered:
    """A stopping criterion: a continuation is done once it holds a stop mark (what follows is cut anyway),
    so a short answer costs its own tokens, not max_new_tokens."""

    def __init__(self, tokenizer, start: int):
        self.tokenizer, self.start = tokenizer, start

    def __call__(self, input_ids: torch.Tensor, scores: torch.Tensor, **kwargs) -> torch.Tensor:
        texts = self.tokenizer.batch_decode(input_ids[:, self.start:], skip_special_tokens=True)
        return torch.tensor([has_stop(t) for t in texts], device=input_ids.device)


@contextlib.contextmanager
def _cut_left(tok) -> Iterator[None]:
    """Pad and truncate on the left while inside: a long prompt keeps its end, next to the answer."""
    sides = tok.padding_side, tok.truncation_side
    tok.padding_side = tok.truncation_side = "left"
    try:
        yield
    finally:
        tok.padding_side, tok.truncation_side = sides


@torch.no_grad()
def beam_answers(lm: LoadedModel, prompts: Sequence[str], beams: int = 1, batch_size: int = 16,
                 max_new_tokens: int = MAX_NEW_TOKENS, max_tokens: int | None = None) -> list[list[str]]:
    """The `beams` best answers of a beam search per prompt, best first (1: the greedy answer), `batch_size` prompts
    at a time (left-padded, so every prompt's continuation starts at the same position). A prompt over `max_tokens`
    tokens (the index's --max-tokens) loses its beginning, as the query vectors do: a request's work stays
    bounded."""
    tok = lm.tokenizer
    out: list[list[str]] = []
    with _cut_left(tok):
        for i in range(0, len(prompts), batch_size):
            enc = tok(list(prompts[i:i + batch_size]), return_tensors="pt", padding=True,
                      truncation=max_tokens is not None, max_length=max_tokens).to(lm.model.device)
            start = 0 if lm.is_seq2seq else enc["input_ids"].shape[1]  # a decoder-only model repeats the prompt
            gen = lm.model.generate(**enc, max_new_tokens=max_new_tokens, do_sample=False, num_beams=beams,
                                    num_return_sequences=beams, pad_token_id=tok.pad_token_id,
                                    stopping_criteria=[_Answered(tok, start)])
            texts = [cut(t) for t in tok.batch_decode(gen[:, start:], skip_special_tokens=True)]
            out += [texts[j:j + beams] for j in range(0, len(texts), beams)]
    return out


def greedy_answers(lm: LoadedModel, prompts: Sequence[str], batch_size: int = 16,
                   max_new_tokens: int = MAX_NEW_TOKENS, max_tokens: int | None = None) -> list[str]:
    """The greedy answer to each prompt (`beam_answers` with one beam)."""
    return [a[0] for a in beam_answers(lm, prompts, 1, batch_size, max_new_tokens, max_tokens)]


def in_top_answers(lm: LoadedModel, prompts: Sequence[str], targets: Sequence[str], beams: int = 3,
                   max_tokens: int | None = None) -> list[bool]:
    """Whether any of the `beams` best answers of a beam search is right for its target (FTRACE's code keeps a fact
    as fine-tune-learned only where its first checkpoint's 3 beams all miss it)."""
    found = beam_answers(lm, prompts, beams, max_tokens=max_tokens)
    return [any(answer_is_right(a, t) for a in answers) for answers, t in zip(found, targets, strict=True)]


def greedy_answer(lm: LoadedModel, prompt: str, max_new_tokens: int = MAX_NEW_TOKENS,
                  max_tokens: int | None = None) -> str:
    return greedy_answers(lm, [prompt], 1, max_new_tokens, max_tokens)[0]


@torch.no_grad()
def answers_right(lm: LoadedModel, prompts: Sequence[str], targets: Sequence[str], batch_size: int = 64,
                  max_new_tokens: int = MAX_NEW_TOKENS, max_tokens: int | None = None) -> list[bool]:
    """Whether the greedy answer to each prompt is right for its target (`answer_is_right(greedy_answer(prompt),
    target)`), from ONE teacher-forced forward per batch instead of token-by-token generation: the answer
    starts with the target's tokens when each of them is the argmax given the prompt and the ones before it,
    and is right when the argmax after them starts a new word (or max_new_tokens is reached). Where the
    forced tokens cannot decide, because the argmax leaves the target's tokenisation but its text still agrees
    with the target (another tokenisation, another case), or a predicted token's text is a partial character,
    the answer is generated: the rule is the generated one's (up to near-ties between logits, which padded
    batches and generation's cached steps may break differently)."""
    if lm.is_seq2seq:  # the target is the decoder's, not a continuation of the prompt: generate
        return [answer_is_right(a, t) for a, t in
                zip(greedy_answers(lm, prompts, max_new_tokens=max_new_tokens, max_tokens=max_tokens), targets,
                    strict=True)]
    tok = lm.tokenizer
    out: list[bool | None] = [None] * len(prompts)
    rows: list[tuple[int, list[int], list[int]]] = []  # (position in the input, prompt ids, target ids)
    with _cut_left(tok):  # each prompt as generation sees it
        for i, (prompt, target) in enumerate(zip(prompts, targets, strict=True)):
            t = tok(" " + target.strip(), add_special_tokens=False)["input_ids"]
            if not match_key(target) or has_stop(target.strip()):
                out[i] = False  # an answer is cut at its first punctuation mark: such a target is never right
            elif len(t) <= max_new_tokens:  # a longer one: only generation can tell
                rows.append((i, tok(prompt, truncation=max_tokens is not None, max_length=max_tokens)["input_ids"],
                             t))
    rows.sort(key=lambda r: len(r[1]) + len(r[2]))  # similar lengths together: little padding
    device = lm.model.device
    # at most `batch_size` rows and BATCH_TOKENS padded tokens a batch: the logits (rows x width x vocabulary) stay
    # bounded whatever the prompts' lengths
    for part in budget_batches([len(p) + len(t) for _, p, t in rows], batch_size, BATCH_TOKENS):
        chunk = rows[part]
        width = max(len(p) + len(t) for _, p, t in chunk)
        ids = torch.full((len(chunk), width), tok.pad_token_id, dtype=torch.long)
        mask = torch.zeros_like(ids)
        for b, (_, p, t) in enumerate(chunk):
            ids[b, :len(p) + len(t)] = torch.tensor(p + t)
            mask[b, :len(p) + len(t)] = 1
        logits = lm.model(input_ids=ids.to(device), attention_mask=mask.to(device), use_cache=False).logits
        for b, (i, p, t) in enumerate(chunk):
            # the argmax after the prompt and after each target token: len(t) + 1 predictions
            best = logits[b, len(p) - 1:len(p) + len(t)].argmax(-1).tolist()
            out[i] = _decide(tok, t, best, targets[i], max_new_tokens)
    undecided = [i for i, v in enumerate(out) if v is None]
    if undecided:
        answers = greedy_answers(lm, [prompts[i] for i in undecided], max_new_tokens=max_new_tokens,
                                 max_tokens=max_tokens)
        for i, a in zip(undecided, answers, strict=True):
            out[i] = answer_is_right(a, targets[i])
    return [bool(v) for v in out]


def _decide(tok, target_ids: list[int], best: list[int], target: str, max_new_tokens: int) -> bool | None:
    """The rule from the forced argmaxes (None: generate to decide)."""
    for j, want in enumerate(target_ids):
        if best[j] in tok.all_special_ids:
            return False  # the answer ends before the target does
        if best[j] != want:
            text = tok.decode(target_ids[:j] + [best[j]], skip_special_tokens=True)
            if "\ufffd" in text:
                return None  # part of a character (a byte token): what it becomes depends on what follows
            if has_stop(_continuation(tok, target_ids[:j], best[j])):
                return answer_is_right(cut(text), target)  # the answer ends at this mark: it is final
            so_far = match_key(text)
            if so_far in ARTICLES:
                return None  # an article first: what follows it decides (`match_key` sets it aside)
            whole = match_key(tok.decode(target_ids, skip_special_tokens=True))
            # a greedy path whose text still agrees with the target's: only generation can tell
            return None if so_far.startswith(whole) or whole.startswith(so_far) else False
    if len(target_ids) == max_new_tokens:
        return True  # generation stops here: the answer is the target
    if best[-1] in tok.all_special_ids:
        return True  # the answer ends with the target
    nxt = _continuation(tok, target_ids, best[-1])
    if not nxt or "\ufffd" in nxt:
        return None  # part of a character: what it becomes depends on what follows
    return not nxt[0].isalnum()


def _continuation(tok, ids: list[int], token: int) -> str:
    """The text `token` adds after `ids`, decoded in context (a lone SentencePiece token loses its leading space)."""
    before = tok.decode(ids, skip_special_tokens=True)
    return tok.decode(ids + [token], skip_special_tokens=True)[len(before):]
