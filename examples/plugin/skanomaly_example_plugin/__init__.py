"""An example skanomaly plugin: distance to the training mean."""

from numbers import Real

import numpy as np
from sklearn.utils._param_validation import Interval

from skanomaly import BaseDetector

__all__ = ["MeanDistance"]


class MeanDistance(BaseDetector):
    """Anomaly score = standardised Euclidean distance to the training mean.

    Parameters
    ----------
    min_scale : float, default=1e-12
        Floor on each feature's standard deviation.
    contamination, calibration, calibration_size, calibration_confidence
        See :class:`skanomaly.detectors.base.BaseDetector`: the threshold is
        calibrated on held-out normal samples, so that ``contamination`` is
        the false-alarm rate on new data.

    Attributes
    ----------
    mean_ : ndarray of shape (n_features,)
    scale_ : ndarray of shape (n_features,)
    offset_ : float

    Examples
    --------
    >>> import numpy as np
    >>> from skanomaly_example_plugin import MeanDistance
    >>> X = np.random.default_rng(0).normal(size=(100, 2))
    >>> MeanDistance().fit(X).predict([[0.0, 0.0], [8.0, 8.0]]).tolist()
    [1, -1]
    """

    _parameter_constraints: dict = {
        **BaseDetector._parameter_constraints,
        "min_scale": [Interval(Real, 0, None, closed="neither")],
    }

    def __init__(
        self,
        *,
        min_scale=1e-12,
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
        self.min_scale = min_scale

    def __skanomaly_tags__(self):
        tags = super().__skanomaly_tags__()
        tags.images = False  # tabular rows only; images are refused for us
        return tags

    def _fit(self, X):
        self.mean_ = X.mean(axis=0)
        self.scale_ = np.maximum(X.std(axis=0), self.min_scale)

    def _score_samples(self, X):
        return -np.linalg.norm((X - self.mean_) / self.scale_, axis=1)
