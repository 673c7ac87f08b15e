"""The training-curve PNG: train/dev loss and dev score per epoch, learning rate on a secondary axis.

Uses matplotlib's Agg backend (no display needed); one line per training run.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Mapping, Sequence


def plot_training_curve(history: Sequence[Mapping[str, Any]], path: str | Path, title: str = "training") -> Path:
    """Write the curve of ``history`` (rows with run, epoch, train_loss, dev_loss, dev_score,
    learning_rate) to ``path`` as PNG and return the path."""
    import matplotlib

    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    runs: dict[int, list[Mapping[str, Any]]] = {}
    for row in history:
        runs.setdefault(int(row.get("run", 1)), []).append(row)
    fig, (ax_loss, ax_score) = plt.subplots(1, 2, figsize=(11, 4.2))
    ax_lr = ax_score.twinx()
    for run, rows in sorted(runs.items()):
        rows = sorted(rows, key=lambda r: int(r["epoch"]))
        epochs = [int(r["epoch"]) for r in rows]
        suffix = f" (run {run})" if len(runs) > 1 else ""
        ax_loss.plot(epochs, [float(r["train_loss"]) for r in rows], marker="o", label=f"train loss{suffix}")
        ax_loss.plot(epochs, [float(r["dev_loss"]) for r in rows], marker="s", linestyle="--",
                     label=f"dev loss{suffix}")
        ax_score.plot(epochs, [float(r["dev_score"]) for r in rows], marker="o", color="tab:green",
                      label=f"dev score{suffix}")
        ax_lr.plot(epochs, [float(r["learning_rate"]) for r in rows], color="tab:gray", linestyle=":",
                   label=f"learning rate{suffix}")
    from matplotlib.ticker import MaxNLocator

    for ax in (ax_loss, ax_score):
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax_loss.set_xlabel("epoch")
    ax_loss.set_ylabel("loss (mean per item)")
    ax_loss.set_title(f"{title}: loss")
    ax_loss.grid(alpha=0.3)
    ax_loss.legend(fontsize=8)
    ax_score.set_xlabel("epoch")
    ax_score.set_ylabel("dev score")
    ax_score.set_title(f"{title}: dev score and learning rate")
    ax_score.grid(alpha=0.3)
    ax_lr.set_ylabel("learning rate")
    if any(float(r["learning_rate"]) > 0 for r in history):
        ax_lr.set_yscale("log")
    lines = ax_score.get_legend_handles_labels()
    lr_lines = ax_lr.get_legend_handles_labels()
    ax_score.legend(lines[0] + lr_lines[0], lines[1] + lr_lines[1], fontsize=8, loc="lower right")
    fig.tight_layout()
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=100)
    plt.close(fig)
    return out
