"""PaDiM detector (Defard, Setkov, Loesch & Audigier, ICPR workshops 2021)."""

from numbers import Integral, Real

import numpy as np
import torch

from .._compat import Interval, StrOptions
from .._validation import check_device
from ..features.patches import PatchFeatures
from ..gaussian import (
    leave_one_out_covariance,
    leave_one_out_squared_distances,
    ledoit_wolf_shrink,
    regularised_cholesky,
)
from ..nn.padim import PositionDistances, PositionMoments, StandardizedMaximum
from .patch_base import BasePatchDetector

__all__ = ["PaDiM"]

# Positions whose covariances are shrunk and factorised at once.
_CHUNK_BYTES = 64 * 2**20
# image_score='standardized': the training images (at most this many, and
# their features at most this many bytes) whose leave-one-out maps give the
# per-pixel mean and standard deviation, and the pseudo-count of maps with
# which each pixel's variance is shrunk towards the mean variance over pixels
# (a per-pixel variance from few maps is noisy, and the maximum of a map
# divided by it would seek out the pixels where it is underestimated).
_STATISTICS_IMAGES = 100
_STATISTICS_BYTES = 192 * 2**20
_VARIANCE_PSEUDO_COUNT = 10
# Leave-one-out with covariance_pooling: above this ratio of successive
# terms of the Neumann series an image's distance is solved exactly (see
# _without_mean_share), below it the tail is summed as geometric. On 100
# digits at 64 px the scores were within 1e-4 (relative) of solving every
# one exactly, in 0.35 s against 2.6 s with 0.05 and 6.9 s all exact.
_NEUMANN_RATIO = 0.1


class PaDiM(BasePatchDetector):
    """Patch distribution modelling: a Gaussian per position of the feature grid.

    Nothing is trained: a frozen pretrained backbone turns each image into a
    grid of patch vectors (:class:`PatchFeatures`: by default the levels of
    strides 4, 8 and 16, upsampled to the stride-4 grid and concatenated,
    then reduced to ``n_channels`` channels). Over the training
    images, each grid position gets its own Gaussian: the mean and a
    regularised covariance of the patch vectors seen there. The anomaly map
    is the Mahalanobis distance of each patch to its position's Gaussian,
    upsampled to the image the backbone saw and smoothed by a Gaussian of
    ``sigma`` pixels; the image's anomaly score is the map's maximum (with
    ``image_score='standardized'``, the maximum of the map standardised pixel
    by pixel by the training images' maps), and ``score_samples`` returns
    its negative.

    The fit streams over batches: it keeps float64 sums of the patch
    vectors and of their outer products per position, never the features
    of all images. **Memory**: the Gaussians take ``positions x d x d``
    numbers (``d = n_channels``, positions = the grid, e.g. 56 x 56 = 3,136
    at 224 px): the fit holds the float64 sums (8 bytes each) and builds the
    float32 Cholesky factors the fitted detector keeps (4 bytes each), so
    it needs about ``12 * positions * d**2`` bytes (376 MB for d = 100 at
    224 px). ``fit`` refuses, before allocating anything, a configuration
    that needs more than ``max_memory_bytes``. Distances are triangular
    solves with the Cholesky factors, batched over positions, in
    :class:`~skanomaly.nn.padim.PositionDistances`, the module the ONNX
    graph holds too.

    Parameters
    ----------
    backbone : str, default='tf_efficientnet_lite0'
        timm model name (a CNN).
    weights : 'imagenet', None or path, default='imagenet'
        As in :class:`TimmFeatures`.
    levels : list of str or int, or None, default=None
        Levels to use; None: the last level of each of ``strides``.
    strides : tuple of int, default=(4, 8, 16)
        Strides of the default levels: ``blocks.1``, ``blocks.2`` and
        ``blocks.4`` of EfficientNets (24 + 40 + 112 = 176 channels for
        ``tf_efficientnet_lite0``), ``layer1`` to ``layer3`` of ResNets (the
        paper's choice).
    image_size : int, (int, int) or None, default=None
        Resolution the backbone sees; None: its evaluation resolution (224
        for ``tf_efficientnet_lite0``). With ``tile_size``: the size images
        are resized to before they are cut; None: their own size.
    n_channels : int or None, default=100
        ``d``, the channels of the reduced patch vectors (the paper: 100 of
        the 448 channels of ResNet18, 550 of WideResNet-50's 1,792); None:
        all channels, unreduced. It must not exceed the channels of the
        levels.
    channel_reduction : {'orthogonal', 'random'}, default='orthogonal'
        How the ``d`` channels are made. 'random' is the paper's: a random
        subset of the channels. 'orthogonal' projects all of them with a
        random matrix with orthonormal columns (Kim et al. 2021's
        semi-orthogonal embedding), so that every kept direction mixes
        every level; at the same ``d`` (the same memory; patch features of
        256 px images in 111 vs 108 ms an image on one CPU thread) it
        localised better than the subset on each of three seeds of the
        localisation benchmark (mean AUPRO 0.980 vs 0.975, pixel AUROC
        0.9947 vs 0.9934; benchmarks/RESULTS_patch_localisation.md).
    covariance : {'empirical', 'ledoit_wolf'}, default='empirical'
        Covariance estimate of each position: the sample covariance
        (normalised by n - 1, as the paper), or Ledoit-Wolf shrinkage towards
        a scaled identity (the default of :class:`Mahalanobis`). With fewer
        images than channels the sample covariance is singular and the
        ridge ``reg_covar`` decides the directions the training patches do
        not span, which is what localises defects best on the benchmark
        (AUPRO 0.973 vs 0.955 with Ledoit-Wolf, 100 images, d = 100);
        Ledoit-Wolf shrinks towards a Euclidean distance instead.
    reg_covar : float, default=0.01
        Added to the diagonal of every covariance (the paper's 0.01 I).
    covariance_pooling : float, default=0.5
        Weight ``w`` of the mean covariance over all grid positions in each
        position's: ``(1 - w) S_p + w S_mean``, then ``reg_covar`` (0: the
        paper's per-position Gaussians, and anomalib's). With fewer images
        than channels each ``S_p`` is singular and the ridge alone decides
        the directions a position's patches do not span; the mean over
        positions gives them the variance the features show elsewhere.
        0.5 was chosen on two textures (brick, gravel; 40 images) and then
        checked on data not used to choose it, where it was ahead of 0 on
        every image-level AUROC measured but one tie (1.000 both): held-out
        grass, the MNIST mosaics, DeepPCB tiles, digits and MNIST classes
        (``benchmarks/RESULTS_textures.md``,
        ``benchmarks/RESULTS_calibration.md``).
        Leave-one-out calibration leaves an image out of both: its patch at
        each position (a rank-one downdate, exact) and its patches' share
        of the mean (a full-rank downdate of weight ``w / n``: a series in
        it, solved exactly for the (position, image) pairs where the series
        is slow, such as an image unlike the others).
    pool_size : int, default=1
        Local averaging of the feature maps before the Gaussians (1: none,
        as the paper; 3: PatchCore's neighbourhood).
    tile_size : int or None, default=None
        For large images: cut each image, at full resolution, into
        overlapping square tiles of this many pixels (the backbone's
        resolution, e.g. 224) instead of resizing it to ``image_size``
        (see :class:`PatchFeatures`). The Gaussians are those of a tile's
        grid positions, shared by all tiles (every tile of every training
        image is a sample); the map is the tiles' maps stitched at full
        resolution, averaged where they overlap; the image score is the
        largest of its tiles' scores. The ONNX export cuts and
        stitches the same tiles. None: no tiles.
    tile_overlap : int, default=0
        Pixels shared by neighbouring tiles, less than ``tile_size``.
    sigma : float, default=4.0
        Smoothing of the map, in pixels of the image the backbone sees.
    image_score : {'max', 'standardized'}, default='max'
        How an image's score is read from its map. 'max': the map's
        maximum (the paper's, and anomalib's). 'standardized': the maximum
        of the map after each pixel is standardised, ``(map - mean) / std``,
        by the mean and standard deviation of that pixel over the training
        images' maps, each training map computed leave-one-out (without
        that image in the Gaussians; up to 100 training images, a fixed
        random subset, and their features at most 192 MiB; each pixel's
        variance shrunk towards the mean variance with a weight of 10
        maps). The maps themselves stay Mahalanobis distances. With
        fewer images than channels the distances of normal patches are not
        equally spread at every pixel: the bilinearly upsampled deeper
        levels vary more at the image's border and corners, and the
        smoothing averages fewer values there, so the plain maximum of a
        normal image lies at its border three times in four on unaligned
        texture (gravel) and a defect inside does not raise it. See
        benchmarks/RESULTS_textures.md.
    max_memory_bytes : int, default=4 GiB
        Upper bound on the memory of the Gaussians (see above).
    batch_size : int, default=32
        Images per forward pass.
    device : str or torch.device, default='cpu'
        Where the backbone and the Gaussians run, e.g. 'cuda'.
    runtime : {'torch', 'onnxruntime'}, default='torch'
        What executes the backbone on the CPU (see
        :class:`~skanomaly.features.patches.PatchFeatures`).
    random_state : int, RandomState instance or None, default=None
        Seeds the channel subset or projection (and the backbone when
        ``weights=None``).
    verbose : int, default=0
        If > 0, show a progress bar over batches.
    contamination, calibration, calibration_size, calibration_confidence
        See :class:`~skanomaly.detectors.base.BaseDetector`.
        calibration='auto' is leave-one-out: each training image is scored
        against the Gaussians of the other images (a rank-one downdate of
        each position's Gaussian, in closed form), so every image trains and
        up to 500 of them (a fixed random subset) calibrate.

    Attributes
    ----------
    feature_extractor_ : PatchFeatures
        The fitted feature stage (holds the backbone and the channel subset
        or projection).
    location_ : ndarray of shape (n_positions, d), float32
        Mean patch vector of each position (row-major over the grid).
    cholesky_ : ndarray of shape (n_positions, d, d), float32
        Lower Cholesky factor of each position's regularised covariance.
    shrinkages_ : ndarray of shape (n_positions,)
        Ledoit-Wolf shrinkage of each position (zeros for 'empirical').
    pooled_covariance_ : ndarray of shape (d, d), float64, or None
        With ``covariance_pooling > 0``: the mean over positions of their
        sample covariances (before shrinkage, pooling and the ridge), which
        leave-one-out calibration downdates; None otherwise.
    map_mean_, map_std_ : ndarray of shape (height, width), float32, or None
        Per-pixel mean and (shrunk) standard deviation of the training
        images' leave-one-out smoothed maps, at the resolution the backbone
        sees (a tile's, with tiles), for ``image_score='standardized'``;
        None otherwise.
    offset_ : float
        Threshold on ``score_samples``.
    n_features_in_ : int
        Channels x height x width of the training images.
    image_shape_ : tuple of int
        ``(channels, height, width)`` of the training images.

    See Also
    --------
    PatchCore : Nearest neighbours in a memory bank of patches.
    DeepMahalanobis : One Gaussian per level of pooled features (image level).

    References
    ----------
    T. Defard, A. Setkov, A. Loesch and R. Audigier, "PaDiM: a Patch
    Distribution Modeling Framework for Anomaly Detection and
    Localization", ICPR Workshops 2021.

    Examples
    --------
    Random weights, only to show the API (use the pretrained default):

    >>> import numpy as np
    >>> from skanomaly import PaDiM
    >>> rng = np.random.default_rng(0)
    >>> good = rng.integers(100, 156, size=(20, 3, 32, 32), dtype=np.uint8)
    >>> det = PaDiM(backbone="resnet18", weights=None, image_size=64,
    ...             n_channels=50, random_state=0).fit(good)
    >>> bad = good[:2].copy()
    >>> bad[:, :, 8:16, 8:16] = 255
    >>> det.anomaly_map(bad).shape
    (2, 32, 32)
    >>> bool(det.score_samples(bad).max() < det.score_samples(good).min())
    True
    """

    _scoring_parameters = ("sigma",)
    _parameter_constraints: dict = {
        **BasePatchDetector._parameter_constraints,
        **{
            key: value
            for key, value in PatchFeatures._parameter_constraints.items()
            if key != "pool_size"
        },
        "covariance": [StrOptions({"empirical", "ledoit_wolf"})],
        "reg_covar": [Interval(Real, 0, None, closed="left")],
        "covariance_pooling": [Interval(Real, 0, 1, closed="both")],
        "pool_size": [Interval(Integral, 1, None, closed="left")],
        "sigma": [Interval(Real, 0, None, closed="left")],
        "image_score": [StrOptions({"max", "standardized"})],
        "max_memory_bytes": [Interval(Integral, 1, None, closed="left")],
    }
    # before covariance_pooling existed, each position had its own covariance
    _legacy_parameters = {"covariance_pooling": 0.0}

    def __init__(
        self,
        backbone="tf_efficientnet_lite0",
        *,
        weights="imagenet",
        levels=None,
        strides=(4, 8, 16),
        image_size=None,
        n_channels=100,
        channel_reduction="orthogonal",
        covariance="empirical",
        reg_covar=0.01,
        covariance_pooling=0.5,
        pool_size=1,
        tile_size=None,
        tile_overlap=0,
        sigma=4.0,
        image_score="max",
        max_memory_bytes=4 * 2**30,
        batch_size=32,
        device="cpu",
        runtime="torch",
        random_state=None,
        verbose=0,
        contamination="auto",
        calibration="auto",
        calibration_size=0.2,
        calibration_confidence=None,
    ):
        super().__init__(
            contamination=contamination,
            calibration=calibration,
            calibration_size=calibration_size,
            calibration_confidence=calibration_confidence,
        )
        self.backbone = backbone
        self.weights = weights
        self.levels = levels
        self.strides = strides
        self.image_size = image_size
        self.n_channels = n_channels
        self.channel_reduction = channel_reduction
        self.covariance = covariance
        self.reg_covar = reg_covar
        self.covariance_pooling = covariance_pooling
        self.pool_size = pool_size
        self.tile_size = tile_size
        self.tile_overlap = tile_overlap
        self.sigma = sigma
        self.image_score = image_score
        self.max_memory_bytes = max_memory_bytes
        self.batch_size = batch_size
        self.device = device
        self.runtime = runtime
        self.random_state = random_state
        self.verbose = verbose

    def __skanomaly_tags__(self):
        tags = super().__skanomaly_tags__()
        tags.test_params = {
            "backbone": "test_efficientnet",
            "weights": None,
            "image_size": 32,
            "strides": (4, 8),
            "n_channels": 16,
            "random_state": 0,
        }
        tags.onnx_export = True
        return tags

    def _fit_patches(self, patch_batches, n_images):
        features = self.feature_extractor_
        positions = int(np.prod(features.grid_shape_))
        d = features.n_channels_
        needed = 12 * positions * d * d
        if needed > self.max_memory_bytes:
            raise ValueError(
                f"PaDiM's Gaussians need about {needed / 2**20:,.0f} MiB "
                f"({positions} positions x {d} x {d} channels, float64 sums and "
                f"float32 factors), more than max_memory_bytes="
                f"{self.max_memory_bytes:,}; lower n_channels or image_size, or "
                "raise max_memory_bytes."
            )
        if n_images < 2:
            raise ValueError("PaDiM needs at least 2 training images.")
        ledoit_wolf = self.covariance == "ledoit_wolf"
        moments = PositionMoments(
            positions, d, check_device(self.device), fourth_moments=ledoit_wolf
        )
        standardize = self.image_score == "standardized"
        if standardize:
            # the features of a fixed subset of the training images, for the
            # per-pixel statistics of their leave-one-out maps
            n_tiles = getattr(features, "n_tiles_", 1)
            per_image = n_tiles * positions * d * 4
            n_kept = min(n_images, _STATISTICS_IMAGES, _STATISTICS_BYTES // per_image)
            n_kept = max(2, n_kept)
            chosen = np.zeros(n_images, bool)
            subset = np.random.default_rng(0).choice(n_images, n_kept, replace=False)
            chosen[subset] = True
            kept, row = [], 0
        for batch in patch_batches():
            moments.update(batch)
            if standardize:
                images = (row + np.arange(len(batch))) // n_tiles
                row += len(batch)
                take = np.flatnonzero(chosen[images])
                if len(take):
                    index = torch.as_tensor(take, device=batch.device)
                    kept.append((images[take], batch.index_select(0, index)))
        cholesky = np.empty((positions, d, d), dtype=np.float32)
        shrinkages = np.zeros(positions)
        chunk = max(1, _CHUNK_BYTES // (8 * d * d))
        ddof = 0 if ledoit_wolf else 1
        pooling = self.covariance_pooling
        self.pooled_covariance_ = None
        if pooling > 0:
            # the mean over positions of their sample covariances
            pooled = sum(
                moments.covariance(slice(start, start + chunk), ddof=ddof).sum(0)
                for start in range(0, positions, chunk)
            )
            pooled = (pooled / positions).cpu().numpy()
            self.pooled_covariance_ = pooled
        for start in range(0, positions, chunk):
            rows = slice(start, start + chunk)
            covariance = moments.covariance(rows, ddof=ddof).cpu().numpy()
            if ledoit_wolf:
                fourth = moments.sum_norms4(rows).cpu().numpy()
                covariance, shrinkages[rows] = ledoit_wolf_shrink(
                    covariance, fourth, moments.count
                )
            if pooling > 0:
                covariance = (1.0 - pooling) * covariance + pooling * pooled
            np.einsum("...ii->...i", covariance)[...] += self.reg_covar
            cholesky[rows] = regularised_cholesky(
                covariance, "The covariance of some grid positions (reg_covar=0?)"
            )
        self.location_ = moments.mean().float().cpu().numpy()
        self.cholesky_ = cholesky
        self.shrinkages_ = shrinkages
        self.map_mean_ = self.map_std_ = sums = None
        if standardize:
            sums = self._map_sums(kept, moments.count) + (chosen,)
            self.map_mean_, self.map_std_ = (
                x.astype(np.float32) for x in _map_statistics(*sums[:3])
            )
        return moments.count, sums

    def _map_sums(self, kept, n_images):
        """Per-pixel sums of the leave-one-out maps of ``kept``'s images.

        Returns ``(count, sum, sum of squares)``, float64 arrays of the
        size the backbone sees.
        """
        state = self._leave_one_out_distances(check_device(self.device), n_images)
        count, first, second = 0, 0.0, 0.0
        for _, batch in kept:
            maps = self._smoothed(self._leave_one_out_grid(batch, *state))
            maps = maps.double().cpu().numpy()
            count += len(maps)
            first = first + maps.sum(axis=0)
            second = second + np.square(maps).sum(axis=0)
        return count, first, second

    def _device_state(self, device):
        distances = PositionDistances(
            torch.from_numpy(self.location_), torch.from_numpy(self.cholesky_)
        )
        if getattr(self, "map_mean_", None) is not None:
            distances = StandardizedMaximum(
                distances,
                torch.from_numpy(self.map_mean_),
                torch.from_numpy(self.map_std_),
                size=self.feature_extractor_._backbone_size(),
                sigma=self.sigma,
            )
        return distances.to(device)

    def _patch_scores(self, features, state):
        if isinstance(state, StandardizedMaximum):
            return state(features)
        grid = state(features)
        maps = self._smoothed(grid)
        return grid, maps.amax(dim=(1, 2))

    def _leave_one_out_state(self, device, fitted):
        n_images, sums = fitted
        # leave_one_out_covariance's 2 + ddof (ddof 0 for Ledoit-Wolf), said
        # here in PaDiM's terms
        needed = 2 if self.covariance == "ledoit_wolf" else 3
        if n_images < needed:
            raise ValueError(
                f"PaDiM's leave-one-out calibration (calibration='auto') scores "
                f"each training image against the Gaussians of the others, and "
                f"needs at least {needed} training images (or tiles); got "
                f"{n_images}. Give more images, or use calibration='training' "
                "(the threshold then says nothing about new images)."
            )
        return *self._leave_one_out_distances(device, n_images), sums

    def _leave_one_out_distances(self, device, n_images):
        """``(distances, c, n_images, e)`` for :meth:`_leave_one_out_grid`.

        Each position's covariance is ``Sigma = (1 - w) B + w S_mean + r I``
        (``w = covariance_pooling``, ``r = reg_covar``), with
        ``B = (1 - alpha) W / (n - ddof) + alpha mu I`` its own estimate
        (``alpha = 0``, ``ddof = 1`` for 'empirical'; see skanomaly.gaussian)
        and ``S_mean`` the mean of the positions' ``W / (n - ddof)``. Without
        image ``i`` it is ``A - c x x^T - e M_i``: ``A`` and ``c`` from
        :func:`leave_one_out_covariance`, ``x`` the image's centred patch,
        ``M_i`` the mean of its patches' outer products over positions and
        ``e = w n / ((n - 1)(n - 1 - ddof))``.
        """
        ledoit_wolf = self.covariance == "ledoit_wolf"
        ddof = 0 if ledoit_wolf else 1
        d = self.cholesky_.shape[-1]
        pooling = self.covariance_pooling
        pooled_trace = 0.0
        if pooling > 0:
            pooled_trace = np.trace(self.pooled_covariance_) / d
        factors = np.empty_like(self.cholesky_)
        c = np.empty(len(self.cholesky_))
        chunk = max(1, _CHUNK_BYTES // (8 * d * d))
        for start in range(0, len(self.cholesky_), chunk):
            rows = slice(start, start + chunk)
            factor = self.cholesky_[rows].astype(np.float64)
            used = factor @ factor.transpose(0, 2, 1)
            shrinkage = self.shrinkages_[rows]
            # shrinkage keeps the trace of W / n: trace(B) / d = mu, so
            # (1 - w) mu is what remains of the mean variance
            own_mu = (
                np.trace(used, axis1=1, axis2=2) / d
                - self.reg_covar
                - pooling * pooled_trace
            )
            A, c[rows] = leave_one_out_covariance(
                used,
                n_images,
                ddof=ddof,
                shrinkage=shrinkage,
                diagonal=shrinkage * own_mu + self.reg_covar,
            )
            factors[rows] = regularised_cholesky(A)
        c *= 1.0 - pooling
        n = float(n_images)
        mean_weight = pooling * n / ((n - 1.0) * (n - 1.0 - ddof))
        distances = PositionDistances(torch.from_numpy(self.location_), factors)
        return distances.to(device), c, n_images, mean_weight

    @staticmethod
    def _leave_one_out_grid(features, distances, c, n_images, mean_weight):
        """Distances of training patches to the Gaussians without their image."""
        batch, _, height, width = features.shape
        centred, whitened = distances.whiten(features)  # (P, C, B)
        q = whitened.square().sum(dim=1)
        if mean_weight > 0:
            q = _without_mean_share(
                q, centred, whitened, distances.cholesky, mean_weight
            )
        q = q.double().T.reshape(batch, height, width)
        squared = leave_one_out_squared_distances(
            q.cpu().numpy(), n_images, c.reshape(height, width)
        )
        return torch.from_numpy(np.sqrt(squared)).to(features)

    def _leave_one_out_scores(self, features, state, images):
        *distances, sums = state
        maps = self._smoothed(self._leave_one_out_grid(features, *distances))
        if sums is None:
            return maps.amax(dim=(1, 2))
        # standardised by the statistics of the other images' maps: an image
        # among those the statistics came from leaves its own map out (with
        # tiles: the tile's own map)
        count, first, second, chosen = sums
        maps = maps.double().cpu().numpy()
        own = chosen[images].astype(np.float64)[:, None, None]
        mean, std = _map_statistics(
            count - own, first - own * maps, second - own * np.square(maps)
        )
        scores = ((maps - mean) / std).reshape(len(maps), -1).max(axis=1)
        return torch.from_numpy(scores).to(features)

    def _onnx_scorer(self):
        return self._device_state(torch.device("cpu")).for_export()


def _without_mean_share(q, centred, whitened, cholesky, weight):
    """``x^T (A - e M_i)^-1 x`` of every position and image, from ``q = x^T A^-1 x``.

    ``x`` a centred patch (``centred``, (positions, C, images)), ``whitened``
    its ``L^-1 x`` with ``A = L L^T`` each position's (``cholesky``),
    ``M_i`` the mean over positions of image ``i``'s ``x x^T`` and ``e``
    ``weight``. The Neumann series ``q + e t1 + e^2 t2 + ...`` (``t1 =
    z^T M z``, ``t2 = |L^-1 M z|^2``, ``z = A^-1 x``) converges fast for
    ordinary images (``e M`` is about ``1 / n`` of ``A``): its tail is summed
    as geometric, with the ratio ``e t2 / t1``. An image unlike the others
    can make up much of the mean covariance in some directions on its own,
    and there the series is slow: where the ratio exceeds
    ``_NEUMANN_RATIO`` the quadratic form is solved exactly, with a
    Cholesky factor of ``A - e M_i`` per (position, image).
    """
    z = torch.linalg.solve_triangular(cholesky.mT, whitened, upper=True)  # A^-1 x
    shares = torch.einsum("pcb,pdb->bcd", centred, centred) / len(centred)
    shared_z = torch.einsum("bcd,pdb->pcb", shares, z)  # M z
    first = (z * shared_z).sum(dim=1)
    second = torch.linalg.solve_triangular(cholesky, shared_z, upper=False)
    second = second.square().sum(dim=1)
    ratio = weight * second / first.clamp(min=torch.finfo(first.dtype).tiny)
    slow = ratio > _NEUMANN_RATIO
    tail = (1.0 - ratio.clamp(max=_NEUMANN_RATIO)).reciprocal()
    result = q + weight * first + weight**2 * second * tail
    positions, images = torch.nonzero(slow, as_tuple=True)
    d = cholesky.shape[-1]
    # four float64 (pairs, d, d) arrays at a time: the factor, its product,
    # the difference and its Cholesky factor
    chunk = max(1, _CHUNK_BYTES // (4 * 8 * d * d))
    for start in range(0, len(positions), chunk):
        p, i = positions[start : start + chunk], images[start : start + chunk]
        factor = cholesky[p].double()
        without = factor @ factor.mT - weight * shares[i].double()
        x = centred[p, :, i].double()[..., None]  # (pairs, C, 1)
        y = torch.linalg.solve_triangular(
            torch.linalg.cholesky(without), x, upper=False
        )
        result[p, i] = y.square().sum(dim=(1, 2)).to(result.dtype)
    return result


def _map_statistics(count, first, second):
    """Per-pixel mean and shrunk standard deviation from the sums of maps.

    ``count``, ``first`` (sum) and ``second`` (sum of squares) broadcast
    (a leading axis: one set of statistics per row). Each pixel's variance is
    shrunk towards the mean variance over the pixels with a weight of
    ``_VARIANCE_PSEUDO_COUNT`` maps.
    """
    mean = first / count
    variance = np.maximum(second / count - np.square(mean), 0.0)
    pooled = variance.mean(axis=(-2, -1), keepdims=True)
    variance = (count * variance + _VARIANCE_PSEUDO_COUNT * pooled) / (
        count + _VARIANCE_PSEUDO_COUNT
    )
    return mean, np.sqrt(np.maximum(variance, np.finfo(np.float32).tiny))
