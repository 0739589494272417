"""Training-time augmentation, batched on whole uint8 batches (no per-image Python loop but JPEG).

Two kinds, both meant to make the model indifferent to how a film was acquired, not to what it
shows:
- geometric: small rotation, scale, anisotropic scale (detector aspect), shift, and letterboxing
  (black bars, as when a film of another format is exported to a fixed matrix);
- photometric: what another machine or another post-processing chain does to the same chest
  (gamma, blur, edge enhancement, quantum noise, a coarser detector, lossy re-compression).

No horizontal flips by default: a mirrored chest puts the heart on the wrong side, which a real
film never shows. Every random draw comes from the caller's generator (reproducible runs).
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from pipeline.settings.params import Augment, Photometric


def _uniform(b: int, lo: float, hi: float, gen: torch.Generator) -> torch.Tensor:
    return lo + (hi - lo) * torch.rand(b, generator=gen)


def _chosen(b: int, p: float, gen: torch.Generator) -> torch.Tensor:
    return torch.rand(b, generator=gen) < p


def geometric(x: torch.Tensor, aug: Augment, gen: torch.Generator) -> torch.Tensor:
    """float [B, 1, S, S] (0..255) -> the same, under a random affine per image."""
    b = x.shape[0]
    angle = _uniform(b, -aug.rotate_deg, aug.rotate_deg, gen) * math.pi / 180
    scale = _uniform(b, *aug.scale, gen)
    aspect = torch.exp(_uniform(b, -math.log(aug.aspect), math.log(aug.aspect), gen))
    sx, sy = scale * aspect.sqrt(), scale / aspect.sqrt()
    tx, ty = (_uniform(b, -aug.translate, aug.translate, gen) * 2 for _ in range(2))
    flip = torch.where(_chosen(b, 0.5, gen), -1.0, 1.0) if aug.hflip else torch.ones(b)
    cos, sin = torch.cos(angle), torch.sin(angle)
    theta = torch.stack([torch.stack([cos / sx * flip, -sin / sy, tx], 1),
                         torch.stack([sin / sx * flip, cos / sy, ty], 1)], 1)
    grid = F.affine_grid(theta, list(x.shape), align_corners=False)
    x = F.grid_sample(x, grid, mode="bilinear", padding_mode="border", align_corners=False)
    letterbox = aug.letterbox
    if letterbox > 0:  # black bars on two opposite sides, up to `letterbox` of the side in total
        s = x.shape[-1]
        bars = (_uniform(b, 0, letterbox / 2, gen) * s).round().long() * _chosen(b, 0.25, gen)
        idx = torch.arange(s)
        outside = (idx[None] < bars[:, None]) | (idx[None] >= s - bars[:, None])   # [B, S]
        vertical = _chosen(b, 0.5, gen)
        mask = torch.where(vertical[:, None, None], outside[:, None, :].expand(b, s, s),
                           outside[:, :, None].expand(b, s, s))
        x = x.masked_fill(mask[:, None], 0.0)
    mean = x.mean(dim=(1, 2, 3), keepdim=True)
    contrast = _uniform(b, 1 - aug.contrast, 1 + aug.contrast, gen).view(b, 1, 1, 1)
    brightness = _uniform(b, -aug.brightness, aug.brightness, gen).view(b, 1, 1, 1) * 255
    return ((x - mean) * contrast + mean + brightness).clamp_(0, 255)


def _gaussian_blur(x: torch.Tensor, sigma: float) -> torch.Tensor:
    radius = max(1, int(math.ceil(2.5 * sigma)))
    t = torch.arange(-radius, radius + 1, dtype=x.dtype)
    k = torch.exp(-0.5 * (t / sigma) ** 2)
    k = k / k.sum()
    x = F.pad(x, (radius, radius, radius, radius), mode="replicate")
    x = F.conv2d(x, k.view(1, 1, 1, -1))
    return F.conv2d(x, k.view(1, 1, -1, 1))


def photometric(x: torch.Tensor, aug: Photometric, gen: torch.Generator) -> torch.Tensor:
    """float [B, 1, S, S] (0..255) -> the same under acquisition-like changes, each applied to an
    image with probability aug.p at a random strength up to the configured one."""
    b, p = x.shape[0], aug.p
    out = x
    if aug.gamma:  # exposure / tone curve: x**g, g in [1/gamma, gamma]
        g = torch.exp(_uniform(b, -math.log(aug.gamma), math.log(aug.gamma), gen))
        g = torch.where(_chosen(b, p, gen), g, torch.ones(b)).view(b, 1, 1, 1)
        out = 255.0 * (out / 255.0).clamp(0, 1) ** g
    for key in ("blur", "sharpen"):  # detector sharpness / vendor edge enhancement (one sigma per batch)
        if getattr(aug, key):
            pick = _chosen(b, p, gen).view(b, 1, 1, 1)
            if pick.any():
                sigma = float(_uniform(1, 0.5, aug.blur if key == "blur" else 2.0, gen))
                blurred = _gaussian_blur(out, sigma)
                amount = _uniform(b, 0, aug.sharpen, gen).view(b, 1, 1, 1)
                changed = blurred if key == "blur" else out + amount * (out - blurred)
                out = torch.where(pick, changed, out)
    if aug.downscale:  # a coarser detector: down by f in [downscale, 1], back up
        pick = _chosen(b, p, gen).view(b, 1, 1, 1)
        if pick.any():
            s = out.shape[-1]
            small = max(8, int(s * float(_uniform(1, aug.downscale, 1.0, gen))))
            coarse = F.interpolate(F.interpolate(out, size=(small, small), mode="bilinear", antialias=True,
                                                 align_corners=False), size=(s, s), mode="bilinear",
                                   align_corners=False)
            out = torch.where(pick, coarse, out)
    if aug.noise:  # quantum noise of a lower dose
        sigma = (_uniform(b, 0, aug.noise, gen) * _chosen(b, p, gen)).view(b, 1, 1, 1)
        out = out + sigma * torch.randn(out.shape, generator=gen)
    out = out.clamp(0, 255)
    if aug.jpeg:  # lossy re-compression (PACS export), quality in [jpeg, 95]
        from torchvision.io import decode_jpeg, encode_jpeg

        pick = _chosen(b, p, gen)
        quality = _uniform(b, aug.jpeg, 95, gen).round().int()
        out = out.clone()
        for i in torch.nonzero(pick).flatten().tolist():
            img = out[i].round().to(torch.uint8)
            out[i] = decode_jpeg(encode_jpeg(img, quality=int(quality[i]))).float()
    return out


def augment(x: torch.Tensor, aug: Augment, gen: torch.Generator) -> torch.Tensor:
    """uint8 [B, 1, S, S] -> float [B, 1, S, S] on the 0..255 scale: geometry, then acquisition."""
    out = geometric(x.float(), aug, gen)
    return photometric(out, aug.photometric, gen)
