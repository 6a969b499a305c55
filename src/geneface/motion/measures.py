"""Measures of motion models: input statistics, the SyncNet's AUC, and predictions against real landmarks."""

from __future__ import annotations

import numpy as np
import torch
from scipy.stats import rankdata

from ..constants import MOUTH_68, MOUTH_SLICE
from .data import MotionClip, WindowSource, mouth_opening
from .model import MotionModel
from .syncnet import AUDIO_WINDOW, MOUTH_WINDOW, SyncNet


def data_stats(source: WindowSource, windows: int = 256, window: int = 64, seed: int = 0
               ) -> tuple[torch.Tensor, torch.Tensor, float]:
    """Per-channel feature mean and std ``[D]`` and the global std of the offsets, over random windows."""
    rng = np.random.default_rng(seed)
    feats_l, offsets_l = [], []
    for _ in range(windows):
        f, _, o, n = source.sample(rng, window)
        feats_l.append(f[: 2 * n])
        offsets_l.append(o[:n].reshape(n, -1))
    feats = np.concatenate(feats_l).astype(np.float64)
    offsets = np.concatenate(offsets_l).astype(np.float64)
    mean, std = feats.mean(0), feats.std(0)
    std = np.maximum(std, 1e-2 * max(float(std.max()), 1e-6))
    scale = max(float(offsets.std()), 1e-4)
    return torch.tensor(mean, dtype=torch.float32), torch.tensor(std, dtype=torch.float32), scale


def _auc(pos: np.ndarray, neg: np.ndarray) -> float:
    ranks = rankdata(np.concatenate([pos, neg]))
    return float((ranks[: len(pos)].sum() - len(pos) * (len(pos) + 1) / 2) / (len(pos) * len(neg)))


@torch.no_grad()
def syncnet_auc(syncnet: SyncNet, clips: list[MotionClip], seed: int = 0, max_windows: int = 4000) -> float:
    """ROC AUC of the SyncNet telling in-sync windows from windows shifted by 2..max_shift frames."""
    rng = np.random.default_rng(seed)
    pos, neg = [], []
    dev = syncnet.feature_mean.device
    was = syncnet.training
    syncnet.eval()
    for clip in clips:
        n = clip.num_frames - MOUTH_WINDOW + 1
        if n < 4:
            continue
        idx = np.arange(n)
        if len(idx) > max_windows:
            idx = np.sort(rng.choice(idx, max_windows, replace=False))
        s = syncnet.config.max_shift
        shift = rng.integers(2, s + 1, len(idx)) * rng.choice([-1, 1], len(idx))
        other = idx + shift
        other = np.where((other < 0) | (other >= n), idx - shift, other)
        ok = (other >= 0) & (other < n)
        feats = torch.from_numpy(clip.features).to(dev)
        mouth = torch.from_numpy(clip.offsets).to(dev)[:, MOUTH_SLICE]
        m_idx = torch.from_numpy(idx)[:, None].to(dev) + torch.arange(MOUTH_WINDOW, device=dev)
        a_pos = 2 * torch.from_numpy(idx)[:, None].to(dev) + torch.arange(AUDIO_WINDOW, device=dev)
        a_neg = 2 * torch.from_numpy(other[ok])[:, None].to(dev) + torch.arange(AUDIO_WINDOW, device=dev)
        pos.append(syncnet(feats[a_pos], mouth[m_idx]).cpu().numpy())
        neg.append(syncnet(feats[a_neg], mouth[m_idx[torch.from_numpy(ok).to(dev)]]).cpu().numpy())
    syncnet.train(was)
    if not pos or not sum(len(x) for x in neg):
        return float("nan")
    return _auc(np.concatenate(pos), np.concatenate(neg))


def eval_subset(clips: list[MotionClip], count: int = 32) -> list[MotionClip]:
    """At most ``count`` clips, evenly spread (measures on a large corpus stay quick)."""
    if len(clips) <= count:
        return clips
    return [clips[int(i)] for i in np.linspace(0, len(clips) - 1, count).round()]


def _pearson(a: np.ndarray, b: np.ndarray) -> float:
    if a.size < 3 or a.std() < 1e-12 or b.std() < 1e-12:
        return float("nan")
    return float(np.corrcoef(a, b)[0, 1])


def motion_metrics(model: MotionModel, clips: list[MotionClip], temperature: float = 1.0, seed: int = 0,
                   postnet: bool = True) -> dict[str, float]:
    """Measures of predictions on ``clips`` against their real landmarks (mean over clips).

    ``mouth_lmd``: mean distance of the 20 mouth points (inter-ocular distances); ``mouth_corr``: Pearson
    correlation of the inner-lip opening; ``sync_pred`` / ``sync_real``: mean SyncNet confidence of the
    prediction and of the real landmarks.
    """
    rows = []
    for clip in clips:
        if clip.num_frames < MOUTH_WINDOW + 2:
            continue
        pred = model.predict(clip.features, clip.pitch, temperature=temperature, seed=seed, postnet=postnet)
        real = clip.offsets
        rows.append({
            "mouth_lmd": float(np.linalg.norm(pred[:, MOUTH_68] - real[:, MOUTH_68], axis=-1).mean()),
            "mouth_corr": _pearson(mouth_opening(pred), mouth_opening(real)),
            "sync_pred": model.score(clip.features, pred).mean_confidence,
            "sync_real": model.score(clip.features, real).mean_confidence,
        })
    if not rows:
        return {}
    return {k: float(np.nanmean([r[k] for r in rows])) for k in rows[0]}
