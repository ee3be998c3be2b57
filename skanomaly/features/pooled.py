"""TimmFeatures: pooled multi-level features of a pretrained timm backbone."""

import contextlib
import copy
import os
from numbers import Integral

import numpy as np
import torch
from sklearn.base import BaseEstimator, TransformerMixin
from sklearn.utils import check_random_state
from sklearn.utils.validation import check_is_fitted

from .._compat import Interval, StrOptions, fit_context
from .._validation import (
    as_tensor,
    check_device,
    parse_image_size,
    validate_images,
)
from ..nn.backbones import PooledFeatures, create_backbone, describe_levels
from ..weights import offline_architecture
from ._runtime import RUNTIMES, check_runtime, runtime_module

__all__ = ["TimmFeatures"]

# Features kept on the accelerator before one copy back to the host.
_PENDING_BYTES = 64 * 2**20


class TimmFeatures(TransformerMixin, BaseEstimator):
    """Images to globally average-pooled features of every level of a timm model.

    The backbone is frozen (no training): ``fit`` builds it and records its
    levels, ``transform`` runs it over batches of images, averages each
    level's feature map over space and concatenates the levels, so any
    scikit-learn estimator can work on deep features, e.g.
    ``make_pipeline(TimmFeatures("resnet18"), OneClassSVM())``.

    Levels are what timm's ``forward_intermediates`` exposes (see
    :mod:`skanomaly.nn.backbones`): for EfficientNets and
    EfficientNet-Lites ``stem``, ``blocks.0`` ... ``blocks.6`` and ``head``
    (9 levels, Rippel et al.'s), for ResNets
    ``act1``, ``layer1`` ... ``layer4``, for other models the modules of
    their ``feature_info`` and ``head`` when it differs from the last stage.

    Images are resized (antialiased, the backbone's interpolation) to the
    backbone's evaluation resolution and normalised with its own mean and
    std, both from timm's data config (for the EfficientNet-Lites: bicubic,
    mean = std = 0.5). Grayscale images are repeated to three
    channels. Inference runs under ``torch.inference_mode`` in
    channels-last layout, in batches of ``batch_size`` images (which bounds
    memory), with bfloat16 autocast on CUDA.

    Parameters
    ----------
    backbone : str, default='tf_efficientnet_lite0'
        timm model name, optionally with a pretrained tag
        (``'resnet18.a1_in1k'``). The default's ImageNet weights come with
        skanomaly, so it works offline; Rippel et al.'s EfficientNet-B4 is
        ``'tf_efficientnet_b4.aa_in1k'`` (timm's TF port of those weights,
        380 px; see the user guide on weights).
    weights : 'imagenet', None or path, default='imagenet'
        ``'imagenet'``: pretrained ImageNet weights. For the packaged
        backbones (``tf_efficientnet_lite0``, ``tf_efficientnet_lite1``,
        ``tf_efficientnet_lite2``) they are read from their installed pip
        package, without network; a missing package is an ``OSError`` naming
        it. For any other name they are timm's, from the Hugging Face hub
        cache (downloaded when missing and the hub is reachable; otherwise
        ``fit`` raises an ``OSError`` naming the remedies). ``None``: random
        initialisation. A path to a local ``.safetensors`` file or a
        ``torch.save``-d state dict (``.pth``), loaded without running any
        pickled code and strictly (classifier weights are ignored).
    levels : 'all' or list of str or int, default='all'
        Levels to keep, by name or position in :attr:`all_levels_`.
    image_size : int, (int, int) or None, default=None
        ``(height, width)`` the backbone sees; None: the backbone's
        evaluation resolution from timm's data config (224 for
        ``tf_efficientnet_lite0``, 380 for ``tf_efficientnet_b4``).
    batch_size : int, default=32
        Images per forward pass.
    device : str or torch.device, default='cpu'
        Where the backbone runs, e.g. 'cuda'.
    runtime : {'torch', 'onnxruntime'}, default='torch'
        What executes the backbone. 'onnxruntime' (CPU only; needs
        ``pip install 'skanomaly[onnx]'``) exports the batch module once,
        at the first ``transform`` of each input dtype (a few seconds), and
        runs it in ONNX Runtime: 2.6x faster than torch for
        EfficientNet-Lite0 at 256 px on one thread, with features within
        1e-4 of torch's (``benchmarks/backbone_speed.py``). The exported
        graph lives beside the stage, not in it: saved models keep only the
        choice.
    random_state : int, RandomState instance or None, default=None
        Seeds the random initialisation when ``weights=None``; unused
        otherwise.
    verbose : int, default=0
        If > 0, show a progress bar over batches.

    Attributes
    ----------
    backbone_ : torch.nn.Module
        The frozen timm model (without classifier), on ``device``.
    all_levels_ : tuple of str
        Every level the backbone exposes.
    levels_ : tuple of str
        The levels kept, in output order.
    level_channels_ : tuple of int
        Width of each kept level.
    level_slices_ : dict of str to slice
        Columns of the output that hold each kept level.
    image_size_ : tuple of int
        ``(height, width)`` the backbone sees.
    n_features_in_ : int
        Channels x height x width of the training images.
    image_shape_ : tuple of int
        ``(channels, height, width)`` of the training images. ``transform``
        takes any height and width (images are resized) with the same
        number of channels.
    image_dtype_ : str
        dtype of the training images; ``transform`` reads images as ``fit``
        did (see :class:`~skanomaly.detectors.base.BaseDetector`).
    image_value_range_ : (0.0, 1.0), (0.0, 255.0) or None
        The value range ``fit`` read images in, which ``transform`` keeps
        whatever the dtype (the rule of
        :class:`~skanomaly.detectors.base.BaseDetector`).

    Examples
    --------
    >>> import numpy as np
    >>> from skanomaly import TimmFeatures
    >>> images = np.random.default_rng(0).integers(0, 256, (4, 3, 40, 40), np.uint8)
    >>> features = TimmFeatures("resnet18", weights=None, image_size=32,
    ...                         random_state=0).fit(images)
    >>> features.transform(images).shape
    (4, 1024)
    >>> features.levels_
    ('act1', 'layer1', 'layer2', 'layer3', 'layer4')
    >>> features.level_slices_["layer1"]
    slice(64, 128, None)
    >>> features.get_feature_names_out()[64]
    'layer1_ch0'
    """

    # Fitted state: the backbone's weights (backbone_.state_dict(); the module
    # is rebuilt from `backbone` with weights=None) and plain values: the
    # tuples all_levels_, levels_, level_channels_, image_size_, image_shape_,
    # mean_, std_, the str interpolation_ and the ints/bools in_chans_,
    # has_head_, n_features_in_. level_slices_ is derived from them.

    # a saved model names an architecture timm builds offline, never a hub
    # or local model a later fit would fetch (skanomaly.persistence)
    _loadable_parameters = {"backbone": offline_architecture}

    _parameter_constraints: dict = {
        "backbone": [str],
        "weights": [StrOptions({"imagenet"}), str, os.PathLike, None],
        "levels": [StrOptions({"all"}), list, tuple],
        "image_size": [Interval(Integral, 1, None, closed="left"), tuple, list, None],
        "batch_size": [Interval(Integral, 1, None, closed="left")],
        "device": [str, torch.device],
        "runtime": [StrOptions(set(RUNTIMES))],
        "random_state": ["random_state"],
        "verbose": ["verbose"],
    }

    def __init__(
        self,
        backbone="tf_efficientnet_lite0",
        *,
        weights="imagenet",
        levels="all",
        image_size=None,
        batch_size=32,
        device="cpu",
        runtime="torch",
        random_state=None,
        verbose=0,
    ):
        self.backbone = backbone
        self.weights = weights
        self.levels = levels
        self.image_size = image_size
        self.batch_size = batch_size
        self.device = device
        self.runtime = runtime
        self.random_state = random_state
        self.verbose = verbose

    @fit_context(prefer_skip_nested_validation=True)
    def fit(self, X, y=None):
        """Build the backbone and record its levels.

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
        X = _check_images(self, X, reset=True)
        names, channels = self._build_backbone()
        keep = _resolve_levels(self.levels, names)
        self.levels_ = tuple(names[i] for i in keep)
        self.level_channels_ = tuple(channels[i] for i in keep)
        return self

    def _build_backbone(self):
        """Build the frozen backbone and record how it reads images.

        Sets ``backbone_``, ``image_size_``, ``mean_``, ``std_``,
        ``interpolation_``, ``in_chans_``, ``has_head_`` and ``all_levels_``;
        returns the level names and widths.
        """
        device = check_device(self.device)
        check_runtime(getattr(self, "runtime", "torch"), device)
        in_chans = 3
        if self.weights is None:
            seed = check_random_state(self.random_state).randint(np.iinfo(np.int32).max)
            with torch.random.fork_rng(devices=[]):
                torch.manual_seed(int(seed))
                model = create_backbone(self.backbone, None)
        else:
            model = create_backbone(self.backbone, self.weights)
        model = model.to(device=device, memory_format=torch.channels_last)

        from timm.data import resolve_model_data_config

        config = resolve_model_data_config(model, use_test_size=True)
        self.image_size_ = parse_image_size(self.image_size) or tuple(
            int(s) for s in config["input_size"][1:]
        )
        self.mean_ = tuple(float(v) for v in config["mean"])
        self.std_ = tuple(float(v) for v in config["std"])
        self.interpolation_ = str(config.get("interpolation", "bilinear"))
        self.in_chans_ = in_chans

        names, channels, has_head = describe_levels(model, self.image_size_, in_chans)
        self.backbone_ = model
        self.has_head_ = bool(has_head)
        self.all_levels_ = tuple(names)
        return names, channels

    @property
    def level_slices_(self):
        check_is_fitted(self, "levels_")
        bounds = np.cumsum((0, *self.level_channels_)).tolist()
        return {
            name: slice(bounds[i], bounds[i + 1]) for i, name in enumerate(self.levels_)
        }

    def transform(self, X):
        """Pooled features of each kept level, concatenated.

        Parameters
        ----------
        X : array-like of shape (n_samples, height, width) or \
(n_samples, channels, height, width)
            Images with the channels seen in ``fit``, any size.

        Returns
        -------
        features : ndarray of shape (n_samples, sum(level_channels_)), float32
        """
        check_is_fitted(self, "backbone_")
        X = _check_images(self, X, reset=False)
        return self._transform(X)

    def _transform(self, X):
        """Features of validated images ``X`` (uint8 or float, N x C x H x W)."""
        device = check_device(self.device)
        module = self._batch_module(self.backbone_.to(device))
        out = np.empty((X.shape[0], sum(self.level_channels_)), dtype=np.float32)
        pending, flushed = [], 0
        with torch.inference_mode():
            for start, features in self._device_batches(X, module):
                pending.append(features)
                # On an accelerator, copy back every few batches rather than
                # after each one, so the host does not wait on every batch.
                done = start + len(features)
                if (
                    device.type == "cpu"
                    or done == len(X)
                    or (done - flushed) * out.shape[1] * 4 >= _PENDING_BYTES
                ):
                    out[flushed:done] = torch.cat(pending).cpu().numpy()
                    pending, flushed = [], done
        return out

    def _device_batches(self, X, module):
        """Yield ``(start, module(batch))`` over batches of ``X``.

        Each batch of ``batch_size`` validated images (uint8 stays uint8
        until it is on the device) goes to ``module``, which preprocesses it
        and runs the backbone, under bfloat16 autocast on CUDA; what it
        returns comes back in float32. Callers run this under
        ``torch.inference_mode``.
        """
        from tqdm.auto import tqdm

        device = check_device(self.device)
        starts = range(0, X.shape[0], self.batch_size)
        progress = tqdm(
            starts,
            desc=f"{type(self).__name__}({self.backbone})",
            unit="batch",
            disable=not self.verbose,
        )
        for start in progress:
            batch = X[start : start + self.batch_size]
            if X.dtype != np.uint8 and X.dtype != np.float32:
                batch = batch.astype(np.float32)
            batch = as_tensor(batch).to(device, non_blocking=True)
            # autocast around the backbone only: it must not reach the
            # caller's code between two batches
            autocast = (
                torch.autocast("cuda", dtype=torch.bfloat16)
                if device.type == "cuda"
                else contextlib.nullcontext()
            )
            with autocast:
                features = runtime_module(self, module, batch)(batch)
            yield start, features.float()

    def _preprocessing(self):
        """The arguments of ``preprocess_images`` for this extractor."""
        return dict(
            size=self.image_size_,
            mean=self.mean_,
            std=self.std_,
            interpolation=self.interpolation_,
            in_chans=self.in_chans_,
        )

    def _batch_module(self, model):
        """``model`` (the backbone) with this extractor's preprocessing: what
        runs on each batch (subclasses return their own)."""
        keep = [self.all_levels_.index(name) for name in self.levels_]
        return PooledFeatures(
            model,
            **self._preprocessing(),
            has_head=self.has_head_,
            keep=None if keep == list(range(len(self.all_levels_))) else keep,
        )

    def _onnx_module(self):
        """Raw image batch -> features, on a CPU copy of the backbone (export)."""
        model = copy.deepcopy(self.backbone_).to(device="cpu", dtype=torch.float32)
        return self._batch_module(model.eval())

    def get_feature_names_out(self, input_features=None):
        """Output feature names: ``'<level>_ch<channel>'``.

        Parameters
        ----------
        input_features : None
            Ignored (inputs are pixels).

        Returns
        -------
        names : ndarray of str
        """
        check_is_fitted(self, "levels_")
        return np.asarray(
            [
                f"{name}_ch{c}"
                for name, width in zip(self.levels_, self.level_channels_, strict=True)
                for c in range(width)
            ],
            dtype=object,
        )

    def _make_persistent_module(self, name):
        """A randomly initialised backbone for ``skanomaly.load`` to fill.

        Built offline from the architecture's name alone (its weights come
        from the file; ``weights`` is not read); ``transform`` moves it to
        ``device``.
        """
        if name != "backbone_":
            raise ValueError(f"{type(self).__name__} has no module attribute {name!r}.")
        model = create_backbone(offline_architecture(self.backbone), None)
        return model.to(memory_format=torch.channels_last)

    def __sklearn_tags__(self):
        tags = super().__sklearn_tags__()
        tags.input_tags.two_d_array = False
        tags.input_tags.three_d_array = True
        tags.transformer_tags.preserves_dtype = ["float32"]
        return tags


def _check_images(estimator, X, *, reset):
    """Images as an (N, C, H, W) array, uint8 kept (scaled per batch later).

    Any height and width (the backbone resizes); the channels of ``fit``.
    """
    name = type(estimator).__name__
    X = validate_images(
        X,
        name=name,
        keep_uint8=True,
        float_range=(0.0, 1.0),
        channels={1, 3},
        estimator=estimator,
        reset=reset,
    )
    if reset:
        estimator.image_shape_ = tuple(int(s) for s in X.shape[1:])
        estimator.n_features_in_ = int(np.prod(X.shape[1:]))
    elif X.shape[1] != estimator.image_shape_[0]:
        raise ValueError(
            f"{name} was fitted on images with {estimator.image_shape_[0]} "
            f"channel(s) but got {X.shape[1]}."
        )
    return X


def _resolve_levels(levels, names):
    """Positions of the requested levels in ``names``."""
    if isinstance(levels, str) and levels == "all":
        return list(range(len(names)))
    if len(levels) == 0:
        raise ValueError("levels is empty; use levels='all' or name some levels.")
    keep = []
    for level in levels:
        if isinstance(level, Integral) and -len(names) <= level < len(names):
            keep.append(int(level) % len(names))
        elif isinstance(level, str) and level in names:
            keep.append(names.index(level))
        else:
            raise ValueError(
                f"Unknown level {level!r}; this backbone has levels {names} "
                f"(or positions 0..{len(names) - 1})."
            )
    if len(set(keep)) != len(keep):
        raise ValueError(f"levels lists a level twice: {list(levels)}.")
    return keep
