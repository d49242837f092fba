from ftrace.model.answer import greedy_answer
from ftrace.model.batching import IGNORE, LossBatch, example_batch, query_batch
from ftrace.model.loading import DEFAULT_MODEL, LoadedModel, ModelError, load_model

__all__ = ["DEFAULT_MODEL", "IGNORE", "LoadedModel", "LossBatch", "ModelError", "example_batch",
           "greedy_answer", "load_model", "query_batch"]
