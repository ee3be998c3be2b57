"""Patch-score grids to smoothed anomaly maps (torch only).

Shared by PaDiM and PatchCore: a grid of patch scores is upsampled
bilinearly to the image the backbone saw, smoothed by a Gaussian of ``sigma``
pixels there (as both papers do at 224 px), and resized to the size of the
input images.
"""

import torch
import torch.nn.functional as F

__all__ = ["gaussian_blur", "resize_maps", "smooth_maps"]


def _symmetric_indices(n, radius, device):
    """Indices of a length-``n`` axis padded by ``radius``, half-sample symmetric.

    ``d c b a | a b c d | d c b a`` (scipy.ndimage's ``'reflect'``), for any
    radius, also one larger than the axis.
    """
    i = torch.arange(-radius, n + radius, device=device)
    i = torch.remainder(i, 2 * n)
    return torch.where(i >= n, 2 * n - 1 - i, i)


def _kernel(sigma, truncate, dtype, device):
    radius = int(truncate * sigma + 0.5)
    x = torch.arange(-radius, radius + 1, dtype=torch.float64)
    kernel = torch.exp(-0.5 * (x / sigma) ** 2)
    return (kernel / kernel.sum()).to(dtype=dtype, device=device), radius


def gaussian_blur(maps, sigma, truncate=4.0):
    """Separable Gaussian smoothing of a batch of maps.

    The same filter as ``scipy.ndimage.gaussian_filter(map, sigma,
    mode='reflect', truncate=4.0)`` on each map.

    Parameters
    ----------
    maps : torch.Tensor of shape (N, H, W)
    sigma : float or (float, float)
        Standard deviation in pixels, per axis (height, width); 0: none.
    truncate : float, default=4.0
        Kernel radius in standard deviations.

    Returns
    -------
    maps : torch.Tensor of shape (N, H, W)
    """
    sigmas = (sigma, sigma) if isinstance(sigma, (int, float)) else tuple(sigma)
    out = maps.unsqueeze(1)
    for axis, s in zip((2, 3), sigmas, strict=True):
        if s <= 0:
            continue
        kernel, radius = _kernel(s, truncate, out.dtype, out.device)
        index = _symmetric_indices(out.shape[axis], radius, out.device)
        padded = out.index_select(axis, index)
        shape = (1, 1, -1, 1) if axis == 2 else (1, 1, 1, -1)
        out = F.conv2d(padded, kernel.view(shape))
    return out.squeeze(1)


def smooth_maps(scores, *, size, sigma):
    """Patch-score grids upsampled to the backbone's image and smoothed.

    Parameters
    ----------
    scores : torch.Tensor of shape (N, h, w)
        A score per patch.
    size : (int, int)
        ``(height, width)`` of the image the backbone saw.
    sigma : float
        Gaussian smoothing in pixels of that image; 0: none.

    Returns
    -------
    maps : torch.Tensor of shape (N, height, width), float32
    """
    maps = F.interpolate(
        scores.float().unsqueeze(1),
        size=tuple(size),
        mode="bilinear",
        align_corners=False,
    ).squeeze(1)
    return gaussian_blur(maps, sigma) if sigma > 0 else maps


def resize_maps(maps, size):
    """Maps (N, H, W) resized bilinearly to ``size`` (antialiased when shrinking)."""
    if tuple(maps.shape[-2:]) == tuple(size):
        return maps
    shrink = any(o < i for o, i in zip(size, maps.shape[-2:], strict=True))
    return F.interpolate(
        maps.unsqueeze(1),
        size=tuple(size),
        mode="bilinear",
        align_corners=False,
        antialias=shrink,
    ).squeeze(1)
