"""FastFlow detector (Yu, Zheng, Wang, Li, Wu, Zhao & Wu, arXiv 2021)."""

import copy
from numbers import Integral, Real

import numpy as np
import torch
from torch import nn

from .._compat import Interval
from .._validation import check_device
from ..features.patches import PatchFeatures
from ..nets import SelfSupervisedNet
from ..nn.flows import FastFlowModule, FlowNLL, LevelFlows, LevelLikelihoodMap
from .patch_base import BasePatchDetector
from .torch_base import BaseTorchDetector

__all__ = ["FastFlow"]

# Backbone batches when batch_size='auto' (the flow's own batches are planned).
_AUTO_FEATURE_BATCH = 32
# The PatchFeatures parameters FastFlow passes on unchanged (its batch_size
# is the training batch size, which may be 'auto').
_FEATURE_PARAMETERS = (
    "backbone",
    "weights",
    "levels",
    "strides",
    "image_size",
    "tile_size",
    "tile_overlap",
    "pool_size",
    "n_channels",
    "channel_reduction",
    "device",
    "runtime",
    "random_state",
    "verbose",
)


class FastFlow(BasePatchDetector):
    """FastFlow: a 2-D normalizing flow on the patch features of a frozen backbone.

    A frozen pretrained backbone turns each image into a grid of patch
    vectors (:class:`PatchFeatures`: the levels of ``strides``, upsampled to
    the finest one's grid and concatenated). For each level, as in the
    paper, a 2-D normalizing flow
    (:class:`~skanomaly.nn.flows.FastFlowModule`) is trained, by maximum
    likelihood, to map the training images' grids of that level's channels
    to standard normal noise: ``n_steps`` steps of ActNorm, a fixed channel
    permutation and an affine coupling whose subnet is a convolution stack
    over the grid (3 x 3 and 1 x 1 kernels in turn, as FastFlow does for
    ResNet backbones), with soft-clamped log-scales. Every step is exactly
    invertible and its log-determinant splits into one term per position, so
    a flow gives the log-likelihood of each patch in its context.

    The anomaly map is, per position, minus the levels' mean likelihood
    ``exp(-nll)``, with ``nll`` a level's negative log-likelihood in nats
    per channel (:class:`~skanomaly.nn.flows.LevelLikelihoodMap`; with
    ``separate_levels=False``, one flow over all channels and its ``nll``
    itself), upsampled to the image the backbone saw, smoothed by a
    Gaussian of ``sigma`` pixels and resized to the input images; the
    image's anomaly score is the smoothed map's maximum, as for
    :class:`PaDiM` and :class:`PatchCore`. ``score_samples`` returns its
    negative. Unlike anomalib's, the log-likelihood includes the couplings'
    log-determinants: leaving them out lowered DeepPCB's pixel AUROC in
    every layout measured (``benchmarks/RESULTS_flows.md``).

    The backbone's features of the training images are computed once per
    fit and kept in memory (float32: ``n_images x channels x grid``, e.g.
    152 x 28 x 28 x 4 bytes = 477 kB an image at 224 px); ``fit`` refuses,
    before training, training sets whose features exceed
    ``max_memory_bytes``. The flow trains through skorch
    (:class:`~skanomaly.nets.SelfSupervisedNet`) with the training budget of
    the other trained detectors (``min_steps``, ``max_epochs='auto'``,
    early stopping), Adam at ``lr``; the features are standardised per
    channel with their training mean and standard deviation first.

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
        EfficientNets (40 + 112 = 152 channels for
        ``tf_efficientnet_lite0``, a 28 x 28 grid at 224 px). Stride 4 too
        (FastFlow's ResNet setting) quadruples the grid, and the flow's cost
        with it.
    image_size : int, (int, int) or None, default=None
        Resolution the backbone sees; None: its evaluation resolution (224
        for ``tf_efficientnet_lite0``).
    n_channels : int or None, default=None
        Reduce the patch vectors to this many channels before the flow
        (see ``channel_reduction``); None: all of them. A reduction mixes
        the levels, so it needs ``separate_levels=False``.
    channel_reduction : {'orthogonal', 'random'}, default='orthogonal'
        As in :class:`PatchFeatures`.
    tile_size : int or None, default=None
        Cut images at full resolution into square tiles of this many pixels
        (see :class:`PatchFeatures`): every tile of every training image is
        a training grid for the flow, the map is the tiles' maps stitched
        (averaged where they overlap), the image score the largest of its
        tiles'. The ONNX export cuts and stitches the same tiles. None: no
        tiles (the image resized to ``image_size``).
    tile_overlap : int, default=0
        Pixels shared by neighbouring tiles, less than ``tile_size``.
    pool_size : int, default=1
        Local averaging of the feature maps (1: none, as FastFlow; the 3 x 3
        couplings see the neighbours).
    separate_levels : bool, default=True
        One flow per level, on that level's channels, their likelihoods
        averaged in the map (FastFlow's and anomalib's design); False: one
        flow over the concatenated levels (the layout of skanomaly 0.x
        files saved before this parameter, which load as such). Measured in
        ``benchmarks/RESULTS_flows.md``: separate flows train faster (the
        subnets' cost grows with the square of their channels) and rank and
        localise better on MNIST mosaics and DeepPCB; on 8 px digits
        upsampled to 64 px they ranked 0.007 lower (RESULTS_calibration).
    n_steps : int, default=8
        Flow steps per flow (FastFlow: 8 for ResNet18 and WideResNet-50).
    hidden_ratio : float, default=1.0
        Hidden channels of each coupling's subnet, as a multiple of the
        patch vector's channels (FastFlow: 1.0 for ResNet18, 0.16 for
        transformers).
    clamp : float, default=2.0
        Soft bound on each coupling's log-scales (FastFlow and CFlow-AD:
        2.0), see :func:`~skanomaly.nn.flows.soft_clamp`.
    conv3x3_only : bool, default=False
        All subnets with 3 x 3 kernels instead of alternating with 1 x 1.
    lr : float, default=1e-3
        Adam learning rate (FastFlow's).
    weight_decay : float, default=1e-5
        Adam weight decay (FastFlow's).
    batch_size : int or 'auto', default='auto'
        Feature maps per optimizer step; 'auto' is ``n_images // 8``
        clipped to [8, 32]. The backbone runs in batches of this size (32
        with 'auto').
    max_epochs : int or 'auto', default='auto'
        Training epochs. 'auto' is 10, raised on small training sets until
        training takes ``min_steps`` optimizer steps; an int is used as it
        is.
    min_steps : int, default=300
        Optimizer steps that ``max_epochs='auto'`` trains for at least.
    early_stopping : bool, default=False
        Hold out ``validation_fraction`` of the training images and stop
        when their negative log-likelihood has not improved for
        ``n_iter_no_change`` epochs, keeping the best epoch's weights.
    validation_fraction : float, default=0.1
    n_iter_no_change : int, default=10
    sigma : float, default=4.0
        Smoothing of the map, in pixels of the image the backbone sees.
    max_memory_bytes : int, default=4 GiB
        Upper bound on the training features kept in memory (see above).
    device : str or torch.device, default='cpu'
        Where the backbone and the flow run, e.g. 'cuda'.
    runtime : {'torch', 'onnxruntime'}, default='torch'
        What executes the backbone on the CPU (see
        :class:`~skanomaly.features.patches.PatchFeatures`).
    random_state : int, RandomState instance or None, default=None
        Seeds the channel reduction, the flow's initialisation and
        permutations, and the shuffling; an int makes scores reproducible.
    verbose : int, default=0
        If > 0, print skorch's epoch log and progress bars.
    callbacks : list of skorch callbacks or None, default=None
        Extra skorch callbacks.
    contamination, calibration, calibration_size, calibration_confidence
        See :class:`~skanomaly.detectors.base.BaseDetector` (
        calibration='auto' holds out 20% of the training images: a trained
        flow has no leave-one-out scores without retraining).

    Attributes
    ----------
    feature_extractor_ : PatchFeatures
        The fitted feature stage (holds the backbone).
    net_ : skorch.NeuralNet
        The trained flow (``net_.module_``); ``net_.history`` holds the
        losses (negative log-likelihood per channel and position).
    feature_center_, feature_scale_ : ndarray of shape (n_channels,), float32
        The standardisation of the patch features (also buffers of the
        flow).
    flow_level_channels_ : tuple of int or None
        Channels of each level's flow; None: one flow over all channels
        (``separate_levels=False``).
    batch_size_, n_epochs_ : int
        The training batch size and epochs used.
    offset_ : float
        Threshold on ``score_samples``.
    n_features_in_ : int
        Channels x height x width of the training images.
    image_shape_ : tuple of int
        ``(channels, height, width)`` of the training images.

    See Also
    --------
    PaDiM : A Gaussian per grid position (nothing trained).
    PatchCore : Nearest neighbours in a memory bank of patches.

    References
    ----------
    J. Yu, Y. Zheng, X. Wang, W. Li, Y. Wu, R. Zhao and L. Wu, "FastFlow:
    Unsupervised Anomaly Detection and Localization via 2D Normalizing
    Flows", arXiv:2111.07677, 2021.

    Examples
    --------
    Random weights, only to show the API (use the pretrained default):

    >>> import numpy as np
    >>> from skanomaly import FastFlow
    >>> rng = np.random.default_rng(0)
    >>> good = rng.integers(100, 156, size=(20, 3, 32, 32), dtype=np.uint8)
    >>> det = FastFlow(backbone="resnet18", weights=None, image_size=64,
    ...                strides=(4, 8), n_steps=2, min_steps=40,
    ...                random_state=0).fit(good)
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
            if key in _FEATURE_PARAMETERS
        },
        **{
            key: BaseTorchDetector._parameter_constraints[key]
            for key in (
                "lr",
                "batch_size",
                "max_epochs",
                "min_steps",
                "early_stopping",
                "validation_fraction",
                "n_iter_no_change",
                "callbacks",
            )
        },
        "n_steps": [Interval(Integral, 1, None, closed="left")],
        "hidden_ratio": [Interval(Real, 0, None, closed="neither")],
        "clamp": [Interval(Real, 0, None, closed="neither")],
        "conv3x3_only": ["boolean"],
        "separate_levels": ["boolean"],
        "weight_decay": [Interval(Real, 0, None, closed="left")],
        "sigma": [Interval(Real, 0, None, closed="left")],
        "max_memory_bytes": [Interval(Integral, 1, None, closed="left")],
    }

    # max_epochs='auto' on large training sets; min_steps raises it on small
    _default_epochs = 10
    # largest batch of batch_size='auto' (a batch holds 32 grids of features)
    _auto_max_batch = 32

    # the training budget of the trained detectors, shared rather than copied
    _net_kwargs = BaseTorchDetector._net_kwargs
    _validation_split = BaseTorchDetector._validation_split
    _warn_if_too_few_steps = BaseTorchDetector._warn_if_too_few_steps
    _train = BaseTorchDetector._train

    def __init__(
        self,
        backbone="tf_efficientnet_lite0",
        *,
        weights="imagenet",
        levels=None,
        strides=(8, 16),
        image_size=None,
        tile_size=None,
        tile_overlap=0,
        n_channels=None,
        channel_reduction="orthogonal",
        pool_size=1,
        separate_levels=True,
        n_steps=8,
        hidden_ratio=1.0,
        clamp=2.0,
        conv3x3_only=False,
        lr=1e-3,
        weight_decay=1e-5,
        batch_size="auto",
        max_epochs="auto",
        min_steps=300,
        early_stopping=False,
        validation_fraction=0.1,
        n_iter_no_change=10,
        sigma=4.0,
        max_memory_bytes=4 * 2**30,
        device="cpu",
        runtime="torch",
        random_state=None,
        verbose=0,
        callbacks=None,
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
        self.tile_size = tile_size
        self.tile_overlap = tile_overlap
        self.n_channels = n_channels
        self.channel_reduction = channel_reduction
        self.pool_size = pool_size
        self.separate_levels = separate_levels
        self.n_steps = n_steps
        self.hidden_ratio = hidden_ratio
        self.clamp = clamp
        self.conv3x3_only = conv3x3_only
        self.lr = lr
        self.weight_decay = weight_decay
        self.batch_size = batch_size
        self.max_epochs = max_epochs
        self.min_steps = min_steps
        self.early_stopping = early_stopping
        self.validation_fraction = validation_fraction
        self.n_iter_no_change = n_iter_no_change
        self.sigma = sigma
        self.max_memory_bytes = max_memory_bytes
        self.device = device
        self.runtime = runtime
        self.random_state = random_state
        self.verbose = verbose
        self.callbacks = callbacks

    def __skanomaly_tags__(self):
        tags = super().__skanomaly_tags__()
        # a trained flow cannot drop one image without retraining: the
        # threshold comes from held-out images ('split')
        tags.leave_one_out = False
        tags.onnx_export = True
        tags.test_params = {
            "backbone": "test_efficientnet",
            "weights": None,
            "image_size": 32,
            "strides": (4, 8),
            "n_steps": 2,
            "hidden_ratio": 0.5,
            "max_epochs": 2,
            "random_state": 0,
        }
        return tags

    def _make_features(self):
        # the backbone's batches: the training batch size, or a fixed one
        batch = _AUTO_FEATURE_BATCH if self.batch_size == "auto" else self.batch_size
        return PatchFeatures(
            batch_size=batch,
            **{name: getattr(self, name) for name in _FEATURE_PARAMETERS},
        )

    def _make_net(self, input_shape=None):
        # input_shape (the images') is what persistence passes; the flow's
        # size comes from the fitted feature stage. Files saved before
        # separate_levels have no flow_level_channels_: one flow, as then.
        level_channels = getattr(self, "flow_level_channels_", None)
        if level_channels is None:
            module = {
                "module": FastFlowModule,
                "module__channels": self.feature_extractor_.n_channels_,
            }
        else:
            module = {
                "module": LevelFlows,
                "module__level_channels": list(level_channels),
            }
        return SelfSupervisedNet(
            **module,
            module__n_steps=self.n_steps,
            module__hidden_ratio=self.hidden_ratio,
            module__clamp=self.clamp,
            module__conv3x3_only=self.conv3x3_only,
            criterion=FlowNLL,
            optimizer=torch.optim.Adam,
            optimizer__weight_decay=self.weight_decay,
            **self._net_kwargs(),
        )

    def _training_features(self, X):
        """The patch features of every training image (tile), float32 in memory."""
        features = self.feature_extractor_
        rows = len(X) * features.n_tiles_
        shape = (rows, features.n_channels_, *features.grid_shape_)
        needed = int(np.prod(shape)) * 4
        if needed > self.max_memory_bytes:
            raise ValueError(
                f"FastFlow keeps the training images' patch features in memory: "
                f"{needed / 2**20:,.0f} MiB for {rows} images (tiles) of "
                f"{shape[1]} x {shape[2]} x {shape[3]} float32, more than "
                f"max_memory_bytes={self.max_memory_bytes:,}. Lower n_channels "
                "or image_size, fit on fewer images, or raise max_memory_bytes."
            )
        flow_channels = self.flow_level_channels_ or (features.n_channels_,)
        if min(flow_channels) < 2:
            raise ValueError(
                "FastFlow's couplings split the channels in two: each flow needs "
                f"at least 2 channels; got {list(flow_channels)} (n_channels="
                f"{self.n_channels}, levels {list(features.levels_)})."
            )
        out = np.empty(shape, np.float32)
        with torch.inference_mode():
            for start, batch in features.patch_batches(X):
                out[start : start + len(batch)] = batch.cpu().numpy()
        return out

    def _fit(self, X):
        check_device(self.device)  # before building anything
        if self.separate_levels and self.n_channels is not None:
            raise ValueError(
                "FastFlow with separate_levels=True trains one flow on each "
                "level's own channels, which a channel reduction mixes: set "
                f"n_channels=None (got {self.n_channels}) or separate_levels=False."
            )
        self.feature_extractor_ = self._make_features().fit(X)
        self.flow_level_channels_ = (
            tuple(self.feature_extractor_.level_channels_)
            if self.separate_levels
            else None
        )
        train = self._training_features(X)
        center = train.mean(axis=(0, 2, 3), dtype=np.float64)
        scale = train.std(axis=(0, 2, 3), dtype=np.float64)
        # constant channels (dead ReLUs) stay as they are
        scale = np.where(scale > 1e-6, scale, 1.0)
        self.feature_center_ = center.astype(np.float32)
        self.feature_scale_ = scale.astype(np.float32)
        self._train(
            self._make_net,
            train,
            prepare=lambda net: net.module_.set_standardisation(
                self.feature_center_, self.feature_scale_
            ),
        )
        return None  # the base scores the held-out images

    def _fit_patches(self, patch_batches, n_images):
        raise NotImplementedError("FastFlow trains in _fit, on its own features.")

    def _scorer(self):
        """Feature grids -> anomaly grids (batch, height, width)."""
        if getattr(self, "flow_level_channels_", None) is None:
            return self.net_.module_
        return nn.Sequential(self.net_.module_, LevelLikelihoodMap())

    def _device_state(self, device):
        return self._scorer().to(device).eval()

    def _patch_scores(self, features, flow):
        grid = flow(features)
        return grid, self._smoothed(grid).amax(dim=(1, 2))

    def _leave_one_out_state(self, device, fitted):
        raise NotImplementedError(
            "FastFlow has no leave-one-out scores (its leave_one_out tag is False)."
        )

    def _leave_one_out_scores(self, features, state, images):
        raise NotImplementedError(
            "FastFlow has no leave-one-out scores (its leave_one_out tag is False)."
        )

    def _onnx_scorer(self):
        return copy.deepcopy(self._scorer()).to("cpu").eval()
