"""Head-pose maths: Procrustes, pinhole poses, smoothing and canonicalisation on exactly known poses."""

from __future__ import annotations

import numpy as np
import pytest
from scipy.spatial.transform import Rotation

from geneface import face
from geneface.process import pose as P


@pytest.fixture(scope="module")
def head() -> np.ndarray:
    """A real face shape: the mesh of the bundled photo, normalised to head units."""
    from skimage import data

    with face.FaceMesh(video=False) as mesh:
        points = mesh(data.astronaut())[0].astype(np.float64)
    return P._normalise(points)


def _render(shape: np.ndarray, euler: np.ndarray, t: np.ndarray, K: np.ndarray) -> np.ndarray:
    """Project the shape under each pose like MediaPipe reports it: pixels x, y and relative depth z."""
    out = []
    for e, tt in zip(euler, t):
        cam = shape @ Rotation.from_euler(P.EULER_ORDER, e, degrees=True).as_matrix().T + tt
        uv = cam[:, :2] / cam[:, 2:] * K[0, 0] + K[:2, 2]
        z = (cam[:, 2] - tt[2]) * K[0, 0] / tt[2]
        out.append(np.column_stack([uv, z]))
    return np.array(out)


def test_umeyama_recovers_similarity(head):
    r = Rotation.from_euler("YXZ", [20, -10, 5], degrees=True).as_matrix()
    s, rot, t = P.umeyama(head, 3.0 * head @ r.T + [1, 2, 3])
    assert s == pytest.approx(3.0) and np.allclose(rot, r) and np.allclose(t, [1, 2, 3])


def test_poses_recovered_from_projections(head):
    rng = np.random.default_rng(0)
    n = 40
    euler = np.column_stack([15 * np.sin(np.arange(n) / 6), 8 * np.cos(np.arange(n) / 9), 4 * np.sin(np.arange(n) / 4)])
    trans = np.column_stack([0.05 * rng.standard_normal(n), 0.05 * rng.standard_normal(n), 3.0 + 0.1 * rng.standard_normal(n)])
    K = P.intrinsics(256, 1.5)
    mesh = _render(head, euler, trans, K)
    shape = P.canonical_shape(mesh)
    pose = P.solve_poses(mesh, shape, K)
    est = pose.euler
    err = (est - est.mean(0)) - (euler - euler.mean(0))
    assert np.abs(err).max() < 0.5, np.abs(err).max(0)
    assert np.abs(pose.translation[:, 2] - trans[:, 2]).max() < 0.1
    # Canonicalising removes the motion: every frame maps back onto the same shape.
    canon = P.canonicalise(mesh, pose, K)
    assert np.abs(canon - canon.mean(0)).max() < 0.01  # head units (inter-ocular distance 0.3)


def test_smoothing_reduces_jitter_keeps_motion(head):
    rng = np.random.default_rng(1)
    n = 60
    yaw = 10 * np.sin(np.arange(n) / 10)
    euler = np.column_stack([yaw + rng.normal(0, 1.0, n), np.zeros(n), np.zeros(n)])
    rot = Rotation.from_euler(P.EULER_ORDER, euler, degrees=True).as_matrix()
    pose = P.HeadPose(rot, np.tile([0, 0, 3.0], (n, 1)))
    smooth = P.smooth_poses(pose, 2.0)
    assert np.sqrt(((smooth.euler[:, 0] - yaw) ** 2).mean()) < 0.6 * np.sqrt(((euler[:, 0] - yaw) ** 2).mean())
    assert P.smooth_poses(pose, 0) is pose


def test_c2w_inverts_pose():
    rot = Rotation.random(5, random_state=0).as_matrix()
    pose = P.HeadPose(rot, np.random.default_rng(0).normal(size=(5, 3)))
    w2c = np.tile(np.eye(4), (5, 1, 1))
    w2c[:, :3, :3], w2c[:, :3, 3] = pose.rotation, pose.translation
    assert np.allclose(pose.c2w() @ w2c, np.eye(4))


def test_motion_offsets_are_scaled_deviations(head):
    canon = np.repeat(head[None], 4, 0).copy()
    canon[2, face.LOWER_INNER_LIP, 1] += 0.03  # open the mouth in one frame
    offsets, mean68, iod = P.motion_offsets(canon)
    assert offsets.shape == (4, 68, 3) and iod == pytest.approx(P.HEAD_IOD, rel=1e-3)
    assert np.allclose(offsets.mean(0), 0, atol=1e-6)
    assert offsets[2, 66, 1] - offsets[0, 66, 1] == pytest.approx(0.1, rel=1e-3)
