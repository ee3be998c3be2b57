"""PatchCore detector (Roth, Pemula, Zepeda, Schölkopf, Brox & Gehler, CVPR 2022)."""

from numbers import Integral, Real

import numpy as np
import torch
from sklearn.utils import check_random_state

from .._compat import Interval, StrOptions
from .._validation import check_device
from ..features.patches import PatchFeatures
from ..nn.patchcore import (
    BankScores,
    FaissSearch,
    bank_scores,
    greedy_coreset,
    import_faiss,
    inverted_lists,
    nearest_neighbours,
    random_projection,
)
from .patch_base import BasePatchDetector

__all__ = ["PatchCore"]

# shard_size='auto': one greedy selection over at most this many training
# patches (51,200 took 19 s to fit on one CPU thread, 5,120 in the bank),
# shards of _AUTO_SHARD_SIZE patches above, where the exact selection's
# quadratic cost takes over (102,400 patches: 105 s against 33 s).
_AUTO_EXACT_PATCHES = 65536
_AUTO_SHARD_SIZE = 16384
# search='faiss': about 4 sqrt(n_bank) cells (faiss's guideline, 4 to 16
# sqrt(n)), with at least 39 bank rows per cell for its k-means.
_CELLS_PER_SQRT_BANK = 4
_ROWS_PER_CELL = 39


class PatchCore(BasePatchDetector):
    """Nearest-neighbour distance to a coreset memory bank of training patches.

    Nothing is trained: a frozen pretrained backbone turns each image into a
    grid of patch vectors (:class:`PatchFeatures`: the levels of strides 8
    and 16, each averaged over 3 x 3 neighbourhoods, upsampled to the
    stride-8 grid and concatenated: 40 + 112 = 152 channels for
    ``tf_efficientnet_lite0``). The patches of the training images are
    subsampled to a *coreset* by greedy farthest-point selection (k-center)
    on a random Gaussian projection to ``projection_dim`` dimensions, and
    the selected (unprojected) patches are the memory bank. A test patch's
    anomaly score is its Euclidean distance to the nearest bank patch; the
    map is the grid of these scores upsampled to the image the backbone saw
    and smoothed by a Gaussian of ``sigma`` pixels. The image's anomaly
    score is the largest patch score, re-weighted as in the paper's Eq. 7
    by how isolated its nearest bank patch is among its ``num_neighbors``
    nearest bank patches; ``score_samples`` returns its negative.

    **Scale.** Greedy selection of ``k`` of ``n`` patches costs
    ``k x n x projection_dim`` operations, quadratic in the number of
    patches. The training patches are therefore split into shards of at
    most ``shard_size`` patches (whole images, in a random order drawn
    with ``random_state``), and each shard contributes its own coreset of
    ``coreset_ratio`` of its patches: the cost becomes linear in the number
    of images, each shard's greedy loop works on data that fits in the CPU
    cache, and fitting holds one shard of features (``shard_size x
    channels`` floats: 10 MB for 16,384 x 152) plus the bank, never all
    training features. Every training patch still lies within its shard's
    covering radius of the bank. ``shard_size=None`` runs one greedy
    selection over all patches (the paper's algorithm, exact, but slow
    beyond ~10^5 patches and holding all features). Sharding costs a
    little quality: on the localisation benchmark (50 training images,
    51,200 patches, three seeds) shards of 16,384 gave a mean image AUROC
    of 0.984 against 0.988 for one selection. So the default, 'auto', runs
    one selection over up to 65,536 training patches (64 images at 256 px,
    83 at 224 px) and shards of 16,384 beyond. The bank keeps
    ``coreset_ratio`` of all training patches (e.g. 78,400 x 152 floats,
    48 MB, for 1,000 images at 224 px and 10%). The default exact search
    compares each test patch with the whole bank in 8 MB tiles of
    matrix products, ``O(patches x bank x channels)``, which outgrows the
    backbone's cost as the bank grows: with banks from 300 and 760 DeepPCB
    tiles at 256 px, scoring took about 5 and 10 times a bare feature pass
    on one CPU thread (``benchmarks/RESULTS_inspection_speed.md``). ``search='faiss'``
    compares each test patch with the bank rows of its ``n_probes``
    nearest k-means cells only (an inverted-file index of the faiss
    library), an approximate search for large banks.

    Parameters
    ----------
    backbone : str, default='tf_efficientnet_lite0'
        timm model name (a CNN).
    weights : 'imagenet', None or path, default='imagenet'
        As in :class:`TimmFeatures`.
    levels : list of str or int, or None, default=None
        Levels to use; None: the last level of each of ``strides``.
    strides : tuple of int, default=(8, 16)
        Strides of the default levels: ``blocks.2`` and ``blocks.4`` of
        EfficientNets, ``layer2`` and ``layer3`` of ResNets (the paper's).
    image_size : int, (int, int) or None, default=None
        Resolution the backbone sees; None: its evaluation resolution (224
        for ``tf_efficientnet_lite0``). With ``tile_size``: the size images
        are resized to before they are cut; None: their own size.
    pool_size : int, default=3
        Local neighbourhood averaged into each patch vector (1: none).
    tile_size : int or None, default=None
        For large images: cut each image, at full resolution, into
        overlapping square tiles of this many pixels (the backbone's
        resolution, e.g. 224) instead of resizing it to ``image_size``
        (see :class:`PatchFeatures`). Every tile's patches enter the bank's
        selection (an image is ``n_tiles`` times the patches: shards hold
        whole images, at least one); the map is the tiles' maps stitched at
        full resolution, averaged where they overlap; the image score is
        the largest of its tiles' scores (Eq. 7 per tile). The ONNX
        export cuts and stitches the same tiles. None: no tiles.
    tile_overlap : int, default=0
        Pixels shared by neighbouring tiles, less than ``tile_size``.
    n_channels : int or None, default=None
        Reduce the patch vectors to this many channels; None: all.
    channel_reduction : {'random', 'orthogonal'}, default='random'
        How ``n_channels`` are made: a random subset of the channels or a
        random semi-orthogonal projection of them (as in
        :class:`PatchFeatures`).
    coreset_ratio : float, default=0.1
        Fraction of the training patches kept in the memory bank (the paper
        uses 0.01 to 0.1).
    projection_dim : int, default=128
        Dimension of the random projection the greedy selection runs on (as
        in the paper); when the features have no more channels than this,
        the selection runs on the features themselves.
    shard_size : int, None or 'auto', default='auto'
        Most patches per greedy selection (see Scale); None: one selection
        over all training patches; 'auto': None for at most 65,536 training
        patches, else 16,384.
    num_neighbors : int, default=9
        ``b`` of the re-weighting (Eq. 7); 1: no re-weighting.
    search : {'exact', 'faiss'}, default='exact'
        The nearest-neighbour search of the test patches. 'exact': every
        bank row (see Scale). 'faiss': the rows of the ``n_probes`` nearest
        of about ``4 sqrt(n_bank)`` k-means cells of the bank
        (``faiss.IndexIVFFlat``; needs the faiss-cpu package, ``pip install
        'skanomaly[faiss]'``): approximate, a patch whose nearest bank row
        lies in an unprobed cell gets a larger distance. The cells are made
        in ``fit``; the re-weighting's neighbours and the exported ONNX
        graph use the exact search.
    n_probes : int, default=16
        Cells searched per patch with ``search='faiss'`` (more: slower,
        closer to exact); ignored by the exact search. With banks from 300
        and 760 DeepPCB tiles at 256 px (701 and 1,116 cells), 8 / 16 / 32
        probes found the exact nearest bank row of 94 / 96.5 / 97 % and
        92 / 95 / 96 % of test patches, image and pixel AUROC within 0.006
        of the exact search's; with the 760-tile bank, scoring took 1.5 /
        1.9 / 2.4 times a bare feature pass.
    sigma : float, default=4.0
        Smoothing of the map, in pixels of the image the backbone sees.
    batch_size : int, default=32
        Images per forward pass.
    device : str or torch.device, default='cpu'
        Where the backbone, the selection and the search run, e.g. 'cuda'.
    runtime : {'torch', 'onnxruntime'}, default='torch'
        What executes the backbone on the CPU (see
        :class:`~skanomaly.features.patches.PatchFeatures`).
    random_state : int, RandomState instance or None, default=None
        Seeds the image order, the projection and the greedy starts (and the
        backbone when ``weights=None``).
    verbose : int, default=0
        If > 0, show a progress bar over batches.
    contamination, calibration, calibration_size, calibration_confidence
        See :class:`~skanomaly.detectors.base.BaseDetector`.
        calibration='auto' is leave-one-out: each training image is scored
        against the memory bank without the patches it contributed (its own
        patches are at distance 0), so every image trains and up to 500 of
        them (a fixed random subset) calibrate.

    Attributes
    ----------
    feature_extractor_ : PatchFeatures
        The fitted feature stage (holds the backbone).
    memory_bank_ : ndarray of shape (n_bank, n_channels), float32
        The coreset of training patch vectors.
    n_training_patches_ : int
        Patches of the training images the coreset was chosen from.
    shard_size_ : int or None
        The shard size used (None: one selection over all patches).
    search_centroids_ : ndarray of shape (n_cells, n_channels) or None
        The k-means cells' centres of ``search='faiss'`` (None: exact).
    search_cells_ : ndarray of shape (n_bank,), int64, or None
        The cell of each bank row (None: exact).
    offset_ : float
        Threshold on ``score_samples``.
    n_features_in_ : int
        Channels x height x width of the training images.
    image_shape_ : tuple of int
        ``(channels, height, width)`` of the training images.

    See Also
    --------
    PaDiM : A Gaussian per position of the grid.

    References
    ----------
    K. Roth, L. Pemula, J. Zepeda, B. Schölkopf, T. Brox and P. Gehler,
    "Towards Total Recall in Industrial Anomaly Detection", CVPR 2022.

    Examples
    --------
    Random weights, only to show the API (use the pretrained default):

    >>> import numpy as np
    >>> from skanomaly import PatchCore
    >>> rng = np.random.default_rng(0)
    >>> good = rng.integers(100, 156, size=(20, 3, 32, 32), dtype=np.uint8)
    >>> det = PatchCore(backbone="resnet18", weights=None, image_size=64,
    ...                 random_state=0).fit(good)
    >>> det.memory_bank_.shape
    (128, 384)
    >>> bad = good[:2].copy()
    >>> bad[:, :, 8:16, 8:16] = 255
    >>> det.anomaly_map(bad).shape
    (2, 32, 32)
    >>> bool(det.score_samples(bad).max() < det.score_samples(good).min())
    True
    """

    # n_probes only with search='faiss' (see _scoring_setting)
    _scoring_parameters = ("num_neighbors", "search", "n_probes")
    _parameter_constraints: dict = {
        **BasePatchDetector._parameter_constraints,
        **PatchFeatures._parameter_constraints,
        "coreset_ratio": [Interval(Real, 0, 1, closed="right")],
        "projection_dim": [Interval(Integral, 1, None, closed="left")],
        "shard_size": [
            Interval(Integral, 1, None, closed="left"),
            None,
            StrOptions({"auto"}),
        ],
        "num_neighbors": [Interval(Integral, 1, None, closed="left")],
        "search": [StrOptions({"exact", "faiss"})],
        "n_probes": [Interval(Integral, 1, None, closed="left")],
        "sigma": [Interval(Real, 0, None, closed="left")],
    }

    def __init__(
        self,
        backbone="tf_efficientnet_lite0",
        *,
        weights="imagenet",
        levels=None,
        strides=(8, 16),
        image_size=None,
        pool_size=3,
        tile_size=None,
        tile_overlap=0,
        n_channels=None,
        channel_reduction="random",
        coreset_ratio=0.1,
        projection_dim=128,
        shard_size="auto",
        num_neighbors=9,
        search="exact",
        n_probes=16,
        sigma=4.0,
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
        self.pool_size = pool_size
        self.tile_size = tile_size
        self.tile_overlap = tile_overlap
        self.n_channels = n_channels
        self.channel_reduction = channel_reduction
        self.coreset_ratio = coreset_ratio
        self.projection_dim = projection_dim
        self.shard_size = shard_size
        self.num_neighbors = num_neighbors
        self.search = search
        self.n_probes = n_probes
        self.sigma = sigma
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
            "random_state": 0,
        }
        tags.onnx_export = True
        return tags

    def _fit(self, X, leave_one_out=False):
        if self.search == "faiss":
            import_faiss()  # before anything is fitted
        return super()._fit(X, leave_one_out=leave_one_out)

    def _fit_patches(self, patch_batches, n_images):
        # Shards are groups of whole images in a random order; the features
        # come shard by shard, so only one shard is held at a time.
        features = self.feature_extractor_
        # with tiles, an image's patches are those of all its tiles
        patches_per_image = int(np.prod(features.grid_shape_)) * features.n_tiles_
        n_patches = n_images * patches_per_image
        if int(self.coreset_ratio * n_patches) < 1:
            raise ValueError(
                f"coreset_ratio={self.coreset_ratio} of the {n_patches} training "
                "patches leaves an empty memory bank; expected at least one "
                "patch: raise coreset_ratio or give more images."
            )
        rng = check_random_state(self.random_state)
        order = rng.permutation(n_images)
        generator = torch.Generator().manual_seed(
            int(rng.randint(np.iinfo(np.int32).max))
        )
        projection = None
        if features.n_channels_ > self.projection_dim:
            projection = random_projection(
                features.n_channels_,
                self.projection_dim,
                generator,
                check_device(self.device),
            )
        shard_size = self.shard_size
        if shard_size == "auto":
            shard_size = None if n_patches <= _AUTO_EXACT_PATCHES else _AUTO_SHARD_SIZE
        per_shard = n_images
        if shard_size is not None:
            per_shard = max(1, shard_size // patches_per_image)
        bank, bank_images, done = [], [], 0
        for first in range(0, n_images, per_shard):
            images = np.sort(order[first : first + per_shard])
            shard = torch.cat(
                [
                    batch.flatten(2).transpose(1, 2).reshape(-1, batch.shape[1])
                    for batch in patch_batches(images)
                ]
            )
            # this shard's share of the bank, so that the shares add up
            share = int(self.coreset_ratio * (done + len(shard))) - int(
                self.coreset_ratio * done
            )
            done += len(shard)
            if share == 0:
                continue
            start = int(torch.randint(len(shard), (1,), generator=generator))
            selected = greedy_coreset(
                shard if projection is None else shard @ projection,
                share,
                start=start,
            )
            bank.append(shard[selected])
            # the training image each bank row came from (leave-one-out)
            rows_per_image = len(shard) // len(images)
            bank_images.append(images[(selected // rows_per_image).cpu().numpy()])
        self.memory_bank_ = torch.cat(bank).cpu().numpy()
        self.n_training_patches_ = n_patches
        self.shard_size_ = shard_size
        self.search_centroids_ = self.search_cells_ = None
        if self.search == "faiss":
            n_bank = len(self.memory_bank_)
            n_cells = min(
                round(_CELLS_PER_SQRT_BANK * n_bank**0.5),
                max(1, n_bank // _ROWS_PER_CELL),
            )
            self.search_centroids_, self.search_cells_ = inverted_lists(
                self.memory_bank_, max(1, n_cells), int(rng.randint(2**31 - 1))
            )
        return np.concatenate(bank_images)

    def _scoring_setting(self):
        setting = super()._scoring_setting()
        if setting["search"] != "faiss":  # the exact search probes nothing
            del setting["n_probes"]
        return setting

    def _device_state(self, device):
        bank = torch.from_numpy(self.memory_bank_).to(device)
        return bank, bank.square().sum(dim=1), self._searcher()

    def _searcher(self):
        """The search of the test patches: exact, or the fitted faiss cells."""
        if self.search == "exact":
            return nearest_neighbours
        if self.search_centroids_ is None:
            raise ValueError(
                "search='faiss' needs the k-means cells that fit makes with "
                "it; this model was fitted with search='exact': fit it again."
            )
        return FaissSearch(
            self.memory_bank_, self.search_centroids_, self.search_cells_, self.n_probes
        )

    def _search(self, queries, state):
        """``(distances, indices)`` of the nearest bank row of each query."""
        bank, bank_norms2, search = state[:3]
        return search(queries, bank, bank_norms2)

    def _patch_scores(self, features, state):
        bank, bank_norms2, search = state
        return bank_scores(
            features, bank, bank_norms2, self.num_neighbors, search=search
        )

    def _leave_one_out_state(self, device, bank_images):
        if len(np.unique(bank_images)) < 2:
            raise ValueError(
                "PatchCore's memory bank holds patches of a single training "
                "image, so no image can be scored without its own patches "
                "(calibration='leave-one-out'); give more images, raise "
                "coreset_ratio, or use calibration='split'."
            )
        bank, bank_norms2, search = self._device_state(device)
        return bank, bank_norms2, search, torch.from_numpy(bank_images).to(device)

    def _leave_one_out_scores(self, features, state, images):
        bank, bank_norms2, search, bank_images = state
        images = torch.from_numpy(np.asarray(images)).to(bank_images)
        return bank_scores(
            features,
            bank,
            bank_norms2,
            self.num_neighbors,
            search=search,
            groups=(images, bank_images),
        )[1]

    def _onnx_scorer(self):
        return BankScores(self.memory_bank_, self.num_neighbors)
