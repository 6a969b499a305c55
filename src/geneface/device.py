"""`--device auto|cpu|cuda|mps` -> a torch device."""

from __future__ import annotations

import contextlib
from dataclasses import dataclass

from .errors import InputError

DEVICES = ("auto", "cpu", "cuda", "mps")
PRECISIONS = ("auto", "fp32", "bf16", "fp16")
"""``--precision`` of the renderer's fields: ``auto`` is bf16 on a CUDA GPU that supports it, else fp16 there,
and fp32 on the CPU and MPS (bf16 autocast rendered slower than fp32 on a CPU with AMX, in a quick check)."""


@dataclass(frozen=True)
class DeviceDefaults:
    """Training sizes that suit a kind of device: small and quick on a CPU, full size on a GPU."""

    render_size: int
    """Renderer frame side in pixels (at most the dataset's)."""
    output_size: int
    """Side of a person model's frames (`geneface train all --size`): the renderer's, brought up by the
    super-resolution network (`geneface.render.sr`) when it is 2x or 4x ``render_size``."""
    render_steps: int
    """Renderer training steps (head and torso together)."""
    rays_per_frame: int
    """Renderer rays per frame and step."""
    motion_preset: str
    """Audio2motion model sizes (`geneface.motion.presets`)."""


DEVICE_DEFAULTS = {
    "cpu": DeviceDefaults(render_size=128, output_size=512, render_steps=3000, rays_per_frame=512,
                          motion_preset="small"),
    "mps": DeviceDefaults(render_size=256, output_size=512, render_steps=8000, rays_per_frame=1024,
                          motion_preset="small"),
    "cuda": DeviceDefaults(render_size=512, output_size=512, render_steps=20000, rays_per_frame=2048,
                           motion_preset="geneface"),
}
"""The one table of per-device defaults (`geneface train render`, `train all` and the API read it)."""


def defaults_for(device) -> DeviceDefaults:
    """`DEVICE_DEFAULTS` of a torch device (or a device type name)."""
    kind = device if isinstance(device, str) else device.type
    return DEVICE_DEFAULTS.get(kind, DEVICE_DEFAULTS["cuda"])


def resolve_device(name="auto"):
    """The torch device for ``name`` (a `DEVICES` name, ``cuda:1``, or a torch device): ``auto`` picks CUDA, then
    MPS, then the CPU; an unavailable explicit choice is an error. A CUDA device gets `configure_cuda`."""
    import torch

    if isinstance(name, torch.device) or (isinstance(name, str) and name.startswith("cuda:")):
        dev = torch.device(name)
        if dev.type == "cuda":
            resolve_device("cuda")
        return dev
    if name not in DEVICES:
        raise InputError(f"unknown device {name!r}; choose from {', '.join(DEVICES)}")
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "mps" if _mps_available() else "cpu"
    if name == "cuda":
        if not torch.cuda.is_available():
            raise InputError("--device cuda: no CUDA GPU is available to torch")
        configure_cuda()
    if name == "mps" and not _mps_available():
        raise InputError("--device mps: Apple MPS is not available")
    return torch.device(name)


def _mps_available() -> bool:
    import torch

    return getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available()


def configure_cuda() -> None:
    """Fast CUDA settings, set once per process where a CUDA device is used (`resolve_device`, the engine):
    cuDNN picks its fastest kernels for the shapes it sees, float32 matrix products and convolutions use TF32
    (about 1e-3 relative error, far below what the renderer's PSNR can show)."""
    import torch

    torch.backends.cudnn.benchmark = True
    torch.backends.cuda.matmul.allow_tf32 = True
    torch.backends.cudnn.allow_tf32 = True


def amp_dtype(device, precision: str = "auto"):
    """The autocast dtype of ``precision`` (`PRECISIONS`) on ``device`` (a torch device or its type name), None
    for fp32: the one place training and rendering choose it, so a model renders at the precision it was
    validated at."""
    import torch

    kind = device if isinstance(device, str) else device.type
    if precision not in PRECISIONS:
        raise InputError(f"unknown precision {precision!r}; choose from {', '.join(PRECISIONS)}")
    if precision == "auto":
        if kind != "cuda":
            return None
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    if precision == "bf16" and kind == "cuda" and not torch.cuda.is_bf16_supported():
        raise InputError("--precision bf16: this GPU does not support bfloat16; use fp16 or auto")
    return {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}[precision]


def fused_adam(device) -> bool:
    """Whether torch's fused Adam serves ``device`` (CPU and CUDA): one kernel per step instead of several per
    tensor, which is most of the optimizer's time for models of many small tensors (the motion models)."""
    return (device if isinstance(device, str) else device.type) in ("cpu", "cuda")


@contextlib.contextmanager
def memory_errors(device, what: str, hint: str):
    """Running out of memory on ``device`` inside the block is an `InputError`: ``out of memory on cuda WHAT;
    HINT`` (``what``: "in head training", "while loading ...") (CUDA's and MPS's out-of-memory errors and a failed CPU allocation alike)."""
    import torch

    kind = device if isinstance(device, str) else device.type
    try:
        yield
    except torch.cuda.OutOfMemoryError:
        raise InputError(f"out of memory on {kind} {what}; {hint}") from None
    except RuntimeError as e:
        if "can't allocate memory" in str(e) or "out of memory" in str(e):
            raise InputError(f"out of memory on {kind} {what}; {hint}") from None
        raise


def autocast(device, dtype):
    """Autocast to ``dtype`` on ``device``'s kind (a no-op for None)."""
    import torch

    if dtype is None:
        return contextlib.nullcontext()
    return torch.autocast(device if isinstance(device, str) else device.type, dtype=dtype)


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
