"""`media.read_video` resamples other-rate and variable-rate video to 25 fps by the nearest source frame."""

from __future__ import annotations

from fractions import Fraction

import av
import numpy as np
import pytest

from geneface import media


def _write(path, times: np.ndarray) -> None:
    """An H.264 file whose frame ``i`` (grey level ``8 i``) is shown at ``times[i]`` seconds."""
    with av.open(str(path), "w", format="mp4") as container:
        stream = container.add_stream("libx264", rate=30)
        stream.width = stream.height = 64
        stream.pix_fmt = "yuv420p"
        stream.time_base = stream.codec_context.time_base = Fraction(1, 90000)
        stream.options = {"crf": "0"}
        for i, t in enumerate(times):
            frame = av.VideoFrame.from_ndarray(np.full((64, 64, 3), 8 * i, np.uint8), format="rgb24")
            frame.pts = round(t * 90000)
            frame.time_base = stream.time_base
            container.mux(stream.encode(frame))
        container.mux(stream.encode(None))


def _indices(path) -> np.ndarray:
    return np.array([round(f.mean() / 8) for f in media.read_video(path)])


@pytest.mark.parametrize("times", [np.arange(30) / 30,
                                   np.cumsum(np.r_[0, np.random.default_rng(5).integers(1, 4, 24)]) / 30],
                         ids=["30fps", "variable"])
def test_each_output_frame_is_the_nearest_source_frame(tmp_path, times):
    _write(tmp_path / "clip.mp4", times)
    got = _indices(tmp_path / "clip.mp4")
    duration = times[-1] + 1 / 30  # the last frame lasts one interval
    assert len(got) == int(np.ceil(duration * 25 - 1e-6))
    expected = media.nearest_frames(times, np.arange(len(got)) / 25)
    np.testing.assert_array_equal(got, expected)
    # nearest, not the last one shown: output frame 3 (120 ms) is source frame 4 (133 ms), not 3 (100 ms)
    if len(times) == 30:
        assert got[:6].tolist() == [0, 1, 2, 4, 5, 6]


def test_nearest_frames_picks_the_closer_neighbour():
    source = np.array([0.0, 0.1, 0.3])
    np.testing.assert_array_equal(media.nearest_frames(source, np.array([0.0, 0.04, 0.06, 0.19, 0.21, 0.5])),
                                  [0, 0, 1, 1, 2, 2])
    np.testing.assert_array_equal(media.nearest_frames(np.array([0.2]), np.array([0.0, 1.0])), [0, 0])
