"""The model: loading, batching, answers and the training objective. Its names are imported on first use (PEP 562),
so that `ftrace.model.corpus` can cut a corpus without importing torch."""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from ftrace.model.answer import greedy_answer
    from ftrace.model.batching import IGNORE, LossBatch, example_batch, query_batch
    from ftrace.model.loading import DEFAULT_MODEL, LoadedModel, ModelError, load_model

_WHERE = {"greedy_answer": "answer", "IGNORE": "batching", "LossBatch": "batching", "example_batch": "batching",
          "query_batch": "batching", "DEFAULT_MODEL": "loading", "LoadedModel": "loading", "ModelError": "loading",
          "load_model": "loading"}

__all__ = ["DEFAULT_MODEL", "IGNORE", "LoadedModel", "LossBatch", "ModelError", "example_batch", "greedy_answer",
           "load_model", "query_batch"]


def __getattr__(name: str) -> Any:
    if name not in _WHERE:
        raise AttributeError(f"module 'ftrace.model' has no attribute {name!r}")
    return getattr(importlib.import_module(f"ftrace.model.{_WHERE[name]}"), name)
