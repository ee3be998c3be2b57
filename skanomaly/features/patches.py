"""PatchFeatures: spatial multi-level feature maps of a pretrained timm backbone."""

from numbers import Integral

import numpy as np
import torch
from sklearn.utils import check_random_state
from sklearn.utils.validation import check_is_fitted

from .._compat import Interval, StrOptions, fit_context
from .._validation import check_device
from ..nn.backbones import PatchGrid, level_maps
from .pooled import TimmFeatures, _check_images, _resolve_levels

__all__ = ["PatchFeatures"]

# Side of the square probe image that measures each level's stride.
_STRIDE_PROBE = 256


class PatchFeatures(TimmFeatures):
    """Images to patch features: a feature vector per position of a grid.

    The feature stage of :class:`PaDiM` and :class:`PatchCore`. Like
    :class:`TimmFeatures` it runs a frozen timm backbone over batches of
    images, but instead of pooling each level to one vector it keeps the
    spatial maps:

    1. each chosen level's map is averaged over a ``pool_size`` x
       ``pool_size`` neighbourhood (stride 1, zero padding counted, as
       PatchCore's local aggregation), so that a patch vector also sees its
       neighbours;
    2. the deeper levels are upsampled to the grid of the finest chosen
       level, bilinearly with ``align_corners=False``: for a stride ratio r,
       that places each coarse feature at the centre of the r x r cells it
       covers, which is where a strided convolution's output sits;
    3. the levels are concatenated along channels, and optionally reduced to
       ``n_channels``: a random subset of the channels (PaDiM's reduction) or
       a random semi-orthogonal projection of all of them (Kim et al.'s).

    The grid has the finest chosen level's resolution, e.g. 28 x 28 for
    levels of strides 8 and 16 at 224 px. Images are resized and normalised
    as in :class:`TimmFeatures`.

    ``transform`` returns all the maps at once, (n_samples, channels,
    height, width); :class:`PaDiM` and :class:`PatchCore` consume them batch
    by batch, so their memory does not grow with the number of images.

    Parameters
    ----------
    backbone : str, default='tf_efficientnet_lite0'
        timm model name; a CNN whose levels are spatial maps.
    weights : 'imagenet', None or path, default='imagenet'
        As in :class:`TimmFeatures`.
    levels : list of str or int, or None, default=None
        Levels to use, by name or position in :attr:`all_levels_` (not
        ``head``, which is pooled). None: for each of ``strides``, the last
        level with that stride, e.g. ``blocks.2`` and ``blocks.4`` of
        EfficientNets or ``layer2`` and ``layer3`` of ResNets for strides 8
        and 16.
    strides : tuple of int, default=(8, 16)
        Strides of the default levels (ignored when ``levels`` is given).
    image_size : int, (int, int) or None, default=None
        ``(height, width)`` the backbone sees; None: its evaluation
        resolution (224 for ``tf_efficientnet_lite0``). Each side must be at
        least twice the largest stride of the chosen levels (32 px for
        stride 16), so that every level's map is at least 2 x 2.
    pool_size : int, default=3
        Side of the local averaging neighbourhood (odd); 1: none.
    n_channels : int or None, default=None
        Reduce the patch vectors to this many channels (see
        ``channel_reduction``); None: all channels, unreduced.
    channel_reduction : {'random', 'orthogonal'}, default='random'
        How ``n_channels`` are made: 'random' keeps a random subset of the
        channels (sorted, drawn with ``random_state``; PaDiM's); 'orthogonal'
        multiplies all of them by a random ``(channels, n_channels)`` matrix
        ``W`` with orthonormal columns (``W.T @ W = I``, the Q of a QR
        decomposition of a Gaussian matrix drawn with ``random_state``), so
        that every reduced channel mixes every level (Kim et al. 2021,
        "semi-orthogonal embedding").
    batch_size : int, default=32
        Images per forward pass.
    device : str or torch.device, default='cpu'
        Where the backbone runs, e.g. 'cuda'.
    random_state : int, RandomState instance or None, default=None
        Seeds the channel subset or projection, and the random
        initialisation when ``weights=None``.
    verbose : int, default=0
        If > 0, show a progress bar over batches.

    Attributes
    ----------
    backbone_ : torch.nn.Module
        The frozen timm model, on ``device``.
    all_levels_ : tuple of str
        Every level the backbone exposes.
    levels_ : tuple of str
        The levels used, finest first.
    level_channels_ : tuple of int
        Width of each level used.
    level_strides_ : tuple of int
        Stride of each level used, in pixels of the image the backbone sees.
    grid_shape_ : tuple of int
        ``(height, width)`` of the patch grid.
    channel_indices_ : ndarray of int or None
        The channels kept (positions in the concatenated levels), or None
        (all, or a projection).
    projection_ : ndarray of shape (channels of the levels, n_channels_) or None
        The semi-orthogonal projection ('orthogonal' reduction), float32, or
        None.
    n_channels_ : int
        Channels of each patch vector.
    image_size_ : tuple of int
        ``(height, width)`` the backbone sees.
    n_features_in_ : int
        Channels x height x width of the training images.
    image_shape_ : tuple of int
        ``(channels, height, width)`` of the training images.

    Examples
    --------
    >>> import numpy as np
    >>> from skanomaly import PatchFeatures
    >>> images = np.random.default_rng(0).integers(0, 256, (4, 3, 40, 40), np.uint8)
    >>> patches = PatchFeatures("resnet18", weights=None, image_size=64,
    ...                         random_state=0).fit(images)
    >>> patches.levels_, patches.level_strides_
    (('layer2', 'layer3'), (8, 16))
    >>> patches.transform(images).shape
    (4, 384, 8, 8)
    """

    # Fitted state: TimmFeatures' plus the tuples level_strides_ and
    # grid_shape_, the int n_channels_ and the arrays channel_indices_ and
    # projection_ (files written before projection_ existed have none).

    _parameter_constraints: dict = {
        **TimmFeatures._parameter_constraints,
        "levels": [list, tuple, None],
        "strides": [tuple, list],
        "pool_size": [Interval(Integral, 1, None, closed="left")],
        "n_channels": [Interval(Integral, 1, None, closed="left"), None],
        "channel_reduction": [StrOptions({"random", "orthogonal"})],
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
        n_channels=None,
        channel_reduction="random",
        batch_size=32,
        device="cpu",
        random_state=None,
        verbose=0,
    ):
        self.backbone = backbone
        self.weights = weights
        self.levels = levels
        self.strides = strides
        self.image_size = image_size
        self.pool_size = pool_size
        self.n_channels = n_channels
        self.channel_reduction = channel_reduction
        self.batch_size = batch_size
        self.device = device
        self.random_state = random_state
        self.verbose = verbose

    @fit_context(prefer_skip_nested_validation=True)
    def fit(self, X, y=None):
        """Build the backbone, choose the levels and check the grid.

        Parameters
        ----------
        X : array-like of shape (n_samples, height, width) or \
(n_samples, channels, height, width)
            Images, ``uint8`` or floats in [0, 1], with 1 or 3 channels.
        y : None
            Ignored.

        Returns
        -------
        self : object
        """
        if self.pool_size % 2 == 0:
            raise ValueError(
                "pool_size must be odd (a centred neighbourhood); got "
                f"{self.pool_size}."
            )
        X = _check_images(self, X, reset=True)
        names, channels = self._build_backbone()
        spatial = list(range(len(names) - self.has_head_))
        strides = self._level_strides(spatial)
        if self.levels is None:
            keep = []
            for stride in self.strides:
                matching = [i for i in spatial if strides[i] == stride]
                if not matching:
                    available = sorted(set(strides.values()))
                    raise ValueError(
                        f"Backbone {self.backbone!r} has no level of stride "
                        f"{stride}; its strides are {available}. Pass other "
                        "strides, or levels by name."
                    )
                keep.append(matching[-1])
        else:
            keep = _resolve_levels(self.levels, names)
            pooled = [names[i] for i in keep if i not in spatial]
            if pooled:
                raise ValueError(
                    f"Level(s) {pooled} are pooled vectors, not feature maps; "
                    f"patch features take the spatial levels {names[: len(spatial)]}."
                )
        keep = sorted(set(keep))
        self.levels_ = tuple(names[i] for i in keep)
        self.level_channels_ = tuple(channels[i] for i in keep)
        self.level_strides_ = tuple(strides[i] for i in keep)
        self._check_grid(keep)
        total = sum(self.level_channels_)
        self.channel_indices_ = self.projection_ = None
        self.n_channels_ = total
        if self.n_channels is None:
            return self
        if self.n_channels > total:
            raise ValueError(
                f"n_channels={self.n_channels} is more than the {total} "
                f"channels of levels {list(self.levels_)} "
                f"({' + '.join(map(str, self.level_channels_))})."
            )
        rng = check_random_state(self.random_state)
        if self.channel_reduction == "random":
            self.channel_indices_ = np.sort(rng.permutation(total)[: self.n_channels])
        else:
            gaussian = rng.standard_normal((total, self.n_channels))
            self.projection_ = np.linalg.qr(gaussian)[0].astype(np.float32)
        self.n_channels_ = int(self.n_channels)
        return self

    def _level_strides(self, positions):
        """Stride of each spatial level, measured on a square probe image."""
        device = next(self.backbone_.parameters()).device
        probe = torch.zeros(1, self.in_chans_, _STRIDE_PROBE, _STRIDE_PROBE)
        with torch.inference_mode():
            maps = level_maps(self.backbone_, probe.to(device), keep=positions)
        strides = {}
        for position, level in zip(positions, maps, strict=True):
            if level.ndim != 4:
                name = self.all_levels_[position]
                raise ValueError(
                    f"Backbone {self.backbone!r} gives level {name!r} "
                    "as tokens, not a feature map; patch features need a CNN "
                    "(e.g. tf_efficientnet_lite0, resnet18)."
                )
            strides[position] = max(1, round(_STRIDE_PROBE / level.shape[-1]))
        return strides

    def _check_grid(self, keep):
        """The image must be at least twice the largest stride on each side."""
        stride = max(self.level_strides_)
        error = None
        if min(self.image_size_) >= 2 * stride:
            device = next(self.backbone_.parameters()).device
            probe = torch.zeros(1, self.in_chans_, *self.image_size_, device=device)
            try:
                with torch.inference_mode():
                    maps = level_maps(self.backbone_, probe, keep=keep)
            except RuntimeError as exc:  # a convolution larger than its input
                error = exc
            else:
                self.grid_shape_ = tuple(int(s) for s in maps[0].shape[-2:])
                return
        raise ValueError(
            f"image_size {self.image_size_} is too small for levels "
            f"{list(self.levels_)} of {self.backbone!r} (strides "
            f"{list(self.level_strides_)}): each needs a feature map of at least "
            f"2 x 2, so image_size must be at least {2 * stride} px on each side."
        ) from error

    def transform(self, X):
        """Patch features of each image.

        Parameters
        ----------
        X : array-like of shape (n_samples, height, width) or \
(n_samples, channels, height, width)
            Images with the channels seen in ``fit``, any size.

        Returns
        -------
        features : ndarray of shape (n_samples, n_channels_, grid_height, \
grid_width), float32
        """
        check_is_fitted(self, "backbone_")
        X = _check_images(self, X, reset=False)
        out = np.empty((len(X), self.n_channels_, *self.grid_shape_), np.float32)
        with torch.inference_mode():
            for start, features in self.patch_batches(X):
                out[start : start + len(features)] = features.cpu().numpy()
        return out

    def patch_batches(self, X):
        """Yield ``(start, features)``: patch features of batches of validated ``X``.

        What ``transform`` returns, batch by batch, as tensors on the device
        (for detectors that score patches as they come).

        Parameters
        ----------
        X : ndarray of shape (n_samples, channels, height, width)
            Images as ``transform`` takes them, validated.

        Yields
        ------
        start : int
            Position in ``X`` of the batch's first image.
        features : torch.Tensor of shape (batch, n_channels_, grid_height, \
grid_width)
            float32, on ``device``. Run under ``torch.inference_mode``.
        """
        device = check_device(self.device)
        # the module holds the channel subset: it goes to the device too
        module = self._batch_module(self.backbone_.to(device)).to(device)
        yield from self._device_batches(X, module)

    def _batch_module(self, model):
        """``model`` (the backbone) with this stage's preprocessing and grid."""
        return PatchGrid(
            model,
            **self._preprocessing(),
            keep=[self.all_levels_.index(name) for name in self.levels_],
            pool_size=self.pool_size,
            grid=self.grid_shape_,
            channels=self.channel_indices_,
            projection=getattr(self, "projection_", None),
        )

    def get_feature_names_out(self, input_features=None):
        """Names of the channels of a patch vector.

        ``'<level>_ch<channel>'``, or ``'projection<k>'`` for the channels of
        an 'orthogonal' reduction (each mixes every level).

        Parameters
        ----------
        input_features : None
            Ignored (inputs are pixels).

        Returns
        -------
        names : ndarray of str of shape (n_channels_,)
        """
        names = super().get_feature_names_out()
        if getattr(self, "projection_", None) is not None:
            return np.array([f"projection{k}" for k in range(self.n_channels_)], object)
        if self.channel_indices_ is None:
            return names
        return names[self.channel_indices_]
