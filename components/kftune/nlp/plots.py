"""The training plots: the training curve (train/dev loss and dev score per epoch, learning rate on a
secondary axis; one line per training run) and, with ``train.writeWeights``, the weights plot.

Uses matplotlib's Agg backend (no display needed).
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any, Mapping, Sequence


def plot_training_curve(history: Sequence[Mapping[str, Any]], path: str | Path, title: str = "training") -> Path:
    """Write the curve of ``history`` (rows with run, epoch, train_loss, dev_loss, dev_score,
    learning_rate) to ``path`` as PNG and return the path."""
    plt = _pyplot()

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
    return _save(fig, path, dpi=100)


#: Parameter tensors drawn at most in ``weights.png`` (a 5 x 5 grid); the rest are named in the title.
MAX_WEIGHT_PLOTS = 25


def plot_weights(rows: Sequence[Sequence[Any]], path: str | Path, title: str = "weights", run: int | None = None,
                 max_tensors: int = MAX_WEIGHT_PLOTS) -> Path:
    """Flair's weights plot: a grid of small line plots, one per parameter tensor, of its sampled values
    (thin lines) and its mean (dashed) over the training iterations. ``rows`` are
    :class:`kftune.nlp.weights.WeightTracker` rows; ``run`` picks one training run (default: the first);
    at most ``max_tensors`` tensors are drawn, in the order they first appear. Writes PNG, returns ``path``."""
    plt = _pyplot()

    runs = sorted({int(r[0]) for r in rows})
    chosen = run if run is not None else (runs[0] if runs else 1)
    series: dict[str, list[Sequence[Any]]] = {}
    for r in rows:
        if int(r[0]) == chosen:
            series.setdefault(str(r[3]), []).append(r)
    names = list(series)
    shown = names[:max(1, max_tensors)]
    cols = max(1, min(5, len(shown)))
    nrows = max(1, math.ceil(len(shown) / cols))
    fig, axes = plt.subplots(nrows, cols, figsize=(3.2 * cols, 2.3 * nrows), squeeze=False)
    for ax in axes.flat[len(shown):]:
        ax.axis("off")
    for ax, name in zip(axes.flat, shown):
        points = sorted(series[name], key=lambda r: int(r[1]))
        x = [int(r[1]) for r in points]
        width = max((len(r[8]) for r in points), default=0)
        for i in range(width):
            ax.plot(x, [r[8][i] if i < len(r[8]) else float("nan") for r in points], linewidth=0.8, alpha=0.8)
        ax.plot(x, [float(r[5]) for r in points], color="black", linestyle="--", linewidth=1.0, label="mean")
        short = name if len(name) <= 38 else "..." + name[-35:]
        ax.set_title(short, fontsize=7)
        ax.tick_params(labelsize=6)
        ax.grid(alpha=0.3)
    if not shown:
        axes.flat[0].text(0.5, 0.5, "no weights recorded", ha="center", va="center")
    more = f"; {len(names) - len(shown)} more tensors in weights.tsv" if len(names) > len(shown) else ""
    fig.suptitle(f"{title}: sampled weights per iteration (run {chosen}; dashed: mean){more}", fontsize=9)
    return _save(fig, path, dpi=80)


def _pyplot() -> Any:
    """matplotlib's pyplot on the Agg backend (no display; imported only when a plot is drawn)."""
    import matplotlib

    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    return plt


def _save(fig: Any, path: str | Path, dpi: int) -> Path:
    """Lay out, write (creating the folder) and close a pyplot figure; returns the file's path."""
    fig.tight_layout()
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=dpi)
    _pyplot().close(fig)
    return out
