"""Shared fixtures: synthetic talking-head clips made by the project's own generator, and their datasets."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

os.environ.setdefault("OMP_NUM_THREADS", "2")
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import torch  # noqa: E402  (after the OpenMP settings, which torch reads when it loads)


def available_devices() -> list[str]:
    """The torch devices of this machine the ``device`` fixture runs on: always the CPU, then CUDA and Apple
    MPS where torch sees them."""
    found = ["cpu"]
    if torch.cuda.is_available():
        found.append("cuda")
    mps = getattr(torch.backends, "mps", None)
    if mps is not None and mps.is_available():
        found.append("mps")
    return found


CHROMIUM = ("chromium", "chromium-browser", "google-chrome")
"""Browsers the browser tests drive (the first found on PATH), with ``chromedriver``."""


def pytest_configure(config) -> None:
    config.addinivalue_line("markers", "espeak: needs the espeak-ng text-to-speech program (skipped where it is "
                                       "absent; `make` installs the Debian package)")
    config.addinivalue_line("markers", "browser: drives headless Chromium with chromedriver (skipped where they "
                                       "are absent; `make` installs the Debian packages chromium and "
                                       "chromium-driver)")


def chromium() -> tuple[str, str] | None:
    """(browser, chromedriver) paths, or None where either is missing."""
    browser = next((shutil.which(name) for name in CHROMIUM if shutil.which(name)), None)
    driver = shutil.which("chromedriver")
    return (browser, driver) if browser and driver else None


def pytest_collection_modifyitems(config, items) -> None:
    skips = {}
    if shutil.which("espeak-ng") is None:
        skips["espeak"] = pytest.mark.skip(reason="espeak-ng is not on PATH (synthetic speech is made with it; "
                                                  "`make` installs the Debian package espeak-ng)")
    if chromium() is None:
        skips["browser"] = pytest.mark.skip(reason="chromium or chromedriver is not on PATH (`make` installs the "
                                                   "Debian packages chromium and chromium-driver)")
    for item in items:
        for marker, skip in skips.items():
            if marker in item.keywords:
                item.add_marker(skip)


@pytest.fixture(scope="session")
def synthetic_clip(tmp_path_factory) -> tuple[Path, dict]:
    """A 4 s, 256 px synthetic talking head: (mp4 path, ground-truth arrays)."""
    from geneface.fileio import read_npz
    from geneface.synth import SynthConfig, synthesize

    out = tmp_path_factory.mktemp("clip") / "person.mp4"
    truth = synthesize(out, config=SynthConfig(size=256, seconds=4.0, seed=0))
    return out, read_npz(truth)


@pytest.fixture(scope="session")
def tiny_dataset(tmp_path_factory, synthetic_clip) -> Path:
    """The synthetic clip processed at 128 px with mel features (about 100 frames)."""
    from geneface.process.pipeline import ProcessConfig, process

    out = tmp_path_factory.mktemp("data") / "person"
    process(synthetic_clip[0], out, ProcessConfig(size=128))
    return out


@pytest.fixture(scope="session")
def tiny_person(tmp_path_factory, synthetic_clip, tiny_dataset) -> Path:
    """A person model trained in seconds by `train_person` on the synthetic clip (its dataset copied from
    ``tiny_dataset``, so processing is skipped): the tiny motion preset and a 64 px renderer."""
    import shutil
    from dataclasses import replace

    import torch

    from geneface import TrainConfig, train_person
    from geneface.motion.train import MotionTrainConfig
    from geneface.render.model import ModelConfig
    from geneface.render.train import RenderTrainConfig

    root = tmp_path_factory.mktemp("person") / "person"
    shutil.copytree(tiny_dataset, root / "data")
    model = ModelConfig(resolutions=(16, 32, 64), torso_resolutions=(8, 16, 32, 64), train_samples=32,
                        infer_samples=32, grid_resolution=32)
    config = TrainConfig(
        size=128, motion_preset="tiny", device="cpu",
        motion=MotionTrainConfig(syncnet_steps=20, steps=30, batch_size=4, window=16, warmup=5, save_every=10_000,
                                 log_every=10),
        render=replace(RenderTrainConfig(), size=64, steps=40, prune_views=8, torso_fraction=0.5, frames_per_step=4,
                       rays_per_frame=128, val_every=10_000, val_frames=2, model=model))
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        train_person(synthetic_clip[0], root, config, progress=False)
    finally:
        torch.set_num_threads(threads)
    return root


@pytest.fixture(scope="module", params=available_devices())
def device(request) -> str:
    """A device name (``cpu``, ``cuda``, ``mps``; the test ids, so ``pytest -k cuda`` selects a device) for
    tests of tensor code: each runs once on every device present. Module-scoped so that a module's
    device-bound fixtures (a trained tiny model) are built once per device, and its other module fixtures once."""
    return request.param


@pytest.fixture(scope="session")
def chromium_paths() -> tuple[str, str]:
    """(browser, chromedriver) for the ``browser`` tests."""
    found = chromium()
    if found is None:
        pytest.skip("chromium or chromedriver is not on PATH")
    return found


@pytest.fixture(scope="module")
def one_thread():
    """One torch intra-op thread for a module (``pytestmark = pytest.mark.usefixtures("one_thread")``): tiny
    models train fastest on one, and spinning OpenMP barriers make two far slower on a shared 2-core machine."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
