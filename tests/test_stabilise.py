"""Stabilisation of predicted landmarks and the head-pose tracks of `geneface infer`
(geneface.infer.stabilise): clamping, smoothing, mouth scale, blinks, and the loop/still pose tracks."""

from __future__ import annotations

import numpy as np
import pytest

from geneface.constants import EYE_LOWER_68, EYE_UPPER_68, EYES_68, MOUTH_68
from geneface.infer.person import LandmarkStats, Person
from geneface.infer.stabilise import BLINK_PROFILE, blink_track, pose_track, stabilise

FPS = 25.0
NOT_MOUTH = np.setdiff1d(np.arange(68), MOUTH_68)
NOT_EYES = np.setdiff1d(np.arange(68), EYES_68)


@pytest.fixture(scope="module")
def stats() -> LandmarkStats:
    """The bundled demo person's landmark statistics (a real face's mean shape and range of motion)."""
    from geneface.infer.cli_demo import bundled_person

    return Person(bundled_person()).stats


def _wide(stats: LandmarkStats, span: float = 10.0) -> LandmarkStats:
    """``stats`` with a range so wide that nothing is clamped."""
    return LandmarkStats(stats.low - span, stats.high + span, stats.pca_mean, stats.pca_basis, stats.mean68,
                         stats.iod)


def _motion(stats: LandmarkStats, t: int = 200, seed: int = 0) -> np.ndarray:
    """Smooth offsets [T, 68, 3] inside the person's range."""
    from scipy.ndimage import gaussian_filter1d

    rng = np.random.default_rng(seed)
    u = gaussian_filter1d(rng.uniform(0, 1, (t, 68, 3)), 4, axis=0)
    u = (u - u.min(0)) / (u.max(0) - u.min(0) + 1e-9)
    return (stats.low + u * 0.8 * (stats.high - stats.low) + 0.1 * (stats.high - stats.low)).astype(np.float32)


def _eye_gap(stats: LandmarkStats, offsets: np.ndarray) -> np.ndarray:
    """Mean vertical distance [T] of the upper lid points from their lower lid points, head units."""
    head = stats.mean68 + offsets * stats.iod
    return np.abs(head[:, EYE_UPPER_68, 1] - head[:, EYE_LOWER_68, 1]).mean(1)


def test_clamps_to_the_persons_range(stats):
    rng = np.random.default_rng(0)
    span = stats.high - stats.low
    wild = (rng.normal(0, 5, (50, 68, 3)) * span.max()).astype(np.float32)  # far outside the range
    for manifold in (False, True):
        out = stabilise(wild, stats, smoothing=0, margin=0.15, manifold=manifold, blink="off")
        assert out.shape == wild.shape and out.dtype == np.float32
        lo, hi = stats.low - 0.15 * span, stats.high + 0.15 * span
        assert np.all(out[:, NOT_EYES] >= lo[NOT_EYES] - 1e-6) and np.all(out[:, NOT_EYES] <= hi[NOT_EYES] + 1e-6)
        # the bounds are reached (clamped, not shrunk)
        assert np.isclose(out[:, NOT_EYES], lo[NOT_EYES], atol=1e-6).any()
        assert np.isclose(out[:, NOT_EYES], hi[NOT_EYES], atol=1e-6).any()
    # margin 0: exactly the training range
    out = stabilise(wild, stats, smoothing=0, margin=0.0, manifold=False, blink="off")
    assert np.all(out[:, NOT_EYES] >= stats.low[NOT_EYES] - 1e-6)
    assert np.all(out[:, NOT_EYES] <= stats.high[NOT_EYES] + 1e-6)
    # motion inside the range, off the manifold step and unsmoothed, is left as it is (eyes aside)
    inside = _motion(stats)
    out = stabilise(inside, stats, smoothing=0, manifold=False, blink="off")
    np.testing.assert_allclose(out[:, NOT_EYES], inside[:, NOT_EYES], atol=1e-6)


def test_manifold_projection_keeps_the_persons_own_motion(stats):
    """The person's own training-like motion lies near their landmark subspace: projecting it changes little,
    while motion off that subspace is pulled onto it."""
    wide = _wide(stats)
    k = len(stats.pca_basis)
    rng = np.random.default_rng(1)
    on = (stats.pca_mean + rng.normal(0, 0.01, (40, k)) @ stats.pca_basis).reshape(40, 68, 3).astype(np.float32)
    out = stabilise(on, wide, smoothing=0, blink="off")
    np.testing.assert_allclose(out[:, NOT_EYES], on[:, NOT_EYES], atol=1e-5)
    off = on + rng.normal(0, 0.02, on.shape).astype(np.float32)
    out = stabilise(off, wide, smoothing=0, blink="off")
    assert np.abs(out - on)[:, NOT_EYES].mean() < 0.5 * np.abs(off - on)[:, NOT_EYES].mean()


def test_smoothing_reduces_jitter_but_keeps_a_steps_position(stats):
    wide = _wide(stats)
    t, step = 120, 60
    rng = np.random.default_rng(2)
    clean = np.zeros((t, 68, 3), np.float32)
    clean[step:, :, 1] = 0.2  # every point moves down at frame 60
    noisy = clean + rng.normal(0, 0.01, clean.shape).astype(np.float32)
    raw = stabilise(noisy, wide, smoothing=0, manifold=False, blink="off")
    for sigma in (1.0, 2.0):
        out = stabilise(noisy, wide, smoothing=sigma, manifold=False, blink="off")
        pts = out[:, NOT_EYES, 1]
        # jitter (frame-to-frame change away from the step) drops
        calm = np.r_[5:step - 5, step + 5:t - 5]
        jitter_raw = np.abs(np.diff(raw[:, NOT_EYES, 1], axis=0))[calm].mean()
        jitter = np.abs(np.diff(pts, axis=0))[calm].mean()
        assert jitter < 0.5 * jitter_raw
        # the step stays where it was: half way up between frames 59 and 60, levels kept away from it
        mean = pts.mean(1)
        crossing = np.flatnonzero(mean > 0.1)[0]
        assert crossing == step
        assert abs(mean[step - 1] + mean[step] - 0.2) < 0.02  # symmetric about the step
        assert np.all(np.abs(mean[: step - 4 * int(sigma) - 1]) < 0.01)
        assert np.all(np.abs(mean[step + 4 * int(sigma) + 1:] - 0.2) < 0.01)
    # smoothing 0 is off
    np.testing.assert_array_equal(raw[:, NOT_EYES], noisy[:, NOT_EYES])


def test_mouth_scale(stats):
    wide = _wide(stats)
    motion = _motion(stats)
    base = stabilise(motion, wide, smoothing=0, manifold=False, blink="off")
    for scale in (0.5, 1.5, 2.0):
        out = stabilise(motion, wide, smoothing=0, manifold=False, blink="off", mouth_scale=scale)
        np.testing.assert_allclose(out[:, MOUTH_68], scale * base[:, MOUTH_68], rtol=1e-5, atol=1e-7)
        np.testing.assert_array_equal(out[:, NOT_MOUTH], base[:, NOT_MOUTH])
    # with the person's own range: an exaggerated mouth is not clamped back to the normal range
    motion = (stats.low + (stats.high - stats.low) * np.linspace(0, 1, 30)[:, None, None]).astype(np.float32)
    big = stabilise(motion, stats, smoothing=0, manifold=False, margin=0, blink="off", mouth_scale=1.5)
    mouth_span = np.ptp(big[:, MOUTH_68], axis=0)
    assert np.allclose(mouth_span, 1.5 * (stats.high - stats.low)[MOUTH_68], rtol=1e-4)
    # through the manifold projection, the mouth still moves about 1.5 times as far
    wide_motion = _motion(stats, seed=3)
    m1 = stabilise(wide_motion, wide, smoothing=0, blink="off")[:, MOUTH_68]
    m15 = stabilise(wide_motion, wide, smoothing=0, blink="off", mouth_scale=1.5)[:, MOUTH_68]
    d1, d15 = m1 - m1.mean(0), m15 - m15.mean(0)
    assert (d15 * d1).sum() / (d1 * d1).sum() == pytest.approx(1.5, abs=0.15)


def test_blinks_close_the_lids_at_a_natural_rate(stats):
    minute = int(60 * FPS)
    track = blink_track(minute, FPS, seed=0)
    starts = np.flatnonzero((track[1:] > 0) & (track[:-1] == 0)) + 1
    assert 9 <= len(starts) <= 30  # one every 2-6 s
    gaps = np.diff(starts) / FPS
    assert gaps.min() >= 2.0 - 1e-9 and gaps.max() <= 6.0 + 1e-9
    assert 1.0 <= starts[0] / FPS <= 3.0
    for s in starts:
        np.testing.assert_array_equal(track[s:s + len(BLINK_PROFILE)], BLINK_PROFILE)
    assert np.count_nonzero(track) == len(starts) * len(BLINK_PROFILE)
    # seeded: the same seed, the same blinks; another seed, other times
    np.testing.assert_array_equal(track, blink_track(minute, FPS, seed=0))
    assert not np.array_equal(track, blink_track(minute, FPS, seed=1))

    # in the landmarks: eyes open at the person's mean, shut at each blink's peak; none with blink off
    motion = _motion(stats, t=minute)
    out = stabilise(motion, stats, blink="auto", seed=0)
    gap, open_gap = _eye_gap(stats, out), _eye_gap(stats, np.zeros((1, 68, 3), np.float32))[0]
    assert open_gap > 0
    peaks = starts + int(np.argmax(BLINK_PROFILE))
    assert np.all(gap[peaks] < 0.05 * open_gap)  # closed
    assert np.allclose(gap[track == 0], open_gap, rtol=1e-4)  # open between blinks
    closed_frames = np.flatnonzero(gap < 0.5 * open_gap)
    assert set(closed_frames) <= set(np.flatnonzero(track > 0.5))
    off = stabilise(motion, stats, blink="off", seed=0)
    np.testing.assert_array_equal(off[:, EYES_68], 0)  # held open at the mean
    np.testing.assert_allclose(out[:, NOT_EYES], off[:, NOT_EYES])  # blinks touch only the eyes
    with pytest.raises(ValueError, match="blink must be 'auto' or 'off'"):
        stabilise(motion, stats, blink="sometimes")


def test_pose_track_loop_and_still():
    n = 6
    c2w = np.repeat(np.eye(4, dtype=np.float32)[None], n, 0)
    c2w[:, 0, 3] = np.arange(n)  # pose k: camera at x = k
    t = 40
    loop = pose_track(c2w, t, "loop")
    assert loop.shape == (t, 4, 4)
    x = loop[:, 0, 3]
    # forward 0..5, back 4..0, forward again: no pose repeated at the turns and no jump
    np.testing.assert_array_equal(x[:2 * n - 1], [0, 1, 2, 3, 4, 5, 4, 3, 2, 1, 0])
    assert np.all(np.abs(np.diff(x)) == 1)
    np.testing.assert_array_equal(x[: 2 * n - 2], x[2 * n - 2: 4 * n - 4])  # period 2n - 2
    np.testing.assert_array_equal(pose_track(c2w, 4, "loop")[:, 0, 3], [0, 1, 2, 3])  # shorter than the clip
    still = pose_track(c2w, t, "still")
    assert still.shape == (t, 4, 4) and np.all(still == c2w[0])
    np.testing.assert_array_equal(pose_track(c2w[:1], 7, "loop"), np.repeat(c2w[:1], 7, 0))  # one pose
    with pytest.raises(ValueError, match="pose mode must be 'loop' or 'still'"):
        pose_track(c2w, t, "bounce")
