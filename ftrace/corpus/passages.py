"""Cutting long documents into passages: windows of a model's tokens, `size` long, starting every `stride` tokens,
so that consecutive passages overlap by size - stride tokens and every span of that many tokens lies whole inside
one passage. The last window ends at the document's end. The defaults (ftrace.config.PASSAGE_TOKENS,
PASSAGE_OVERLAP) are justified where they are declared.

The corpus layer knows no model: the caller gives `Tokens`, a tokenizer's view of a text (`ftrace.model.corpus`).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

from ftrace.corpus.records import Sentence

SNAP = 8  # tokens a passage's edge may move back to fall between words
AHEAD = 8  # windows of a document cut (unchecked) per round: a round ends early where a window's shortening moves the
#            next start (every time when stride = size), and all of its windows ahead are tokenised again


class Tokens(Protocol):
    """A tokenizer as passages need it, many texts at a time (a fast tokenizer spreads them over the cores)."""

    def offsets(self, texts: list[str]) -> list[list[tuple[int, int]]]:
        """The character span of each token of each text."""
        ...

    def counts(self, texts: list[str]) -> list[int]:
        """How many tokens each text has, tokenised alone."""
        ...


def token_windows(n: int, size: int, stride: int) -> list[tuple[int, int]]:
    """Token windows [a, b) over n tokens: a = 0, stride, 2 stride, ..., the last one reaching n (`Passages.spans`'s
    windows where none needs shortening)."""
    out = []
    start = 0
    while True:
        out.append((start, min(start + size, n)))
        if start + size >= n:
            return out
        start += stride


@dataclass(frozen=True)
class Passages:
    """How long records are cut: windows of `size` tokens every `stride` (see the module docstring)."""

    size: int
    stride: int
    tokens: Tokens

    def describe(self) -> str:
        return f"passages of {self.size} tokens every {self.stride}"

    def spans(self, text: str) -> list[tuple[int, int]]:
        """Character spans [start, end) of the passages of `text`: one (the whole text) for a text of at most `size`
        tokens. A window starts and ends between words where one of the `SNAP` tokens before its edge allows (not
        in the middle of "Flound"), is trimmed of surrounding whitespace (one of whitespace alone is no passage), and
        is shortened at its end while its text, tokenised alone, runs over `size` (a word cut from the space before
        it can take one more token); the next window starts no later than where it ended, so no text is left out."""
        return self.spans_of([text])[0]

    def spans_of(self, texts: list[str]) -> list[list[tuple[int, int]]]:
        """`spans` of each text, all tokenised together. In rounds: every document's next `AHEAD` windows are cut
        unchecked and all of them tokenised at once; a window that runs over (a quarter of LAMA's documents have one)
        is shortened alone, and where that moves the next window's start the next round cuts on from its end."""
        out = [[(0, len(t))] for t in texts]
        long = [i for i, t in enumerate(texts) if 2 * len(t.encode("utf-8")) > self.size]  # else too short to cut
        cuts = {i: _Cut(self, texts[i], offs) for i, offs in zip(long, self.tokens.offsets([texts[i] for i in long]),
                                                                   strict=True) if len(offs) > self.size}
        while cuts:
            rests = {i: cut.rest() for i, cut in cuts.items()}
            counts = iter(self.tokens.counts([cuts[i].text[w.start:w.end] for i, rest in rests.items() for w in rest]))
            for i, rest in rests.items():
                if cuts[i].keep(rest, [next(counts) for _ in rest]):
                    out[i] = cuts.pop(i).spans
        return out


@dataclass
class _Window:
    a: int  # tokens [a, b)
    b: int
    start: int  # characters [start, end): the tokens' text, trimmed of whitespace
    end: int


class _Cut:
    """One document being cut (`Passages.spans_of`): the spans kept so far and the token where the next one starts
    (None: cut to its end)."""

    def __init__(self, passages: Passages, text: str, offs: list[tuple[int, int]]):
        self.p, self.text, self.offs = passages, text, offs
        self.spans: list[tuple[int, int]] = []
        self.next_token: int | None = 0

    def _between_words(self, i: int) -> bool:  # token i starts a word (or the text, or follows a non-letter)
        if i == 0 or i >= len(self.offs):
            return True
        at = self.offs[i][0]
        return not (self.text[at - 1].isalnum() and self.text[at].isalnum())

    def _snapped(self, i: int, floor: int) -> int:  # i, or the nearest token edge between words at most SNAP before
        return next((j for j in range(i, max(floor, i - SNAP) - 1, -1) if self._between_words(j)), i)

    def _window(self, a: int, b: int) -> _Window:
        return _Window(a, b, *_trimmed(self.text, self.offs[a][0], self.offs[b - 1][1]))

    def _next(self, w: _Window) -> int | None:
        return None if w.b >= len(self.offs) else self._snapped(min(w.a + self.p.stride, w.b), w.a + 1)

    def rest(self) -> list[_Window]:
        """The next `AHEAD` windows from `next_token` (fewer at the end), unchecked."""
        out: list[_Window] = []
        a = self.next_token
        while a is not None and len(out) < AHEAD:
            n = len(self.offs)
            b = min(a + self.p.size, n)
            out.append(self._window(a, b if b == n else self._snapped(b, a + 1)))
            a = self._next(out[-1])
        return out

    def keep(self, rest: list[_Window], counts: list[int]) -> bool:
        """Keep `rest`'s windows, each shortened while its text runs over (one token count at a time), up to one that
        shortening moved the next one's start; True when the document is cut to its end."""
        for k, (w, count) in enumerate(zip(rest, counts, strict=True)):
            while count > self.p.size and w.b - w.a > count - self.p.size:
                w = self._window(w.a, w.b - (count - self.p.size))
                count = self.p.tokens.counts([self.text[w.start:w.end]])[0]
            if w.end > w.start:
                self.spans.append((w.start, w.end))
            self.next_token = self._next(w)
            if self.next_token is None:
                return True
            if k + 1 == len(rest) or self.next_token != rest[k + 1].a:  # the round's last, or the next start moved
                return False  # the rest is cut in the next round
        return True


def _trimmed(text: str, start: int, end: int) -> tuple[int, int]:
    while start < end and text[start].isspace():
        start += 1
    while end > start and text[end - 1].isspace():
        end -= 1
    return start, end


def around(passage: Sentence, get: Callable[[str], Sentence | None], chars: int = 300) -> tuple[str, str]:
    """Up to `chars` characters of the document before and after a passage, from its neighbours (consecutive passages
    overlap, so they hold the text around it; without overlap the whitespace between them is shown as one space)."""
    if passage.document is None or passage.span is None or passage.passage is None:
        return "", ""
    a, b = passage.span
    before = after = ""
    prev = get(f"{passage.document}#{passage.passage - 1}")
    if prev is not None and prev.span is not None:
        before = prev.text[:max(0, a - prev.span[0])] if prev.span[1] >= a else prev.text + " "
    nxt = get(f"{passage.document}#{passage.passage + 1}")
    if nxt is not None and nxt.span is not None:
        after = nxt.text[max(0, b - nxt.span[0]):] if nxt.span[0] <= b else " " + nxt.text
    return before[-chars:], after[:chars]
