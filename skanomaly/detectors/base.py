"""The detector contract every skanomaly detector, built-in or plugin, follows."""

import warnings
from abc import ABCMeta, abstractmethod
from numbers import Real

import numpy as np
from sklearn.base import BaseEstimator, OutlierMixin, _fit_context
from sklearn.utils._param_validation import Interval, StrOptions
from sklearn.utils.validation import check_is_fitted

from ._validation import select_inliers, validate_detector_input

__all__ = ["BaseDetector"]

# 'auto' threshold: a robust three-sigma rule on the training scores, flagging
# at least the lowest 1% (training sets are rarely perfectly clean).
_AUTO_N_MADS = 3.0
_MAD_TO_STD = 1.4826
_AUTO_MIN_PERCENT = 1.0


class BaseDetector(OutlierMixin, BaseEstimator, metaclass=ABCMeta):
    """Base class for skanomaly detectors (and plugins).

    A subclass implements two methods:

    - ``_fit(X)``: train on validated inliers ``X`` (a float array, either
      ``(n_samples, n_features)`` or ``(n_samples, channels, height, width)``).
    - ``_score_samples(X)``: return the *normality* of each row of a
      validated ``X`` as a 1-D float array (higher = more normal), in
      batches of bounded memory.

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

    Examples
    --------
    A detector scoring the distance to the training mean:

    >>> import numpy as np
    >>> from skanomaly.base import BaseDetector
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

    # Small settings that make a detector fit in well under a second on tiny
    # data; used by the conformance tests (see ``skanomaly.testing``).
    _fast_test_params: dict = {}

    # Whether ``_fit`` and ``_score_samples`` take uint8 images as they are
    # (and scale them per batch, saving a float copy of the whole input).
    # Otherwise uint8 images arrive as float32 in [0, 1].
    _keeps_uint8 = False

    # Set ``offset_`` from the scores of at most this many training samples
    # (a fixed random subset), for detectors whose scoring is costly.
    _max_offset_samples = None

    def __init__(self, contamination="auto"):
        self.contamination = contamination

    @abstractmethod
    def _fit(self, X):
        """Train on validated inlier data ``X``."""

    @abstractmethod
    def _score_samples(self, X):
        """Normality scores of validated ``X`` (higher = more normal)."""

    @_fit_context(prefer_skip_nested_validation=True)
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
            X = validate_detector_input(
                self, X, reset=True, min_samples=2, keep_uint8=self._keeps_uint8
            )
            X = select_inliers(X, y, estimator_name=type(self).__name__)
            self._fit(X)
            scores = self._checked_scores(self._offset_subset(X), fitting=True)
            self.offset_ = self._offset_from_training_scores(scores)
        except BaseException:
            # leave the estimator as it was: nothing half-fitted
            self.__dict__.clear()
            self.__dict__.update(state_before)
            raise
        return self

    def _offset_subset(self, X):
        limit = self._max_offset_samples
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
        scores = np.asarray(self._score_samples(X), dtype=np.float64).reshape(-1)
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
            stacklevel=3,
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
        X = validate_detector_input(self, X, reset=False, keep_uint8=self._keeps_uint8)
        return self._checked_scores(X)

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
        tags.input_tags.allow_nan = False
        return tags
