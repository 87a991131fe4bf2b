"""Stage 0 for tiny demo models: teach a small AutoencoderKL to reconstruct the frames it will encode.

SD1.5 users never need this (their VAE is trained). A random tiny VAE, though, maps every image to noise-like
latents that no amount of UNet training can decode, so the CPU demo first fits one on its own training frames and
reports the reconstruction PSNR on held-out frames. Afterwards the latent scaling factor is set from the latents'
standard deviation, the same rule that gave SD1.5 its 0.18215, so the UNet sees unit-variance latents.
"""
from __future__ import annotations

import math
import time

import numpy as np
import torch
import torch.nn.functional as F
from diffusers import AutoencoderKL
from tqdm.auto import tqdm


def _to_tensor(frames: np.ndarray) -> torch.Tensor:
    """uint8 (N, H, W, 3) -> float (N, 3, H, W) in [-1, 1]."""
    return torch.from_numpy(np.ascontiguousarray(frames)).permute(0, 3, 1, 2).float() / 127.5 - 1.0


def fit_autoencoder(vae: AutoencoderKL, frames: np.ndarray, steps: int, batch_size: int = 16, lr: float = 1e-3,
                    kl_weight: float = 1e-6, seed: int = 0, crop_size: int | None = None,
                    time_budget_s: float | None = None, progress: bool = True) -> list[float]:
    """Train `vae` in place to reconstruct `frames` (uint8 N x H x W x 3); returns the loss per step.

    `crop_size` trains on random square crops (cheaper steps; an autoencoder without attention is convolutional,
    so it still applies to whole frames). Stops after `steps` or `time_budget_s`, whichever comes first.
    """
    data = _to_tensor(frames)
    generator = torch.Generator().manual_seed(seed)
    optimizer = torch.optim.AdamW(vae.parameters(), lr=lr, weight_decay=0.0)
    schedule = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=max(1, steps), eta_min=lr * 0.05)
    vae.train()
    losses: list[float] = []
    start = time.perf_counter()
    bar = tqdm(range(steps), desc="stage 0: autoencoder", disable=not progress)
    for _ in bar:
        batch = data[torch.randint(0, len(data), (batch_size,), generator=generator)]
        if crop_size:
            y = int(torch.randint(0, data.shape[-2] - crop_size + 1, (1,), generator=generator))
            x = int(torch.randint(0, data.shape[-1] - crop_size + 1, (1,), generator=generator))
            batch = batch[..., y:y + crop_size, x:x + crop_size]
        posterior = vae.encode(batch).latent_dist
        latents = posterior.mean + posterior.std * torch.randn(posterior.mean.shape, generator=generator)
        reconstruction = vae.decode(latents).sample
        # L1 + L2: L1 keeps edges sharper on flat-coloured puppets, L2 is what PSNR measures.
        loss = F.l1_loss(reconstruction, batch) + F.mse_loss(reconstruction, batch) + kl_weight * posterior.kl().mean()
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        schedule.step()
        losses.append(loss.item())
        bar.set_postfix(loss=f"{losses[-1]:.4f}")
        if time_budget_s is not None and time.perf_counter() - start > time_budget_s:
            break
    vae.eval()
    return losses


@torch.no_grad()
def set_latent_scaling(vae: AutoencoderKL, frames: np.ndarray, max_frames: int = 256) -> float:
    """Set `scaling_factor` so that scaled latents of these frames have unit standard deviation."""
    latents = vae.encode(_to_tensor(frames[:max_frames])).latent_dist.mean
    factor = float(1.0 / latents.std().clamp_min(1e-6))
    vae.register_to_config(scaling_factor=factor)
    return factor


@torch.no_grad()
def reconstruction_psnr(vae: AutoencoderKL, frames: np.ndarray, batch_size: int = 32) -> float:
    """Mean PSNR (dB, images in [0, 1]) of encode -> decode (latent mean) over `frames`."""
    squared_errors = []
    for start in range(0, len(frames), batch_size):
        batch = _to_tensor(frames[start:start + batch_size])
        reconstruction = vae.decode(vae.encode(batch).latent_dist.mean).sample.clamp(-1, 1)
        squared_errors.append(((reconstruction - batch) / 2).pow(2).flatten(1).mean(1))
    mse = torch.cat(squared_errors)
    return float((10 * torch.log10(1.0 / mse.clamp_min(1e-10))).mean()) if len(mse) else math.nan
