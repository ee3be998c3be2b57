"""Anomaly labels: the two conventions and the one rule every reader follows.

Two label conventions meet in anomaly detection:

- **1 = anomaly** (``0`` normal, ``1`` anomaly), used by most benchmarks
  (ADBench, MVTec AD, ...); booleans are read in it (True = anomaly);
- scikit-learn's **outlier convention** (``+1`` inlier, ``-1`` outlier), the
  output of ``predict`` and the labels ``fit(X, y)`` understands: it leaves
  the samples labelled ``-1`` out of training.

Every part of skanomaly that reads labels (``fit(X, y)``,
:class:`~skanomaly.model_selection.NoveltySplit`, the scorers of
:mod:`skanomaly.metrics`, :func:`skanomaly.report` and the command line's
``--label-column``) reads them by one rule, defined here:

1. Labels are numbers or booleans. Strings are not labels (``'1'`` is not
   ``1``); :func:`to_outlier_labels` with an ``anomaly_label`` converts any
   other labels.
2. A label that only one convention has decides it: ``0`` (or ``False``)
   means 1 = anomaly, ``-1`` means the outlier convention. Booleans are never
   outlier labels.
3. Where the convention is fixed (``fit`` and ``NoveltySplit``: outlier; an
   ``anomaly_*`` or ``outlier_*`` scorer: its name), labels of the other
   convention are refused with the fix, never converted (``fit`` ignores
   them with a warning, as it ignores any labels it cannot use).
4. Where it is not fixed (the report, ``--label-column``), labels with
   neither ``0`` nor ``-1`` are refused: only ``1``\\ s would be a guess.

:func:`to_outlier_labels` converts 1 = anomaly labels (or any two labels,
naming the anomaly's) to the outlier convention; :func:`anomaly_mask` reads
labels as a boolean mask, True = anomaly. Both are also importable from
where they were first defined (:mod:`skanomaly.metrics`,
:mod:`skanomaly.reporting`).
"""

import warnings

import numpy as np

__all__ = ["anomaly_mask", "to_outlier_labels"]

_CONVENTIONS = ("anomaly", "outlier")


def _distinct(y):
    try:
        return np.unique(y).tolist()
    except TypeError:  # mixed types that do not sort
        return list(dict.fromkeys(y.tolist()))


def _is_member(value, allowed):
    # bools compare equal to 0/1, which is what we want here; strings must not
    # match numbers.
    return not isinstance(value, str) and any(value == a for a in allowed)


def _in_convention(labels, convention, *, boolean=False):
    """Whether the distinct ``labels`` are all labels of ``convention``.

    ``boolean``: the labels come from a boolean array (never outlier labels).
    """
    if convention == "anomaly":
        return all(_is_member(label, (0, 1)) for label in labels)
    return not boolean and all(
        not isinstance(label, (bool, np.bool_)) and _is_member(label, (-1, 1))
        for label in labels
    )


def _shown(labels):
    return f"{labels[:5]!r}"


def _checked_mask(y, convention, *, who, consequence, fix):
    """``y == anomaly`` after checking that ``y`` is in ``convention``.

    Rule 3: labels of the other convention, or of neither, raise a
    ``ValueError`` that names ``who`` expects what, why the other convention
    would be wrong (``consequence``) and what to do (``fix``).
    """
    y = np.asarray(y)
    labels = _distinct(y.reshape(-1))
    boolean = y.dtype == bool
    if convention == "anomaly":
        if _is_member(-1, labels):
            raise ValueError(
                f"{who} expects labels 1 = anomaly, 0 = normal, but y contains "
                "-1: that is scikit-learn's outlier convention (+1 inlier, -1 "
                f"outlier), {consequence}. {fix}"
            )
        if not _in_convention(labels, "anomaly"):
            raise ValueError(
                f"{who} expects labels 1 = anomaly, 0 = normal; got "
                f"{_shown(labels)}. Convert them first, e.g. y != normal_class."
            )
        return y == 1
    if boolean or _is_member(0, labels):
        found = "booleans" if boolean else "0"
        raise ValueError(
            f"{who} expects scikit-learn's outlier convention (+1 inlier, -1 "
            f"outlier), but y contains {found}: 0/1 labels (1 = anomaly) "
            f"{consequence}. Convert them with "
            f"skanomaly.metrics.to_outlier_labels{fix}."
        )
    if not _in_convention(labels, "outlier"):
        raise ValueError(
            f"{who} expects labels +1 (inlier) and -1 (outlier), scikit-learn's "
            f"outlier convention; got {_shown(labels)}."
        )
    return y == -1


def _fit_inliers(y, *, estimator_name, stacklevel):
    """The inliers of training labels ``y`` (outlier convention), or None.

    What ``fit(X, y)`` does with ``y``: labels in the outlier convention
    leave the -1 samples out; any other labels (0/1 included, rule 3) are
    ignored with a warning, returning None.
    """
    labels = _distinct(y)
    if not labels or not _in_convention(labels, "outlier", boolean=y.dtype == bool):
        warnings.warn(
            f"{estimator_name}.fit ignores y: it uses y only in the outlier "
            "convention (+1 inlier, -1 outlier) to leave outliers out of "
            f"training, and got labels {sorted(map(str, labels))[:5]}. For data "
            "labelled 1 = anomaly, convert with skanomaly.metrics."
            "to_outlier_labels.",
            UserWarning,
            stacklevel=stacklevel + 1,
        )
        return None
    inliers = y == 1
    if not inliers.any():
        raise ValueError(
            f"{estimator_name}.fit got no inliers: every label in y is -1 "
            "(outlier). Detectors train on inliers (+1)."
        )
    return inliers


def to_outlier_labels(y, *, anomaly_label=1):
    """Convert labels where ``anomaly_label`` marks anomalies to +1/-1 labels.

    Returns scikit-learn's outlier convention (+1 inlier, -1 outlier): the
    labels ``fit(X, y)`` uses to leave outliers out of training, and the
    labels :class:`~skanomaly.model_selection.NoveltySplit` and the
    ``outlier_*`` scorers expect.

    The conversion refuses input it would have to guess about:

    - labels that contain -1 (unless ``anomaly_label=-1``): they look like
      the outlier convention already, and converting them would swap
      inliers and outliers;
    - more than two distinct labels (e.g. digit classes): say which are
      normal with a boolean mask, ``to_outlier_labels(y != normal_class)``;
    - two distinct labels of which none equals ``anomaly_label`` (e.g.
      ``'good'``/``'defect'`` with the default): pass ``anomaly_label``.

    Parameters
    ----------
    y : array-like of shape (n_samples,)
        Labels with at most two distinct values, e.g. 0 = normal and
        1 = anomaly (ADBench, MVTec AD), or booleans (True = anomaly).
    anomaly_label : int, float, bool or str, default=1
        The label of the anomalies; every other label is normal.

    Returns
    -------
    y_outlier : ndarray of shape (n_samples,), dtype int
        +1 for normal samples, -1 for anomalies.

    Examples
    --------
    >>> from skanomaly.labels import to_outlier_labels
    >>> to_outlier_labels([0, 1, 0, 1]).tolist()
    [1, -1, 1, -1]
    >>> to_outlier_labels(["good", "crack", "good"], anomaly_label="crack").tolist()
    [1, -1, 1]
    >>> to_outlier_labels([1, -1, 1])  # doctest: +ELLIPSIS
    Traceback (most recent call last):
    ...
    ValueError: y contains -1, so it looks like it is in the outlier convention ...
    """
    y = np.asarray(y)
    if y.ndim != 1:
        raise ValueError(f"y must be 1-D; got an array of shape {y.shape}.")
    labels = _distinct(y)
    if len(labels) > 2:
        shown = ", ".join(map(repr, labels[:5])) + (", ..." if len(labels) > 5 else "")
        raise ValueError(
            f"y has {len(labels)} distinct labels ({shown}); to_outlier_labels "
            "needs two (normal and anomaly). Say which samples are anomalies "
            "with a boolean mask, e.g. to_outlier_labels(y != normal_class)."
        )
    if _is_member(-1, labels) and not _is_member(anomaly_label, [-1]):
        raise ValueError(
            "y contains -1, so it looks like it is in the outlier convention "
            "(+1 inlier, -1 outlier) already; converting it with "
            f"anomaly_label={anomaly_label!r} would swap inliers and outliers. "
            "Use it as it is, or pass anomaly_label=-1 if -1 marks anomalies."
        )
    is_anomaly = np.array([label == anomaly_label for label in y.tolist()], dtype=bool)
    if len(labels) == 2 and not (is_anomaly.any() and not is_anomaly.all()):
        raise ValueError(
            f"None of the labels {labels!r} equals anomaly_label="
            f"{anomaly_label!r}; pass the label that marks anomalies."
        )
    return np.where(is_anomaly, -1, 1)


def _numbers(y, what):
    """``y`` as float64 (booleans kept), refusing strings and missing values."""
    if y.dtype == bool:
        return y
    strings = y.dtype.kind in "US" or (
        y.dtype == object and any(isinstance(v, (str, bytes)) for v in y.tolist())
    )
    numeric = None
    if not strings:
        try:
            numeric = y.astype(np.float64)
        except (TypeError, ValueError):
            numeric = None
    if numeric is None or np.isnan(numeric).any():
        problem = "missing values" if numeric is not None else "non-numbers"
        raise ValueError(
            f"{what} holds {problem}; expected labels 1 = anomaly / 0 = "
            "normal, or +1 normal / -1 anomaly (numbers or booleans; strings "
            "such as '1' are not read as numbers)."
        )
    return numeric


def anomaly_mask(y, *, convention=None, what="y"):
    """Labels in either convention as a boolean mask, True = anomaly.

    Reads ``y`` by the rule of this module: numbers or booleans; 1 = anomaly
    / 0 = normal (booleans: True = anomaly), or the outlier convention +1
    normal / -1 anomaly. With ``convention=None`` the convention is told by
    a label only one of them has (0 or -1), so both classes must occur and
    the convention is never a guess; with ``convention`` given, labels of
    the other one are refused.

    Parameters
    ----------
    y : array-like of shape (n_samples,)
    convention : {'anomaly', 'outlier'} or None, default=None
        The convention ``y`` must be in: 'anomaly' (1 = anomaly, 0 =
        normal), 'outlier' (+1 inlier, -1 outlier), or None for either,
        told by the labels (both classes must then occur).
    what : str, default='y'
        What ``y`` is, for the messages.

    Returns
    -------
    anomalous : ndarray of bool

    Examples
    --------
    >>> from skanomaly.labels import anomaly_mask
    >>> anomaly_mask([0, 1, 1]).tolist(), anomaly_mask([1, -1, 1]).tolist()
    ([False, True, True], [False, True, False])
    >>> anomaly_mask([1, 1], convention="anomaly").tolist()
    [True, True]
    >>> anomaly_mask([1, 1])  # doctest: +ELLIPSIS
    Traceback (most recent call last):
    ...
    ValueError: y has only the label 1; the label-dependent parts need both ...
    """
    y = np.asarray(y)
    if y.ndim != 1:
        raise ValueError(f"{what} must be 1-D; got shape {y.shape}.")
    if convention is not None:
        if convention not in _CONVENTIONS:
            raise ValueError(
                f"convention must be 'anomaly', 'outlier' or None; got {convention!r}."
            )
        _numbers(y, what)
        other = "outlier" if convention == "anomaly" else "anomaly"
        swap = "would swap normal and anomalous samples"
        return _checked_mask(
            y,
            convention,
            who=f"{what} (convention={convention!r})",
            consequence=f"which {swap}" if convention == "anomaly" else swap,
            fix=f"Pass convention={other!r} or convention=None."
            if convention == "anomaly"
            else f", or pass convention={other!r}",
        )
    if y.size == 0:
        raise ValueError(f"{what} is empty.")
    y = _numbers(y, what)
    values = set(_distinct(y))
    if values == {0, 1}:  # rule 2: 0 (or False) decides
        return y == 1
    if values == {-1, 1}:  # rule 2: -1 decides
        return y == -1
    shown = sorted(values)[:5]
    if values <= {0, 1} or values <= {-1, 1}:
        raise ValueError(
            f"{what} has only the label {shown[0]:g}; the label-dependent parts "
            "need both normal and anomalous samples."
        )
    raise ValueError(
        f"{what} has the labels {shown}; expected 1 = anomaly / 0 = normal, or "
        "+1 normal / -1 anomaly (scikit-learn's outlier convention)."
    )
