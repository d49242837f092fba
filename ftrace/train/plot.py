"""loss.png: per-step training loss (faint), its moving average, and the checkpoints' mean losses as
markers. Uses matplotlib's object API with the Agg canvas: no display and no global pyplot state."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from ftrace.plumbing import replacing


def plot_losses(path: Path, losses: Sequence[dict[str, Any]], checkpoints: Sequence[dict[str, Any]],
                title: str = "") -> None:
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(7, 4), dpi=100)
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    steps = np.array([r["step"] for r in losses])
    values = np.array([r["loss"] for r in losses], dtype=float)
    if len(values):
        window = max(1, len(values) // 50)
        ax.plot(steps, values, color="tab:blue", alpha=0.3 if window > 1 else 1.0, lw=0.8, label="step loss")
        if window > 1:
            smooth = np.convolve(values, np.ones(window) / window, mode="valid")
            ax.plot(steps[window - 1:], smooth, color="tab:blue", lw=1.5, label=f"mean of {window} steps")
    marked = [c for c in checkpoints if c.get("train_loss") is not None]
    if marked:
        ax.plot([c["step"] for c in marked], [c["train_loss"] for c in marked], "o", color="tab:red",
                label="checkpoint (mean loss since previous)")
    for c in checkpoints:
        ax.axvline(c["step"], color="tab:red", alpha=0.15, lw=0.8)
    ax.set_xlabel("step")
    ax.set_ylabel("training loss")
    if title:
        ax.set_title(title, fontsize=9)
    if ax.get_legend_handles_labels()[0]:
        ax.legend(fontsize=8)
    fig.tight_layout()
    with replacing(path) as tmp:
        fig.savefig(tmp, format="png")
