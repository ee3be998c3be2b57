"""The detector contract every skanomaly detector, built-in or plugin, follows.

:class:`BaseDetector` holds the scikit-learn outlier-detector contract;
:class:`DetectorTags` is what a detector declares about itself (the input
kinds it takes, whether it has anomaly maps, small settings for tests...),
read by the benchmark, the conformance tests and the command line through
:func:`get_detector_tags`, never guessed from names or by trying.
"""

import dataclasses
import inspect
import warnings
from abc import ABCMeta, abstractmethod
from numbers import Integral, Real

import numpy as np
from sklearn.base import BaseEstimator, OutlierMixin, clone
from sklearn.model_selection import KFold
from sklearn.utils import check_random_state
from sklearn.utils._available_if import available_if
from sklearn.utils.validation import check_is_fitted

from .._compat import Interval, StrOptions, fit_context
from .._validation import select_inliers, validate_detector_input
from ..conformal import (
    MAX_CALIBRATION_SCORES,
    conformal_p_values,
    conformal_threshold,
)

__all__ = ["BaseDetector", "CalibrationWarning", "DetectorTags", "get_detector_tags"]

# 'auto' threshold: a robust three-sigma rule on the calibration scores,
# flagging at least their lowest 1%.
_AUTO_N_MADS = 3.0
_MAD_TO_STD = 1.4826
_AUTO_MIN_PERCENT = 1.0


def auto_threshold(scores):
    """The threshold of ``contamination='auto'`` from calibration scores.

    ``median - 3 * 1.4826 * MAD`` of the scores (a three-sigma rule that a
    few low scores cannot drag), raised where needed to their 1st
    percentile, so that at least 1 % of the calibration samples fall below.
    """
    scores = np.asarray(scores)
    median = np.median(scores)
    mad = np.median(np.abs(scores - median))
    robust_rule = median - _AUTO_N_MADS * _MAD_TO_STD * mad
    return float(max(robust_rule, np.percentile(scores, _AUTO_MIN_PERCENT)))


# Fewer calibration samples than this make one fit's false-alarm rate vary
# widely around the level (see CalibrationWarning).
_FEW_CALIBRATION_SAMPLES = 20
# The schemes ``calibration`` names (an int is K-fold cross-fitting).
_CALIBRATION_SCHEMES = {"auto", "split", "leave-one-out", "training"}


class CalibrationWarning(UserWarning):
    """A detector's threshold rests on too few calibration samples to be precise."""


@dataclasses.dataclass
class DetectorTags:
    """What a detector declares about itself.

    A detector returns its tags from ``__skanomaly_tags__()``: subclasses
    call ``super().__skanomaly_tags__()`` and change the fields that differ,
    as with scikit-learn's ``__sklearn_tags__``. The input kinds also set
    scikit-learn's input tags (``two_d_array``, ``three_d_array``).

    Parameters
    ----------
    tabular : bool, default=True
        Takes 2-D tabular arrays (n_samples, n_features).
    images : bool, default=True
        Takes images (n_samples, height, width) or (n_samples, channels,
        height, width).
    anomaly_maps : bool, default=False
        Has ``anomaly_map(X)``, a per-pixel map of shape (n_samples, height,
        width), for images.
    pretrained_weights : bool, default=False
        Works on pretrained network weights (see the user guide on weights),
        named by its ``backbone`` and ``weights`` parameters.
        ``skanomaly benchmark`` skips such a detector when
        :func:`skanomaly.weights.weights_available` says they would need a
        download, unless it is named.
    keeps_uint8 : bool, default=False
        ``_fit`` and ``_score_samples`` take uint8 images as they are and
        scale them batch by batch (no float copy of the whole input);
        otherwise uint8 images arrive as float32 in [0, 1].
    unit_range_images : bool, default=False
        Reads images as values in [0, 1] only (a pretrained backbone with
        its input normalisation): float images outside it are refused, and
        integer images are read as 8-bit intensities (value / 255), as
        ``uint8`` is.
    max_offset_samples : int or None, default=None
        Set ``offset_`` from the scores of at most this many calibration
        samples (a fixed random subset), for detectors whose scoring is
        costly.
    leave_one_out : bool, default=False
        Has exact out-of-sample scores of its training samples without a
        refit: ``_fit(X, leave_one_out=True)`` returns the score of each
        training sample of the calibration subset as the model fitted
        without that sample gives it (``calibration='leave-one-out'``).
    onnx_export : bool, default=False
        Can be exported to ONNX (:func:`skanomaly.export_onnx`): the
        detector's scoring is one forward pass, and ``_onnx_module()``
        returns the torch module that maps a batch of raw input (images as
        validation gives them, uint8 or float32/float64 in the value range
        of fit, or float64 rows) to the anomaly score, ``-score_samples``
        (and, with ``anomaly_maps``, to the anomaly map of images).
    test_params : dict
        Constructor parameters that make the detector fit in well under a
        second on tiny data; the conformance tests use them
        (:mod:`skanomaly.testing`).
    benchmark_params : dict
        Constructor parameters the benchmark (``skanomaly benchmark``) sets
        over the defaults, e.g. a shorter search.
    input_size : (int, int) or None, default=None
        ``(height, width)`` the detector works at, for its current
        parameters: where ``skanomaly fit`` resizes a folder of images of
        different sizes (``--image-size`` overrides). None: no such size,
        and that command asks for ``--image-size``.

    Examples
    --------
    A detector for tabular rows only:

    >>> from skanomaly import BaseDetector
    >>> class RowsOnly(BaseDetector):
    ...     def __skanomaly_tags__(self):
    ...         tags = super().__skanomaly_tags__()
    ...         tags.images = False
    ...         return tags
    ...     def _fit(self, X):
    ...         self.mean_ = X.mean(axis=0)
    ...     def _score_samples(self, X):
    ...         return -((X - self.mean_) ** 2).sum(axis=1)
    >>> RowsOnly().fit([[0.0], [1.0], [2.0]]).predict([[1.0]]).tolist()
    [1]
    >>> RowsOnly().fit([[[0.0]], [[1.0]]])  # doctest: +ELLIPSIS
    Traceback (most recent call last):
    ...
    ValueError: RowsOnly takes 2-D tabular data (n_samples, n_features); got ...
    """

    tabular: bool = True
    images: bool = True
    anomaly_maps: bool = False
    pretrained_weights: bool = False
    keeps_uint8: bool = False
    unit_range_images: bool = False
    max_offset_samples: int | None = None
    leave_one_out: bool = False
    onnx_export: bool = False
    test_params: dict = dataclasses.field(default_factory=dict)
    benchmark_params: dict = dataclasses.field(default_factory=dict)
    input_size: tuple | None = None


def _bounded_sorted(scores):
    """Sorted scores, a fixed random subset of at most MAX_CALIBRATION_SCORES."""
    scores = np.asarray(scores, dtype=np.float64)
    if scores.size > MAX_CALIBRATION_SCORES:
        rng = np.random.default_rng(0)
        scores = scores[rng.choice(scores.size, MAX_CALIBRATION_SCORES, replace=False)]
    return np.sort(scores)


def get_detector_tags(estimator):
    """The :class:`DetectorTags` of a detector (class or instance).

    Detectors that do not define ``__skanomaly_tags__`` (plugins written
    without :class:`BaseDetector`) get the defaults.

    Parameters
    ----------
    estimator : estimator instance or class

    Returns
    -------
    tags : DetectorTags

    Examples
    --------
    >>> from skanomaly import Mahalanobis
    >>> from skanomaly.detectors.base import get_detector_tags
    >>> tags = get_detector_tags(Mahalanobis())
    >>> tags.tabular, tags.images
    (True, False)
    """
    if isinstance(estimator, type):
        estimator = estimator()
    method = getattr(estimator, "__skanomaly_tags__", None)
    return method() if method is not None else DetectorTags()


class BaseDetector(OutlierMixin, BaseEstimator, metaclass=ABCMeta):
    """Base class for skanomaly detectors (and plugins).

    A subclass implements two methods:

    - ``_fit(X)``: train on validated inliers ``X`` (a float array, either
      ``(n_samples, n_features)`` or ``(n_samples, channels, height, width)``).
      It may return the scores of the training samples it has computed anyway
      (the same values ``_score_samples`` would give, for the samples
      ``_calibration_subset(len(X))``); otherwise it returns None. A detector
      with the ``leave_one_out`` tag also takes ``_fit(X, leave_one_out=True)``
      and then returns leave-one-out scores of those samples.
    - ``_score_samples(X)``: return the *normality* of each row of a
      validated ``X`` as a 1-D float array (higher = more normal), in
      batches of bounded memory.

    and declares what it takes in ``__skanomaly_tags__`` (see
    :class:`DetectorTags`). A detector whose score reads constructor
    parameters (a loss weight of the score, a smoothing) lists them in
    ``_scoring_parameters``: ``fit`` records their values in
    ``scoring_params_``, and once one is changed, the threshold (calibrated
    for the fitted score) is refused until the detector is refitted or the
    value set back. Pickles and skanomaly files of an earlier version
    that lack a parameter added since load with its default; where the
    default would describe another model than the one saved, the class's
    ``_legacy_parameters`` names the value that reproduces it instead.

    Everything else of the scikit-learn outlier-detector contract lives here:
    validation of the input (tabular or images), dropping samples labelled
    -1 when ``y`` is given, the calibrated threshold ``offset_``,
    ``decision_function``, ``predict``, ``conformal_p_values``, and a fit
    that leaves no half-fitted state behind when it fails.

    Parameters
    ----------
    contamination : 'auto' or float, default='auto'
        The false-alarm rate on *new* normal samples. With a float ``c`` the
        threshold ``offset_`` is the ``floor((n + 1) c)``-th smallest of the
        ``n`` calibration scores, so that a new normal sample, exchangeable
        with the calibration samples, is predicted an outlier with
        probability at most ``c`` (and within ``1 / (n + 1)`` of it); ``c``
        below ``1 / (n + 1)`` raises a ``ValueError``. With 'auto' the
        threshold is a robust three-sigma rule on the calibration scores,
        ``median - 3 * 1.4826 * MAD``, raised if needed to their 1st
        percentile: new normal samples are flagged at least as often as 1%
        (exactly as often as the calibration samples are).
    calibration : {'auto', 'split', 'leave-one-out', 'training'} or int, \
default='auto'
        Where the calibration scores come from (see the user guide,
        "Thresholds that hold on new data"):

        - 'split': hold out ``calibration_size`` of the normal training
          samples (at most 5,000), fit on the rest, and score the held-out
          ones. Exact (split-conformal), at the price of training on less.
        - 'leave-one-out': score each training sample with the model fitted
          without it, in closed form or by masking, without a refit; for
          detectors that have it (the ``leave_one_out`` tag: the Gaussians
          and PatchCore). Every sample trains and calibrates.
        - an int ``K >= 2``: cross-fitting. Fit ``K`` models, each without
          one fold, score each fold with the model that did not see it, then
          fit the final model on all samples. Every sample trains and
          calibrates at ``K + 1`` times the training cost, for small data;
          the final model differs from the ones that made the calibration
          scores, so its guarantee is approximate.
        - 'training': the scores of the training samples themselves, as
          scikit-learn's outlier detectors do: ``contamination`` is then the
          fraction of the *training* set flagged, and says nothing about new
          data (a model scores what it was fitted on as more normal).
        - 'auto': 'leave-one-out' for detectors that have it, else 'split'.

        Measured on 100 training digits (AutoEncoder, VAE, GANomaly; three
        normal classes, ten seeds; ``benchmarks/RESULTS_calibration.md``):
        AUROC equal within 0.002 for 'split' and ``5``; cross-fitting
        roughly halves how far one fit's rate strays from the level (mean
        ``|rate - 0.05|`` 0.022-0.034 against 0.036-0.052) at 5-6 times the
        fit time, but is approximate (GANomaly's mean rate at 0.1 was
        0.114-0.117) where 'split' is exact; hence 'split' by default.
    calibration_size : float in (0, 1), default=0.2
        Fraction of the normal training samples that ``calibration='split'``
        holds out (at most 5,000 samples).
    calibration_confidence : float in (0, 1) or None, default=None
        None: the false-alarm rate is ``contamination`` on average over fits,
        and one fit's rate scatters around it (a standard deviation of about
        ``sqrt(c (1 - c) / n)`` with ``n`` calibration samples: 0.063 at
        ``c = 0.1`` with 20). A float, such as 0.9: the threshold is lowered
        until *this fit's* rate on new normals is at most ``contamination``
        with that probability (the Beta distribution of a calibration order
        statistic, :func:`skanomaly.conformal.rank_levels`), so fewer normals
        and anomalies are flagged on average; it needs at least
        ``log(1 - confidence) / log(1 - c)`` calibration samples (22 at
        0.9 and 0.1) and a float ``contamination``, and does not apply to
        ``calibration='training'``. ``conformal_p_values`` follow it.

    Attributes
    ----------
    offset_ : float
        ``decision_function(X) = score_samples(X) - offset_``.
    calibration_scores_ : ndarray of shape (n_calibration,)
        The calibration scores, sorted: normality scores of normal samples
        the model did not fit (of the training samples themselves with
        ``calibration='training'``); at most 5,000, a random subset of
        larger sets. ``conformal_p_values`` ranks new scores among them.
    calibration_ : str
        The scheme used: 'split', 'leave-one-out', 'cross-fit' or
        'training'.
    scoring_params_ : dict
        The values, at ``fit``, of the parameters the score reads (empty
        for detectors whose score reads none). ``decision_function``,
        ``predict`` and ``conformal_p_values`` raise a ``ValueError`` once
        one of them differs: the threshold and the calibration scores belong
        to the fitted score. ``score_samples`` and ``anomaly_map`` follow
        the current values.
    n_features_in_ : int
        Number of features seen in ``fit`` (for images, channels x height x
        width).
    image_shape_ : tuple of int or None
        ``(channels, height, width)`` of the training images, ``None`` for
        tabular data.
    image_dtype_ : str or None
        dtype of the training images (``'uint8'``, ``'float32'``...), ``None``
        for tabular data.
    image_value_range_ : (0.0, 1.0), (0.0, 255.0) or None
        The value range the model was trained in, which later images are
        read in whatever their dtype. ``(0.0, 1.0)`` after ``uint8`` images
        (read as value / 255) or float images within [0, 1];
        ``(0.0, 255.0)`` after other integer images in 0..255 or float
        images within [0, 255] that exceed 1 (read as their values);
        ``None`` for tabular data and for images of other values
        (standardised floats, which go below 0; 16-bit counts), read as
        they are. Integer images are 8-bit intensities in either range, so
        they are converted with a warning (other integers to ``uint8`` for
        ``(0.0, 1.0)``, ``uint8`` to ``image_dtype_`` for ``(0.0, 255.0)``);
        float images outside the range (1% aside), float images within
        [0, 1] after a ``(0.0, 255.0)`` fit, and ``uint8`` images after a
        ``None`` fit raise a ``ValueError`` that says how to convert them.
        The same rule holds for ``score_samples``, ``anomaly_map``, the
        ONNX graph (:func:`skanomaly.export_onnx` takes ``image_dtype_`` in
        this range) and the report.

    Notes
    -----
    The calibrated threshold is meant for new data: on the training samples
    themselves, which a model scores as more normal, fewer than
    ``contamination`` are flagged. ``fit_predict``, which labels the training
    set, is therefore only available with ``calibration='training'``
    (scikit-learn's ``LocalOutlierFactor`` does the same with
    ``novelty=True``); ``novelty`` says which case a detector is in.

    Examples
    --------
    A detector scoring the distance to the training mean:

    >>> import numpy as np
    >>> from skanomaly.detectors.base import BaseDetector
    >>> class MeanDistance(BaseDetector):
    ...     def _fit(self, X):
    ...         self.mean_ = X.mean(axis=0)
    ...     def _score_samples(self, X):
    ...         return -np.linalg.norm((X - self.mean_).reshape(len(X), -1), axis=1)
    >>> rng = np.random.RandomState(0)
    >>> detector = MeanDistance(contamination=0.1).fit(rng.normal(size=(2000, 2)))
    >>> detector.calibration_, len(detector.calibration_scores_)
    ('split', 400)
    >>> detector.predict([[0.0, 0.0], [6.0, 6.0]])
    array([ 1, -1])

    About 10% of new normal samples are flagged (the training samples
    themselves would be flagged less often):

    >>> new_normals = rng.normal(size=(20_000, 2))
    >>> bool(abs((detector.predict(new_normals) == -1).mean() - 0.1) < 0.03)
    True
    >>> detector.conformal_p_values([[0.0, 0.0], [6.0, 6.0]]).round(4).tolist()
    [1.0, 0.0025]
    """

    _parameter_constraints: dict = {
        "contamination": [
            StrOptions({"auto"}),
            Interval(Real, 0, 0.5, closed="right"),
        ],
        "calibration": [
            StrOptions(_CALIBRATION_SCHEMES),
            Interval(Integral, 2, None, closed="left"),
        ],
        "calibration_size": [Interval(Real, 0, 1, closed="neither")],
        "calibration_confidence": [None, Interval(Real, 0, 1, closed="neither")],
    }
    # Constructor parameters added after detectors were saved without them,
    # each with the value that reproduces such a detector (which the default
    # need not): pickles and skanomaly files that lack one get this value.
    _legacy_parameters: dict = {}
    # Constructor parameters the score reads, not only the training: changed
    # after fit, they change the score that offset_ was calibrated for.
    _scoring_parameters: tuple = ()

    def __init__(
        self,
        contamination="auto",
        calibration="auto",
        calibration_size=0.2,
        calibration_confidence=None,
    ):
        self.contamination = contamination
        self.calibration = calibration
        self.calibration_size = calibration_size
        self.calibration_confidence = calibration_confidence

    def __setstate__(self, state):
        # pickled by an earlier version: the parameters added since get the
        # value that reproduces it, else their default (as load gives them)
        cls = type(self)
        signature = inspect.signature(cls.__init__).parameters
        for name in cls._get_param_names():
            if name in state:
                continue
            if name in cls._legacy_parameters:
                state[name] = cls._legacy_parameters[name]
            elif signature[name].default is not inspect.Parameter.empty:
                state[name] = signature[name].default
        super().__setstate__(state)

    @abstractmethod
    def _fit(self, X):
        """Train on validated inlier data ``X``; optionally return its scores."""

    @abstractmethod
    def _score_samples(self, X):
        """Normality scores of validated ``X`` (higher = more normal)."""

    def __skanomaly_tags__(self):
        return DetectorTags()

    def _validate_input(self, X, *, reset, min_samples=1):
        tags = self.__skanomaly_tags__()
        return validate_detector_input(
            self,
            X,
            reset=reset,
            min_samples=min_samples,
            keep_uint8=tags.keeps_uint8,
            float_range=(0.0, 1.0) if tags.unit_range_images else None,
            tabular=tags.tabular,
            images=tags.images,
        )

    @fit_context(prefer_skip_nested_validation=True)
    def fit(self, X, y=None):
        """Fit the detector on (mostly) normal data and calibrate its threshold.

        Parameters
        ----------
        X : array-like of shape (n_samples, n_features), (n_samples, height, \
width) or (n_samples, channels, height, width)
            Training data: tabular rows or images (``uint8`` images are
            scaled to [0, 1]). Part of it may be held out for calibration
            (see ``calibration``).
        y : array-like of shape (n_samples,), default=None
            Optional labels in scikit-learn's outlier convention, +1 inlier
            and -1 outlier. Samples labelled -1 are left out of training and
            of calibration, so a cross-validated search on labelled data
            trains on inliers only. Labels in any other encoding are ignored
            with a warning.

        Returns
        -------
        self : object
            The fitted detector.
        """
        state_before = dict(self.__dict__)
        try:
            X = self._validate_input(X, reset=True, min_samples=2)
            n_given = len(X)
            X = select_inliers(X, y, estimator_name=type(self).__name__)
            if len(X) < 2:
                raise ValueError(
                    f"{type(self).__name__} needs at least 2 inlier samples to "
                    f"fit; y labels {len(X)} of the {n_given} samples +1 "
                    "(inlier) and the others -1."
                )
            scheme = self._calibration_scheme()
            self._check_confidence(scheme)
            self._check_level_reachable(scheme, len(X))
            if scheme == "split":
                scores = self._fit_split(X)
            elif scheme == "cross-fit":
                scores = self._fit_cross(X)
            else:
                loo = scheme == "leave-one-out"
                scores = self._fit(X, leave_one_out=True) if loo else self._fit(X)
                if isinstance(scores, np.ndarray):
                    scores = self._checked(scores, fitting=True)
                elif loo:
                    raise TypeError(
                        f"{type(self).__name__}._fit(X, leave_one_out=True) must "
                        "return the leave-one-out scores as an array."
                    )
                else:  # None (or self, from detectors written before scores)
                    subset = X[self._calibration_subset(len(X))]
                    scores = self._checked_scores(subset, fitting=True)
            self.calibration_ = scheme
            self.calibration_scores_ = _bounded_sorted(scores)
            self.offset_ = self._threshold(self.calibration_scores_, scheme)
            self.scoring_params_ = self._scoring_setting()
        except BaseException:
            # leave the estimator as it was: nothing half-fitted
            self.__dict__.clear()
            self.__dict__.update(state_before)
            raise
        return self

    def _scoring_setting(self):
        """The values of ``_scoring_parameters`` that decide the score now.

        A detector whose parameter takes 'auto' returns what it resolves
        to, so that setting the resolved value explicitly changes nothing.
        """
        return {name: getattr(self, name) for name in self._scoring_parameters}

    def _check_scoring_setting(self):
        """Refuse the threshold once a parameter of the score has changed.

        ``offset_`` and ``calibration_scores_`` are scores of the fitted
        setting (``scoring_params_``); under another one they would flag
        far more or far fewer samples than ``contamination``, silently.
        Models fitted before ``scoring_params_`` existed are not checked.
        """
        fitted = getattr(self, "scoring_params_", None)
        if not fitted:
            return
        now = self._scoring_setting()
        changed = [name for name in fitted if now.get(name) != fitted[name]]
        if not changed:
            return
        was = ", ".join(f"{name}={fitted[name]!r}" for name in changed)
        current = ", ".join(f"{name}={now[name]!r}" for name in changed if name in now)
        raise ValueError(
            f"{type(self).__name__} was fitted with {was}, and {current} was "
            "set after fit. Its threshold offset_ and calibration scores belong "
            "to the fitted score, so predict, decision_function and "
            "conformal_p_values would flag far more or fewer samples than "
            f"contamination. Refit it, or set {was} back (score_samples "
            "ranks samples under either)."
        )

    def _check_confidence(self, scheme):
        """Refuse a per-fit confidence where it has no meaning, before training."""
        if getattr(self, "calibration_confidence", None) is None:
            return
        if scheme == "training":
            raise ValueError(
                "calibration_confidence needs calibration scores of samples the "
                "model did not fit; calibration='training' has none (use "
                "'auto', 'split', 'leave-one-out' or an int)."
            )
        if self.contamination == "auto":
            raise ValueError(
                "calibration_confidence bounds the false-alarm rate at a level: "
                "set contamination to a float (such as 0.05), not 'auto'."
            )

    def _n_split_calibration(self, n_samples):
        """How many of ``n_samples`` ``calibration='split'`` holds out."""
        size = getattr(self, "calibration_size", 0.2)
        return min(MAX_CALIBRATION_SCORES, max(1, round(size * n_samples)))

    def _check_level_reachable(self, scheme, n_samples):
        """Refuse, before training, a level the calibration cannot resolve.

        The threshold needs ``1 / (n + 1) <= contamination`` with ``n``
        calibration scores (more with ``calibration_confidence``); found
        only after training, a fit of hours would end in that error.
        """
        if self.contamination == "auto" or scheme == "training":
            return
        n_scores = n_samples
        if scheme == "split":
            n_scores = self._n_split_calibration(n_samples)
        limit = self.__skanomaly_tags__().max_offset_samples
        n_scores = min(n_scores, MAX_CALIBRATION_SCORES, limit or n_scores)
        # the same check and message as the threshold's, on stand-in scores
        conformal_threshold(
            np.zeros(n_scores),
            self.contamination,
            getattr(self, "calibration_confidence", None),
        )

    def _calibration_scheme(self):
        """The scheme ``calibration`` resolves to for this detector."""
        calibration = getattr(self, "calibration", "auto")
        if isinstance(calibration, Integral) and not isinstance(calibration, bool):
            return "cross-fit"
        leave_one_out = self.__skanomaly_tags__().leave_one_out
        if calibration == "auto":
            return "leave-one-out" if leave_one_out else "split"
        if calibration == "leave-one-out" and not leave_one_out:
            raise ValueError(
                f"{type(self).__name__} has no leave-one-out scores; use "
                "calibration='split', 'auto' or an int (cross-fitting)."
            )
        return calibration

    def _split_random_state(self):
        """The generator of the calibration split and folds."""
        # detectors without a random_state split the same way every fit
        return check_random_state(getattr(self, "random_state", 0))

    def _fit_split(self, X):
        """Fit on part of ``X``; return the scores of the held-out part."""
        n = len(X)
        size = getattr(self, "calibration_size", 0.2)
        n_calibration = self._n_split_calibration(n)
        if n - n_calibration < 2:
            raise ValueError(
                f"calibration='split' holds out calibration_size={size} of the "
                f"{n} training samples and needs at least 2 left to fit; give "
                "more samples or use calibration='training'."
            )
        order = self._split_random_state().permutation(n)
        held_out = np.sort(order[:n_calibration])
        self._fit(X[np.sort(order[n_calibration:])])
        held_out = held_out[self._calibration_subset(n_calibration)]
        return self._checked_scores(X[held_out], fitting=True)

    def _fit_cross(self, X):
        """Out-of-fold scores of ``calibration`` folds; then fit on all of ``X``."""
        n_folds = int(self.calibration)
        if len(X) < 2 * n_folds:
            raise ValueError(
                f"calibration={n_folds} (cross-fitting) needs at least "
                f"{2 * n_folds} training samples, 2 per fold; got {len(X)}."
            )
        folds = KFold(
            n_folds,
            shuffle=True,
            random_state=self._split_random_state().randint(2**31),
        )
        chosen = np.zeros(len(X), dtype=bool)
        chosen[self._calibration_subset(len(X))] = True
        # the input attributes fit recorded (n_features_in_, image_shape_...)
        recorded = {k: v for k, v in vars(self).items() if k.endswith("_")}
        scores = []
        for train, held_out in folds.split(np.zeros(len(X))):
            fold = clone(self)
            fold.__dict__.update(recorded)
            fold._fit(X[train])
            held_out = held_out[chosen[held_out]]
            scores.append(fold._checked_scores(X[held_out], fitting=True))
        self._fit(X)
        return np.concatenate(scores)

    def _calibration_subset(self, n_samples):
        """Positions of the samples whose scores calibrate (a fixed subset)."""
        limit = self.__skanomaly_tags__().max_offset_samples
        if limit is None or n_samples <= limit:
            return np.arange(n_samples)
        return np.sort(np.random.default_rng(0).choice(n_samples, limit, replace=False))

    def _threshold(self, scores, scheme):
        """``offset_`` from the sorted calibration scores."""
        contamination = self.contamination
        if scheme != "training" and len(scores) < _FEW_CALIBRATION_SAMPLES:
            warnings.warn(
                f"{type(self).__name__} calibrated its threshold on only "
                f"{len(scores)} normal samples: the false-alarm rate of this one "
                "fit can lie far from contamination (it is right on average over "
                f"fits), and p-values are multiples of 1/{len(scores) + 1}. "
                f"Calibrate on {_FEW_CALIBRATION_SAMPLES} or more (more normal "
                "samples, or calibration=5 to cross-fit).",
                CalibrationWarning,
                stacklevel=4,
            )
        if contamination == "auto":
            return auto_threshold(scores)
        if scheme == "training":
            # scikit-learn's rule: that fraction of the training set below
            return float(np.percentile(scores, 100.0 * contamination))
        return conformal_threshold(
            scores, contamination, getattr(self, "calibration_confidence", None)
        )

    @property
    def novelty(self):
        """True when the threshold is calibrated for new data (not 'training').

        As scikit-learn's ``LocalOutlierFactor(novelty=True)``: ``predict``
        is for new samples, and ``fit_predict`` (labels of the training set)
        is not available.
        """
        return getattr(self, "calibration", "auto") != "training"

    def conformal_p_values(self, X):
        """Conformal p-value of each sample being normal.

        ``p = (1 + #{calibration scores <= score}) / (n + 1)``, with the
        ``n`` calibration scores ``calibration_scores_``; in
        ``[1 / (n + 1), 1]``, small for samples less normal than almost all
        of them. With a float ``contamination``, ``predict(X)`` is -1
        exactly where ``p <= contamination``.

        Guarantee: for a new normal sample exchangeable with the calibration
        samples (the same distribution, independent of training),
        ``P(p <= c) <= c`` at every level ``c``, and p-values of such samples
        are uniform over ``{1/(n+1), ..., 1}``. It is marginal (on average
        over calibration sets) and needs new normals to resemble the
        calibration data: drift breaks it. With ``calibration_confidence``,
        the p-value of a score below the ``k``-th smallest calibration score
        is the Beta upper confidence bound on the rate of that threshold
        instead of ``k / (n + 1)``: for each level ``c``, the fraction of new
        normals with ``p <= c`` is at most ``c`` with that probability (so
        ``predict`` is still -1 exactly where ``p <= contamination``). With
        ``calibration='training'`` the calibration scores are in-sample and
        there is no guarantee. To flag a batch at a false discovery rate,
        pass the p-values to :func:`skanomaly.conformal.benjamini_hochberg`.

        Parameters
        ----------
        X : array-like of the same kind and shape per sample as in ``fit``
            Samples to test.

        Returns
        -------
        p_values : ndarray of shape (n_samples,)
        """
        check_is_fitted(self, "calibration_scores_")
        self._check_scoring_setting()
        return conformal_p_values(
            self.calibration_scores_,
            self.score_samples(X),
            getattr(self, "calibration_confidence", None),
        )

    def _checked_scores(self, X, fitting=False):
        return self._checked(self._score_samples(X), fitting=fitting)

    def _checked(self, scores, fitting=False):
        scores = np.asarray(scores, dtype=np.float64).reshape(-1)
        bad = ~np.isfinite(scores)
        if not bad.any():
            return scores
        n_bad = int(bad.sum())
        if fitting:
            raise FloatingPointError(
                f"{type(self).__name__} produced {n_bad} non-finite score(s) out "
                f"of {scores.size} on its training data: the fit has diverged "
                "(for a network, try a lower learning rate) or the training data "
                "holds extreme values (scale it first)."
            )
        # The input is finite (validated), so these samples lie far outside
        # what the model has seen: flag them as outliers rather than failing
        # the whole batch. The lowest finite float, not -inf, so that metrics
        # such as roc_auc_score still accept the scores.
        warnings.warn(
            f"{type(self).__name__} produced {n_bad} non-finite score(s) out of "
            f"{scores.size}, for samples with extreme values; they get the "
            "lowest float as score (the most anomalous).",
            RuntimeWarning,
            stacklevel=4,
        )
        scores[bad] = np.finfo(np.float64).min
        return scores

    def score_samples(self, X):
        """Normality score of each sample: the higher, the more normal.

        This is the negative of the method's anomaly score.

        Parameters
        ----------
        X : array-like of the same kind and shape per sample as in ``fit``
            Samples to score.

        Returns
        -------
        scores : ndarray of shape (n_samples,)
        """
        check_is_fitted(self, "offset_")
        return self._checked_scores(self._validate_input(X, reset=False))

    def decision_function(self, X):
        """Shifted normality score: negative for outliers, positive for inliers.

        Parameters
        ----------
        X : array-like of the same kind and shape per sample as in ``fit``
            Samples to score.

        Returns
        -------
        decision : ndarray of shape (n_samples,)
            ``score_samples(X) - offset_``.
        """
        check_is_fitted(self, "offset_")
        self._check_scoring_setting()
        return self.score_samples(X) - self.offset_

    def predict(self, X):
        """Predict +1 for inliers and -1 for outliers.

        Parameters
        ----------
        X : array-like of the same kind and shape per sample as in ``fit``
            Samples to classify.

        Returns
        -------
        labels : ndarray of shape (n_samples,)
        """
        decision = self.decision_function(X)
        labels = np.ones(decision.shape[0], dtype=int)
        labels[decision < 0] = -1
        return labels

    def _check_fit_predict(self):
        if self.novelty:
            raise AttributeError(
                "fit_predict labels the training set, but a calibrated threshold "
                "is for new data: the training samples, which the model fitted, "
                "score as more normal, so fewer than contamination of them would "
                "be flagged. Use fit(X_train).predict(X_new), or "
                "calibration='training' to flag the contamination fraction of the "
                "training set."
            )
        return True

    @available_if(_check_fit_predict)
    def fit_predict(self, X, y=None):
        """Fit on ``X`` and return its labels (+1 inlier, -1 outlier).

        Only with ``calibration='training'``, where ``contamination`` is the
        fraction of the training set flagged (see ``novelty``).

        Parameters
        ----------
        X : array-like
            Training data, as in ``fit``.
        y : array-like of shape (n_samples,), default=None
            Optional outlier-convention labels, as in ``fit``.

        Returns
        -------
        labels : ndarray of shape (n_samples,)
        """
        return self.fit(X, y).predict(X)

    def __sklearn_tags__(self):
        tags = super().__sklearn_tags__()
        declared = self.__skanomaly_tags__()
        tags.input_tags.allow_nan = False
        tags.input_tags.two_d_array = declared.tabular
        tags.input_tags.three_d_array = declared.images
        return tags
