"""PatchFeatures: spatial multi-level feature maps of a pretrained timm backbone."""

from numbers import Integral

import numpy as np
import torch
from sklearn.utils import check_random_state
from sklearn.utils.validation import check_is_fitted

from .._compat import Interval, StrOptions, fit_context
from .._validation import check_device, parse_image_size
from ..nn.backbones import PatchGrid, level_maps
from ..nn.maps import tile_origins
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

    **Large images** (``tile_size``): resizing a 2048 px image to the
    backbone's 224 px shrinks a 3 px scratch below a pixel. With
    ``tile_size``, images are kept at full resolution (their own size, or
    ``image_size`` when given) and cut into square tiles of ``tile_size``
    pixels that overlap by ``tile_overlap`` pixels (the last tile of each
    row and column is moved back to end at the image's edge, see
    :func:`~skanomaly.nn.maps.tile_origins`); the backbone sees each tile
    as it is, without resizing, and every tile gets its own patch grid
    (``grid_shape_`` is a tile's). Tiles run through the backbone in
    batches of ``batch_size`` tiles, whatever the image size, so memory is
    bounded by a tile batch and one image. The detectors stitch the tiles'
    maps back into a map of the whole image.

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
        stride 16), so that every level's map is at least 2 x 2. With
        ``tile_size``: the full-resolution size images are resized to
        before they are cut into tiles; None: the training images' own size.
    pool_size : int, default=3
        Side of the local averaging neighbourhood (odd); 1: none.
    tile_size : int or None, default=None
        Side in pixels of the square tiles that images are cut into, at
        their full resolution (see Large images); use the backbone's
        resolution (224 for ``tf_efficientnet_lite0``). It must not exceed
        the images' height or width, and must be at least twice the largest
        stride of the levels. None: no tiles, each image is resized to
        ``image_size`` as a whole.
    tile_overlap : int, default=0
        Pixels shared by neighbouring tiles (in pixels, not a fraction);
        less than ``tile_size``. Patches near a tile's edge see the zero
        padding of the backbone; an overlap of a few strides (e.g. 32 to 64
        px at 224) gives each of them a second view from inside the
        neighbouring tile. Ignored when ``tile_size`` is None.
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
        Images per forward pass (tiles, with ``tile_size``).
    device : str or torch.device, default='cpu'
        Where the backbone runs, e.g. 'cuda'.
    runtime : {'torch', 'onnxruntime'}, default='torch'
        What executes the backbone on the CPU (see
        :class:`~skanomaly.TimmFeatures`: 'onnxruntime' ran
        EfficientNet-Lite0's patch levels 2.6x faster on one thread, with
        features within 1e-4 of torch's).
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
        ``(height, width)`` of the patch grid (of one tile, with tiles).
    tile_origins_ : ndarray of shape (n_tiles_, 2) or None
        ``(top, left)`` of each tile in the image at ``image_size_``,
        row-major; None without tiles.
    n_tiles_ : int
        Tiles per image (1 without tiles).
    channel_indices_ : ndarray of int or None
        The channels kept (positions in the concatenated levels), or None
        (all, or a projection).
    projection_ : ndarray of shape (channels of the levels, n_channels_) or None
        The semi-orthogonal projection ('orthogonal' reduction), float32, or
        None.
    n_channels_ : int
        Channels of each patch vector.
    image_size_ : tuple of int
        ``(height, width)`` the backbone sees, or with tiles the size of
        the full-resolution image the tiles are cut from.
    n_features_in_ : int
        Channels x height x width of the training images.
    image_shape_ : tuple of int
        ``(channels, height, width)`` of the training images.
    image_dtype_ : str
        dtype of the training images.
    image_value_range_ : (0.0, 1.0), (0.0, 255.0) or None
        The value range ``fit`` read images in, which ``transform`` keeps
        whatever the dtype (the rule of
        :class:`~skanomaly.detectors.base.BaseDetector`).

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

    Images cut into 32 px tiles that overlap by at least 8 px (2 x 2 tiles
    of these 40 px images, the second of each row and column ending at the
    edge), each tile with its own 4 x 4 grid:

    >>> tiled = PatchFeatures("resnet18", weights=None, tile_size=32,
    ...                       tile_overlap=8, random_state=0).fit(images)
    >>> tiled.n_tiles_, tiled.tile_origins_[:3].tolist()
    (4, [[0, 0], [0, 8], [8, 0]])
    >>> tiled.transform(images).shape
    (4, 4, 384, 4, 4)
    """

    # Fitted state: TimmFeatures' plus the tuples level_strides_ and
    # grid_shape_, the ints n_channels_ and n_tiles_ and the arrays
    # channel_indices_, projection_ and tile_origins_ (files written before
    # projection_ or the tiles existed have none).

    _parameter_constraints: dict = {
        **TimmFeatures._parameter_constraints,
        "levels": [list, tuple, None],
        "strides": [tuple, list],
        "pool_size": [Interval(Integral, 1, None, closed="left")],
        "n_channels": [Interval(Integral, 1, None, closed="left"), None],
        "channel_reduction": [StrOptions({"random", "orthogonal"})],
        "tile_size": [Interval(Integral, 1, None, closed="left"), None],
        "tile_overlap": [Interval(Integral, 0, None, closed="left")],
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
        tile_size=None,
        tile_overlap=0,
        batch_size=32,
        device="cpu",
        runtime="torch",
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
        self.tile_size = tile_size
        self.tile_overlap = tile_overlap
        self.batch_size = batch_size
        self.device = device
        self.runtime = runtime
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
        state_before = dict(self.__dict__)
        try:
            return self._fit(X)
        except BaseException:
            # leave the estimator as it was: nothing half-fitted
            self.__dict__.clear()
            self.__dict__.update(state_before)
            raise

    def _fit(self, X):
        if self.pool_size % 2 == 0:
            raise ValueError(
                "pool_size must be odd (a centred neighbourhood); got "
                f"{self.pool_size}."
            )
        X = _check_images(self, X, reset=True)
        full_size = None
        if self.tile_size is not None:
            # before the backbone is built: a wrong tile costs nothing
            full_size = parse_image_size(self.image_size) or tuple(X.shape[-2:])
            _check_tiles(self.tile_size, self.tile_overlap, full_size, self.image_size)
        names, channels = self._build_backbone()
        if full_size is not None:
            self.image_size_ = tuple(int(s) for s in full_size)
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
        self.tile_origins_ = None
        self.n_tiles_ = 1
        if full_size is not None:
            self.tile_origins_ = tile_origins(
                self.image_size_, self.tile_size, self.tile_overlap
            )
            self.n_tiles_ = len(self.tile_origins_)
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

    def _backbone_size(self):
        """``(height, width)`` of what the backbone sees: an image, or a tile."""
        if getattr(self, "tile_origins_", None) is None:
            return tuple(self.image_size_)
        return (self.tile_size, self.tile_size)

    def _check_grid(self, keep):
        """The image (tile) must be at least twice the largest stride on each side."""
        stride = max(self.level_strides_)
        size, parameter = self.image_size_, "image_size"
        name = f"image_size {size}"
        if self.tile_size is not None:
            size, parameter = (self.tile_size, self.tile_size), "tile_size"
            name = f"tile_size={self.tile_size}"
        error = None
        if min(size) >= 2 * stride:
            device = next(self.backbone_.parameters()).device
            probe = torch.zeros(1, self.in_chans_, *size, device=device)
            try:
                with torch.inference_mode():
                    maps = level_maps(self.backbone_, probe, keep=keep)
            except RuntimeError as exc:  # a convolution larger than its input
                error = exc
            else:
                self.grid_shape_ = tuple(int(s) for s in maps[0].shape[-2:])
                return
        raise ValueError(
            f"{name} is too small for levels "
            f"{list(self.levels_)} of {self.backbone!r} (strides "
            f"{list(self.level_strides_)}): each needs a feature map of at least "
            f"2 x 2, so {parameter} must be at least "
            f"{2 * stride} px on each side."
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
        features : ndarray, float32
            Of shape ``(n_samples, n_channels_, grid_height, grid_width)``,
            or ``(n_samples, n_tiles_, n_channels_, grid_height, grid_width)``
            with tiles.
        """
        check_is_fitted(self, "backbone_")
        X = _check_images(self, X, reset=False)
        tiles = self.n_tiles_ if self.tile_origins_ is not None else None
        shape = (len(X), *([tiles] if tiles else []), self.n_channels_)
        out = np.empty((*shape, *self.grid_shape_), np.float32)
        flat = out.reshape(-1, self.n_channels_, *self.grid_shape_)
        with torch.inference_mode():
            for start, features in self.patch_batches(X):
                flat[start : start + len(features)] = features.cpu().numpy()
        return out

    def patch_batches(self, X):
        """Yield ``(start, features)``: patch features of batches of validated ``X``.

        What ``transform`` returns, batch by batch, as tensors on the device
        (for detectors that score patches as they come). With tiles, the
        batches are of ``batch_size`` tiles: the tiles of all images in
        order, image ``i``'s being ``i * n_tiles_`` to ``(i + 1) * n_tiles_
        - 1`` (in the order of ``tile_origins_``), and ``start`` counts
        tiles.

        Parameters
        ----------
        X : ndarray of shape (n_samples, channels, height, width)
            Images as ``transform`` takes them, validated.

        Yields
        ------
        start : int
            Position in ``X`` of the batch's first image (tile, with tiles).
        features : torch.Tensor of shape (batch, n_channels_, grid_height, \
grid_width)
            float32, on ``device``. Run under ``torch.inference_mode``.
        """
        device = check_device(self.device)
        # the module holds the channel subset: it goes to the device too
        module = self._batch_module(self.backbone_.to(device)).to(device)
        if getattr(self, "tile_origins_", None) is not None:
            X = _Tiles(
                X,
                self.tile_origins_,
                self.tile_size,
                self.image_size_,
                self.interpolation_,
            )
        yield from self._device_batches(X, module)

    def _batch_module(self, model):
        """``model`` (the backbone) with this stage's preprocessing and grid."""
        return PatchGrid(
            model,
            **{**self._preprocessing(), "size": self._backbone_size()},
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


def _check_tiles(tile_size, overlap, size, image_size):
    """Refuse tiles that do not fit the images, naming the parameter to change."""
    if overlap >= tile_size:
        raise ValueError(
            f"tile_overlap={overlap} is not less than tile_size={tile_size}: "
            "neighbouring tiles would not advance; pass a tile_overlap below "
            f"tile_size (e.g. {tile_size // 4})."
        )
    if tile_size > min(size):
        where = f"image_size={image_size!r}" if image_size is not None else "the images"
        raise ValueError(
            f"tile_size={tile_size} is larger than {where} ({size[0]} x "
            f"{size[1]} px, height x width); pass tile_size <= {min(size)}, or "
            "tile_size=None to resize each image to the backbone as a whole."
        )


class _Tiles:
    """The tiles of images as a lazy array of shape (n_images * n_tiles, C, t, t).

    What ``_device_batches`` slices batches from: each slice is cut from
    the images when it is taken, so only a batch of tiles (and one resized
    image) is held at a time. Images not at ``size`` are resized to it
    first, as ``preprocess_images`` would resize them (then as float32 in
    [0, 1]); uint8 tiles stay uint8.
    """

    def __init__(self, X, origins, tile, size, interpolation):
        self.X = X
        self.origins = origins
        self.tile = int(tile)
        self.size = tuple(int(s) for s in size)
        self.mode = (
            interpolation if interpolation in ("bicubic", "bilinear") else "bilinear"
        )
        self.resize = tuple(X.shape[-2:]) != self.size
        self.dtype = np.dtype(np.float32) if self.resize else X.dtype
        self.shape = (len(X) * len(origins), X.shape[1], self.tile, self.tile)
        self._cached = (None, None)

    def __len__(self):
        return self.shape[0]

    def _image(self, i):
        if not self.resize:
            return self.X[i]
        if self._cached[0] != i:
            image = torch.from_numpy(np.ascontiguousarray(self.X[i : i + 1]))
            image = image.float().div_(255.0) if image.dtype == torch.uint8 else image
            resized = torch.nn.functional.interpolate(
                image.float(), size=self.size, mode=self.mode, antialias=True
            )
            self._cached = (i, resized[0].numpy())
        return self._cached[1]

    def __getitem__(self, key):
        rows = range(len(self))[key]
        out = np.empty((len(rows), *self.shape[1:]), self.dtype)
        t = self.tile
        for n, k in enumerate(rows):
            image, j = divmod(k, len(self.origins))
            top, left = self.origins[j]
            out[n] = self._image(image)[:, top : top + t, left : left + t]
        return out
