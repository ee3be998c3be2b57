"""Cross-validation for novelty detection: train on inliers, test on both.

A detector is trained on normal data and judged on how it ranks normal and
anomalous data, so a cross-validation split for it must keep the anomalies
out of the training folds and put some in every test fold.
:class:`NoveltySplit` wraps any scikit-learn cross-validator to do that; it
plugs into ``GridSearchCV``, ``RandomizedSearchCV``, ``HalvingGridSearchCV``
and ``cross_validate`` as their ``cv``. Labels are in scikit-learn's outlier
convention (+1 inlier, -1 outlier; convert 1 = anomaly labels with
:func:`skanomaly.metrics.to_outlier_labels`), which is also what makes
``refit=True`` right: the final ``fit(X, y)`` on all the data leaves the
samples labelled -1 out of training.
"""

from numbers import Integral

import numpy as np
from sklearn.model_selection import BaseCrossValidator, StratifiedKFold, check_cv
from sklearn.utils import indexable

from .labels import _checked_mask

__all__ = ["NoveltySplit"]


class NoveltySplit(BaseCrossValidator):
    """Cross-validator for detectors: inlier-only train folds, mixed test folds.

    Splits with the wrapped cross-validator ``cv``, then removes the outliers
    (``y == -1``) from every training fold; test folds keep both classes.
    Every fold is checked: a training fold with no inlier, or a test fold
    without an inlier or without an outlier (which could not be scored by
    AUROC or average precision), raises a ``ValueError`` naming the fold.
    With an int, ``cv`` is a ``StratifiedKFold`` on ``y``, which spreads the
    outliers evenly over the test folds, so that check passes whenever
    there are at least ``cv`` outliers and ``cv`` inliers.

    Parameters
    ----------
    cv : int, cross-validation generator or iterable, default=5
        The split to wrap: an int for ``StratifiedKFold(n_splits=cv)``
        (pass ``StratifiedKFold(cv, shuffle=True, random_state=0)`` to
        shuffle), any scikit-learn splitter (``KFold``, ``ShuffleSplit``,
        ``GroupKFold``, ``PredefinedSplit``, ...), or a list of
        ``(train, test)`` index arrays. It receives ``X``, ``y`` and
        ``groups`` unchanged.

    See Also
    --------
    skanomaly.metrics.to_outlier_labels : Convert 1 = anomaly labels.
    skanomaly.metrics.get_scorer : Scorers that score the anomaly class.

    Notes
    -----
    ``HalvingGridSearchCV`` with its default ``resource='n_samples'``
    subsamples every test fold at random, without stratification, so an
    early iteration on few samples can be left without an outlier in a test
    fold (its score is then ``error_score``). Set ``min_resources`` high
    enough, or halve over training time instead, e.g.
    ``resource='max_epochs'``.

    Examples
    --------
    >>> import numpy as np
    >>> from skanomaly.model_selection import NoveltySplit
    >>> y = np.array([1, 1, 1, 1, 1, 1, -1, -1])
    >>> for train, test in NoveltySplit(cv=2).split(np.zeros((8, 1)), y):
    ...     print(train, test)
    [3 4 5] [0 1 2 6]
    [0 1 2] [3 4 5 7]

    In a search, with the anomaly class scored:

    >>> from sklearn.datasets import load_digits
    >>> from sklearn.model_selection import GridSearchCV
    >>> from skanomaly import AutoEncoder
    >>> from skanomaly.metrics import get_scorer, to_outlier_labels
    >>> X, digit = load_digits(return_X_y=True)
    >>> X, digit = X[digit <= 1], digit[digit <= 1]  # 0 normal, 1 anomaly
    >>> y = to_outlier_labels(digit == 1)
    >>> search = GridSearchCV(
    ...     AutoEncoder(max_epochs=5, random_state=0),
    ...     {"latent_dim": [2, 8]},
    ...     scoring=get_scorer("outlier_roc_auc"),
    ...     cv=NoveltySplit(3),
    ... ).fit(X, y)
    >>> sorted(search.best_params_)
    ['latent_dim']
    >>> bool(search.best_score_ > 0.9)
    True
    """

    # forwarded to the wrapped splitter, which may use groups
    __metadata_request__split = {"groups": True}

    def __init__(self, cv=5):
        self.cv = cv

    def _wrapped(self):
        if isinstance(self.cv, Integral) and not isinstance(self.cv, bool):
            return StratifiedKFold(n_splits=self.cv)
        return check_cv(self.cv)

    def get_n_splits(self, X=None, y=None, groups=None):
        """Number of splits of the wrapped cross-validator.

        Parameters
        ----------
        X, y, groups : array-like or None
            Passed on to the wrapped cross-validator.

        Returns
        -------
        n_splits : int
        """
        return self._wrapped().get_n_splits(X, y, groups)

    def split(self, X, y, groups=None):
        """Generate train and test indices: train has inliers only.

        Parameters
        ----------
        X : array-like of shape (n_samples, ...)
            Data (tabular or images); only its length is used here.
        y : array-like of shape (n_samples,)
            +1 for inliers and -1 for outliers.
        groups : array-like of shape (n_samples,), default=None
            Group labels, for a wrapped group splitter.

        Yields
        ------
        train : ndarray
            Indices of the inliers of the wrapped training fold.
        test : ndarray
            Indices of the wrapped test fold (inliers and outliers).
        """
        if y is None:
            raise ValueError(
                "NoveltySplit needs y (+1 inlier, -1 outlier) to keep outliers "
                "out of the training folds."
            )
        X, y, groups = indexable(X, y, groups)
        is_outlier = _outlier_mask(y)
        for fold, (train, test) in enumerate(self._wrapped().split(X, y, groups)):
            train = np.asarray(train)
            test = np.asarray(test)
            train = train[~is_outlier[train]]
            n_test_outliers = int(is_outlier[test].sum())
            problem = None
            if train.size == 0:
                problem = "its training fold has no inlier"
            elif n_test_outliers == 0:
                problem = "its test fold has no outlier"
            elif n_test_outliers == test.size:
                problem = "its test fold has no inlier"
            if problem is not None:
                raise ValueError(
                    f"NoveltySplit: split {fold} of {self._wrapped()!r} cannot "
                    f"be used: {problem}, so a detector could not be trained "
                    "or scored on it. Use a stratified split (an int cv, or "
                    "StratifiedKFold), fewer splits, or more outliers."
                )
            yield train, test


def _outlier_mask(y):
    y = np.asarray(y)
    if y.ndim != 1:
        raise ValueError(f"y must be 1-D; got an array of shape {y.shape}.")
    is_outlier = _checked_mask(
        y,
        "outlier",
        who="NoveltySplit",
        consequence=(
            "would train on the anomalies: a detector's fit(X, y) only leaves "
            "-1 labels out of training"
        ),
        fix="",
    )
    if not is_outlier.any():
        raise ValueError(
            "NoveltySplit: y has no outlier (-1), so no test fold could score "
            "how outliers are ranked."
        )
    return is_outlier
