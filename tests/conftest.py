"""Shared fixtures: synthetic talking-head clips made by the project's own generator, and their datasets."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest

os.environ.setdefault("OMP_NUM_THREADS", "2")
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")


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
