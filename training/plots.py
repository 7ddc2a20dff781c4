"""Training plots: loss/accuracy curves and the confusion matrix (matplotlib, no display)."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import matplotlib
import numpy as np

matplotlib.use("Agg")  # headless: training runs on servers and in CI
import matplotlib.pyplot as plt


def plot_curves(history: Sequence[dict], path: str | Path, title: str = "") -> Path:
    """Train/val loss and accuracy per epoch, side by side."""
    epochs = [h["epoch"] for h in history]
    fig, (ax_loss, ax_acc) = plt.subplots(1, 2, figsize=(10, 4))
    for split, style in (("train", "-o"), ("val", "-s")):
        ax_loss.plot(epochs, [h[f"{split}_loss"] for h in history], style, label=split, markersize=4)
        ax_acc.plot(epochs, [100 * h[f"{split}_accuracy"] for h in history], style, label=split, markersize=4)
    ax_loss.set(xlabel="epoch", ylabel="cross-entropy loss", title="loss")
    ax_acc.set(xlabel="epoch", ylabel="accuracy (%)", title="accuracy")
    for ax in (ax_loss, ax_acc):
        ax.grid(alpha=0.3)
        ax.legend()
        ax.xaxis.get_major_locator().set_params(integer=True)
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return Path(path)


def plot_confusion(confusion: Sequence[Sequence[int]], labels: Sequence[str], path: str | Path, title: str = "") -> Path:
    """Counts per (true, predicted) class; the cells are written out when they fit."""
    cm = np.asarray(confusion, dtype=np.int64)
    k = len(labels)
    side = min(max(4.5, 0.35 * k + 2.5), 16.0)
    fig, ax = plt.subplots(figsize=(side, side))
    # Colour by row fraction (recall), so a rare class's errors are as visible as a big one's.
    rows = cm.sum(1, keepdims=True).clip(min=1)
    ax.imshow(cm / rows, cmap="Blues", vmin=0, vmax=1)
    ax.set_xticks(range(k), labels, rotation=90 if k > 6 else 0)
    ax.set_yticks(range(k), labels)
    ax.set(xlabel="predicted", ylabel="true", title=title or f"confusion matrix (n={cm.sum()})")
    if k <= 15:
        for i in range(k):
            for j in range(k):
                ax.text(j, i, str(cm[i, j]), ha="center", va="center",
                        color="white" if cm[i, j] / rows[i, 0] > 0.5 else "black")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return Path(path)
