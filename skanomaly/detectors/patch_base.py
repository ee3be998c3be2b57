"""BasePatchDetector: what PaDiM and PatchCore share on top of PatchFeatures.

A patch detector scores every position of the :class:`PatchFeatures` grid;
the grid of patch scores becomes the anomaly map (upsampled to the image
the backbone saw, Gaussian-smoothed, resized to the input images) and one
image score. Subclasses implement ``_fit_patches`` (fit on a stream of
feature batches), ``_patch_scores`` (grid scores and image scores of one
batch) and the leave-one-out versions of the scores that calibrate the
threshold (``_leave_one_out_state``, ``_leave_one_out_scores``).

With tiles (``tile_size``, see :class:`PatchFeatures`), the subclasses see
tiles where they saw images: the feature batches are batches of tiles, PaDiM's
positions are the positions of a tile's grid (all tiles share them) and
PatchCore's bank takes patches of every tile. This base maps tiles back to
images: a tile's scores count for the image it was cut from, the anomaly map
is the tiles' maps stitched at full resolution
(:class:`~skanomaly.nn.maps.TileStitcher`: averaged where tiles overlap,
then smoothed), and the image score is the largest of its tiles' image
scores, each scored as the untiled detector scores an image. That one rule
serves ``score_samples`` and the (leave-one-out) calibration scores of
``fit`` alike, so the threshold is calibrated on the statistic it is
applied to.
"""

from abc import abstractmethod

import numpy as np
import torch
from sklearn.utils.validation import check_is_fitted

from .._compat import param_names
from .._validation import check_device
from ..features.patches import PatchFeatures
from ..nn.maps import (
    PatchMaps,
    TiledPatchMaps,
    TileStitcher,
    resize_maps,
    smooth_maps,
)
from ..weights import native_input_size, offline_architecture
from .base import BaseDetector

__all__ = ["BasePatchDetector"]

# Training images whose (leave-one-out) scores calibrate offset_: p-values
# resolve 1/501, and the scoring costs at most a second backbone pass over
# 500 images.
_CALIBRATION_IMAGES = 500
# Keep the training features for the training scores (no second backbone
# pass) when they take at most this many bytes.
_KEEP_TRAINING_BYTES = 256 * 2**20


class BasePatchDetector(BaseDetector):
    """Base class of detectors that score the patches of :class:`PatchFeatures`.

    Subclasses have every parameter of :class:`PatchFeatures` (passed on
    to it) and implement:

    - ``_fit_patches(patch_batches, n_images)``: fit on the training
      images' features; ``patch_batches(images=None)`` yields them as
      float32 tensors (batch, channels, height, width), for the images at
      the positions ``images`` (all, in order, when None). What it returns
      is passed to ``_leave_one_out_state``;
    - ``_device_state(device)``: the fitted arrays as tensors on ``device``,
      made once per pass over the images;
    - ``_patch_scores(features, state)``: ``(grid, image)``, the anomaly
      score of each patch (batch, height, width) and of each image
      (batch,), as tensors;
    - ``_leave_one_out_state(device, fitted)`` and
      ``_leave_one_out_scores(features, state, images)``: the image scores
      of training images (at positions ``images`` of the training set)
      under the model fitted without each of them
      (``calibration='leave-one-out'``, the default);

    and have a ``sigma`` parameter (the smoothing of the maps, in pixels of
    the image the backbone sees). A subclass that declares the
    ``onnx_export`` tag also implements ``_onnx_scorer()``: a CPU torch
    module from the patch features (batch, channels, height, width) to the
    grid scores, or to ``(grid scores, image scores)`` when the image score
    is not the smoothed map's maximum (see :class:`~skanomaly.nn.maps.PatchMaps`).

    Parameters
    ----------
    contamination, calibration, calibration_size, calibration_confidence
        See :class:`~skanomaly.detectors.base.BaseDetector`.

    Attributes
    ----------
    feature_extractor_ : PatchFeatures
        The fitted feature stage (holds the backbone).
    offset_ : float
        Threshold on ``score_samples``.
    """

    # a saved model names an architecture timm builds offline, never a hub
    # or local model a later fit would fetch (skanomaly.persistence)
    _loadable_parameters = {"backbone": offline_architecture}

    def __skanomaly_tags__(self):
        tags = super().__skanomaly_tags__()
        tags.tabular = False
        tags.anomaly_maps = True
        tags.pretrained_weights = True
        tags.keeps_uint8 = True
        tags.unit_range_images = True
        # scoring all training images would cost as much as the fit
        tags.max_offset_samples = _CALIBRATION_IMAGES
        tags.leave_one_out = True
        tags.input_size = native_input_size(self.backbone, self.image_size)
        if getattr(self, "tile_size", None) is not None and self.image_size is None:
            # tiles work at the images' own resolution: no size to resize to
            tags.input_size = None
        return tags

    @abstractmethod
    def _fit_patches(self, patch_batches, n_images):
        """Fit on the training features, from ``patch_batches(images=None)``."""

    @abstractmethod
    def _device_state(self, device):
        """The fitted arrays ``_patch_scores`` needs, as tensors on ``device``."""

    @abstractmethod
    def _patch_scores(self, features, state):
        """``(grid scores (B, h, w), image scores (B,))`` of one batch."""

    @abstractmethod
    def _leave_one_out_state(self, device, fitted):
        """What ``_leave_one_out_scores`` needs, from ``_fit_patches``' result."""

    @abstractmethod
    def _leave_one_out_scores(self, features, state, images):
        """Image scores (B,) of training images ``images`` without each one."""

    def _batch_scores(self, X):
        """Yield ``(start, grid scores, image scores)`` over batches of ``X``.

        Batches of tiles with tiles (``start`` counts tiles; see
        ``_image_rows``).
        """
        state = self._device_state(check_device(self.device))
        for start, batch in self.feature_extractor_.patch_batches(X):
            yield start, *self._patch_scores(batch, state)

    def _image_rows(self, start, count):
        """Image of each of ``count`` feature rows from ``start`` (tiles or images)."""
        return (start + np.arange(count)) // getattr(
            self.feature_extractor_, "n_tiles_", 1
        )

    def _make_features(self):
        return PatchFeatures(
            **{name: getattr(self, name) for name in param_names(PatchFeatures)}
        )

    def _fit(self, X, leave_one_out=False):
        features = self._make_features().fit(X)
        self.feature_extractor_ = features
        # the calibration scores come from a fixed subset of the training
        # images (max_offset_samples); their features are kept as they go
        # by when they fit in _KEEP_TRAINING_BYTES, else computed again
        calibration_images = self._calibration_subset(len(X))
        per_image = features.n_channels_ * int(np.prod(features.grid_shape_)) * 4
        per_image *= features.n_tiles_
        keep = len(calibration_images) * per_image <= _KEEP_TRAINING_BYTES
        wanted = np.zeros(len(X), bool)
        wanted[calibration_images] = keep
        kept = []

        def patch_batches(images=None):
            subset = X if images is None else X[images]
            positions = np.arange(len(X)) if images is None else images
            for start, batch in features.patch_batches(subset):
                rows = positions[self._image_rows(start, len(batch))]
                if wanted[rows].any():
                    chosen = np.flatnonzero(wanted[rows])
                    index = torch.as_tensor(chosen, device=batch.device)
                    kept.append((rows[chosen], batch.index_select(0, index)))
                yield batch

        with torch.inference_mode():
            fitted = self._fit_patches(patch_batches, len(X))
            if not keep and not leave_one_out:
                return None  # the base scores the subset
            if not keep:
                kept = (
                    (calibration_images[self._image_rows(start, len(batch))], batch)
                    for start, batch in features.patch_batches(X[calibration_images])
                )
            device = check_device(self.device)
            if leave_one_out:
                state = self._leave_one_out_state(device, fitted)
            else:
                state = self._device_state(device)
            # an image's score is the largest of its tiles' (rows repeat)
            scores = np.full(len(X), -np.inf)
            for rows, batch in kept:
                if leave_one_out:
                    image = self._leave_one_out_scores(batch, state, rows)
                else:
                    image = self._patch_scores(batch, state)[1]
                np.maximum.at(scores, rows, image.double().cpu().numpy())
        return -scores[calibration_images]

    def _score_samples(self, X):
        with torch.inference_mode():
            scores = [image for _, _, image in self._batch_scores(X)]
        scores = torch.cat(scores).double().cpu().numpy()
        # the largest of each image's tiles' scores (one tile: itself)
        return -scores.reshape(len(X), -1).max(axis=1)

    def _onnx_module(self):
        """uint8 images -> (scores, maps), for :func:`skanomaly.export_onnx`.

        The backbone and the maps run in float32, as in ``score_samples``
        (ONNX Runtime has no float64 convolution); the scorer chooses the
        precision of its distances. A tiled model's graph cuts the tiles and
        stitches their maps as ``score_samples`` and ``anomaly_map`` do.
        """
        features = self.feature_extractor_
        if getattr(features, "tile_origins_", None) is not None:
            return TiledPatchMaps(
                features._onnx_module(),
                self._onnx_scorer(),
                origins=features.tile_origins_,
                tile=features.tile_size,
                size=features.image_size_,
                sigma=self.sigma,
                output_size=self.image_shape_[1:],
                interpolation=features.interpolation_,
            )
        return PatchMaps(
            self.feature_extractor_._onnx_module(),
            self._onnx_scorer(),
            size=self.feature_extractor_.image_size_,
            sigma=self.sigma,
            output_size=self.image_shape_[1:],
        )

    def _smoothed(self, grid):
        """Smoothed maps of grids of what the backbone saw (images or tiles)."""
        size = self.feature_extractor_._backbone_size()
        return smooth_maps(grid, size=size, sigma=self.sigma)

    def anomaly_map(self, X):
        """Per-pixel anomaly map of each image, at the images' resolution.

        The patch scores, upsampled bilinearly to the image the backbone
        saw, smoothed by a Gaussian of ``sigma`` pixels there, and resized
        to the input images. With tiles, each tile's scores are upsampled
        to the tile, the tiles are stitched into a map of the
        full-resolution image (averaged where they overlap), and that map
        is smoothed and resized.

        Parameters
        ----------
        X : array-like of shape (n_samples, height, width) or \
(n_samples, channels, height, width)
            Images of the training shape.

        Returns
        -------
        maps : ndarray of shape (n_samples, height, width), float32
            Larger values mark more anomalous pixels.
        """
        check_is_fitted(self, "offset_")
        X = self._validate_input(X, reset=False)
        out = np.empty((len(X), *self.image_shape_[1:]), dtype=np.float32)
        features = self.feature_extractor_
        if getattr(features, "tile_origins_", None) is not None:
            stitcher = TileStitcher(
                features.tile_origins_,
                features.tile_size,
                features.image_size_,
                self.sigma,
            )
        with torch.inference_mode():
            for start, grid, _ in self._batch_scores(X):
                if getattr(features, "tile_origins_", None) is None:
                    maps = self._smoothed(grid)
                    maps = resize_maps(maps, self.image_shape_[1:])
                    out[start : start + len(maps)] = maps.cpu().numpy()
                    continue
                for image, stitched in stitcher.add(start, grid):
                    stitched = resize_maps(stitched[None], self.image_shape_[1:])
                    out[image] = stitched[0].cpu().numpy()
        return out
