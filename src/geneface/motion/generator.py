"""Audio2motion: a conditional VAE from audio features (+ pitch) to landmark offset sequences.

The motion ``x`` [T, 68*3] is encoded into a latent sequence ``z`` four times shorter (posterior
``q(z | x, audio)``); a decoder maps ``z`` and the audio condition back to motion. The prior over ``z`` is a
normalising flow conditioned on the audio (``p(z | audio) = N(flow(z); 0, I)``), so at inference we draw
``e ~ N(0, temperature^2 I)``, invert the flow and decode. Losses: reconstruction (MSE), continuity (MSE of
first differences), KL (Monte-Carlo, through the flow), and a SyncNet term once the SyncNet is reliable.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

from ..engine.saveload import Savable
from .layers import ChannelNorm, CouplingFlow, WaveNet

MOTION_DIM = 68 * 3


@dataclass
class GeneratorConfig:
    """Sizes and loss weights of the audio2motion generator (defaults follow the original GeneFace VAE)."""

    feature_dim: int = 83
    """Audio feature channels (83 for mel, 384 for whisper)."""
    cond_dim: int = 64
    """Channels of the audio condition after the audio encoder."""
    pitch_bins: int = 256
    """Coarse pitch classes of the pitch embedding (class 0 is unvoiced); 0 disables pitch."""
    hidden: int = 256
    """Channels of the posterior encoder and the decoder."""
    latent: int = 16
    """Latent channels per latent step."""
    kernel: int = 5
    """Kernel size of the encoder and decoder WaveNet layers."""
    encoder_layers: int = 8
    """WaveNet layers of the posterior encoder."""
    decoder_layers: int = 4
    """WaveNet layers of the decoder."""
    flow_hidden: int = 64
    """Channels inside the prior flow's couplings."""
    flow_kernel: int = 3
    """Kernel size inside the prior flow's couplings."""
    flow_layers: int = 4
    """WaveNet layers in each coupling."""
    flow_blocks: int = 4
    """Couplings of the prior flow."""
    stride: int = 4
    """Video frames per latent step."""
    lambda_mse: float = 1.0
    """Weight of the reconstruction loss."""
    lambda_continuity: float = 3.0
    """Weight of the continuity loss (first differences)."""
    lambda_kl: float = 0.5
    """Weight of the KL loss (per latent channel and step)."""
    lambda_sync: float = 0.01
    """Weight of the SyncNet loss, once it is switched on."""
    sync_pairs: int = 256
    """Mouth windows per batch scored by the SyncNet loss."""


def coarse_pitch(f0: torch.Tensor, bins: int, fmin: float = 50.0, fmax: float = 1100.0) -> torch.Tensor:
    """Pitch classes ``[...]`` (long) of f0 in Hz ``[...]``: 0 unvoiced, else 1..bins-1 evenly on the mel scale."""
    mel = 1127.0 * torch.log1p(f0.clamp(min=0) / 700.0)
    lo, hi = 1127.0 * math.log1p(fmin / 700.0), 1127.0 * math.log1p(fmax / 700.0)
    cls = 1 + torch.round((mel - lo) / (hi - lo) * (bins - 2)).clamp(0, bins - 2).long()
    return torch.where(f0 > 0, cls, torch.zeros_like(cls))


def step_noise(seed: int, first: int, count: int, channels: int) -> torch.Tensor:
    """Standard normal noise ``[channels, count]`` of latent steps ``first .. first + count``.

    Step ``l``'s column is drawn from ``(seed, l)`` alone, so a window of a sequence gets the same noise as the
    whole sequence has there (the stream samples windows; offline inference samples the whole clip).
    """
    cols = [np.random.default_rng([int(seed), step]).standard_normal(channels) for step in range(first, first + count)]
    return torch.from_numpy(np.stack(cols, 1).astype(np.float32)) if cols else torch.zeros(channels, 0)


class Audio2Motion(Savable, nn.Module):
    """The variational generator; see the module docstring. Offsets are ``[B, T, 68, 3]``."""

    config_args = {"config": GeneratorConfig}

    def __init__(self, config: GeneratorConfig) -> None:
        super().__init__()
        c = self.config = config
        s = c.stride
        # audio condition: [B, D, 2T] -> [B, C, T]
        self.audio_in = nn.Sequential(nn.Conv1d(c.feature_dim, c.cond_dim, 3, padding=1), ChannelNorm(c.cond_dim),
                                      nn.GELU(), nn.Conv1d(c.cond_dim, c.cond_dim, 4, stride=2, padding=1))
        self.pitch_embed = nn.Embedding(c.pitch_bins, c.cond_dim) if c.pitch_bins else None
        self.cond_out = nn.Sequential(nn.GELU(), nn.Conv1d(c.cond_dim, c.cond_dim, 3, padding=1))
        self.cond_down = nn.Conv1d(c.cond_dim, c.cond_dim, 2 * s, stride=s, padding=s // 2)  # T -> T/s
        # posterior q(z | x, audio)
        self.enc_in = nn.Conv1d(MOTION_DIM, c.hidden, 2 * s, stride=s, padding=s // 2)
        self.encoder = WaveNet(c.hidden, c.kernel, c.encoder_layers, c.cond_dim)
        self.enc_out = nn.Conv1d(c.hidden, 2 * c.latent, 1)
        # prior flow and decoder
        self.flow = CouplingFlow(c.latent, c.flow_hidden, c.flow_kernel, c.flow_layers, c.flow_blocks, c.cond_dim)
        self.dec_in = nn.ConvTranspose1d(c.latent, c.hidden, s, stride=s)
        self.decoder = WaveNet(c.hidden, c.kernel, c.decoder_layers, c.cond_dim)
        self.dec_out = nn.Conv1d(c.hidden, MOTION_DIM, 1)
        # normalisation of inputs and outputs, set from training data (see set_stats)
        self.register_buffer("feature_mean", torch.zeros(c.feature_dim))
        self.register_buffer("feature_std", torch.ones(c.feature_dim))
        self.register_buffer("motion_scale", torch.ones(()))

    @property
    def context_frames(self) -> int:
        """Frames either side of a frame whose audio reaches it other than through the prior flow: the
        condition's convolutions (2), the decoder's (``decoder_layers * (kernel - 1) / 2``) and one latent step.
        The flow reaches further (``flow_blocks * flow_layers * (flow_kernel - 1) / 2`` latent steps), weakly."""
        c = self.config
        return 2 + c.decoder_layers * (c.kernel - 1) // 2 + c.stride

    def set_stats(self, feature_mean: torch.Tensor, feature_std: torch.Tensor, motion_scale: float) -> None:
        self.feature_mean.copy_(feature_mean)
        self.feature_std.copy_(feature_std)
        self.motion_scale.fill_(motion_scale)

    # --- pieces ----------------------------------------------------------------------------------
    def _pad(self, features: torch.Tensor, pitch: torch.Tensor, mask: torch.Tensor,
             offsets: torch.Tensor | None = None):
        """Pad T up to a multiple of the stride."""
        t = mask.shape[1]
        pad = (-t) % self.config.stride
        if pad:  # repeat the last audio step, so the end looks like more of the same sound
            features = torch.cat([features, features[:, -1:].expand(-1, 2 * pad, -1)], 1)
            pitch = torch.cat([pitch, pitch[:, -1:].expand(-1, 2 * pad)], 1)
            mask = F.pad(mask, (0, pad))
            if offsets is not None:
                offsets = F.pad(offsets, (0, 0, 0, 0, 0, pad))
        return features, pitch, mask, offsets

    def condition(self, features: torch.Tensor, pitch: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """Audio condition ``[B, C, T]`` from features ``[B, 2T, D]``, f0 ``[B, 2T]`` (Hz) and mask ``[B, T]``."""
        x = ((features - self.feature_mean) / self.feature_std).transpose(1, 2)
        g = self.audio_in(x)
        if self.pitch_embed is not None:
            p = self.pitch_embed(coarse_pitch(pitch, self.config.pitch_bins)).transpose(1, 2)  # [B, C, 2T]
            g = g + F.avg_pool1d(p, 2)
        return self.cond_out(g) * mask[:, None]

    def decode(self, z: torch.Tensor, g: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """Normalised motion ``[B, T, 204]`` from latents ``[B, L, T/s]`` and the condition ``[B, C, T]``."""
        m = mask[:, None]
        h = self.dec_in(z) * m
        return self.dec_out(self.decoder(h, m, g)).transpose(1, 2) * m.transpose(1, 2)

    # --- training --------------------------------------------------------------------------------
    def forward(self, features: torch.Tensor, pitch: torch.Tensor, offsets: torch.Tensor, mask: torch.Tensor
                ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """Reconstruct ``offsets`` [B, T, 68, 3] through the posterior.

        Returns the normalised prediction and target ``[B, T', 204]``, the padded mask ``[B, T']``
        (T' = T rounded up to the stride) and the KL loss (scalar).
        """
        features, pitch, mask, offsets = self._pad(features, pitch, mask, offsets)
        s = self.config.stride
        g = self.condition(features, pitch, mask)
        g_d = self.cond_down(g)
        m_d = mask[:, None, ::s]  # [B, 1, T/s]
        target = offsets.flatten(2) / self.motion_scale  # [B, T, 204]
        h = self.enc_in(target.transpose(1, 2)) * m_d
        stats = self.enc_out(self.encoder(h, m_d, g_d))
        mean, log_std = stats.chunk(2, dim=1)
        log_std = log_std.clamp(min=-10.0)
        z = mean + torch.randn_like(mean) * log_std.exp()
        log_q = -0.5 * ((z - mean) / log_std.exp()) ** 2 - log_std - 0.5 * math.log(2 * math.pi)
        z_p = self.flow(z, m_d, g_d)
        log_p = -0.5 * z_p ** 2 - 0.5 * math.log(2 * math.pi)
        kl = ((log_q - log_p) * m_d).sum() / (m_d.sum() * self.config.latent).clamp(min=1)
        pred = self.decode(z, g, mask)
        return pred, target, mask, kl

    def loss(self, features: torch.Tensor, pitch: torch.Tensor, offsets: torch.Tensor, mask: torch.Tensor,
             syncnet: nn.Module | None = None, generator: torch.Generator | None = None
             ) -> dict[str, torch.Tensor]:
        """Weighted losses of one batch (``total`` is their sum); the SyncNet term only when ``syncnet`` is given."""
        c = self.config
        pred, target, pmask, kl = self(features, pitch, offsets, mask)
        m = pmask[..., None]
        frames = m.sum().clamp(min=1)
        mse = (((pred - target) * m) ** 2).sum() / (frames * MOTION_DIM)
        dm = m[:, 1:] * m[:, :-1]
        dpred, dtarget = pred[:, 1:] - pred[:, :-1], target[:, 1:] - target[:, :-1]
        continuity = (((dpred - dtarget) * dm) ** 2).sum() / (dm.sum().clamp(min=1) * MOTION_DIM)
        out = {"mse": mse, "continuity": continuity, "kl": kl}
        total = c.lambda_mse * mse + c.lambda_continuity * continuity + c.lambda_kl * kl
        if syncnet is not None:
            t = offsets.shape[1]
            pred_offsets = (pred[:, :t] * self.motion_scale).unflatten(2, (68, 3))
            sync = syncnet.sync_loss(features[:, : 2 * t], pred_offsets, mask, c.sync_pairs,
                                     generator if generator is not None else torch.Generator().manual_seed(0))
            out["sync"] = sync
            total = total + c.lambda_sync * sync
        out["total"] = total
        return out

    # --- inference -------------------------------------------------------------------------------
    @torch.no_grad()
    def sample(self, features: torch.Tensor, pitch: torch.Tensor, mask: torch.Tensor | None = None,
               temperature: float = 1.0, generator: torch.Generator | None = None,
               noise: torch.Tensor | None = None) -> torch.Tensor:
        """Offsets ``[B, T, 68, 3]`` for features ``[B, 2T, D]`` and f0 ``[B, 2T]``; the prior noise is ``noise``
        ``[B, latent, >= ceil(T / stride)]`` (see `step_noise`) when given, else drawn from ``generator``."""
        return self.sample_with_grad(features, pitch, mask, temperature, generator, noise)

    def sample_with_grad(self, features: torch.Tensor, pitch: torch.Tensor, mask: torch.Tensor | None = None,
                         temperature: float = 1.0, generator: torch.Generator | None = None,
                         noise: torch.Tensor | None = None) -> torch.Tensor:
        """:meth:`sample` without disabling gradients."""
        b, t = features.shape[0], features.shape[1] // 2
        features, pitch = features[:, : 2 * t], pitch[:, : 2 * t]
        if mask is None:
            mask = features.new_ones(b, t)
        features, pitch, pmask, _ = self._pad(features, pitch, mask)
        s = self.config.stride
        g = self.condition(features, pitch, pmask)
        g_d = self.cond_down(g)
        m_d = pmask[:, None, ::s]
        shape = (b, self.config.latent, g_d.shape[2])
        if noise is None:
            noise = torch.randn(shape, generator=generator, device="cpu" if generator is None else generator.device)
        elif noise.shape[:2] != shape[:2] or noise.shape[2] < shape[2]:
            raise ValueError(f"noise must have shape [{b}, {shape[1]}, >= {shape[2]}], got {list(noise.shape)}")
        e = noise[..., :shape[2]].to(g_d.device) * temperature * m_d
        z = self.flow(e, m_d, g_d, reverse=True)
        pred = self.decode(z, g, pmask)[:, :t]
        return (pred * self.motion_scale).unflatten(2, (68, 3))
