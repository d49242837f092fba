"""Cutting long documents into passages: windows of a model's tokens, `size` long, starting every `stride` tokens,
so that consecutive passages overlap by size - stride tokens and every span of that many tokens lies whole inside
one passage. The last window ends at the document's end. The defaults (ftrace.config.PASSAGE_TOKENS,
PASSAGE_OVERLAP) are justified where they are declared.

The corpus layer knows no model: the caller gives `offsets`, a text's token character spans (a fast tokenizer's
offset mapping, `ftrace.model.corpus`).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from ftrace.corpus.records import Sentence

SNAP = 8  # tokens a passage's edge may move back to fall between words

Offsets = Callable[[str], list[tuple[int, int]]]


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
    offsets: Offsets

    def describe(self) -> str:
        return f"passages of {self.size} tokens every {self.stride}"

    def spans(self, text: str) -> list[tuple[int, int]]:
        """Character spans [start, end) of the passages of `text`: one (the whole text) for a text of at most `size`
        tokens. A window starts and ends between words where one of the `SNAP` tokens before its edge allows (not
        in the middle of "Flound"), is trimmed of surrounding whitespace (one of whitespace alone is no passage), and
        is shortened at its end while its text, tokenised alone, runs over `size` (a word cut from the space before
        it can take one more token); the next window starts no later than where it ended, so no text is left out."""
        if 2 * len(text.encode("utf-8")) <= self.size:  # shorter than any tokenizer makes it: no need to tokenise
            return [(0, len(text))]
        offs = self.offsets(text)
        n = len(offs)
        if n <= self.size:
            return [(0, len(text))]

        def between_words(i: int) -> bool:  # token i starts a word (or the text, or follows a non-letter)
            at = offs[i][0]
            return i == 0 or i >= n or not (text[at - 1].isalnum() and text[at].isalnum())

        def snapped(i: int, floor: int) -> int:  # i, or the nearest token edge between words at most SNAP before
            return next((j for j in range(i, max(floor, i - SNAP) - 1, -1) if between_words(j)), i)

        out = []
        a = 0
        while True:
            b = min(a + self.size, n)
            b = b if b == n else snapped(b, a + 1)
            while True:
                start, end = _trimmed(text, offs[a][0], offs[b - 1][1])
                over = len(self.offsets(text[start:end])) - self.size
                if over <= 0 or b - a <= over:
                    break
                b -= over
            if end > start:
                out.append((start, end))
            if b >= n:
                return out
            a = snapped(min(a + self.stride, b), a + 1)


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
