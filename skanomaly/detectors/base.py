"""The detector contract every skanomaly detector, built-in or plugin, follows.

:class:`BaseDetector` holds the scikit-learn outlier-detector contract;
:class:`DetectorTags` is what a detector declares about itself (the input
kinds it takes, whether it has anomaly maps, small settings for tests...),
read by the benchmark, the conformance tests and the command line through
:func:`get_detector_tags`, never guessed from names or by trying.
"""

import dataclasses
import warnings
from abc import ABCMeta, abstractmethod
from numbers import Real

import numpy as np
from sklearn.base import BaseEstimator, OutlierMixin
from sklearn.utils.validation import check_is_fitted

from .._compat import Interval, StrOptions, fit_context
from .._validation import select_inliers, validate_detector_input

__all__ = ["BaseDetector", "DetectorTags", "get_detector_tags"]

# 'auto' threshold: a robust three-sigma rule on the training scores, flagging
# at least the lowest 1% (training sets are rarely perfectly clean).
_AUTO_N_MADS = 3.0
_MAD_TO_STD = 1.4826
_AUTO_MIN_PERCENT = 1.0


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
        Works on pretrained network weights (see the user guide on weights).
    weights_available : bool, default=True
        Its pretrained weights, for its current parameters, load here without
        a download. ``skanomaly benchmark`` skips a detector with
        ``pretrained_weights`` whose weights are not available, unless named.
    keeps_uint8 : bool, default=False
        ``_fit`` and ``_score_samples`` take uint8 images as they are and
        scale them batch by batch (no float copy of the whole input);
        otherwise uint8 images arrive as float32 in [0, 1].
    max_offset_samples : int or None, default=None
        Set ``offset_`` from the scores of at most this many training
        samples (a fixed random subset), for detectors whose scoring is
        costly.
    onnx_export : bool, default=False
        Can be exported to ONNX (:func:`skanomaly.export_onnx`): the
        detector's scoring is one forward pass, and ``_onnx_module()``
        returns the torch module that maps a batch of raw input (uint8
        images, or float64 rows) to the anomaly score, ``-score_samples``
        (and, with ``anomaly_maps``, to the anomaly map of images).
    test_params : dict
        Constructor parameters that make the detector fit in well under a
        second on tiny data; the conformance tests use them
        (:mod:`skanomaly.testing`).
    benchmark_params : dict
        Constructor parameters the benchmark (``skanomaly benchmark``) sets
        over the defaults, e.g. a shorter search.

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
    weights_available: bool = True
    keeps_uint8: bool = False
    max_offset_samples: int | None = None
    onnx_export: bool = False
    test_params: dict = dataclasses.field(default_factory=dict)
    benchmark_params: dict = dataclasses.field(default_factory=dict)


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
      It may return the training scores when it has computed them anyway
      (the same values ``_score_samples(X)`` would give); otherwise it
      returns None and the base scores the training set itself.
    - ``_score_samples(X)``: return the *normality* of each row of a
      validated ``X`` as a 1-D float array (higher = more normal), in
      batches of bounded memory.

    and declares what it takes in ``__skanomaly_tags__`` (see
    :class:`DetectorTags`).

    Everything else of the scikit-learn outlier-detector contract lives here:
    validation of the input (tabular or images), dropping samples labelled
    -1 when ``y`` is given, the ``offset_`` set from ``contamination``,
    ``decision_function``, ``predict`` and ``fit_predict``, and a fit that
    leaves no half-fitted state behind when it fails.

    Parameters
    ----------
    contamination : 'auto' or float, default='auto'
        Expected proportion of outliers, used only to set the threshold
        ``offset_`` on the training scores. With a float the threshold is
        that quantile of the training scores, so that fraction of the
        training set is predicted as outliers. With 'auto' it is a robust
        three-sigma rule, ``median - 3 * 1.4826 * MAD`` of the training
        scores, raised if needed so that at least the lowest 1% of the
        training scores fall below it.

    Attributes
    ----------
    offset_ : float
        ``decision_function(X) = score_samples(X) - offset_``.
    n_features_in_ : int
        Number of features seen in ``fit`` (for images, channels x height x
        width).
    image_shape_ : tuple of int or None
        ``(channels, height, width)`` of the training images, ``None`` for
        tabular data.
    image_dtype_ : str or None
        dtype of the training images (``'uint8'``, ``'float32'``...), ``None``
        for tabular data. Later images read as in ``fit``: ``uint8`` as
        value / 255, other integers as their values, so integer images of
        the other kind are converted with a warning, and float images after
        a ``uint8`` fit must lie in [0, 1].

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
    >>> X = np.random.RandomState(0).normal(size=(100, 2))
    >>> detector = MeanDistance(contamination=0.1).fit(X)
    >>> detector.predict([[0.0, 0.0], [6.0, 6.0]])
    array([ 1, -1])
    >>> float((detector.predict(X) == -1).mean())
    0.1
    """

    _parameter_constraints: dict = {
        "contamination": [
            StrOptions({"auto"}),
            Interval(Real, 0, 0.5, closed="right"),
        ],
    }

    def __init__(self, contamination="auto"):
        self.contamination = contamination

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
            tabular=tags.tabular,
            images=tags.images,
        )

    @fit_context(prefer_skip_nested_validation=True)
    def fit(self, X, y=None):
        """Fit the detector on (mostly) normal data.

        Parameters
        ----------
        X : array-like of shape (n_samples, n_features), (n_samples, height, \
width) or (n_samples, channels, height, width)
            Training data: tabular rows or images (``uint8`` images are
            scaled to [0, 1]).
        y : array-like of shape (n_samples,), default=None
            Optional labels in scikit-learn's outlier convention, +1 inlier
            and -1 outlier. Samples labelled -1 are left out of training, so a
            cross-validated search on labelled data trains on inliers only.
            Labels in any other encoding are ignored with a warning.

        Returns
        -------
        self : object
            The fitted detector.
        """
        state_before = dict(self.__dict__)
        try:
            X = self._validate_input(X, reset=True, min_samples=2)
            X = select_inliers(X, y, estimator_name=type(self).__name__)
            scores = self._fit(X)
            if isinstance(scores, np.ndarray):
                scores = self._checked(scores, fitting=True)
            else:  # None (or self, from detectors written before scores)
                scores = self._checked_scores(self._offset_subset(X), fitting=True)
            self.offset_ = self._offset_from_training_scores(scores)
        except BaseException:
            # leave the estimator as it was: nothing half-fitted
            self.__dict__.clear()
            self.__dict__.update(state_before)
            raise
        return self

    def _offset_subset(self, X):
        limit = self.__skanomaly_tags__().max_offset_samples
        if limit is None or len(X) <= limit:
            return X
        keep = np.sort(np.random.default_rng(0).choice(len(X), limit, replace=False))
        return X[keep]

    def _offset_from_training_scores(self, scores):
        if self.contamination == "auto":
            median = np.median(scores)
            mad = np.median(np.abs(scores - median))
            robust_rule = median - _AUTO_N_MADS * _MAD_TO_STD * mad
            return float(max(robust_rule, np.percentile(scores, _AUTO_MIN_PERCENT)))
        return float(np.percentile(scores, 100.0 * self.contamination))

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

    def fit_predict(self, X, y=None):
        """Fit on ``X`` and return its labels (+1 inlier, -1 outlier).

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
