"""The comparison's metrics against hand computations on known images (and SSIM against scikit-image)."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from marionet.inference import metrics as M


def _checker(shape, amplitude: int) -> np.ndarray:
    """+amplitude / -amplitude in a checkerboard: every pixel is off by exactly `amplitude` levels."""
    grid = np.indices(shape[:-1]).sum(axis=0) % 2
    return np.where(grid[..., None] == 1, amplitude, -amplitude).astype(np.int16) * np.ones(shape, np.int16)


def test_psnr_of_a_known_noise_level():
    truth = np.full((3, 16, 16, 3), 128, np.uint8)
    noisy = (truth.astype(np.int16) + _checker(truth.shape, 10)).astype(np.uint8)
    # MSE = (10 / 255)^2 exactly -> PSNR = 20 log10(255 / 10)
    assert M.psnr(noisy, truth) == pytest.approx(20 * math.log10(25.5), abs=1e-9)
    assert M.psnr(truth, truth) == M.PSNR_CAP_DB


def test_psnr_star_reproduces_the_overflowing_uint8_formula():
    truth = np.zeros((1, 4, 4, 3), np.uint8)
    output = truth.copy()
    output[:, :2] = 16   # (16^2 = 256) wraps to 0
    output[:, 2:] = 20   # (20^2 = 400) wraps to 144
    # by hand: wrapped MSE = (0 + 144) / 2 = 72; the true MSE is (256 + 400) / 2 = 328
    assert M.psnr_star(output, truth) == pytest.approx(10 * math.log10(255 ** 2 / 72), abs=1e-9)
    assert M.psnr(output, truth) == pytest.approx(10 * math.log10(255 ** 2 / 328), abs=1e-9)
    # the published code, verbatim in spirit: np.mean((a - b) ** 2) on uint8 arrays
    assert np.mean((output - truth) ** 2) == 72
    # wrapping is symmetric in the sign of the difference, and a zero wrapped MSE hits the cap, not infinity
    assert M.psnr_star(truth, output) == M.psnr_star(output, truth)
    assert M.psnr_star(np.full_like(truth, 16), truth) == M.PSNR_CAP_DB


def test_psnr_star_never_drops_below_24_db():
    rng = np.random.default_rng(0)
    a, b = rng.integers(0, 256, (2, 2, 32, 32, 3), dtype=np.uint8)
    assert M.psnr_star(a, b) >= 10 * math.log10(255 ** 2 / 255) - 1e-9
    assert M.psnr(a, b) < 10  # while the correct PSNR of unrelated images is low


def test_ssim_of_identical_images_is_one_and_drops_with_noise():
    rng = np.random.default_rng(1)
    image = rng.integers(0, 256, (2, 24, 20, 3), dtype=np.uint8)
    assert M.ssim(image, image) == pytest.approx(1.0, abs=1e-12)
    noisy = np.clip(image.astype(int) + rng.integers(-60, 61, image.shape), 0, 255).astype(np.uint8)
    assert M.ssim(noisy, image) < 0.95


def test_ssim_matches_skimage():
    skimage_metrics = pytest.importorskip("skimage.metrics")
    rng = np.random.default_rng(2)
    # smooth structure plus noise, so local means, variances and covariances all matter
    y, x = np.mgrid[0:40, 0:48]
    base = (127 + 100 * np.sin(x / 5.0)[..., None] * np.cos(y / 7.0)[..., None] * np.ones(3)).astype(np.uint8)
    a = np.stack([base, np.roll(base, 3, axis=1)])
    b = np.clip(a.astype(int) + rng.integers(-30, 31, a.shape), 0, 255).astype(np.uint8)
    expected = np.mean([skimage_metrics.structural_similarity(
        a[i] / 255.0, b[i] / 255.0, gaussian_weights=True, sigma=1.5, use_sample_covariance=False, data_range=1.0,
        channel_axis=-1) for i in range(2)])
    assert M.ssim(a, b) == pytest.approx(expected, abs=1e-10)


def test_ssim_refuses_frames_smaller_than_its_window():
    with pytest.raises(ValueError, match="11x11"):
        M.ssim(np.zeros((1, 8, 8, 3), np.uint8), np.zeros((1, 8, 8, 3), np.uint8))


def test_temporal_consistency_on_a_hand_example():
    truth = np.zeros((3, 2, 2, 3), np.uint8)
    truth[1:] = 102                       # ground truth changes by 0.4 and then stays
    output = np.zeros_like(truth)
    output[1], output[2] = 51, 102        # rendered video changes by 0.2 twice
    # |0.2 - 0.4| and |0.2 - 0| -> mean 0.2
    assert M.temporal_consistency(output, truth) == pytest.approx(0.2, abs=1e-12)
    # a constant colour offset leaves the motion untouched: no temporal error
    assert M.temporal_consistency(truth + 10, truth) == pytest.approx(0.0, abs=1e-12)
    assert M.temporal_consistency(output[:1], truth[:1]) is None


def test_shape_and_dtype_errors_are_clear():
    with pytest.raises(ValueError, match="differ in shape"):
        M.psnr(np.zeros((2, 4, 4, 3), np.uint8), np.zeros((3, 4, 4, 3), np.uint8))
    with pytest.raises(ValueError, match="uint8"):
        M.psnr(np.zeros((2, 4, 4, 3), np.float32), np.zeros((2, 4, 4, 3), np.uint8))


def test_frechet_distance_by_hand():
    rng = np.random.default_rng(3)
    features = rng.normal(size=(50, 4))
    assert M.frechet_distance(features, features) == pytest.approx(0.0, abs=1e-9)
    shift = np.array([1.0, -2.0, 0.0, 0.5])
    # same covariance, shifted mean: the distance is |shift|^2
    assert M.frechet_distance(features + shift, features) == pytest.approx(float(shift @ shift), abs=1e-9)
    # 1-D gaussians: (mu1 - mu2)^2 + (s1 - s2)^2
    a, b = np.array([[0.0], [2.0]]), np.array([[0.0], [6.0]])  # sample std sqrt(2) and sqrt(18)
    assert M.frechet_distance(a, b) == pytest.approx((1 - 3) ** 2 + (math.sqrt(2) - math.sqrt(18)) ** 2)


def test_lpips_from_a_local_alexnet_folder(tmp_path):
    torch.manual_seed(0)
    trunk = M._alexnet_taps()
    torch.save({k: v for k, v in trunk.state_dict().items()}, tmp_path / "alexnet-owt-7be5be79.pth")
    heads = {f"lin{i}.model.1.weight": torch.rand(1, c, 1, 1) for i, c in enumerate(M._ALEX_CHANNELS)}
    torch.save(heads, tmp_path / "alex.pth")
    model = M.load_lpips(tmp_path)
    rng = np.random.default_rng(4)
    a, b = rng.integers(0, 256, (2, 2, 64, 64, 3), dtype=np.uint8)
    assert M.lpips_distance(model, a, a) == pytest.approx(0.0, abs=1e-7)
    assert M.lpips_distance(model, a, b) > 0.0
    with pytest.raises(FileNotFoundError, match="alex.pth"):
        M.load_lpips(tmp_path / "alex.pth.missing")
    (tmp_path / "alex.pth").unlink()
    with pytest.raises(FileNotFoundError, match="alex.pth"):
        M.load_lpips(tmp_path)


class _MeanAbs(torch.nn.Module):
    def forward(self, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        return (a - b).abs().mean(dim=(1, 2, 3))


def test_lpips_from_a_torchscript_file(tmp_path):
    path = tmp_path / "lpips.pt"
    torch.jit.script(_MeanAbs()).save(str(path))
    model = M.load_lpips(path)
    truth = np.full((2, 8, 8, 3), 100, np.uint8)
    output = truth + np.uint8(51)
    # inputs reach the module in [-1, 1]: 51 levels = 0.4
    assert M.lpips_distance(model, output, truth) == pytest.approx(0.4, abs=1e-6)
