"""What a trace returns (`ftrace query --json`, POST /trace): light models, so that rendering a result, or
reading one from a server (`query.remote`), imports no retrieval code."""

from __future__ import annotations

from pydantic import BaseModel


class Row(BaseModel):
    rank: int
    sentence_id: str
    text: str
    score: float
    scores: dict[str, float | None]  # per method; None: outside that method's candidates (--depth)
    proponent: bool | None = None
    # a passage of a longer document: the document's id, the passage's character span in it, and the document's text
    # just before and after it (from its neighbouring passages)
    document: str | None = None
    span: tuple[int, int] | None = None
    before: str | None = None
    after: str | None = None


class GroundTruth(BaseModel):
    query_ids: list[str]
    target: str
    proponents: list[str]


class QueryResult(BaseModel):
    prompt: str
    target: str
    target_from: str  # "model" or "user"
    method: str
    fusion: str | None
    weight: float | None = None  # the fusion weight of the first method
    rows: list[Row]
    ground_truth: GroundTruth | None = None
    note: str | None = None
