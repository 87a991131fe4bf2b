"""Video quality metrics for `marionet compare`: PSNR, the published tables' PSNR*, SSIM, temporal consistency,
and LPIPS / FVD when their network weights are supplied as local files.

Every function takes uint8 videos (F, H, W, 3) (a single image (H, W, 3) is a one-frame video) and returns one number
per video; per-frame values are averaged over frames. Definitions (also written into every report):

- psnr: on float images in [0, 1]; per frame 10 log10(1 / MSE), MSE over pixels and channels; identical frames count
  as 100 dB (MSE floored at 1e-10) so that averages stay finite.
- psnr_star: the figure the Animate Anyone / MagicAnimate / DisCo tables call PSNR. Their code computed
  `np.mean((a - b) ** 2)` on uint8 arrays: the difference and its square both wrap around modulo 256, so the "MSE" is
  at most 255 and the result is never below 10 log10(255^2 / 255) = 24.1 dB. Reproduced exactly here, per frame,
  as 10 log10(255^2 / mean(((a - b) mod 256)^2 mod 256)), 100 dB for a zero "MSE". Only for comparison with those
  tables; it is not a meaningful measure of error.
- ssim: Wang et al. 2004 on [0, 1] floats: gaussian window 11x11 (sigma 1.5), K1 = 0.01, K2 = 0.03, population
  statistics, computed per channel over the valid region (no padding), averaged over channels and frames. Equals
  skimage.metrics.structural_similarity(gaussian_weights=True, sigma=1.5, use_sample_covariance=False,
  data_range=1, channel_axis=-1).
- temporal: mean over t >= 1, pixels and channels of |(x_t - x_{t-1}) - (g_t - g_{t-1})| on [0, 1] floats, where x
  is the rendered video and g the ground truth: how far the rendered frame-to-frame change departs from the true
  one (0 = the same motion; flicker and frozen frames both raise it). Undefined (None) for one-frame videos.
- lpips: Zhang et al. 2018 distance, averaged over frames; needs local weights (see `load_lpips`).
- fvd: Frechet distance between I3D features of the rendered and the ground-truth videos of one method (one number
  per method, not per video); needs a local I3D TorchScript file (see `load_i3d`).
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

PSNR_CAP_DB = 100.0
SSIM_WINDOW, SSIM_SIGMA, SSIM_K1, SSIM_K2 = 11, 1.5, 0.01, 0.03


def _as_video(video, what: str) -> np.ndarray:
    video = np.asarray(video)
    if video.ndim == 3:
        video = video[None]
    if video.ndim != 4 or video.shape[-1] != 3:
        raise ValueError(f"{what}: expected uint8 (F, H, W, 3) frames, got shape {video.shape}")
    if video.dtype != np.uint8:
        raise ValueError(f"{what}: expected uint8 frames, got {video.dtype}")
    return video


def _pair(output, truth) -> tuple[np.ndarray, np.ndarray]:
    output, truth = _as_video(output, "rendered video"), _as_video(truth, "ground truth")
    if output.shape != truth.shape:
        raise ValueError(f"rendered video {output.shape} and ground truth {truth.shape} differ in shape")
    return output, truth


def _unit(video: np.ndarray) -> np.ndarray:
    return video.astype(np.float64) / 255.0


def psnr(output, truth) -> float:
    """Mean over frames of the PSNR (dB) on [0, 1] floats."""
    output, truth = _pair(output, truth)
    mse = np.array([((_unit(x) - _unit(g)) ** 2).mean() for x, g in zip(output, truth)])  # frame by frame: flat memory
    return float(np.mean(10.0 * np.log10(1.0 / np.maximum(mse, 10 ** (-PSNR_CAP_DB / 10)))))


def psnr_star(output, truth) -> float:
    """The published tables' overflowing-uint8 PSNR (see the module docstring); not a correct PSNR."""
    output, truth = _pair(output, truth)
    wrapped = (output - truth) ** 2  # uint8 arithmetic on purpose: both operations wrap modulo 256
    assert wrapped.dtype == np.uint8
    mse = wrapped.astype(np.float64).mean(axis=(1, 2, 3))
    with np.errstate(divide="ignore"):
        values = np.where(mse > 0, 10.0 * np.log10(255.0 ** 2 / np.maximum(mse, 1e-300)), PSNR_CAP_DB)
    return float(np.mean(values))


def _gaussian_window(size: int = SSIM_WINDOW, sigma: float = SSIM_SIGMA) -> np.ndarray:
    x = np.arange(size, dtype=np.float64) - (size - 1) / 2
    weights = np.exp(-(x ** 2) / (2 * sigma ** 2))
    return weights / weights.sum()


def _blur_valid(planes: np.ndarray, window: np.ndarray) -> np.ndarray:
    """Separable filter of (N, H, W) planes over the valid region only, as shifted weighted sums (faster in numpy
    than an 11-tap float64 convolution, and exact in float64)."""
    size = len(window)
    rows = planes.shape[1] - size + 1
    out = window[0] * planes[:, :rows]
    for k in range(1, size):
        out += window[k] * planes[:, k:k + rows]
    cols = out.shape[2] - size + 1
    result = window[0] * out[:, :, :cols]
    for k in range(1, size):
        result += window[k] * out[:, :, k:k + cols]
    return result


def ssim(output, truth) -> float:
    """Mean SSIM over channels and frames (gaussian 11/1.5, K1 0.01, K2 0.03, data range 1, valid region)."""
    output, truth = _pair(output, truth)
    if min(output.shape[1:3]) < SSIM_WINDOW:
        raise ValueError(f"SSIM needs frames of at least {SSIM_WINDOW}x{SSIM_WINDOW} pixels, got "
                         f"{output.shape[2]}x{output.shape[1]}")
    window = _gaussian_window()
    c1, c2 = SSIM_K1 ** 2, SSIM_K2 ** 2
    per_frame = []
    for out_frame, true_frame in zip(output, truth):  # one frame at a time keeps memory flat
        x = _unit(out_frame).transpose(2, 0, 1)  # (3, H, W): every channel is filtered on its own
        y = _unit(true_frame).transpose(2, 0, 1)
        mu_x, mu_y = _blur_valid(x, window), _blur_valid(y, window)
        var_x = _blur_valid(x * x, window) - mu_x ** 2
        var_y = _blur_valid(y * y, window) - mu_y ** 2
        cov = _blur_valid(x * y, window) - mu_x * mu_y
        index = ((2 * mu_x * mu_y + c1) * (2 * cov + c2)) / ((mu_x ** 2 + mu_y ** 2 + c1) * (var_x + var_y + c2))
        per_frame.append(index.mean())
    return float(np.mean(per_frame))


def temporal_consistency(output, truth) -> float | None:
    """mean |(x_t - x_{t-1}) - (g_t - g_{t-1})| on [0, 1] floats; None for one-frame videos. Lower is better."""
    output, truth = _pair(output, truth)
    if output.shape[0] < 2:
        return None
    errors = [np.abs((_unit(output[t]) - _unit(output[t - 1])) - (_unit(truth[t]) - _unit(truth[t - 1]))).mean()
              for t in range(1, len(output))]
    return float(np.mean(errors))


# ---------------------------------------------------------------- LPIPS (local weights only)

# The lpips package's input normalisation (its ScalingLayer), applied to images in [-1, 1].
_LPIPS_SHIFT = (-0.030, -0.088, -0.188)
_LPIPS_SCALE = (0.458, 0.448, 0.450)
_ALEX_CHANNELS = (64, 192, 384, 256, 256)


def _alexnet_taps():
    """AlexNet's convolutional trunk, returning the five ReLU outputs LPIPS compares (layout of torchvision's
    `features`, so its state dict keys `features.N.weight` load unchanged; torchvision itself is not needed)."""
    import torch
    from torch import nn

    class AlexTaps(nn.Module):
        def __init__(self):
            super().__init__()
            self.features = nn.Sequential(
                nn.Conv2d(3, 64, 11, 4, 2), nn.ReLU(), nn.MaxPool2d(3, 2),
                nn.Conv2d(64, 192, 5, padding=2), nn.ReLU(), nn.MaxPool2d(3, 2),
                nn.Conv2d(192, 384, 3, padding=1), nn.ReLU(),
                nn.Conv2d(384, 256, 3, padding=1), nn.ReLU(),
                nn.Conv2d(256, 256, 3, padding=1), nn.ReLU())
            self.tap_after = (1, 4, 7, 9, 11)

        def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
            taps = []
            for index, layer in enumerate(self.features):
                x = layer(x)
                if index in self.tap_after:
                    taps.append(x)
            return taps

    return AlexTaps()


class LPIPSAlex:
    """LPIPS (AlexNet variant) from two local files: the AlexNet trunk weights (torchvision's
    `alexnet-owt-7be5be79.pth` or any state dict with `features.*` keys) and the lpips package's linear heads
    (`lpips/weights/v0.1/alex.pth`, keys `lin{0..4}.model.1.weight`)."""

    def __init__(self, trunk_path, heads_path, device="cpu"):
        import torch

        self.device = torch.device(device)
        self.net = _alexnet_taps()
        trunk = torch.load(trunk_path, map_location="cpu", weights_only=True)
        trunk = {k: v for k, v in trunk.items() if k.startswith("features.")}
        missing = self.net.load_state_dict(trunk, strict=False).missing_keys
        if missing:
            raise ValueError(f"{trunk_path}: not AlexNet trunk weights (missing {missing[0]})")
        heads = torch.load(heads_path, map_location="cpu", weights_only=True)
        try:
            self.heads = [heads[f"lin{i}.model.1.weight"].float() for i in range(5)]
        except KeyError as error:
            raise ValueError(f"{heads_path}: not the lpips package's alex.pth (no key {error})") from None
        self.net.to(self.device).eval()
        self.heads = [h.to(self.device) for h in self.heads]
        self.shift = torch.tensor(_LPIPS_SHIFT, device=self.device).view(1, 3, 1, 1)
        self.scale = torch.tensor(_LPIPS_SCALE, device=self.device).view(1, 3, 1, 1)

    def __call__(self, a, b):
        """a, b: (N, 3, H, W) float tensors in [-1, 1] -> (N,) distances."""
        import torch

        with torch.no_grad():
            fa = self.net((a.to(self.device) - self.shift) / self.scale)
            fb = self.net((b.to(self.device) - self.shift) / self.scale)
            total = 0
            for xa, xb, head in zip(fa, fb, self.heads):
                xa = xa / (xa.norm(dim=1, keepdim=True) + 1e-10)
                xb = xb / (xb.norm(dim=1, keepdim=True) + 1e-10)
                total = total + torch.nn.functional.conv2d((xa - xb) ** 2, head).mean(dim=(1, 2, 3))
        return total


def load_lpips(path, device="cpu"):
    """A callable (a, b) -> (N,) LPIPS distances, for (N, 3, H, W) tensors in [-1, 1], from local files only.

    `path` is either a TorchScript file (a scripted LPIPS module called as `module(a, b)`) or a folder holding the
    lpips package's `alex.pth` plus AlexNet trunk weights (`alexnet-owt-7be5be79.pth` or `alexnet.pth`).
    """
    import torch

    path = Path(path)
    if path.is_file():
        try:
            module = torch.jit.load(str(path), map_location=device).eval()
        except Exception as error:
            raise ValueError(f"{path}: not a TorchScript LPIPS module ({str(error).splitlines()[0][:120]})") from None

        def scripted(a, b):
            with torch.no_grad():
                return module(a.to(device), b.to(device)).reshape(a.shape[0], -1).mean(dim=1)
        return scripted
    if path.is_dir():
        heads = path / "alex.pth"
        trunks = [p for p in (path / "alexnet-owt-7be5be79.pth", path / "alexnet.pth") if p.is_file()]
        if not heads.is_file() or not trunks:
            raise FileNotFoundError(f"{path}: an LPIPS folder needs alex.pth (lpips linear heads) and "
                                    "alexnet-owt-7be5be79.pth or alexnet.pth (AlexNet trunk)")
        return LPIPSAlex(trunks[0], heads, device)
    raise FileNotFoundError(f"{path}: LPIPS weights not found (a TorchScript file or a folder with alex.pth)")


def lpips_distance(model, output, truth, batch: int = 16) -> float:
    """Mean LPIPS over frames of one video."""
    import torch

    output, truth = _pair(output, truth)
    values = []
    for start in range(0, output.shape[0], batch):
        a = torch.from_numpy(output[start:start + batch]).permute(0, 3, 1, 2).float() / 127.5 - 1
        b = torch.from_numpy(truth[start:start + batch]).permute(0, 3, 1, 2).float() / 127.5 - 1
        values.append(model(a, b).float().cpu().reshape(-1))
    return float(torch.cat(values).mean())


# ---------------------------------------------------------------- FVD (local I3D TorchScript only)

def load_i3d(path, device="cpu"):
    """A callable video (F, H, W, 3) uint8 -> 1-D feature vector, from an I3D TorchScript file.

    The convention is that of the widely used `i3d_torchscript.pt` (StyleGAN-V's FVD): input (N, 3, F, H, W) floats
    in [0, 255], called with rescale=True, resize=True (to 224) and return_features=True (400-d logits). A module
    that takes only the tensor is called with the tensor alone.
    """
    import torch

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: I3D TorchScript file not found")
    try:
        module = torch.jit.load(str(path), map_location=device).eval()
    except Exception as error:
        raise ValueError(f"{path}: not a TorchScript module ({str(error).splitlines()[0][:120]})") from None

    def features(video) -> np.ndarray:
        video = _as_video(video, "video")
        x = torch.from_numpy(video).permute(3, 0, 1, 2)[None].float().to(device)
        with torch.no_grad():
            try:
                out = module(x, rescale=True, resize=True, return_features=True)
            except (RuntimeError, TypeError):
                out = module(x)
        return out.reshape(-1).double().cpu().numpy()
    return features


def frechet_distance(features_a, features_b) -> float:
    """Frechet distance between gaussians fitted to two sets of feature rows (N, D); N >= 2 each.

    tr(sqrt(S_a S_b)) is computed as the sum of square roots of the eigenvalues of sqrt(S_a) S_b sqrt(S_a), which is
    symmetric positive semi-definite, so only numpy is needed (no scipy)."""
    a, b = np.asarray(features_a, np.float64), np.asarray(features_b, np.float64)
    if a.ndim != 2 or b.ndim != 2 or a.shape[1] != b.shape[1] or min(len(a), len(b)) < 2:
        raise ValueError(f"frechet_distance needs two (N>=2, D) feature sets, got {a.shape} and {b.shape}")
    mu_a, mu_b = a.mean(0), b.mean(0)
    cov_a, cov_b = np.atleast_2d(np.cov(a, rowvar=False)), np.atleast_2d(np.cov(b, rowvar=False))
    values, vectors = np.linalg.eigh(cov_a)
    root_a = (vectors * np.sqrt(np.clip(values, 0, None))) @ vectors.T
    middle = np.linalg.eigvalsh(root_a @ cov_b @ root_a)
    trace_root = np.sqrt(np.clip(middle, 0, None)).sum()
    return float(((mu_a - mu_b) ** 2).sum() + np.trace(cov_a) + np.trace(cov_b) - 2 * trace_root)
