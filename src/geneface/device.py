"""`--device auto|cpu|cuda|mps` -> a torch device."""

from __future__ import annotations

from .errors import InputError

from dataclasses import dataclass

DEVICES = ("auto", "cpu", "cuda", "mps")


@dataclass(frozen=True)
class DeviceDefaults:
    """Training sizes that suit a kind of device: small and quick on a CPU, full size on a GPU."""

    render_size: int
    """Renderer frame side in pixels (at most the dataset's)."""
    render_steps: int
    """Renderer training steps (head and torso together)."""
    rays_per_frame: int
    """Renderer rays per frame and step."""
    motion_preset: str
    """Audio2motion model sizes (`geneface.motion.presets`)."""


DEVICE_DEFAULTS = {
    "cpu": DeviceDefaults(render_size=128, render_steps=3000, rays_per_frame=512, motion_preset="small"),
    "mps": DeviceDefaults(render_size=256, render_steps=8000, rays_per_frame=1024, motion_preset="small"),
    "cuda": DeviceDefaults(render_size=512, render_steps=20000, rays_per_frame=2048, motion_preset="geneface"),
}
"""The one table of per-device defaults (`geneface train render`, `train all` and the API read it)."""


def defaults_for(device) -> DeviceDefaults:
    """`DEVICE_DEFAULTS` of a torch device (or a device type name)."""
    kind = device if isinstance(device, str) else device.type
    return DEVICE_DEFAULTS.get(kind, DEVICE_DEFAULTS["cuda"])


def resolve_device(name: str = "auto"):
    """The torch device for ``name``: ``auto`` picks CUDA, then MPS, then the CPU; an unavailable
    explicit choice is an error."""
    import torch

    if name not in DEVICES:
        raise InputError(f"unknown device {name!r}; choose from {', '.join(DEVICES)}")
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise InputError("--device cuda: no CUDA GPU is available to torch")
    if name == "mps" and not (getattr(torch.backends, "mps", None) and torch.backends.mps.is_available()):
        raise InputError("--device mps: Apple MPS is not available")
    return torch.device(name)


MMAP_THRESHOLD = 32 << 20
"""Blocks smaller than this come from malloc's heap, not fresh pages (glibc's largest setting on 64 bits)."""
TRIM_THRESHOLD = 512 << 20
"""malloc keeps up to this much freed memory for reuse before returning it to the system."""


def keep_freed_memory() -> bool:
    """Let glibc's malloc reuse freed memory instead of returning it to the system at once (`MMAP_THRESHOLD`,
    `TRIM_THRESHOLD`): torch on a CPU allocates and frees megabytes in every operation and each fresh page
    faults, which costs rendering about 15 % of its CPU time. Process-wide (for a server or a benchmark to call
    once at the start); True where it took effect (glibc), False elsewhere."""
    import ctypes
    import ctypes.util

    try:
        mallopt = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6").mallopt
    except (OSError, AttributeError):
        return False
    m_trim_threshold, m_mmap_threshold = -1, -3  # malloc.h
    return bool(mallopt(m_mmap_threshold, MMAP_THRESHOLD)) and bool(mallopt(m_trim_threshold, TRIM_THRESHOLD))
