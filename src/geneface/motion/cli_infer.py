"""Predict 68-point facial landmark offsets from speech with a trained motion run, for inspection: writes
an .npz with `offsets` [T, 68, 3] (head space, over the inter-ocular distance), the inner-lip opening
`mouth_open` [T] and the SyncNet's per-window confidence, and optionally a plot of the mouth opening over
time (against a ground-truth `mouth_open`, such as a synthetic clip's VIDEO.truth.npz)."""

from __future__ import annotations

import argparse
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..cliopts import MAX_SEED, add_config_options, check_config, config_from_args, opt
from ..constants import AUDIO_RATE
from ..device import DEVICES
from ..errors import InputError
from ..fileio import atomic_path, read_npz, write_npz
from ..media import read_audio
from .data import mouth_opening
from .model import MotionModel


@dataclass
class PredictConfig:
    """Options of `geneface motion` (its paths aside)."""

    temperature: float = opt(1.0, min=0.0, max=10.0)
    """Sampling temperature: 0 = the most likely motion, higher = livelier."""
    seed: int = opt(0, min=0, max=MAX_SEED)
    """Random seed of the motion sample."""
    postnet: bool = True
    """Apply the run's postnet (when it has one)."""
    feature_model: Path | None = None
    """Model folder for whisper or hubert features."""
    device: str = opt("cpu", choices=DEVICES)
    """Where to run the model."""

    def __post_init__(self) -> None:
        check_config(self)


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", type=Path, required=True, help="motion run folder (geneface train motion/postnet)")
    p.add_argument("--audio", type=Path, required=True, help="speech audio or a video with an audio track")
    p.add_argument("--out", type=Path, required=True, help="landmarks .npz to write")
    p.add_argument("--plot", type=Path, default=None, help="also draw the mouth opening over time into this PNG")
    p.add_argument("--truth", type=Path, default=None,
                   help="an .npz with the true `mouth_open` [T] per frame, drawn and correlated with the prediction")
    add_config_options(p, PredictConfig)


def read_truth(path: Path, num_frames: int) -> np.ndarray:
    """The ``mouth_open`` [T] of a truth file, checked against the prediction's length."""
    if not path.exists():
        raise InputError(f"no such truth file: {path}")
    try:
        truth = read_npz(path)
    except (OSError, ValueError) as e:
        raise InputError(f"cannot read truth file {path}: {e}") from None
    if "mouth_open" not in truth:
        raise InputError(f"truth file {path} has no 'mouth_open' array (has: {', '.join(truth) or 'nothing'})")
    mouth = np.asarray(truth["mouth_open"], dtype=np.float32).reshape(-1)
    if abs(len(mouth) - num_frames) > 2:
        raise InputError(f"truth file {path} has {len(mouth)} frames, the audio {num_frames}")
    return mouth[:num_frames]


def plot_mouth(path: Path, pred: np.ndarray, truth: np.ndarray | None, fps: float, title: str) -> None:
    """Mouth opening over time (the prediction is a change from the person's mean; it is drawn around the
    truth's median when a truth is given)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    t = np.arange(len(pred)) / fps
    fig, ax = plt.subplots(figsize=(10, 3.2), dpi=100)
    if truth is not None:
        n = min(len(truth), len(pred))
        ax.plot(t[:n], truth[:n], color="0.3", lw=1.4, label="ground truth")
        ax.plot(t, pred + float(np.median(truth)) - float(np.median(pred)), color="tab:red", lw=1.2,
                label="predicted (shifted to the truth's median)")
    else:
        ax.plot(t, pred, color="tab:red", lw=1.2, label="predicted (change from the mean)")
    ax.set_xlabel("time (s)")
    ax.set_ylabel("inner-lip gap / inter-ocular distance")
    ax.set_title(title, fontsize=10)
    ax.legend(loc="upper right", fontsize=8)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png")
    plt.close(fig)


def run(args: argparse.Namespace) -> int:
    config = config_from_args(PredictConfig, args)
    if args.out.suffix != ".npz":
        raise InputError(f"--out must be an .npz file, got {args.out}")
    model = MotionModel.load(args.model, device=config.device)
    if not args.audio.exists():
        raise InputError(f"no such audio file: {args.audio}")
    audio = read_audio(args.audio)
    start = time.perf_counter()
    features, pitch = model.features_for_audio(audio, model_path=config.feature_model)
    feature_seconds = time.perf_counter() - start
    start = time.perf_counter()
    offsets = model.predict(features, pitch, temperature=config.temperature, seed=config.seed,
                            postnet=config.postnet)
    model_seconds = time.perf_counter() - start
    num_frames = offsets.shape[0]
    mouth = mouth_opening(offsets)
    sync = model.score(features, offsets) if num_frames >= 5 else None
    truth = read_truth(args.truth, num_frames) if args.truth is not None else None
    arrays = {"offsets": offsets.astype(np.float32), "mouth_open": mouth.astype(np.float32),
              "fps": np.array(25.0, np.float32)}
    if sync is not None:
        arrays.update(sync_confidence=sync.confidence.astype(np.float32), sync_offset=np.array(sync.offset))
    write_npz(args.out, **arrays)
    seconds = audio.size / AUDIO_RATE
    lines = [f"wrote {args.out}: {num_frames} frames ({seconds:.2f} s of audio); features {feature_seconds:.2f} s, "
             f"motion {model_seconds:.3f} s ({seconds / max(model_seconds, 1e-9):.0f}x real time)"]
    if sync is not None:
        lines.append(f"SyncNet confidence {sync.mean_confidence:.3f}, best audio offset {sync.offset:+d} frames")
    corr = None
    if truth is not None:
        n = min(len(truth), num_frames)
        if truth[:n].std() > 0 and mouth[:n].std() > 0:
            corr = float(np.corrcoef(truth[:n], mouth[:n])[0, 1])
            lines.append(f"mouth opening correlation with {args.truth.name}: {corr:.3f}")
    if args.plot is not None:
        title = f"{args.audio.name} - {args.model.name}" + (f" (r = {corr:.2f})" if corr is not None else "")
        plot_mouth(args.plot, mouth, truth, 25.0, title)
        lines.append(f"plot: {args.plot}")
    print("\n".join(lines))
    return 0
