"""Diffusion Time Estimation detector (Livernoche, Jain, Hezaveh, Ravanbakhsh 2024)."""

import warnings
import weakref
from numbers import Integral, Real

import numpy as np
import torch
from scipy.spatial import cKDTree
from sklearn.utils.validation import check_is_fitted

from .._compat import Interval, ListOf, StrOptions
from .._validation import check_device
from ..conformal import MAX_CALIBRATION_SCORES
from ..nets import SelfSupervisedNet, input_tensor
from ..nn.dte import (
    DiffusionTimeLoss,
    DTEModule,
    NearestNeighbourTime,
    neighbour_counts,
    tree_neighbours,
)
from ..nn.dte import diffusion_variances as _variances
from .base import CalibrationWarning
from .torch_base import BaseTorchDetector

__all__ = ["DTE"]

# DTE-NP scores rows in blocks whose k nearest training rows, gathered in
# float64, hold at most this many values (32 MiB); the search inside works in
# tiles of its own (skanomaly.nn.patchcore.nearest_neighbours, 8 MB), and the
# blocks' scores go straight into one preallocated array (a list of small
# arrays between the blocks' large temporaries kept the heap from shrinking:
# +2 GB scoring a million rows), so memory does not grow with the number of
# rows scored or of training rows.
_NP_BLOCK_VALUES = 2**22

# algorithm='auto' searches a k-d tree up to this many columns. Measured
# (single thread, 20,000 training rows, k = 10, benchmarks/RESULTS_tabular.md):
# the tree took 0.05-0.18 s per 10,000 rows on ADBench's 3- to 10-column
# sets against 0.4-0.6 s for the tiled search, tied with it on isotropic
# Gaussian rows of 10 columns (the tree's worst case), and was 1.7 times
# slower there at 12 columns, 2-5 times on real sets of 27-62.
_KD_TREE_MAX_FEATURES = 10
# rows per leaf of the tree: 32 measured within 10% of the best of 8-128
# at 3 and 10 columns
_KD_TREE_LEAF_SIZE = 32
# each fitted detector's tree, rebuilt from train_rows_ when missing (after
# a load, an unpickling or a refit): a cache off the instance, so that
# neither skanomaly.save nor pickle stores it
_TREES = weakref.WeakKeyDictionary()


class _NeighbourCounts(ListOf):
    """Parameter constraint: a tuple (or list) of distinct positive ints.

    scikit-learn's validation takes only its own constraint classes, so this
    is a :class:`~skanomaly._compat.ListOf` (one of them) with its own test:
    :func:`~skanomaly.nn.dte.neighbour_counts`. A loaded file's parameters
    pass the same test.
    """

    def __init__(self):
        super().__init__(None, "a non-empty tuple of distinct positive ints")

    def is_satisfied_by(self, val):
        if not isinstance(val, (tuple, list)):
            return False
        try:
            neighbour_counts(val)
        except ValueError:
            return False
        return True


class DTE(BaseTorchDetector):
    """Diffusion time estimation: how long a row looks to have been noised.

    The forward diffusion process adds Gaussian noise of a growing variance
    ``sigma2[t]`` to the (standardised) training rows, step ``t`` drawn
    uniformly from ``0..n_steps - 1``; a network learns to tell the step
    from the noisy row. A clean inlier looks barely noised; an anomaly
    looks like an inlier noised for longer. The anomaly score is the
    estimated step, so ``score_samples`` returns its negative.

    Images are flattened to rows (pixels as columns); for real images put a
    feature stage (:class:`~skanomaly.TimmFeatures`) before it.

    Parameters
    ----------
    variant : {'nonparametric', 'categorical', 'inverse_gamma'}, \
default='nonparametric'
        - 'nonparametric' (DTE-NP, the default): no network; with ``m``
          the mean squared distance of a row to its ``n_neighbors`` nearest
          training rows, the inverse gamma of shape ``d / 2 - 1`` and scale
          ``m / 2`` has its mode at ``m / d``; the estimate is the step of
          that variance (the schedule inverted as for 'inverse_gamma'). The
          authors take the step of the largest density on the schedule's
          steps instead, which ties every row beyond the last step and
          ranked worse on ADBench. With several ``k`` (the default), the
          variance is the geometric mean of the modes ``m_k / d`` over them
          (see ``n_neighbors``). It keeps the scaled training rows
          (``train_rows_``); with ``calibration='auto'`` it calibrates on
          leave-one-out scores (each training row scored without itself as
          a neighbour), so every row is a neighbour and none is held out.
          Scoring searches the training rows exactly, once for the largest
          ``k``, in tiles (float32, the ``k`` rows found then measured in
          float64), or on few columns through a k-d tree (``algorithm``):
          memory bounded whatever the number of rows scored.
        - 'categorical' (DTE-C, the authors' best): the network classifies
          the step into ``n_bins`` equal bins (cross-entropy); the estimate
          is the expected bin centre under its softmax, in steps.
        - 'inverse_gamma' (DTE-IG): the network predicts the scale ``b`` of
          an inverse-gamma posterior of ``sigma2`` with shape ``d / 2 - 1``;
          the estimate is the step of its mode ``2 b / d`` (the schedule
          inverted piecewise linearly). Needs ``d >= 3`` features.

        On the ADBench Classical tables 'nonparametric' ranked best of the
        three, on the tuning and the held-out sets, and 'inverse_gamma'
        worst; 'categorical' matched the authors' code (the numbers:
        ``benchmarks/RESULTS_tabular.md``). 'nonparametric' reads the
        schedule and ``n_neighbors``, and ``random_state`` only for the
        split of ``calibration='split'``; the network's parameters
        (``hidden_sizes`` to ``min_steps``, early stopping) are for
        'categorical' and 'inverse_gamma'.
    hidden_sizes : tuple of int, default=(256, 512, 256)
        Hidden widths of the MLP (the authors').
    dropout : float, default=0.5
        Dropout after every hidden layer while training (the authors').
    n_steps : int, default=400
        Diffusion steps ``T`` (the authors' 400 for the networks).
    beta_start, beta_end : float, default=1e-4, 0.01
        The linear noise schedule: ``betas = linspace(beta_start, beta_end,
        n_steps)``, ``sigma2[t] = 1 - prod_{s <= t} (1 - betas[s])`` (the
        authors'; 0.87 at the last of 400 steps, in standardised units).
    n_bins : int, default=7
        Bins of steps for 'categorical' (the authors' 7).
    n_neighbors : int or tuple of int, default=(2, 3, 5, 10)
        ``k`` of 'nonparametric'. An int is DTE-NP as the paper defines it
        (``n_neighbors=5`` is the authors' DTE-NP, this detector's default
        before issue 25): the step of ``m_k / d``. A tuple (or list) of
        distinct positive ints: the step of the geometric mean of
        ``m_k / d`` over its ``k`` (the mean of their logarithms), which
        leans to the near neighbours. Each ``k`` is capped at the number of
        training rows less one (``n_neighbors_``, repeats dropped), so that
        the default fits small sets too.

        The default was measured on ADBench (``benchmarks/RESULTS_tabular.md``,
        three seeds, novelty split) against ``n_neighbors=5``: mean AUROC
        +0.002, +0.003 and +0.002 on the tuning halves of three groups
        (Classical 0.942 against 0.940, MVTec-AD embeddings 0.760 against
        0.757, 11 more Classical sets 0.841 against 0.839) and +0.001,
        +0.003 and +0.003 on their held-out halves (0.932 against 0.931,
        0.788 against 0.785, 0.826 against 0.823; no held-out set lower by
        more than 0.0004), +0.003, +0.010 and +0.011 over PyOD's ``KNN()``
        there. ``(1, 2, 3, 5, 10)`` ranked higher still on two groups
        (held out 0.791 and 0.830), but with ``k = 1`` a row equal to a
        training row is at step 0, so scored in-sample (``fit(X)`` then
        ``predict(X)``, or ``calibration='training'``, which then warns)
        every training row is: it suits new rows only.
    algorithm : {'auto', 'brute', 'kd_tree'}, default='auto'
        How 'nonparametric' finds each row's nearest training rows; read
        when scoring. The scores are the same, only the time differs, up to
        the tiled search's float32 rounding (where it swaps two nearly
        equidistant rows at the ``k``-th place: below 1e-4 steps in the
        tests; the tree is exact in float64).

        - 'brute': the tiled search over every training row (time
          proportional to rows scored x training rows).
        - 'kd_tree': a k-d tree (:class:`scipy.spatial.cKDTree`, as many
          threads as torch uses) built on the scaled training rows, exact
          in float64; far faster on few columns, slower on many.
        - 'auto': 'kd_tree' up to 10 columns, else 'brute' (measured:
          ``benchmarks/RESULTS_tabular.md``; scikit-learn's
          ``NearestNeighbors`` switches at 15).

        The tree is not stored: it is built on the first scoring (or the
        leave-one-out calibration) from ``train_rows_``. The ONNX graph
        of scoring always searches by brute force.
    lr : float, default=1e-4
        Adam learning rate (the authors').
    weight_decay : float, default=5e-4
        Adam weight decay (the authors').
    batch_size : int or 'auto', default='auto'
        'auto': ``n_samples // 8`` clipped to [8, 256].
    max_epochs : int or 'auto', default='auto'
        'auto': 10 epochs, raised on small training sets until training
        takes ``min_steps`` optimizer steps.
    min_steps : int, default=2000
        Optimizer steps ``max_epochs='auto'`` trains for at least.
    early_stopping, validation_fraction, n_iter_no_change, device, \
random_state, verbose, callbacks, contamination, calibration, \
calibration_size, calibration_confidence
        As in :class:`~skanomaly.AutoEncoder`. The validation loss of early
        stopping draws its own steps and noise, so it is noisy.

    Attributes
    ----------
    net_ : skorch.NeuralNet
        The trained net (not for 'nonparametric').
    train_rows_ : ndarray of shape (n_train, n_features)
        The scaled training rows ('nonparametric' only).
    n_neighbors_ : int or tuple of int
        ``min(n_neighbors, n_train - 1)``, or the tuple of each ``k`` so
        capped, sorted, repeats dropped ('nonparametric' only), so that a
        training row scored without itself has as many neighbours as a new
        row.
    offset_, n_features_in_, image_shape_, input_center_, input_scale_
        As in :class:`~skanomaly.AutoEncoder`.

    References
    ----------
    V. Livernoche, V. Jain, Y. Hezaveh and S. Ravanbakhsh, "On Diffusion
    Modeling for Anomaly Detection", ICLR 2024.

    Examples
    --------
    >>> import numpy as np
    >>> from skanomaly import DTE
    >>> rng = np.random.default_rng(0)
    >>> X = rng.normal(size=(300, 4))
    >>> det = DTE().fit(X)
    >>> det.calibration_, det.predict([[0.0, 0.0, 0.0, 0.0], [6.0, 6.0, 6.0, 6.0]])
    ('leave-one-out', array([ 1, -1]))
    >>> net = DTE(variant="categorical", hidden_sizes=(32, 32), min_steps=300,
    ...           random_state=0).fit(X)
    >>> scores = net.score_samples([[0.0, 0.0, 0.0, 0.0], [5.0, -5.0, 5.0, 5.0]])
    >>> bool(scores[0] > scores[1])
    True
    """

    # the schedule: DTE-NP reads it when scoring, the network variants do not
    # (see _scoring_setting)
    _scoring_parameters = ("variant", "n_steps", "beta_start", "beta_end")
    _parameter_constraints: dict = {
        **BaseTorchDetector._parameter_constraints,
        "variant": [StrOptions({"nonparametric", "categorical", "inverse_gamma"})],
        "hidden_sizes": [tuple, list],
        "dropout": [Interval(Real, 0, 1, closed="left")],
        "n_steps": [Interval(Integral, 2, None, closed="left")],
        "beta_start": [Interval(Real, 0, 1, closed="neither")],
        "beta_end": [Interval(Real, 0, 1, closed="neither")],
        "n_bins": [Interval(Integral, 2, None, closed="left")],
        "n_neighbors": [Interval(Integral, 1, None, closed="left"), _NeighbourCounts()],
        "algorithm": [StrOptions({"auto", "brute", "kd_tree"})],
        "weight_decay": [Interval(Real, 0, None, closed="left")],
    }

    _default_epochs = 10
    _auto_max_batch = 256

    def __init__(
        self,
        *,
        variant="nonparametric",
        hidden_sizes=(256, 512, 256),
        dropout=0.5,
        n_steps=400,
        beta_start=1e-4,
        beta_end=0.01,
        n_bins=7,
        n_neighbors=(2, 3, 5, 10),
        algorithm="auto",
        lr=1e-4,
        weight_decay=5e-4,
        batch_size="auto",
        max_epochs="auto",
        min_steps=2000,
        early_stopping=False,
        validation_fraction=0.1,
        n_iter_no_change=10,
        device="cpu",
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
        self.variant = variant
        self.hidden_sizes = hidden_sizes
        self.dropout = dropout
        self.n_steps = n_steps
        self.beta_start = beta_start
        self.beta_end = beta_end
        self.n_bins = n_bins
        self.n_neighbors = n_neighbors
        self.algorithm = algorithm
        self.lr = lr
        self.weight_decay = weight_decay
        self.batch_size = batch_size
        self.max_epochs = max_epochs
        self.min_steps = min_steps
        self.early_stopping = early_stopping
        self.validation_fraction = validation_fraction
        self.n_iter_no_change = n_iter_no_change
        self.device = device
        self.random_state = random_state
        self.verbose = verbose
        self.callbacks = callbacks

    def __skanomaly_tags__(self):
        tags = super().__skanomaly_tags__()
        tags.test_params = {"max_epochs": 2, "hidden_sizes": (8,)}
        if self.variant == "nonparametric":
            # a training row scored without itself: exact, no refit
            tags.leave_one_out = True
            # each calibration score is a search over every training row
            tags.max_offset_samples = MAX_CALIBRATION_SCORES
        # rows of pixels: a 32 px image is already 1,024 columns
        tags.input_size = (32, 32)
        return tags

    def _schedule(self):
        return dict(
            n_steps=self.n_steps, beta_start=self.beta_start, beta_end=self.beta_end
        )

    def _make_net(self, input_shape):
        return SelfSupervisedNet(
            DTEModule,
            module__input_shape=tuple(input_shape),
            module__hidden_sizes=tuple(self.hidden_sizes),
            module__variant=self.variant,
            module__n_bins=self.n_bins,
            module__dropout=self.dropout,
            **{f"module__{k}": v for k, v in self._schedule().items()},
            criterion=DiffusionTimeLoss,
            criterion__variant=self.variant,
            criterion__n_bins=self.n_bins,
            criterion__n_features=int(np.prod(input_shape)),
            **{f"criterion__{k}": v for k, v in self._schedule().items()},
            optimizer=torch.optim.Adam,
            optimizer__weight_decay=self.weight_decay,
            **self._net_kwargs(),
        )

    def _fit(self, X, leave_one_out=False):
        _TREES.pop(self, None)  # the previous fit's rows and tree
        if self.beta_start > self.beta_end:
            raise ValueError(
                f"beta_start={self.beta_start} is above beta_end={self.beta_end}: "
                "the noise variance must grow with the step."
            )
        n_features = int(np.prod(X.shape[1:]))
        if self.variant == "inverse_gamma" and n_features < 3:
            raise ValueError(
                "variant='inverse_gamma' needs at least 3 features (its inverse "
                f"gamma has shape d / 2 - 1); got {n_features}. Use "
                "variant='categorical'."
            )
        if self.variant != "nonparametric":
            # drop what a nonparametric fit of this instance left behind
            for name in ("train_rows_", "n_neighbors_"):
                self.__dict__.pop(name, None)
            return super()._fit(X)
        self.__dict__.pop("net_", None)
        check_device(self.device)
        self._fit_scaling(X)
        self.train_rows_ = self._scale_batch(input_tensor(X), torch.float64).numpy()
        self.train_rows_ = self.train_rows_.reshape(len(X), -1)
        # a training row scored without itself has len(X) - 1 others
        available = len(X) - 1
        counts = sorted({min(k, available) for k in neighbour_counts(self.n_neighbors)})
        single = isinstance(self.n_neighbors, Integral)
        self.n_neighbors_ = counts[0] if single else tuple(counts)
        if self._calibration_scheme() == "training" and counts[0] == 1:
            warnings.warn(
                f"calibration='training' with n_neighbors={self.n_neighbors!r}: "
                "scored in-sample, every training row is its own nearest "
                "neighbour (k = 1), so every calibration score is step 0 and "
                "the threshold flags every new row not identical to a training "
                "row. Use calibration='auto' (leave-one-out).",
                CalibrationWarning,
                stacklevel=3,
            )
        if leave_one_out:
            subset = self._calibration_subset(len(X))
            return self._neighbour_scores(self.train_rows_[subset], exclude=subset)
        return None

    def _score_batch(self, net, X_batch):
        return net.module_.estimated_time(X_batch)

    def _scoring_setting(self):
        if self.variant != "nonparametric":  # the network holds its schedule
            return {"variant": self.variant}
        return super()._scoring_setting()

    def _neighbour_module(self):
        variances = _variances(**self._schedule())
        return NearestNeighbourTime(
            torch.from_numpy(self.train_rows_), variances, self.n_neighbors_
        )

    def _score_samples(self, X):
        if not hasattr(self, "train_rows_"):
            return super()._score_samples(X)
        return self._neighbour_scores(X)

    def _search_algorithm(self):
        """'kd_tree' or 'brute': the search ``algorithm`` resolves to for
        the fitted training rows ('auto' by their number of columns)."""
        if self.algorithm in ("brute", "kd_tree"):
            return self.algorithm
        if self.algorithm != "auto":  # set after fit: read here, so checked here
            raise ValueError(
                "algorithm must be 'auto', 'brute' or 'kd_tree'; got "
                f"{self.algorithm!r}."
            )
        n_features = self.train_rows_.shape[1]
        return "kd_tree" if n_features <= _KD_TREE_MAX_FEATURES else "brute"

    def _tree(self):
        """The k-d tree of ``train_rows_``, built once per fitted rows."""
        rows = self.train_rows_
        cached = _TREES.get(self)
        if cached is None or cached[0] is not rows:
            tree = cKDTree(rows, leafsize=_KD_TREE_LEAF_SIZE)
            cached = _TREES[self] = (rows, tree)
        return cached[1]

    def _neighbour_scores(self, X, exclude=None):
        """DTE-NP's scores of raw rows ``X``, or of scaled training rows
        ``train_rows_[exclude]`` each without itself (leave-one-out)."""
        module = self._neighbour_module()
        n_values = module.n_neighbors * self.train_rows_.shape[1]
        block = max(1, _NP_BLOCK_VALUES // n_values)
        tree = self._tree() if self._search_algorithm() == "kd_tree" else None
        times = np.empty(len(X))
        with torch.inference_mode():
            for start in range(0, len(X), block):
                if exclude is None:
                    rows = input_tensor(X[start : start + block])
                    rows, left_out = self._scale_batch(rows, torch.float64), None
                else:
                    rows = torch.from_numpy(X[start : start + block])
                    left_out = exclude[start : start + block]
                if tree is None:
                    if left_out is not None:
                        left_out = torch.from_numpy(left_out)
                    time = module.searched_time(rows, left_out)
                else:
                    rows = rows.flatten(1)
                    index = tree_neighbours(
                        tree,
                        rows.numpy(),
                        module.n_neighbors,
                        exclude=left_out,
                        workers=torch.get_num_threads(),
                    )
                    time = module.time_of_neighbours(rows, torch.from_numpy(index))
                times[start : start + len(rows)] = time.numpy()
        return -times

    def _onnx_module(self):
        """Raw batch -> estimated step, for :func:`skanomaly.export_onnx`."""
        check_is_fitted(self, "offset_")
        if not hasattr(self, "train_rows_"):
            return super()._onnx_module()
        return _NeighbourScoring(self)


class _NeighbourScoring(torch.nn.Module):
    """DTE-NP's scoring of raw rows (scaling, then the step) as one module.

    The graph holds every training row; its distance matrix is batch x
    n_train, so feed it batches sized for that.
    """

    def __init__(self, detector):
        super().__init__()
        self.detector = detector
        self.time = detector._neighbour_module()

    def forward(self, x):
        return self.time(self.detector._scale_batch(x, torch.float64))
