"""Mahalanobis detector: one shrunk Gaussian per group of columns."""

from numbers import Integral

import numpy as np
from sklearn.utils.validation import check_is_fitted

from .._compat import StrOptions
from ..gaussian import (
    COVARIANCE_ESTIMATORS,
    group_distances,
    leave_one_out_group_distances,
    regularised_cholesky,
)
from .base import BaseDetector

__all__ = ["Mahalanobis"]


class Mahalanobis(BaseDetector):
    """Gaussian outlier detector: Mahalanobis distance to a shrunk Gaussian.

    Each group of columns gets its own Gaussian: the sample mean and a
    covariance estimate, shrunk by default (Ledoit-Wolf), which stays well
    conditioned when there are few samples for many features. A sample's
    anomaly score is the sum over groups of its Mahalanobis distances
    ``sqrt((x_g - mu_g)^T Sigma_g^-1 (x_g - mu_g))``, so ``score_samples``
    returns its negative. This is the Gaussian stage of Rippel et al. (2020)
    on its own, for any tabular features; :class:`DeepMahalanobis` puts it on
    the pooled levels of a pretrained network, one group per level.

    Distances are computed in float64 from the inverse Cholesky factor of
    each covariance, in blocks of rows, by the torch module that an exported
    ONNX graph runs too (:class:`~skanomaly.nn.mahalanobis.GroupDistances`).

    Parameters
    ----------
    covariance : {'ledoit_wolf', 'oas', 'empirical'}, default='ledoit_wolf'
        Covariance estimate of each group: Ledoit-Wolf or Oracle
        Approximating Shrinkage towards a scaled identity, or the plain
        maximum-likelihood estimate. Shrinkage targets a multiple of the
        identity, so it depends on the scale of the columns; standardise
        columns of very different units first. An estimate that is singular
        (fewer samples than features with 'empirical', constant columns) gets
        the smallest ridge that makes it positive definite, with a warning.
    groups : array-like or None, default=None
        Columns that share a Gaussian. ``None``: one Gaussian over all
        columns. Otherwise either one integer label per column (each distinct
        label is a group, in sorted order), or a sequence of groups, each a
        ``slice`` or a sequence of column indices. Columns in no group are
        ignored; groups may overlap.
    contamination, calibration, calibration_size, calibration_confidence
        See :class:`~skanomaly.detectors.base.BaseDetector` (
        calibration='auto' is leave-one-out: each training row's distance to the
        Gaussian of the others, in closed form, so every row trains and
        calibrates).

    Attributes
    ----------
    location_ : ndarray of shape (n_features_in_,)
        Mean of each column.
    groups_ : tuple of ndarray of int
        Column indices of each group.
    covariances_ : tuple of ndarray
        Covariance estimate of each group, ``(n_g, n_g)``.
    shrinkages_ : ndarray of shape (n_groups,)
        Shrinkage coefficient of each group (0 for 'empirical').
    cholesky_ : tuple of ndarray
        Lower Cholesky factor of each (possibly ridged) covariance.
    offset_ : float
        Threshold on ``score_samples``.
    n_features_in_ : int
    feature_names_in_ : ndarray of str
        Only when fitted on a DataFrame with string column names.
    image_shape_ : None
        Always ``None``: this detector takes tabular data only.

    See Also
    --------
    DeepMahalanobis : This Gaussian on pretrained deep features of images.
    sklearn.covariance.EllipticEnvelope : A robust (MCD) Gaussian.

    References
    ----------
    O. Rippel, P. Mertens and D. Merhof, "Modeling the Distribution of Normal
    Data in Pre-Trained Deep Features for Anomaly Detection", ICPR 2020.

    Examples
    --------
    >>> import numpy as np
    >>> from skanomaly import Mahalanobis
    >>> rng = np.random.default_rng(0)
    >>> X = rng.normal(size=(200, 4))
    >>> det = Mahalanobis().fit(X)
    >>> det.predict([[0.1, -0.2, 0.0, 0.3], [6.0, 6.0, -6.0, 6.0]]).tolist()
    [1, -1]
    >>> det = Mahalanobis(groups=[0, 0, 1, 1]).fit(X)
    >>> det.distances([[0.0, 0.0, 5.0, 0.0]]).shape
    (1, 2)
    """

    _parameter_constraints: dict = {
        **BaseDetector._parameter_constraints,
        "covariance": [StrOptions(set(COVARIANCE_ESTIMATORS))],
        "groups": ["array-like", None],
    }

    def __init__(
        self,
        *,
        covariance="ledoit_wolf",
        groups=None,
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
        self.covariance = covariance
        self.groups = groups

    def __skanomaly_tags__(self):
        tags = super().__skanomaly_tags__()
        tags.images = False  # DeepMahalanobis is this Gaussian on images
        tags.onnx_export = True
        tags.leave_one_out = True
        return tags

    def _fit(self, X, leave_one_out=False):
        X = np.asarray(X, dtype=np.float64)
        groups = _resolve_groups(self.groups, X.shape[1])
        estimate = COVARIANCE_ESTIMATORS[self.covariance]
        covariances, shrinkages, factors = [], [], []
        for number, columns in enumerate(groups):
            covariance, shrinkage = estimate(_take(X, columns))
            covariance = np.atleast_2d(covariance)
            covariances.append(covariance)
            shrinkages.append(float(shrinkage))
            factors.append(
                regularised_cholesky(covariance, f"The covariance of group {number}")
            )
        self.location_ = X.mean(axis=0)
        self.groups_ = groups
        self.covariances_ = tuple(covariances)
        self.shrinkages_ = np.asarray(shrinkages)
        self.cholesky_ = tuple(factors)
        if leave_one_out:
            rows = X[self._calibration_subset(len(X))]
            return -self._leave_one_out_distances(rows, len(X)).sum(axis=1)
        return None

    def _leave_one_out_distances(self, X_train, n_samples):
        """Distance of training rows to the Gaussians of the other rows."""
        return leave_one_out_group_distances(
            X_train,
            n_samples,
            self.location_,
            self.groups_,
            self.covariances_,
            self.shrinkages_,
            self.cholesky_,
        )

    def _score_samples(self, X):
        return -self._distances(X).sum(axis=1)

    def _distances(self, X):
        return group_distances(X, self.location_, self.groups_, self.cholesky_)

    def _onnx_module(self):
        """Float rows -> summed distances, for :func:`skanomaly.export_onnx`."""
        from ..nn.mahalanobis import MahalanobisDistance

        return MahalanobisDistance(self.location_, self.groups_, self.cholesky_)

    def distances(self, X):
        """Mahalanobis distance of each sample to each group's Gaussian.

        Parameters
        ----------
        X : array-like of shape (n_samples, n_features)
            Samples to measure.

        Returns
        -------
        distances : ndarray of shape (n_samples, n_groups)
            Distances, not squared; ``score_samples`` is minus their sum over
            groups.
        """
        check_is_fitted(self, "offset_")
        return self._distances(self._validate_input(X, reset=False))


def _take(X, columns):
    """Columns of X; a contiguous range is a view instead of a copy."""
    if columns.size and np.all(np.diff(columns) == 1):
        return X[:, columns[0] : columns[-1] + 1]
    return X[:, columns]


def _resolve_groups(groups, n_features):
    """The ``groups`` parameter as a tuple of column-index arrays."""
    all_columns = np.arange(n_features)
    if groups is None:
        return (all_columns,)
    items = list(groups)
    if not items:
        raise ValueError("groups is empty; use groups=None for a single Gaussian.")
    if all(isinstance(item, Integral) for item in items):
        labels = np.asarray(items)
        if labels.shape != (n_features,):
            raise ValueError(
                "groups given as integer labels needs one label per feature "
                f"({n_features}); got {labels.size}. To list the columns of a "
                "single group, wrap them: groups=[[0, 1, 2]]."
            )
        return tuple(np.flatnonzero(labels == label) for label in np.unique(labels))
    resolved = []
    for number, item in enumerate(items):
        if isinstance(item, slice):
            columns = all_columns[item]
        else:
            columns = np.asarray(item)
            if columns.ndim != 1 or not (
                columns.size == 0 or np.issubdtype(columns.dtype, np.integer)
            ):
                raise ValueError(
                    "groups must be one integer label per feature or a sequence "
                    "of groups, each a slice or a 1-D sequence of column "
                    f"indices; group {number} is {item!r}."
                )
            if columns.size and (
                columns.min() < -n_features or columns.max() >= n_features
            ):
                raise ValueError(
                    f"Group {number} refers to columns outside 0..{n_features - 1}."
                )
            columns = all_columns[columns.astype(np.intp)]
        if columns.size == 0:
            raise ValueError(f"Group {number} selects no columns.")
        resolved.append(columns.astype(np.intp))
    return tuple(resolved)
