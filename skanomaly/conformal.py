"""Conformal thresholds, p-values and false discovery rate control.

A detector's threshold is a promise about new data: with
``contamination=0.05``, about 5% of *new* normal samples should be flagged.
Scores of the data a model was fitted on cannot keep that promise (an
autoencoder reconstructs its own training images well, a Gaussian is closest
to the features it was estimated from), so skanomaly's detectors set their
threshold from **calibration scores**: normality scores of normal samples
the model did not fit (see the ``calibration`` parameter of
:class:`~skanomaly.BaseDetector`). This module holds the arithmetic.

Split-conformal guarantee. Let ``s_1 .. s_n`` be the calibration scores and
``s`` the score of a new normal sample, exchangeable with them (drawn from
the same distribution, independently of the model's training data). Then

- the conformal p-value ``p(s) = (1 + #{i: s_i <= s}) / (n + 1)`` satisfies
  ``P(p(s) <= c) <= c`` for every level ``c``: it is *valid* (and, for
  continuous scores, uniform on ``{1/(n+1), ..., 1}``);
- flagging ``s`` when ``p(s) <= c`` is flagging it below the
  ``floor((n + 1) c)``-th smallest calibration score, so the false-alarm rate
  on new normals is ``floor((n + 1) c) / (n + 1)``: at most ``c``, and within
  ``1 / (n + 1)`` of it.

The guarantee is marginal (an average over calibration sets: one fit's rate
varies around it, more so with few calibration samples) and holds only while
new normals resemble the calibration data. Drift (a new camera, a new batch
of material, a season) breaks it: recalibrate on recent normal data.

Guarantee per fit. Over calibration sets, the false-alarm rate of the
threshold at the ``k``-th smallest of ``n`` calibration scores is
Beta(``k``, ``n + 1 - k``)-distributed (continuous scores), so one fit's rate
can exceed ``c``: with 20 calibration scores and ``c = 0.1``, its standard
deviation is 0.063. Passing ``confidence`` (for example 0.9) picks the
largest ``k`` whose rate is at most ``c`` with that probability: the
promise then holds for *this* fit, not only on average, at the price of
flagging fewer normals (and anomalies) than ``c`` on average; the matching
p-values are the Beta upper confidence bounds (a calibration-conditional
guarantee, pointwise in ``c``; Vovk 2012, Bates et al. 2023).

Many tests at once. Flagging each sample with ``p <= c`` keeps the expected
fraction of *normal* samples flagged at ``c``, whatever the number of
anomalies. When what matters is the fraction of *flags* that are false
alarms, the false discovery rate, use :func:`benjamini_hochberg` on a batch
of p-values.

Examples
--------
>>> import numpy as np
>>> from skanomaly.conformal import conformal_p_values, conformal_threshold
>>> calibration = np.arange(1.0, 20.0)  # 19 calibration scores
>>> conformal_threshold(calibration, 0.1)  # the 2nd smallest: flags below it
2.0
>>> conformal_p_values(calibration, [0.5, 1.5, 2.0, 100.0]).tolist()
[0.05, 0.1, 0.15, 1.0]
"""

import math
from numbers import Real

import numpy as np
from scipy import stats

__all__ = [
    "MAX_CALIBRATION_SCORES",
    "benjamini_hochberg",
    "conformal_p_values",
    "conformal_threshold",
    "rank_levels",
    "smallest_level",
]

# Calibration scores a fitted detector keeps (p-values resolve 1/5001): a
# random subset of exchangeable scores is itself exchangeable, so a larger
# calibration set is subsampled without losing the guarantee.
MAX_CALIBRATION_SCORES = 5000


def _calibration_array(calibration_scores):
    scores = np.asarray(calibration_scores, dtype=np.float64)
    if scores.ndim != 1 or scores.size == 0:
        raise ValueError(
            "calibration_scores must be a non-empty 1-D array of scores; got "
            f"shape {scores.shape}."
        )
    if not np.all(np.isfinite(scores)):
        raise ValueError("calibration_scores must be finite.")
    return np.sort(scores)


def _check_confidence(confidence):
    if confidence is None:
        return None
    if not isinstance(confidence, Real) or not 0 < confidence < 1:
        raise ValueError(
            f"confidence must be None or a float in (0, 1); got {confidence!r}."
        )
    return float(confidence)


def rank_levels(n_calibration, confidence=None):
    """The false-alarm level the threshold at each calibration rank keeps.

    Flagging below the ``k``-th smallest of ``n`` calibration scores flags a
    new normal sample with probability ``k / (n + 1)`` on average over
    calibration sets (``confidence=None``); with ``confidence``, the level
    is the ``confidence`` quantile of that probability's
    Beta(``k``, ``n + 1 - k``) distribution, so that one fit's rate is at
    most it with probability ``confidence``. Increasing in ``k``.

    Parameters
    ----------
    n_calibration : int
    confidence : float in (0, 1) or None, default=None

    Returns
    -------
    levels : ndarray of shape (n_calibration,)
        ``levels[k - 1]`` for rank ``k``.

    Examples
    --------
    >>> from skanomaly.conformal import rank_levels
    >>> rank_levels(4).tolist()
    [0.2, 0.4, 0.6, 0.8]
    >>> # 1 - 0.1 ** (1 / 4): one fit's rate below the smallest of 4 scores
    >>> round(float(rank_levels(4, confidence=0.9)[0]), 4)
    0.4377
    """
    n = int(n_calibration)
    confidence = _check_confidence(confidence)
    rank = np.arange(1, n + 1, dtype=np.float64)
    if confidence is None:
        return rank / (n + 1.0)
    return stats.beta.ppf(confidence, rank, n + 1.0 - rank)


def smallest_level(n_calibration, confidence=None):
    """The smallest level ``n_calibration`` calibration scores can resolve.

    A threshold at level ``c`` is the ``floor((n + 1) c)``-th smallest
    calibration score, which exists for ``c >= 1 / (n + 1)``; with
    ``confidence``, for ``c >= 1 - (1 - confidence) ** (1 / n)``.

    Parameters
    ----------
    n_calibration : int
    confidence : float in (0, 1) or None, default=None

    Returns
    -------
    level : float

    Examples
    --------
    >>> from skanomaly.conformal import smallest_level
    >>> smallest_level(99)
    0.01
    >>> round(smallest_level(22, confidence=0.9), 4)
    0.0994
    """
    confidence = _check_confidence(confidence)
    n = int(n_calibration)
    if confidence is None:
        return 1.0 / (n + 1)
    return float(-math.expm1(math.log1p(-confidence) / n))


def _samples_needed(level, confidence):
    if confidence is None:
        return math.ceil(1.0 / float(level) - 1e-9) - 1
    return math.ceil(math.log1p(-confidence) / math.log1p(-float(level)) - 1e-9)


def conformal_threshold(calibration_scores, level, confidence=None):
    """The normality score below which a new sample is flagged at ``level``.

    The ``floor((n + 1) level)``-th smallest of the ``n`` calibration scores
    (higher = more normal): a new normal sample, exchangeable with the
    calibration samples, falls strictly below it with probability
    ``floor((n + 1) level) / (n + 1) <= level``. In anomaly scores, this is
    the ``ceil((n + 1)(1 - level))``-th smallest calibration anomaly score.
    With ``confidence``, the largest rank whose false-alarm rate is at most
    ``level`` with probability ``confidence`` over calibration sets
    (:func:`rank_levels`): a guarantee for this one threshold.

    Parameters
    ----------
    calibration_scores : array-like of shape (n,)
        Normality scores of normal samples the model did not fit.
    level : float in (0, 1)
        The false-alarm rate allowed on new normal samples.
    confidence : float in (0, 1) or None, default=None
        None: the rate is ``level`` on average over calibration sets. A
        float: the rate of this threshold is at most ``level`` with this
        probability.

    Returns
    -------
    threshold : float
        Flag a sample when its score is strictly below it.

    Raises
    ------
    ValueError
        When no calibration score is low enough (``level < 1 / (n + 1)``,
        or :func:`smallest_level` with ``confidence``); the message names
        the smallest achievable level and how many calibration samples
        ``level`` needs.

    Examples
    --------
    >>> from skanomaly.conformal import conformal_threshold
    >>> conformal_threshold([5.0, 1.0, 3.0, 2.0, 4.0], 0.2)  # floor(6 * 0.2) = 1
    1.0
    >>> conformal_threshold([5.0, 1.0, 3.0, 2.0, 4.0], 0.1)
    Traceback (most recent call last):
    ...
    ValueError: A false-alarm level of 0.1 needs at least 9 calibration samples; ...
    >>> scores = range(100)
    >>> conformal_threshold(scores, 0.1), conformal_threshold(scores, 0.1, 0.9)
    (9.0, 5.0)
    """
    scores = _calibration_array(calibration_scores)
    if not isinstance(level, Real) or not 0 < level < 1:
        raise ValueError(f"level must be a float in (0, 1); got {level!r}.")
    confidence = _check_confidence(confidence)
    n = scores.size
    if confidence is None:
        # a small tolerance so that (n + 1) * level = 3.0000000000000004 counts 3
        rank = math.floor((n + 1) * float(level) + 1e-9)
    else:
        levels = rank_levels(n, confidence)
        rank = int(np.searchsorted(levels, float(level) + 1e-12, side="right"))
    if rank < 1:
        needed = _samples_needed(level, confidence)
        with_confidence = (
            "" if confidence is None else f" with confidence={confidence:g}"
        )
        smallest = "1/(n+1) = " if confidence is None else ""
        raise ValueError(
            f"A false-alarm level of {level:g}{with_confidence} needs at least "
            f"{needed} calibration samples; there are {n}, so the smallest "
            f"achievable level is {smallest}{smallest_level(n, confidence):.3g}. "
            "Raise the level, or calibrate on more normal samples (more training "
            "data, a larger calibration_size, or calibration=5 for cross-fitting, "
            "where every normal sample calibrates)."
        )
    return float(scores[rank - 1])


def conformal_p_values(calibration_scores, scores, confidence=None):
    """Conformal p-values of being normal.

    ``p(s) = (1 + #{i: s_i <= s}) / (n + 1)`` for each score ``s``, with the
    ``n`` calibration scores ``s_i`` (higher = more normal). Small p-values
    mark samples less normal than almost all the calibration samples; for a
    new normal sample exchangeable with the calibration samples,
    ``P(p <= c) <= c`` at every level ``c``. With ``confidence``, the
    p-value of a score below the ``k``-th smallest calibration score is
    ``rank_levels(n, confidence)[k - 1]`` instead of ``k / (n + 1)``: for
    each level ``c``, the fraction of new normals with ``p <= c`` is at most
    ``c`` with probability ``confidence`` over calibration sets.

    Parameters
    ----------
    calibration_scores : array-like of shape (n,)
        Normality scores of normal samples the model did not fit.
    scores : array-like of shape (n_samples,)
        Normality scores (``score_samples``) of the samples to test.
    confidence : float in (0, 1) or None, default=None

    Returns
    -------
    p_values : ndarray of shape (n_samples,)
        In ``[1 / (n + 1), 1]`` (``confidence=None``), else in
        ``[smallest_level(n, confidence), 1]``.

    Examples
    --------
    >>> from skanomaly.conformal import conformal_p_values
    >>> conformal_p_values([1.0, 2.0, 3.0], [0.0, 2.0, 9.0]).tolist()
    [0.25, 0.75, 1.0]
    """
    calibration = _calibration_array(calibration_scores)
    scores = np.asarray(scores, dtype=np.float64).reshape(-1)
    at_or_below = np.searchsorted(calibration, scores, side="right")
    levels = np.append(rank_levels(calibration.size, confidence), 1.0)
    return levels[at_or_below]


def benjamini_hochberg(p_values, alpha=0.05):
    """Flag a batch at false discovery rate ``alpha`` (Benjamini-Hochberg).

    Sorts the ``m`` p-values, finds the largest ``k`` with
    ``p_(k) <= k alpha / m`` and flags the ``k`` samples with the smallest
    p-values. When the p-values of the normal samples are valid and
    independent (or positively dependent, which covers conformal p-values
    sharing one calibration set), the expected fraction of false alarms
    among the flagged samples is at most ``alpha`` (times the fraction of
    normal samples in the batch).

    Compare with flagging each sample with ``p <= alpha``
    (``predict`` at ``contamination=alpha``): that bounds the fraction of
    *normal samples* flagged, and in a batch that is almost all normal, most
    of its flags can be false alarms; Benjamini-Hochberg bounds the fraction
    of *flags* that are false, and flags less when anomalies are rare.

    Parameters
    ----------
    p_values : array-like of shape (n_samples,)
        Conformal p-values (``detector.conformal_p_values(X)``), in [0, 1].
    alpha : float in (0, 1), default=0.05
        Target false discovery rate.

    Returns
    -------
    flagged : ndarray of bool, shape (n_samples,)
        True for the samples declared anomalous.

    References
    ----------
    Y. Benjamini and Y. Hochberg, "Controlling the false discovery rate: a
    practical and powerful approach to multiple testing", JRSS B, 1995.
    S. Bates, E. Candes, L. Lei, Y. Romano and M. Sesia, "Testing for
    outliers with conformal p-values", Annals of Statistics, 2023.

    Examples
    --------
    >>> from skanomaly.conformal import benjamini_hochberg
    >>> # thresholds k * 0.1 / 5: 0.02, 0.04, 0.06, 0.08, 0.1
    >>> benjamini_hochberg([0.01, 0.5, 0.03, 0.9, 0.07], alpha=0.1).tolist()
    [True, False, True, False, False]
    """
    p = np.asarray(p_values, dtype=np.float64).reshape(-1)
    if not isinstance(alpha, Real) or not 0 < alpha < 1:
        raise ValueError(f"alpha must be a float in (0, 1); got {alpha!r}.")
    if p.size and (not np.all(np.isfinite(p)) or p.min() < 0 or p.max() > 1):
        raise ValueError("p_values must be finite and in [0, 1].")
    flagged = np.zeros(p.size, dtype=bool)
    if p.size == 0:
        return flagged
    order = np.argsort(p, kind="stable")
    below = p[order] <= alpha * np.arange(1, p.size + 1) / p.size
    if below.any():
        k = int(np.flatnonzero(below)[-1]) + 1
        flagged[order[:k]] = True
    return flagged
