"""`ftrace info`: what made an index and what it holds."""

from __future__ import annotations

from ftrace.config.base import DEFAULT_INDEX, IndexPath, Strict


class InfoConfig(Strict):
    index: IndexPath = DEFAULT_INDEX
