"""The PNG plots of `geneface evaluate` (matplotlib, Agg backend), each written atomically."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from ..fileio import atomic_path

PLOTS = {"psnr": "psnr.png", "mouth": "mouth_opening.png", "sync": "sync_confidence.png"}
"""The plot files, by what they show."""


def _figure():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 3.2), dpi=100)
    ax.grid(alpha=0.3)
    return plt, fig, ax


def _save(plt, fig, ax, path: Path) -> None:
    ax.legend(loc="best", fontsize=8)
    fig.tight_layout()
    with atomic_path(path, suffix=".png") as tmp:
        fig.savefig(tmp, format="png")
    plt.close(fig)


def plot_psnr(path: str | os.PathLike, frames: np.ndarray, series: dict[str, np.ndarray],
              baseline: float | None = None) -> None:
    """PSNR per frame: ``series`` maps a label to [N] values at dataset frame numbers ``frames`` [N]."""
    plt, fig, ax = _figure()
    for label, values in series.items():
        ax.plot(frames, values, marker="o", ms=3, label=label)
    if baseline is not None:
        ax.axhline(baseline, color="gray", ls="--", label="background only (mean)")
    ax.set_xlabel("validation frame")
    ax.set_ylabel("PSNR (dB)")
    ax.set_title("PSNR per frame")
    _save(plt, fig, ax, Path(path))


def plot_mouth(path: str | os.PathLike, seconds: np.ndarray, predicted: np.ndarray, truth: np.ndarray) -> None:
    """Mouth opening [N] (inter-ocular units) over time [N] (s): predicted against ground truth."""
    plt, fig, ax = _figure()
    ax.plot(seconds, truth, marker="o", ms=3, label="ground truth", color="black")
    ax.plot(seconds, predicted, marker="o", ms=3, label="predicted from audio", color="tab:red")
    ax.set_xlabel("time in the training clip (s)")
    ax.set_ylabel("mouth opening (IOD)")
    ax.set_title("Mouth opening, validation clip")
    _save(plt, fig, ax, Path(path))


def plot_sync(path: str | os.PathLike, panels: dict[str, dict[str, tuple[np.ndarray, np.ndarray]]]) -> None:
    """SyncNet confidence over time, one panel per clip: ``panels`` maps a clip title to its series, each a
    label -> (window centres [W] in s, confidence [W])."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = max(1, len(panels))
    fig, axes = plt.subplots(rows, 1, figsize=(7, 1.2 + 2.2 * rows), dpi=100, squeeze=False)
    for ax, (title, series) in zip(axes[:, 0], panels.items()):
        for label, (t, c) in series.items():
            ax.plot(t, c, marker="o" if len(t) < 40 else None, ms=3, label=label)
        ax.set_title(title, fontsize=10)
        ax.legend(loc="best", fontsize=8)
    if not panels:
        axes[0, 0].text(0.5, 0.5, "too few frames to score lip sync", ha="center", va="center",
                        transform=axes[0, 0].transAxes)
    for ax in axes[:, 0]:
        ax.set_ylim(0, 1)
        ax.grid(alpha=0.3)
        ax.set_ylabel("sync confidence")
    axes[-1, 0].set_xlabel("time (s)")
    fig.suptitle("Landmark SyncNet confidence (5-frame windows)")
    fig.tight_layout()
    with atomic_path(path, suffix=".png") as tmp:
        fig.savefig(tmp, format="png")
    plt.close(fig)
