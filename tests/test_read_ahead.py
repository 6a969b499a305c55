"""`media.read_ahead`: items computed in a background thread, handed over in order, errors and early stops
passed on (the process steps decode and write frames through it while MediaPipe runs)."""

from __future__ import annotations

import threading

import pytest

from geneface import media


def _threads() -> set[str]:
    return {t.name for t in threading.enumerate() if t.name == "geneface-read-ahead"}


def test_items_arrive_in_order_and_are_made_in_another_thread():
    made_in: list[int] = []

    def items():
        for i in range(100):
            made_in.append(threading.get_ident())
            yield i * i

    assert list(media.read_ahead(items(), depth=3)) == [i * i for i in range(100)]
    assert set(made_in) == {made_in[0]} and made_in[0] != threading.get_ident()
    assert not _threads()


def test_an_error_in_the_thread_is_raised_after_the_items_before_it():
    def items():
        yield 1
        yield 2
        raise ValueError("frame 3 is corrupt")

    got = []
    with pytest.raises(ValueError, match="frame 3 is corrupt"):
        for item in media.read_ahead(items()):
            got.append(item)
    assert got == [1, 2]
    assert not _threads()


def test_stopping_early_stops_the_thread_and_closes_the_items():
    closed = threading.Event()
    made: list[int] = []

    def items():
        try:
            for i in range(10_000):
                made.append(i)
                yield i
        finally:
            closed.set()

    for item in media.read_ahead(items(), depth=4):
        if item == 5:
            break
    assert closed.is_set()  # the generator's own clean-up ran (a video file is closed)
    assert len(made) <= 5 + 1 + 4 + 1  # never more than depth ahead of the caller
    assert not _threads()
