"""Processes that render live frames and encode them as JPEG, shared by every live session.

A live session computes its motion in the server process (`SpeechStream` with ``render=False``) and hands each
frame's landmark window and camera to this pool; each process renders on its main thread with one torch thread,
so the frames of one session use every core (torch work on a server's worker threads gets about one core in
all) and the next push's motion runs while this one's frames render. A process that dies fails the frames
waiting on it with `RenderFailed` (their sessions end with that message) and the pool starts afresh.
"""

from __future__ import annotations

import asyncio
import multiprocessing
import os
import signal
import threading
import time
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from pathlib import Path

import cv2
import numpy as np
import torch

from ..device import keep_freed_memory
from ..errors import GeneFaceError
from ..infer.pipeline import PersonModel

class RenderFailed(GeneFaceError):
    """A render process stopped (killed, out of memory) before it rendered a frame."""


KEEP_MODELS = 4
"""Person models each process keeps loaded (the most recently used)."""
_models: dict[tuple[str, float], PersonModel] = {}  # in a render process: (path, person.json mtime) -> PersonModel


def _start(device: str, parent: int) -> None:
    """A render process's first step: one torch thread, malloc that keeps freed memory, Ctrl-C left to the
    server (which stops its processes as it shuts down), and an exit when the server is gone (a killed server
    leaves no processes behind)."""
    torch.set_num_threads(1)
    keep_freed_memory()
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    os.environ["GENEFACE_RENDER_DEVICE"] = device

    def watch() -> None:
        while os.getppid() == parent:
            time.sleep(1.0)
        os._exit(0)

    threading.Thread(target=watch, daemon=True).start()


def _model(path: str) -> PersonModel:
    """The person model at ``path`` in this render process (loaded once; reloaded when it changes)."""
    key = (path, (Path(path) / "person.json").stat().st_mtime)
    model = _models.pop(key, None)
    if model is None:
        model = PersonModel.load(path, os.environ["GENEFACE_RENDER_DEVICE"])
    _models[key] = model  # most recent last
    while len(_models) > KEEP_MODELS:
        _models.pop(next(iter(_models)))
    return model


def _load(path: str) -> None:
    _model(path)


def _render(path: str, windows: np.ndarray, c2w: np.ndarray, size: int, shown: int,
            quality: int) -> tuple[list[bytes], float]:
    """JPEG images of windows [B, 5, 68, 3] seen from cameras c2w [B, 4, 4], rendered at ``size`` pixels a side
    and shown at ``shown`` (resized when they differ), and the seconds they took."""
    t0 = time.perf_counter()
    model = _model(path)  # loaded outside inference mode (the occupancy grid keys a cache on a tensor's version)
    with torch.inference_mode():
        rgb = model.render(windows, c2w, size)  # [B, size, size, 3] uint8
    if size != shown:
        rgb = [cv2.resize(image, (shown, shown), interpolation=cv2.INTER_LINEAR) for image in rgb]
    params = [cv2.IMWRITE_JPEG_QUALITY, quality]
    jpegs = [cv2.imencode(".jpg", np.ascontiguousarray(image[..., ::-1]), params)[1].tobytes() for image in rgb]
    return jpegs, time.perf_counter() - t0


class RenderPool:
    """``processes`` render processes on ``device``, started when first needed."""

    def __init__(self, processes: int, device: str) -> None:
        self.processes = processes
        self.device = device
        self._lock = threading.Lock()
        self._pool: ProcessPoolExecutor | None = None

    def _executor(self) -> ProcessPoolExecutor:
        with self._lock:
            if self._pool is None:
                self._pool = ProcessPoolExecutor(self.processes, mp_context=multiprocessing.get_context("spawn"),
                                                 initializer=_start, initargs=(self.device, os.getpid()))
            return self._pool

    async def _call(self, fn, *args):
        pool = self._executor()
        try:
            return await asyncio.wrap_future(pool.submit(fn, *args))
        except BrokenProcessPool:
            with self._lock:
                if self._pool is pool:  # the first to see it starts a fresh pool for later sessions
                    self._pool = None
            pool.shutdown(wait=False, cancel_futures=True)
            raise RenderFailed("a render process stopped unexpectedly (out of memory?); start the session "
                               "again") from None

    async def load(self, path: Path) -> None:
        """Load the person at ``path`` in every process (the first frames come sooner)."""
        await asyncio.gather(*[self._call(_load, str(path)) for _ in range(self.processes)])

    async def render(self, path: Path, windows: np.ndarray, c2w: np.ndarray, size: int, shown: int,
                     quality: int) -> tuple[list[bytes], float]:
        """JPEG frames and the seconds they took (see `_render`), from one of the processes."""
        return await self._call(_render, str(path), windows, c2w, size, shown, quality)

    def close(self) -> None:
        """Stop the processes (frames still waiting are cancelled)."""
        with self._lock:
            pool, self._pool = self._pool, None
        if pool is not None:
            pool.shutdown(wait=True, cancel_futures=True)
