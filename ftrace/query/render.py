"""Human-readable output of a query result (JSON output is the pydantic model itself)."""

from __future__ import annotations

import shutil
import textwrap

from ftrace.query.result import QueryResult


def render(result: QueryResult) -> str:
    width = shutil.get_terminal_size((120, 20)).columns
    lines = [f"prompt: {result.prompt!r}",
             f"target: {result.target!r} ({'given' if result.target_from == 'user' else 'the model answer'})",
             f"method: {result.method}" + (f" (fusion: {result.fusion}, weight {result.weight:g} on "
                                           f"{result.method.split('+')[0]})" if result.fusion else "")]
    if result.ground_truth:
        lines.append(f"ground truth: {len(result.ground_truth.proponents)} proponent sentence(s) known")
    if result.note:
        lines.append(f"note: {result.note}")
    methods = list(result.rows[0].scores) if result.rows else []
    head = (f"{'rank':>4}  {'score':>7}  " + "".join(f"{m:>8}  " for m in methods)
            + ("P  " if result.ground_truth else ""))
    lines += ["", head + ("text ([document start-end] for a passage)" if any(r.document for r in result.rows)
                          else "sentence")]
    indent = len(head)
    for row in result.rows:
        cells = f"{row.rank:>4}  {row.score:>7.3f}  " + "".join(f"{_score(row.scores[m]):>8}  " for m in methods)
        if result.ground_truth:
            cells += ("*  " if row.proponent else "   ")
        where = f"[{row.document} {row.span[0]}-{row.span[1]}] " if row.document and row.span else ""
        text = textwrap.shorten(where + row.text, max(40, width - indent), placeholder=" ...")
        lines.append(cells + text)
    if result.ground_truth:
        lines += ["", "P: * marks a known proponent (a sentence stating the queried fact)"]
    if not result.rows:
        lines.append("(no results)")
    return "\n".join(lines)


def _score(value: float | None) -> str:
    return "-" if value is None else f"{value:.3f}"  # None: outside that method's candidates
