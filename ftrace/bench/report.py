"""The benchmark's outputs: results.json, table.md, plot.png and rankings.jsonl."""

from __future__ import annotations

import json
from pathlib import Path

from ftrace.bench.methods import RANDOM_TARGET
from ftrace.bench.metrics import FISHER_RESAMPLES, LABELS, METRICS
from ftrace.bench.paths import shown_paths
from ftrace.bench.runner import BenchRun
from ftrace.bench.slices import FINE_TUNE, FINE_TUNE_STRICT
from ftrace.plumbing import replacing, write_atomic

TOP = 10


def _cell(stat: dict) -> str:
    if stat.get("mean") is None:
        return "n/a"
    return f"{stat['mean']:.3f} ± {stat['std']:.3f}"


def _p(p: float | None, floor: float = 1e-4) -> str:
    if p is None:
        return "n/a"  # the paired differences have no variance (e.g. identical rankings)
    return f"{p:.2g}" if p >= floor else f"<{floor:g}"


def _fused(v: dict) -> str:
    """A fusion's weight or model, where it comes from and its MRR on the tuning queries."""
    what = f"{v['weight']}" if v["weight"] is not None else \
        ", ".join(f"{n} {c:+.2f}" for n, c in zip(v["model"]["features"], v["model"]["coef"], strict=True))
    mrr = f", tuning MRR {v['tune_mrr']:.3f}" if "tune_mrr" in v else ""
    return f"{what} ({v['source']}{mrr})" if v["weight"] is not None else f"[{what}] ({v['source']}{mrr})"


def _mrr(table: dict, method: str) -> str:
    return f"{table[method]['mrr']['mean']:.3f}"


def below_random_target(table: dict) -> list[str]:
    """The methods of one slice's table whose mean MRR is below random-target's (none without that baseline)."""
    floor = table.get(RANDOM_TARGET, {}).get("mrr", {}).get("mean")
    if floor is None:
        return []
    return [m for m, row in table.items()
            if m != RANDOM_TARGET and row["mrr"]["mean"] is not None and row["mrr"]["mean"] < floor]


def markdown_table(results: dict) -> str:
    """FTRACE Table 2 style: one table per slice, rows methods, columns the metrics (mean ± std)."""
    s = results["settings"]
    mode = results["mode"]
    fu = results["fusion"]
    lines = [f"# ftrace bench: {Path(results['index']['path']).name} ({mode}, fusion {fu['kind']})", ""]
    what = (f"candidate sets of proponents + BM25 top {s['sizes']['bm25']} + {s['sizes']['same_target']} same-target "
            f"+ {s['sizes']['random']} random sentences" if mode == "rerank"
            else f"retrieval from the whole corpus ({results['index']['corpus']['sentences']} sentences), "
                 f"top {s['depth']}, {results['index']['search']} search")
    lines.append(f"- index: `{results['index']['path']}` (model {results['index']['model']}, "
                 f"{results['index']['corpus']['sentences']} sentences)")
    lines.append(f"- mode: {mode}: {what}")
    lines.append(f"- queries: {s['queries']} per seed from split {','.join(s['split'] or ['all'])} "
                 f"({results['queries']['eligible']} eligible), seeds {results['seeds']}; mean ± std over seeds")
    w = fu["weights"]
    if w:
        k = f" k={fu['cascade_k']}" if fu["kind"] == "cascade" else ""
        lines.append(f"- fusion {fu['kind']}{k}: {fu['description']}")
        lines.append(("- fusion models: " if fu["kind"] == "learned" else "- fusion weights (first method): ")
                     + ", ".join(f"{f} {_fused(v)}" for f, v in w.items()))
    a = results["answers"]
    lines.append(f"- answers: {a['rule']}")
    lines.append(f"- right at the index's model: {a['correct']} of {a['of']} distinct queries"
                 + (f"; at the base model ({a['base']['model']}): {a['base']['correct']}" if a["base"] else ""))
    lines.append("- distinct queries per slice: " + ", ".join(f"{k} {v}" for k, v in a["slices"].items()))
    for name, why in results["skipped"].items():
        lines.append(f"- skipped {name}: {why}")
    lines.append("")
    attribution = results["settings"]["metric"] != "tailpatch"
    for sl, table in results["metrics"].items() if attribution else ():
        counts = results["query_counts"][sl]
        lines.append(f"## {sl} (queries per seed: {', '.join(map(str, counts))})")
        lines.append("")
        lines.append("| Method | " + " | ".join(LABELS[m] for m in METRICS) + " |")
        lines.append("|---|" + "---|" * len(METRICS))
        for method, row in table.items():
            lines.append(f"| {method} | " + " | ".join(_cell(row[m]) for m in METRICS) + " |")
        sig = results["significance"].get(sl, {})
        lines.append("")
        below = below_random_target(table)
        if below:
            lines.append(f"**Warning: below random-target by MRR ({_mrr(table, RANDOM_TARGET)}):** "
                         + ", ".join(f"{m} ({_mrr(table, m)})" for m in below)
                         + ": a random order of the sentences whose fact has the query's target as object ranks "
                           "the proponents better (docs/bench.md#methods-and-fusion).")
            lines.append("")
        if "best" in sig:
            a_, b_ = sig["compared"]
            main = sig["main_test"]
            other = "fisher" if main == "student" else "student"
            ps = ", ".join(f"{LABELS[m]} p={_p(sig[main][m])}" for m in METRICS)
            po = ", ".join(f"{LABELS[m]} p={_p(sig[other][m])}" for m in METRICS)
            over = f"{a_} vs {b_} over {sig['queries']} {sig['unit']}"
            n = f"{FISHER_RESAMPLES:,} resamples"
            lines.append(f"Best by MRR: **{sig['best']}**. Paired t-test, {over}: {ps}. "
                         f"Fisher randomisation ({n}): {po}." if main == "student" else
                         f"Best by MRR: **{sig['best']}**. Fisher randomisation ({n}), {over}: {ps}. "
                         f"Paired t-test: {po}.")
        elif sig:
            lines.append(f"Significance: {sig.get('note')}")
        lines.append("")
    if "tailpatch" in results:
        lines += tailpatch_tables(results)
    lines.append(f"Rerun: `{results['command']}`")
    return "\n".join(lines) + "\n"


def tailpatch_tables(results: dict) -> list[str]:
    """Per slice: each set's tail-patch (mean ± std over distinct queries), the fraction of queries
    whose target rose, the paired test against BM25, and the set's MRR / Recall@10 beside it."""
    t = results["tailpatch"]
    st = t["step"]
    lines = [f"## Tail-patch influence (TrackStar): top {t['k']} per method", "",
             f"- {t['what']}.",
             f"- step: AdamW lr {st['lr']:.3g} ({st['lr_source']}), betas {tuple(st['betas'])}, eps {st['eps']:g}, "
             f"weight decay {st['weight_decay']:g}, after {st['steps_taken']} steps, state {st['state']}; "
             f"training loss {st['example_loss']}, max {st['max_tokens']} tokens per example",
             "- references: " + "; ".join(f"{k}: {v}" for k, v in t["references"].items() if k in t["sets"]),
             f"- {t['std']}; p: paired tests of Δ log p against bm25 over those queries ({t['tests']})",
             f"- steps: {t['steps']['distinct']} distinct (computed now {t['steps']['computed']}, reused "
             f"{t['steps']['reused']}), {t['steps']['compute_s']:.0f} s of compute", ""]
    beyond = "momentum" in t["sets"]
    empty = [sl for sl in t["metrics"] if not t["queries"][sl]]
    for sl, table in t["metrics"].items():
        if sl in empty:
            continue
        lines.append(f"### {sl} ({t['queries'][sl]} distinct queries)")
        lines.append("")
        head = ["Set", "examples", LABEL_TP["delta_logp"]] + ([LABEL_TP["delta_logp_vs_momentum"]] if beyond else []) \
            + [LABEL_TP["delta_p"], "rose", "beats bm25", "p (t-test)", "p (Wilcoxon)", "MRR", "Recall@10"]
        lines += ["| " + " | ".join(head) + " |", "|---" * len(head) + "|"]
        sig = t["significance"].get(sl, {})
        attr = results["metrics"].get(sl, {})
        for name, row in table.items():
            rose = row["rose (delta_logp_vs_momentum)" if beyond else "rose (delta_logp)"]
            vs = sig.get(name, {}) if "note" not in sig else {}
            zero = name == "momentum"  # the reference itself: nothing beyond it
            cells = [name, f"{row['examples']['mean']:.1f}", _tp(row["delta_logp"])] + \
                (["—" if zero else _tp(row["delta_logp_vs_momentum"])] if beyond else []) + \
                [_tp(row["delta_p"]), "n/a" if rose is None else "—" if zero else f"{rose:.0%}",
                 "—" if name == "bm25" or not vs else f"{vs['wins']:.0%}",
                 "—" if name == "bm25" else _p(vs.get("student")), "—" if name == "bm25" else _p(vs.get("wilcoxon")),
                 *(f"{attr[name][m]['mean']:.3f}" if name in attr and attr[name][m]["mean"] is not None else "—"
                   for m in ("mrr", "recall@10"))]
            lines.append("| " + " | ".join(cells) + " |")
        lines.append("")
    if empty:
        lines += [f"No queries in: {', '.join(empty)}.", ""]
    lines.append("examples: training examples in the step (mean over queries); rose: the fraction of queries whose "
                 "target log-probability rose" + (" beyond the momentum-only step" if beyond else "") +
                 "; beats bm25: the fraction where the set raised it more than bm25's; MRR and Recall@10 (FTRACE): "
                 "means over seeds, as in the attribution tables.")
    lines.append("")
    return lines


LABEL_TP = {"delta_logp": "Δ log p", "delta_logp_vs_momentum": "Δ log p beyond momentum", "delta_p": "Δ p"}


def _tp(stat: dict) -> str:
    return "n/a" if stat.get("mean") is None else f"{stat['mean']:.3g} ± {stat['std']:.2g}"


def plot(results: dict, path: Path) -> None:
    """One row per slice: grouped bars of MRR and the two Recall@10s per method (std error bars over
    seeds) and, with tail-patch, a second column of its mean Δ log p per set (standard-error bars)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    slices = list(results["metrics"])
    methods = list(results["methods"])
    tail = results.get("tailpatch")
    panels = ([_attribution_panel] if results["settings"]["metric"] != "tailpatch" else []) + \
        ([_tailpatch_panel] if tail else [])
    width = max(8, 1.35 * len(methods))
    fig, axes = plt.subplots(len(slices), len(panels), figsize=(width * len(panels), 1.0 + 3.9 * len(slices)),
                             squeeze=False)
    for row, sl in zip(axes, slices, strict=True):
        for ax, panel in zip(row, panels, strict=True):
            panel(ax, results, sl)
    if panels[0] is _attribution_panel:
        handles = [plt.Rectangle((0, 0), 1, 1, color=f"C{j}") for j in range(len(METRICS))]
        fig.legend(handles, [LABELS[m] for m in METRICS], loc="upper center", ncol=len(METRICS), fontsize=9,
                   bbox_to_anchor=(0.5, 1 - 0.45 / fig.get_figheight()), frameon=False)
    name = Path(results["index"]["path"]).name
    fig.suptitle(f"ftrace bench: {name}, {results['mode']} mode, fusion {results['fusion']['kind']}, "
                 f"{len(results['seeds'])} seeds", fontsize=11)
    fig.tight_layout(rect=(0, 0, 1, 1 - 0.75 / fig.get_figheight()))
    fig.savefig(path, dpi=120)
    plt.close(fig)


def _attribution_panel(ax, results: dict, sl: str) -> None:
    import numpy as np

    methods = list(results["methods"])
    table = results["metrics"][sl]
    counts = results["query_counts"][sl]
    width = 0.8 / len(METRICS)
    x = np.arange(len(methods))
    for j, m in enumerate(METRICS):
        have = [i for i, k in enumerate(methods) if table[k][m]["mean"] is not None]
        if not have:
            continue
        bars = ax.bar(x[have] + (j - (len(METRICS) - 1) / 2) * width, [table[methods[i]][m]["mean"] for i in have],
                      width, yerr=[table[methods[i]][m]["std"] for i in have], capsize=3, label=LABELS[m],
                      color=f"C{j}")
        ax.bar_label(bars, fmt="%.2f", fontsize=7, padding=2)
    if not any(counts):
        ax.text(0.5, 0.5, "no queries in this slice", transform=ax.transAxes, ha="center", va="center",
                fontsize=11, color="0.4")
    ax.set_title(f"{sl} (queries/seed: {', '.join(map(str, counts))})", fontsize=10)
    ax.set_xticks(x, methods, rotation=20, ha="right")
    ax.set_xlim(-0.6, len(methods) - 0.4)
    ax.set_ylim(0, 1.12)
    ax.grid(axis="y", alpha=0.3)
    ax.set_ylabel("mean ± std over seeds")


def _tailpatch_panel(ax, results: dict, sl: str) -> None:
    import numpy as np

    t = results["tailpatch"]
    stat = "delta_logp_vs_momentum" if "momentum" in t["sets"] else "delta_logp"
    sets = [s for s in t["sets"] if s != "momentum"]
    rows = [t["metrics"][sl][s][stat] for s in sets]
    x = np.arange(len(sets))
    if not t["queries"][sl]:
        ax.text(0.5, 0.5, "no queries in this slice", transform=ax.transAxes, ha="center", va="center",
                fontsize=11, color="0.4")
    else:
        means = [r["mean"] for r in rows]
        sem = [r["std"] / np.sqrt(r["n"]) if r["n"] else 0 for r in rows]
        bars = ax.bar(x, means, 0.6, yerr=sem, capsize=3, color=["C3" if s in t["references"] else "C0" for s in sets])
        ax.bar_label(bars, fmt="%.2g", fontsize=7, padding=2)
    ax.axhline(0, color="0.3", lw=0.8)
    ax.set_title(f"tail-patch, {sl} ({t['queries'][sl]} queries; top {t['k']})", fontsize=10)
    ax.set_xticks(x, sets, rotation=20, ha="right")
    ax.grid(axis="y", alpha=0.3)
    ax.set_ylabel(("Δ log p beyond momentum" if stat != "delta_logp" else "Δ log p") + ", mean ± s.e.")


def write_rankings(run: BenchRun, path: Path) -> None:
    with replacing(path) as tmp, open(tmp, "w", encoding="utf-8") as f:
        for seed, qs in run.per_seed.items():
            for q in qs:
                props = set(q.proponents)
                for m in run.methods:
                    ranked = run.rankings[(seed, q.id, m)]
                    ranks = sorted(r for r, (i, _) in enumerate(ranked, 1) if i in props)
                    f.write(json.dumps({
                        "seed": seed, "query": q.id, "method": m, "prompt": q.prompt, "target": q.target,
                        "answer": run.answers.get(q.id), "learned": run.learned[q.id],
                        "slice": FINE_TUNE if run.slice_of[q.id] == FINE_TUNE_STRICT else run.slice_of[q.id],
                        **({"strict": run.slice_of[q.id] == FINE_TUNE_STRICT}
                           if run.slice_of[q.id] in (FINE_TUNE, FINE_TUNE_STRICT) else {}),
                        **({"base_answer": run.base_answers.get(q.id)} if run.base_answers is not None else {}),
                        "top": [[i, round(sc, 6)] for i, sc in ranked[:TOP]],
                        "proponents": len(props), "proponent_ranks": ranks,
                        "unranked_proponents": len(props) - len(ranks), "ranked": len(ranked),
                        **({"tailpatch": _patched(run.tailpatch[(seed, q.id, m)])} if run.tailpatch else {}),
                    }, ensure_ascii=False) + "\n")


def _patched(v: dict) -> dict:
    return {"delta_logp": round(v["delta_logp"], 9), "examples": v["examples"]}


def write_results(run: BenchRun) -> Path:
    path = Path(run.out) / "results.json"
    write_atomic(path, json.dumps(shown_paths(run.results), indent=2, ensure_ascii=False) + "\n")
    return path


def write_reports(run: BenchRun) -> dict[str, Path]:
    out = Path(run.out)
    out.mkdir(parents=True, exist_ok=True)
    paths = {n: out / n for n in ("results.json", "table.md", "plot.png", "rankings.jsonl")}
    write_results(run)
    write_atomic(paths["table.md"], markdown_table(run.results))
    plot(run.results, paths["plot.png"])
    write_rankings(run, paths["rankings.jsonl"])
    return paths
