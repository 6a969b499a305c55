"""The optional perceptual (LPIPS) loss: used only where LPIPS weights are installed (RESOURCES.md)."""

from __future__ import annotations

import importlib
import warnings

import torch
from torch import nn

from ..errors import MissingModelError


def load_perceptual(device: torch.device | str = "cpu") -> nn.Module | None:
    """LPIPS as a module ``(x, y) -> [B]`` on [B, 3, H, W] images in [-1, 1], or None (with a warning) when
    it is not installed. It comes from ``geneface.evaluate.lpips.load_lpips(device)``, which ports the
    registry's LPIPS weights; nothing is ever downloaded."""
    try:
        module = importlib.import_module("geneface.evaluate.lpips")
        net = module.load_lpips(device)
    except (ImportError, AttributeError, MissingModelError) as e:
        warnings.warn(f"perceptual (LPIPS) loss off: {e}", stacklevel=2)
        return None
    if net is None:
        return None
    net.eval().requires_grad_(False)
    return net
