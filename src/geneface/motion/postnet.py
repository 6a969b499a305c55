"""Postnet: adapts a (corpus-pretrained) generator's landmarks to one person.

A residual 1-D CNN adds a correction to the generator's offsets. It is trained adversarially against the
person's real landmarks (a per-frame MLP discriminator, least-squares GAN), with a SyncNet term that keeps
the lips in sync with the audio and a small reconstruction term on the person's own clips.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from ..engine.saveload import Savable
from .generator import MOTION_DIM
from .layers import ConvBlock


@dataclass
class PostnetConfig:
    """Sizes and loss weights of the postnet and its discriminator (defaults follow the original)."""

    channels: tuple[int, ...] = (128, 256)
    """Channels of each residual stage."""
    kernel: int = 3
    """Kernel size of the conv layers."""
    residual_layers: int = 2
    """Residual conv layers after each stage's first layer."""
    disc_hidden: tuple[int, ...] = (128, 256, 256, 128)
    """Hidden sizes of the per-frame MLP discriminator."""
    disc_dropout: float = 0.25
    """Dropout of the discriminator's hidden layers."""
    lambda_mse: float = 0.05
    """Weight of the reconstruction loss on the person's own clips."""
    lambda_adv: float = 0.85
    """Weight of the adversarial loss."""
    lambda_sync: float = 0.1
    """Weight of the SyncNet loss."""
    sync_pairs: int = 256
    """Mouth windows per batch scored by the SyncNet loss."""

    def __post_init__(self) -> None:
        self.channels = tuple(self.channels)
        self.disc_hidden = tuple(self.disc_hidden)


class Postnet(Savable, nn.Module):
    """``refined = x + cnn(x)`` on offsets ``[B, T, 68, 3]``; starts as the identity."""

    config_args = {"config": PostnetConfig}

    def __init__(self, config: PostnetConfig) -> None:
        super().__init__()
        self.config = config
        layers: list[nn.Module] = []
        prev = MOTION_DIM
        for c in config.channels:
            layers.append(ConvBlock(prev, c, config.kernel, negative_slope=0.2))
            layers += [ConvBlock(c, c, config.kernel, residual=True, negative_slope=0.2)
                       for _ in range(config.residual_layers)]
            prev = c
        layers.append(ConvBlock(prev, config.channels[0], config.kernel, negative_slope=0.2))
        self.body = nn.Sequential(*layers)
        self.out = nn.Conv1d(config.channels[0], MOTION_DIM, 1)
        nn.init.zeros_(self.out.weight)
        nn.init.zeros_(self.out.bias)
        self.register_buffer("motion_scale", torch.ones(()))

    def forward(self, offsets: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        """Refined offsets ``[B, T, 68, 3]`` (``mask`` [B, T] zeroes the correction on padding)."""
        x = offsets.flatten(2) / self.motion_scale
        diff = self.out(self.body(x.transpose(1, 2))).transpose(1, 2)
        if mask is not None:
            diff = diff * mask[..., None]
        return offsets + (diff * self.motion_scale).unflatten(2, (68, 3))

    def loss(self, raw: torch.Tensor, target: torch.Tensor, mask: torch.Tensor, features: torch.Tensor,
             discriminator: "Discriminator", syncnet: nn.Module | None, generator: torch.Generator,
             target_mask: torch.Tensor | None = None) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
        """Weighted postnet losses and the refined offsets.

        ``raw`` generator offsets [B, T, 68, 3] of audio ``features`` [B, 2T, D] (valid frames ``mask`` [B, T]);
        ``target`` the real offsets of that audio where ``target_mask`` [B, T] (default ``mask``) is set
        (other speakers' audio has none). The discriminator is only evaluated here, not trained.
        """
        c = self.config
        refined = self(raw, mask)
        m = (mask if target_mask is None else target_mask)[..., None, None]
        mse = (((refined - target) / self.motion_scale * m) ** 2).sum() / (m.sum().clamp(min=1) * MOTION_DIM)
        adv = masked_mean((1 - discriminator(refined)) ** 2, mask)
        out = {"mse": mse, "adv": adv}
        total = c.lambda_mse * mse + c.lambda_adv * adv
        if syncnet is not None:
            sync = syncnet.sync_loss(features, refined, mask, c.sync_pairs, generator)
            out["sync"] = sync
            total = total + c.lambda_sync * sync
        out["total"] = total
        return out, refined


class Discriminator(Savable, nn.Module):
    """Per-frame MLP scoring offsets ``[B, T, 68, 3]``: high for the person's real landmarks."""

    config_args = {"config": PostnetConfig}

    def __init__(self, config: PostnetConfig) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        prev = MOTION_DIM
        for h in config.disc_hidden:
            layers += [nn.Linear(prev, h), nn.LeakyReLU(0.2), nn.Dropout(config.disc_dropout)]
            prev = h
        layers.append(nn.Linear(prev, 1, bias=False))
        self.mlp = nn.Sequential(*layers)
        self.register_buffer("motion_scale", torch.ones(()))

    def forward(self, offsets: torch.Tensor) -> torch.Tensor:
        """Scores ``[B, T]`` of every frame of ``offsets`` ``[B, T, 68, 3]`` (the losses weigh the valid ones: no
        boolean indexing, whose size the host would have to wait for)."""
        return self.mlp(offsets.flatten(2) / self.motion_scale).squeeze(-1)

    def loss(self, real: torch.Tensor, fake: torch.Tensor, real_mask: torch.Tensor,
             fake_mask: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
        """Least-squares GAN loss on real and (detached) fake offsets ``[B, T, 68, 3]`` with masks ``[B, T]``."""
        fake_mask = real_mask if fake_mask is None else fake_mask
        scores = self(torch.cat([real, fake.detach()]))  # one forward (DDP)
        b = real.shape[0]
        real_loss = masked_mean((scores[:b] - 1) ** 2, real_mask)
        fake_loss = masked_mean(scores[b:] ** 2, fake_mask)
        return {"disc_real": real_loss, "disc_fake": fake_loss, "total": real_loss + fake_loss}


def masked_mean(values: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Mean of ``values`` [B, T] over the frames where ``mask`` [B, T] is set."""
    return (values * mask).sum() / mask.sum().clamp(min=1)
