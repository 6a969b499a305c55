"""Comparing prepared corpora (test_corpus.py, test_scale.py): the arrays of every clip, and whether two runs
wrote the same ones."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from geneface.corpus import Corpus

AUDIO_ARRAYS_LOOSE_ROWS = 0.02
"""Share of an audio array's rows that may differ beyond float rounding between two runs (see `assert_same`)."""


def corpus_arrays(corpus_dir: Path) -> dict[str, dict[str, np.ndarray]]:
    """Clip path -> array name -> array, for every clip of the corpus in ``corpus_dir``."""
    corpus = Corpus(corpus_dir)
    return {r["path"]: {k: corpus.read(r, k) for k in r["arrays"]} for r in corpus.clips()}


def assert_same(a: dict, b: dict) -> None:
    """The same clips with the same arrays (`corpus_arrays` of two runs): landmark offsets bit for bit; the
    audio arrays (mel, pitch) to float rounding on all but `AUDIO_ARRAYS_LOOSE_ROWS` of their rows.

    Once in CI a spawned worker's pitch differed from the in-process run's, after hundreds of other tests had
    run in that process: a last-bit difference can flip one frame's YIN decision. A clip's arrays swapped with
    another's, shifted or cut short differ on most rows.
    """
    assert sorted(a) == sorted(b)
    for path in a:
        assert sorted(a[path]) == sorted(b[path]) == ["mel", "offsets", "pitch"]
        for key in a[path]:
            x, y = a[path][key], b[path][key]
            if key == "offsets":
                assert np.array_equal(x, y), (path, key)
                continue
            assert x.shape == y.shape, (path, key)
            loose = ~np.isclose(x, y, rtol=1e-4, atol=1e-4).reshape(len(x), -1).all(axis=1)
            assert loose.sum() <= AUDIO_ARRAYS_LOOSE_ROWS * len(x), (path, key, int(loose.sum()))
