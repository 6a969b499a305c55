"""Landmark SyncNet: does this mouth movement go with this audio?

An audio window (10 feature frames, 0.2 s) and the mouth landmarks of the matching 5 video frames are each
embedded by a small 1-D CNN; their cosine similarity (in [0, 1], the embeddings are non-negative) is the
probability that they are in sync. Trained with binary cross-entropy on in-sync pairs and on negatives that
are shifted in time, taken from elsewhere in the clip, or taken from another clip.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

from ..engine.saveload import Savable
from ..constants import MOUTH_SLICE
from .layers import ConvBlock

AUDIO_WINDOW = 10
"""Audio feature frames per SyncNet window (two per video frame)."""
MOUTH_WINDOW = 5
"""Video frames per SyncNet window."""


@dataclass
class SyncNetConfig:
    """Sizes of the landmark SyncNet (defaults follow the original's landmark SyncNet)."""

    feature_dim: int = 83
    """Audio feature channels (83 for mel, 384 for whisper)."""
    mouth_points: int = 20
    """Mouth landmarks per frame (the 20 mouth points of the 68 layout), 3 coordinates each."""
    width: int = 128
    """Channels of the first stage; the later stages use 2x and 4x this."""
    embed_dim: int = 512
    """Size of the audio and mouth embeddings."""
    residual_layers: int = 2
    """Residual conv layers after each stage's first layer."""
    max_shift: int = 5
    """Largest time shift (video frames) used for shifted negatives and searched by :meth:`SyncNet.score`."""


@dataclass
class SyncScore:
    """Lip-sync measures of one clip."""

    confidence: np.ndarray
    """``[T - 4]`` in-sync probability of each 5-frame window (at zero offset)."""
    offset: int
    """Best audio shift in video frames (audio window ``i + offset`` against mouth window ``i``); 0 is in sync,
    negative: the mouth lags the audio."""
    curve: np.ndarray
    """``[2 * max_shift + 1]`` mean similarity at each shift from ``-max_shift`` to ``max_shift``."""

    @property
    def mean_confidence(self) -> float:
        return float(self.confidence.mean()) if self.confidence.size else float("nan")

    @property
    def margin(self) -> float:
        """Similarity at zero shift minus the median over all shifts (LSE-C-like; larger is better)."""
        return float(self.curve[len(self.curve) // 2] - np.median(self.curve))


def _encoder(cin: int, width: int, embed: int, residual: int, strides: tuple[int, int]) -> nn.Sequential:
    layers: list[nn.Module] = [ConvBlock(cin, width)]
    chans = [width, 2 * width, 4 * width]
    for stage, c in enumerate(chans):
        prev = width if stage == 0 else chans[stage - 1]
        stride = 1 if stage == 0 else strides[stage - 1]
        layers.append(ConvBlock(prev, c, 3, stride))
        layers += [ConvBlock(c, c, residual=True) for _ in range(residual)]
    layers += [ConvBlock(chans[-1], embed, 3, 1, 0), ConvBlock(embed, embed, 1)]
    return nn.Sequential(*layers)


class SyncNet(Savable, nn.Module):
    """Embeds audio windows ``[B, 10, D]`` and mouth windows ``[B, 5, 20, 3]``; see the module docstring."""

    config_args = {"config": SyncNetConfig}

    def __init__(self, config: SyncNetConfig) -> None:
        super().__init__()
        self.config = config
        # audio: 10 -> 10 -> 5 -> 3 -> 1 steps; mouth: 5 -> 5 -> 3 -> 3 -> 1 steps
        self.audio_encoder = _encoder(config.feature_dim, config.width, config.embed_dim,
                                      config.residual_layers, (2, 2))
        self.mouth_encoder = _encoder(3 * config.mouth_points, config.width, config.embed_dim,
                                      config.residual_layers, (2, 1))
        # Normalisation of the inputs, set from training data (see set_stats).
        self.register_buffer("feature_mean", torch.zeros(config.feature_dim))
        self.register_buffer("feature_std", torch.ones(config.feature_dim))
        self.register_buffer("motion_scale", torch.ones(()))

    def set_stats(self, feature_mean: torch.Tensor, feature_std: torch.Tensor, motion_scale: float) -> None:
        self.feature_mean.copy_(feature_mean)
        self.feature_std.copy_(feature_std)
        self.motion_scale.fill_(motion_scale)

    def embed_audio(self, audio: torch.Tensor) -> torch.Tensor:
        """``[B, 10, D]`` -> unit embeddings ``[B, E]``."""
        x = ((audio - self.feature_mean) / self.feature_std).transpose(1, 2)
        return F.normalize(self.audio_encoder(x).flatten(1), dim=1)

    def embed_mouth(self, mouth: torch.Tensor) -> torch.Tensor:
        """``[B, 5, 20, 3]`` mouth offsets -> unit embeddings ``[B, E]``."""
        x = (mouth.flatten(2) / self.motion_scale).transpose(1, 2)
        return F.normalize(self.mouth_encoder(x).flatten(1), dim=1)

    def forward(self, audio: torch.Tensor, mouth: torch.Tensor) -> torch.Tensor:
        """In-sync probability ``[B]`` (cosine similarity of the embeddings) of windows ``[B,10,D]``, ``[B,5,20,3]``."""
        return (self.embed_audio(audio) * self.embed_mouth(mouth)).sum(1)

    # --- training ----------------------------------------------------------------------------------
    def sample_pairs(self, features: torch.Tensor, offsets: torch.Tensor, mask: torch.Tensor, count: int,
                     generator: torch.Generator, positives_only: bool = False
                     ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Random training pairs from a batch of windows.

        ``features`` [B, 2W, D], ``offsets`` [B, W, 68, 3] (or [B, W, 20, 3] mouth only), ``mask`` [B, W].
        Returns audio ``[N, 10, D]``, mouth ``[N, 5, 20, 3]`` and labels ``[N]`` (1 in sync, 0 not): half
        positives; negatives are shifted by 2..max_shift frames (half), from another place in the same
        window (a quarter) or from another window of the batch (a quarter).
        """
        dev = features.device
        b = features.shape[0]
        mouth = offsets[:, :, MOUTH_SLICE] if offsets.shape[2] == 68 else offsets
        lengths = mask.sum(1).long().clamp(min=MOUTH_WINDOW)  # [B]
        # every uniform number of the pairs in one draw, on the generator's device (a CUDA generator: no copy)
        u = iter(torch.rand(3 if positives_only else 8, count, generator=generator, device=generator.device).to(dev))
        clip = (next(u) * b).long().clamp(max=b - 1)
        starts_max = lengths[clip] - MOUTH_WINDOW  # inclusive
        start = (next(u) * (starts_max + 1)).long().clamp(max=starts_max)
        kind = next(u)
        label = torch.ones(count, device=dev) if positives_only else (kind < 0.5).float()
        a_clip, a_start = clip.clone(), start.clone()
        if not positives_only:
            s = self.config.max_shift
            shift = 2 + (next(u) * (s - 1)).long().clamp(max=s - 2)  # 2..s frames
            room_right, room_left = starts_max - start, start
            right = next(u) < 0.5
            right = torch.where(room_left < 2, torch.ones_like(right), right)
            right = torch.where(room_right < 2, torch.zeros_like(right), right)
            size = torch.minimum(shift, torch.where(right, room_right, room_left))
            shifted = start + torch.where(right, size, -size)
            elsewhere = (next(u) * (starts_max + 1)).long().clamp(max=starts_max)
            elsewhere = torch.where((elsewhere - start).abs() < 2, shifted, elsewhere)
            other = (clip + 1 + (next(u) * (b - 1)).long()) % b if b > 1 else clip
            other_start = (next(u) * (lengths[other] - MOUTH_WINDOW + 1)).long().clamp(
                max=lengths[other] - MOUTH_WINDOW)
            neg_shift = (kind >= 0.5) & (kind < 0.75)
            neg_else = (kind >= 0.75) & (kind < 0.875)
            neg_other = kind >= 0.875
            a_start = torch.where(neg_shift, shifted, a_start)
            a_start = torch.where(neg_else, elsewhere, a_start)
            a_clip = torch.where(neg_other, other, a_clip)
            a_start = torch.where(neg_other, other_start, a_start)
            # a negative that could not move away (a window too short to shift in) becomes a positive
            stuck = (a_clip == clip) & ((a_start - start).abs() < 2)
            label = torch.where(stuck, torch.ones_like(label), label)
            a_start = torch.where(stuck, start, a_start)
        m_idx = start[:, None] + torch.arange(MOUTH_WINDOW, device=dev)  # [N, 5]
        a_idx = 2 * a_start[:, None] + torch.arange(AUDIO_WINDOW, device=dev)  # [N, 10]
        audio = features[a_clip[:, None], a_idx]  # [N, 10, D]
        mouth_w = mouth[clip[:, None], m_idx]  # [N, 5, 20, 3]
        return audio, mouth_w, label

    def loss(self, audio: torch.Tensor, mouth: torch.Tensor, label: torch.Tensor) -> dict[str, torch.Tensor]:
        """Binary cross-entropy of the in-sync probability against ``label`` [N]; also the accuracy."""
        p = self(audio, mouth).clamp(1e-6, 1 - 1e-6)
        bce = F.binary_cross_entropy(p, label)
        acc = ((p > 0.5).float() == label).float().mean().detach()
        return {"sync_bce": bce, "sync_acc": acc, "total": bce}

    def sync_loss(self, features: torch.Tensor, offsets: torch.Tensor, mask: torch.Tensor, count: int,
                  generator: torch.Generator) -> torch.Tensor:
        """Mean ``-log p(in sync)`` of predicted ``offsets`` [B, W, 68, 3] against their own audio (a loss)."""
        audio, mouth, _ = self.sample_pairs(features, offsets, mask, count, generator, positives_only=True)
        return -torch.log(self(audio, mouth).clamp(min=1e-6)).mean()

    # --- scoring -----------------------------------------------------------------------------------
    @torch.no_grad()
    def score(self, audio_features: np.ndarray | torch.Tensor, landmarks: np.ndarray | torch.Tensor,
              max_shift: int | None = None, batch: int = 4096) -> SyncScore:
        """Lip-sync confidence of one clip: features ``[2T, D]``, landmark offsets ``[T, 68, 3]`` or ``[T, 20, 3]``."""
        s = self.config.max_shift if max_shift is None else max_shift
        dev = self.feature_mean.device
        feats = torch.as_tensor(np.asarray(audio_features), dtype=torch.float32, device=dev)
        lm = torch.as_tensor(np.asarray(landmarks), dtype=torch.float32, device=dev)
        if lm.ndim != 3 or lm.shape[1] not in (68, self.config.mouth_points) or lm.shape[2] != 3:
            raise ValueError(f"landmarks must be [T, 68, 3] or [T, 20, 3], got {tuple(lm.shape)}")
        mouth = lm[:, MOUTH_SLICE] if lm.shape[1] == 68 else lm
        t = min(mouth.shape[0], feats.shape[0] // 2)
        n = t - MOUTH_WINDOW + 1
        if n < 1:
            raise ValueError(f"need at least {MOUTH_WINDOW} frames to score lip sync, got {t}")
        was_training = self.training
        self.eval()
        m_idx = torch.arange(n, device=dev)[:, None] + torch.arange(MOUTH_WINDOW, device=dev)
        m_emb = torch.cat([self.embed_mouth(mouth[m_idx[i:i + batch]]) for i in range(0, n, batch)])
        a_idx = 2 * torch.arange(n, device=dev)[:, None] + torch.arange(AUDIO_WINDOW, device=dev)
        a_emb = torch.cat([self.embed_audio(feats[a_idx[i:i + batch]]) for i in range(0, n, batch)])
        self.train(was_training)
        confidence = (a_emb * m_emb).sum(1)
        s = min(s, (n - 1) // 2)
        curve = []
        for shift in range(-s, s + 1):
            # mouth window i against audio window i + shift, over the windows valid for every shift
            lo, hi = s, n - s
            curve.append(float((m_emb[lo:hi] * a_emb[lo + shift:hi + shift]).sum(1).mean()))
        curve_np = np.array(curve, dtype=np.float32)
        return SyncScore(confidence=confidence.cpu().numpy(), offset=int(np.argmax(curve_np)) - s, curve=curve_np)
