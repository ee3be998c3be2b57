"""Patch-score grids to smoothed anomaly maps (torch only).

Shared by PaDiM and PatchCore: a grid of patch scores is upsampled
bilinearly to the image the backbone saw, smoothed by a Gaussian of ``sigma``
pixels there (as both papers do at 224 px), and resized to the size of the
input images. With tiles (``PatchFeatures(tile_size=...)``), each tile's
grid is upsampled to the tile and the tiles are stitched into a map of the
whole image (:func:`tile_origins`, :class:`TileStitcher`) before smoothing.
"""

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

__all__ = [
    "PatchMaps",
    "TileStitcher",
    "TiledPatchMaps",
    "gaussian_blur",
    "resize_maps",
    "smooth_maps",
    "tile_origins",
]


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


class PatchMaps(nn.Module):
    """Raw images to a patch detector's image scores and anomaly maps (export).

    ``features`` (e.g. :class:`~skanomaly.nn.backbones.PatchGrid`) makes
    the patch grid; ``scorer`` returns the grid scores (batch, h, w), the
    image score then being the maximum of the smoothed map (PaDiM's), or
    ``(grid scores, image scores)``. The grid scores become maps as
    :func:`smooth_maps` then :func:`resize_maps` make them.

    Parameters
    ----------
    features, scorer : torch.nn.Module
    size : (int, int)
        The image the backbone sees (where the maps are smoothed).
    sigma : float
    output_size : (int, int)
        The input images' size.
    """

    def __init__(self, features, scorer, *, size, sigma, output_size):
        super().__init__()
        self.features = features
        self.scorer = scorer
        self.size = tuple(int(s) for s in size)
        self.sigma = float(sigma)
        self.output_size = tuple(int(s) for s in output_size)

    def forward(self, x):
        """``(image scores (batch,), maps (batch, *output_size))`` of images ``x``."""
        scores = self.scorer(self.features(x))
        grid, image = scores if isinstance(scores, tuple) else (scores, None)
        maps = smooth_maps(grid, size=self.size, sigma=self.sigma)
        if image is None:
            image = maps.amax(dim=(1, 2))
        return image, resize_maps(maps, self.output_size)


def tile_origins(size, tile, overlap):
    """Top-left corners of the square tiles that cover an image, row-major.

    Tiles start every ``tile - overlap`` pixels along each axis; the last
    tile of a row or column is moved back to end at the image's edge, so it
    overlaps its neighbour by at least ``overlap`` pixels and no tile
    reaches outside the image.

    Parameters
    ----------
    size : (int, int)
        ``(height, width)`` of the image, each at least ``tile``.
    tile : int
        Side of a tile in pixels.
    overlap : int
        Pixels shared by neighbouring tiles, less than ``tile``.

    Returns
    -------
    origins : ndarray of shape (n_tiles, 2), int64
        ``(top, left)`` of each tile.

    Examples
    --------
    >>> from skanomaly.nn.maps import tile_origins
    >>> tile_origins((100, 64), 64, 16).tolist()
    [[0, 0], [36, 0]]
    """
    step = tile - overlap

    def starts(length):
        return [*range(0, length - tile, step), length - tile]

    height, width = size
    return np.array(
        [(top, left) for top in starts(height) for left in starts(width)],
        dtype=np.int64,
    ).reshape(-1, 2)


class TileStitcher:
    """Score grids of tiles, as they come, to one smoothed map per image.

    Each tile's grid is upsampled bilinearly to the tile (as
    :func:`smooth_maps` upsamples a whole image's grid) and added into its
    image's map; where tiles overlap the map is their **average**. The
    overlaps see the same pixels with different context: averaging keeps
    the map continuous across tile seams, where a maximum would raise every
    overlap strip of a normal image (the larger of two noisy estimates) and
    draw the tile grid onto the map. A finished map is then smoothed by a
    Gaussian of ``sigma`` pixels, across the seams. Only the images whose
    tiles are in flight are held.

    Parameters
    ----------
    origins : ndarray of shape (n_tiles, 2)
        ``(top, left)`` of each tile of an image (:func:`tile_origins`).
    tile : int
        Side of a tile in pixels.
    size : (int, int)
        ``(height, width)`` of the image the tiles were cut from.
    sigma : float
        Gaussian smoothing in pixels; 0: none.
    """

    def __init__(self, origins, tile, size, sigma):
        self.origins = [(int(top), int(left)) for top, left in origins]
        self.tile = int(tile)
        self.size = tuple(int(s) for s in size)
        self.sigma = float(sigma)
        self._maps = {}
        self._counts = None

    def add(self, start, grids):
        """Add the grids of consecutive tiles; yield the images they finish.

        Parameters
        ----------
        start : int
            Position of the first tile in the sequence of all tiles (image
            ``i``'s tiles are ``i * n_tiles`` to ``(i + 1) * n_tiles - 1``).
        grids : torch.Tensor of shape (batch, h, w)
            Score grid of each tile.

        Yields
        ------
        image : int
            Position of a finished image.
        map : torch.Tensor of shape (height, width), float32
        """
        n_tiles, t = len(self.origins), self.tile
        maps = F.interpolate(
            grids.float().unsqueeze(1),
            size=(t, t),
            mode="bilinear",
            align_corners=False,
        ).squeeze(1)
        if self._counts is None:
            self._counts = torch.zeros(self.size, device=maps.device)
            for top, left in self.origins:
                self._counts[top : top + t, left : left + t] += 1
        for k, tile_map in enumerate(maps, start):
            image, j = divmod(k, n_tiles)
            if image not in self._maps:
                self._maps[image] = torch.zeros(self.size, device=maps.device)
            top, left = self.origins[j]
            self._maps[image][top : top + t, left : left + t] += tile_map
            if j == n_tiles - 1:
                stitched = self._maps.pop(image) / self._counts
                if self.sigma > 0:
                    stitched = gaussian_blur(stitched[None], self.sigma)[0]
                yield image, stitched


def cut_tiles(x, origins, tile):
    """Images (N, C, H, W) to their tiles (N * n_tiles, C, tile, tile).

    Image ``i``'s tiles are rows ``i * n_tiles`` to ``(i + 1) * n_tiles - 1``,
    in the order of ``origins`` (static slices: an ONNX graph's too).
    """
    tiles = [x[:, :, top : top + tile, left : left + tile] for top, left in origins]
    return torch.stack(tiles, dim=1).flatten(0, 1)


class TiledPatchMaps(nn.Module):
    """:class:`PatchMaps` for a tiled model: cut, score, stitch (export).

    Images are resized to ``size`` (when they are not at it, as
    ``PatchFeatures`` resizes them: float in [0, 1], antialiased), cut into
    the tiles at ``origins``; ``features`` and ``scorer`` run on the tiles
    as :class:`PatchMaps`' on images; an image's score is the largest of its
    tiles' (a tile's being the maximum of its smoothed map when the scorer
    returns grids only); the map is the tiles' maps stitched as
    :class:`TileStitcher` stitches them (averaged where they overlap, then
    smoothed), resized to ``output_size``.

    Parameters
    ----------
    features, scorer : torch.nn.Module
    origins : ndarray of shape (n_tiles, 2)
    tile : int
    size : (int, int)
        The full-resolution image the tiles are cut from.
    sigma : float
    output_size : (int, int)
        The input images' size.
    interpolation : str
        How images not at ``size`` are resized ('bicubic' or 'bilinear').
    """

    def __init__(
        self,
        features,
        scorer,
        *,
        origins,
        tile,
        size,
        sigma,
        output_size,
        interpolation,
    ):
        super().__init__()
        self.features = features
        self.scorer = scorer
        self.origins = [(int(top), int(left)) for top, left in origins]
        self.tile = int(tile)
        self.size = tuple(int(s) for s in size)
        self.sigma = float(sigma)
        self.output_size = tuple(int(s) for s in output_size)
        self.mode = (
            interpolation if interpolation in ("bicubic", "bilinear") else "bilinear"
        )
        counts = torch.zeros(self.size)
        for top, left in self.origins:
            counts[top : top + self.tile, left : left + self.tile] += 1
        self.register_buffer("counts", counts)

    def forward(self, x):
        """``(image scores (batch,), maps (batch, *output_size))`` of images ``x``."""
        n_images, t, (height, width) = x.shape[0], self.tile, self.size
        if tuple(x.shape[-2:]) != self.size:
            x = x.float() / 255.0 if x.dtype == torch.uint8 else x.float()
            x = F.interpolate(x, size=self.size, mode=self.mode, antialias=True)
        scores = self.scorer(self.features(cut_tiles(x, self.origins, t)))
        grid, image = scores if isinstance(scores, tuple) else (scores, None)
        if image is None:
            image = smooth_maps(grid, size=(t, t), sigma=self.sigma).amax(dim=(1, 2))
        image = image.reshape(n_images, -1).amax(dim=1)
        maps = F.interpolate(
            grid.float().unsqueeze(1), size=(t, t), mode="bilinear", align_corners=False
        ).reshape(n_images, len(self.origins), t, t)
        stitched = 0
        for j, (top, left) in enumerate(self.origins):
            padding = (left, width - left - t, top, height - top - t)
            stitched = stitched + F.pad(maps[:, j], padding)
        stitched = stitched / self.counts
        if self.sigma > 0:
            stitched = gaussian_blur(stitched, self.sigma)
        return image, resize_maps(stitched, self.output_size)
