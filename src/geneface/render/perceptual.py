"""The optional perceptual (LPIPS) loss: used only where LPIPS weights are installed (RESOURCES.md)."""

from __future__ import annotations

import logging

import torch
from torch import nn

from ..errors import MissingModelError
from ..lpips import load_lpips

log = logging.getLogger(__name__)


def load_perceptual(device: torch.device | str = "cpu") -> nn.Module | None:
    """LPIPS as a frozen module ``(x, y) -> [B]`` on [B, 3, H, W] images in [-1, 1], or None (with a warning)
    when its weights are not installed. It is `geneface.lpips.load_lpips`, which ports the registry's LPIPS
    weights; nothing is ever downloaded."""
    try:
        net = load_lpips(device)
    except MissingModelError as e:
        log.warning(f"perceptual (LPIPS) loss off: {e}")
        return None
    return net.eval().requires_grad_(False)
