"""The learning curves of `ftrace train --eval-facts` runs: facts answered right (the bench's teacher-forced rule) at
every checkpoint, and how many of those the base model got wrong (learned by the run), from each run's run.json.

    python results/attribution/learning_curve.py runs/attribution/pilot-sentence runs/attribution/pilot-object \\
        --out results/attribution/pilot-learning-curve
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt

ROOT = Path(__file__).resolve().parents[2]


def curve(run: Path) -> tuple[dict, list[dict]]:
    record = json.loads((run / "run.json").read_text())
    points = [c for c in record["checkpoints"] if c.get("facts")]
    return record, points


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("runs", nargs="+", type=Path)
    ap.add_argument("--out", type=Path, required=True)
    a = ap.parse_args()
    from ftrace.bench.paths import shown_paths  # runs kept outside the repository are named from ~, not the machine

    lines = ["# Learning curves: facts right at each checkpoint", "",
             f"Command: `python results/attribution/learning_curve.py {' '.join(shown_paths(str(r)) for r in a.runs)} "
             "--out "
             f"{a.out.resolve().relative_to(ROOT)}`", "",
             "| run | example loss | step | epoch | train loss | facts right | of which wrong at the base |",
             "|---|---|---|---|---|---|---|"]
    fig, ax = plt.subplots(figsize=(6, 4))
    for run in a.runs:
        record, points = curve(run)
        loss = record["config"]["example_loss"]
        base = set(points[0]["facts"]["right_ids"]) if points and points[0]["step"] == 0 else set()
        for c in points:
            f = c["facts"]
            learned = len(set(f["right_ids"]) - base)
            tl = "" if c["train_loss"] is None else f"{c['train_loss']:.3f}"
            lines.append(f"| {run.name} | {loss} | {c['step']} | {c['epoch']:.2f} | {tl} | {f['right']} of {f['of']} | "
                         f"{learned} |")
        done = "" if record.get("complete") else f" (stopped at step {points[-1]['step']} of {record['total_steps']})"
        ax.plot([c["epoch"] for c in points], [c["facts"]["right"] for c in points], marker="o",
                label=f"{loss} loss{done}")
    ax.set_xlabel("epoch")
    ax.set_ylabel("facts right (teacher-forced)")
    ax.legend()
    fig.tight_layout()
    a.out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(a.out.with_suffix(".png"), dpi=120)
    lines += ["", f"![learning curves]({a.out.with_suffix('.png').name})"]
    a.out.with_suffix(".md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
