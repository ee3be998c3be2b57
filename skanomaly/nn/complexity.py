"""Input complexity: how much detail an image has, whatever model scores it.

Reconstruction-based scores rank a plain image (a blank patch, a smooth
crop, a blurred face) as *more* normal than the textured images a model was
trained on, because anything smooth is easy to reconstruct. Serrà et al.
("Input complexity and out-of-distribution detection with likelihood-based
generative models", ICLR 2020) correct a model's score by the input's
complexity under a generic model, which turns the score into a likelihood
ratio. The generic model here is a local predictor: a pixel is predicted by
a Gaussian blur of its neighbourhood, and the complexity of an image is the
mean squared residual of that prediction (the detail finer than the blur).
"""

import math

import torch
import torch.nn.functional as F

__all__ = ["complexity_corrected", "detail_energy"]


def _gaussian_kernel(sigma, dtype, device):
    radius = max(1, math.ceil(3 * sigma))
    offsets = torch.arange(-radius, radius + 1, dtype=dtype, device=device)
    kernel = torch.exp(-(offsets**2) / (2 * sigma**2))
    return kernel / kernel.sum(), radius


def detail_energy(images, sigma):
    """Mean squared difference between each image and its Gaussian blur.

    Parameters
    ----------
    images : tensor of shape (N, C, H, W)
    sigma : float
        Standard deviation of the blur, in pixels.

    Returns
    -------
    energy : tensor of shape (N,)
        Non-negative; 0 for a constant image.
    """
    kernel, radius = _gaussian_kernel(sigma, images.dtype, images.device)
    channels = images.shape[1]
    # replicate padding works for images of any size (reflect needs H, W >
    # radius) and leaves a constant image exactly constant
    padded = F.pad(images, (radius, radius, radius, radius), mode="replicate")
    rows = kernel.view(1, 1, 1, -1).expand(channels, 1, 1, -1)
    cols = kernel.view(1, 1, -1, 1).expand(channels, 1, -1, 1)
    blurred = F.conv2d(F.conv2d(padded, rows, groups=channels), cols, groups=channels)
    return ((images - blurred) ** 2).flatten(1).mean(dim=1)


def complexity_corrected(score, energy, *, power, floor):
    """``log(score) - (power / 2) log(energy + floor)``: a score per unit of detail.

    A score built from squared errors (``power=2``) is compared with the
    squared detail energy as it is; one built from absolute errors
    (``power=1``) with its square root, so that both sides are in the same
    units and the difference is the log of a likelihood ratio up to a
    constant (Gaussian or Laplace errors).

    Parameters
    ----------
    score : tensor of shape (N,)
        Non-negative anomaly scores.
    energy : tensor of shape (N,)
        :func:`detail_energy` of the same images.
    power : {1, 2}
        The power of the errors the score sums.
    floor : float
        Added to the energy, so that constant images get a finite score
        (a small fraction of the training images' typical energy).

    Returns
    -------
    corrected : tensor of shape (N,)
        Higher = more anomalous.
    """
    # a perfect reconstruction (score 0) stays finite
    tiny = torch.finfo(score.dtype).tiny
    return torch.log(score.clamp_min(tiny)) - (power / 2) * torch.log(energy + floor)
