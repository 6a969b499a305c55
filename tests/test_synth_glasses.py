"""Glasses in the synthetic talking head: dark rims around the eyes that move with the head, and nothing else
changed (the truth is the face's; without glasses the output is as before)."""

from __future__ import annotations

import numpy as np
import pytest
from scipy.spatial.transform import Rotation

from geneface.cli import main
from geneface.errors import InputError
from geneface.face import eye_centers, interocular
from geneface.media import AUDIO_RATE
from geneface.synth import Animator, SynthConfig, crop_face, default_face, default_speech, prepare

SIZE = 96


@pytest.fixture(scope="module")
def photo():
    """The bundled face cropped to SIZE px and its mesh."""
    return crop_face(default_face(), SIZE)


def _frame(anim: Animator, yaw: float = 0.0, pitch: float = 0.0, blink: float = 0.0):
    rotation = Rotation.from_euler("YXZ", [yaw, pitch, 0.0], degrees=True).as_matrix()
    return anim.frame(0.0, 0.0, blink, rotation, anim.rig.origin)


def _gray(image: np.ndarray) -> np.ndarray:
    return image.astype(np.float32).mean(-1)


def _around(centre: np.ndarray, iod: float, low: float, high: float) -> np.ndarray:
    """Mask [SIZE, SIZE] of an elliptic ring about ``centre`` (radii in lens sizes, the lens ~0.75 x 0.55 IOD)."""
    yy, xx = np.mgrid[0:SIZE, 0:SIZE] + 0.5
    r = np.hypot((xx - centre[0]) / (0.37 * iod), (yy - centre[1]) / (0.27 * iod))
    return (r >= low) & (r <= high)


@pytest.mark.parametrize("style", ["thin", "thick"])
def test_rims_darken_a_ring_around_each_eye_not_the_eye(photo, style):
    bare, bare_mesh, bare_head, _ = _frame(Animator(*photo))
    worn, mesh, head, _ = _frame(Animator(*photo, glasses=style))
    np.testing.assert_array_equal(mesh, bare_mesh)  # the truth is the face's
    np.testing.assert_array_equal(head, bare_head)
    iod = float(interocular(mesh[:, :2]))
    for centre in eye_centers(mesh[:, :2]):
        ring = _around(centre, iod, 0.9, 1.25)
        inside = _around(centre, iod, 0.0, 0.25)
        drop = _gray(bare)[ring].mean() - _gray(worn)[ring].mean()
        assert drop > (20 if style == "thin" else 40), drop
        # The eye shows through the lens: about as bright, with most of its contrast.
        assert abs(_gray(bare)[inside].mean() - _gray(worn)[inside].mean()) < 12
        assert _gray(worn)[inside].std() > 0.7 * _gray(bare)[inside].std()


def test_rims_move_with_the_head(photo):
    anim, bare = Animator(*photo, glasses="thick"), Animator(*photo)
    centroids, eyes = [], []
    for yaw, roll, shift in ((-10.0, -8.0, -0.04), (10.0, 8.0, 0.04)):
        rotation = Rotation.from_euler("YXZ", [yaw, 0.0, roll], degrees=True).as_matrix()
        translation = anim.rig.origin + [shift, 0.5 * shift, 0.0]
        worn, mesh, _, _ = anim.frame(0.0, 0.0, 0.0, rotation, translation)
        dark = (_gray(bare.frame(0.0, 0.0, 0.0, rotation, translation)[0]) - _gray(worn)) > 40  # the frame
        iod = float(interocular(mesh[:, :2]))
        yy, xx = np.mgrid[0:SIZE, 0:SIZE] + 0.5
        for centre in eye_centers(mesh[:, :2]):
            near = dark & (np.hypot(xx - centre[0], yy - centre[1]) < 0.5 * iod)
            centroids.append([xx[near].mean(), yy[near].mean()])
            eyes.append(centre)
    centroids, eyes = np.array(centroids).reshape(2, 2, 2), np.array(eyes).reshape(2, 2, 2)
    moved = eyes[1] - eyes[0]
    assert np.linalg.norm(moved, axis=-1).min() > 0.3 * iod  # the poses are far apart ...
    # ... and each rim's centre moves as its eye does (up to the lens's parallax in front of the eye).
    assert np.linalg.norm((centroids[1] - centroids[0]) - moved, axis=-1).max() < 0.1 * iod
    assert np.linalg.norm(centroids - eyes, axis=-1).max() < 0.15 * iod


def test_blink_behind_the_glasses(photo):
    anim, bare = Animator(*photo, glasses="thin"), Animator(*photo)
    open_, _, _, _ = _frame(anim)
    shut, _, _, _ = _frame(anim, blink=1.0)
    rims = (_gray(_frame(bare)[0]) - _gray(open_)) > 40
    assert np.abs(_gray(open_)[rims] - _gray(shut)[rims]).mean() < 3  # the lids move, the rims stay
    assert np.abs(_gray(open_) - _gray(shut))[~rims].max() > 40


def test_glasses_change_only_their_pixels(photo):
    bare, _, _, _ = _frame(Animator(*photo), 10.0)
    worn, _, _, touched = _frame(Animator(*photo, glasses="thick", glasses_tint=0.0), 10.0)
    np.testing.assert_array_equal(worn[~touched], bare[~touched])


def test_default_is_no_glasses_and_truth_is_unchanged(tmp_path):
    assert SynthConfig().glasses == "none"
    audio = default_speech()[: AUDIO_RATE // 2]
    plain = prepare(audio=audio, config=SynthConfig(size=64, progress=False))
    assert plain.animator.glasses is None
    worn = prepare(audio=audio, config=SynthConfig(size=64, glasses="thin", progress=False))
    truths = [np.load(c.write(tmp_path / f"{name}.mp4")) for name, c in (("plain", plain), ("worn", worn))]
    for key in truths[0].files:
        if key != "static_mask":
            np.testing.assert_array_equal(truths[0][key], truths[1][key], err_msg=key)
    assert (truths[1]["static_mask"] <= truths[0]["static_mask"]).all()


def test_options(tmp_path, capsys):
    with pytest.raises(InputError, match="--glasses"):
        SynthConfig(glasses="round")
    with pytest.raises(InputError, match="--glasses-tint"):
        SynthConfig(glasses_tint=1.5)
    out = tmp_path / "g.mp4"
    assert main(["synth", "--out", str(out), "--size", "64", "--seconds", "0.2", "--no-phones", "--quiet",
                 "--glasses", "thick", "--glasses-tint", "0.5"]) == 0
    assert out.exists() and "wrote" in capsys.readouterr().out
