"""Scorers for outlier detectors and a converter between label conventions.

Two label conventions meet in anomaly detection:

- **1 = anomaly** (``0`` normal, ``1`` anomaly), used by most benchmarks
  (ADBench, MVTec AD, ...);
- scikit-learn's **outlier convention** (``+1`` inlier, ``-1`` outlier), the
  output of ``predict`` and the labels ``fit(X, y)`` understands: it leaves
  the samples labelled ``-1`` out of training.

A detector's ``decision_function`` and ``score_samples`` grow with
*normality*. scikit-learn's ``'roc_auc'`` scorer is right with outlier
labels (AUROC of ranking inliers above outliers equals the AUROC of ranking
outliers above inliers) but silently gives ``1 - AUROC`` with 1 = anomaly
labels, and its ``'average_precision'`` and ``'f1'`` score the positive class
``+1``, the *inliers*. The scorers here take the anomaly as the positive class
and check the labels they get (by the rule of :mod:`skanomaly.labels`), so
that a convention mix-up raises instead of inverting a score:

========================== ===================== ==============================
name                       labels ``y``          score
========================== ===================== ==============================
anomaly_roc_auc            1 = anomaly, 0 normal AUROC of the anomaly scores
anomaly_average_precision  1 = anomaly, 0 normal AP, anomalies positive
anomaly_f1                 1 = anomaly, 0 normal F1 of ``predict`` for anomalies
outlier_roc_auc            +1 inlier, -1 outlier AUROC of the anomaly scores
outlier_average_precision  +1 inlier, -1 outlier AP, outliers positive
outlier_f1                 +1 inlier, -1 outlier F1 of ``predict`` for outliers
========================== ===================== ==============================

The anomaly score used by the ranking metrics is ``-decision_function(X)``
(or ``-score_samples(X)`` for estimators without ``decision_function``), as
for any scikit-learn outlier detector. In a cross-validated search, where
``fit`` needs outlier labels to leave anomalies out of training, use the
``outlier_*`` scorers (see :mod:`skanomaly.model_selection`).

:func:`benjamini_hochberg` flags a batch from its conformal p-values
(``detector.conformal_p_values(X)``) at a false discovery rate (see
:mod:`skanomaly.conformal`).

Two pixel metrics score anomaly maps against ground-truth masks (1 = defect):
:func:`pixel_roc_auc_score` (AUROC over all pixels of all images) and
:func:`aupro_score` (the MVTec AD per-region overlap, integrated up to a false
positive rate of 0.3).
"""

import copy
from functools import partial

import numpy as np
from scipy import ndimage
from sklearn.metrics import (
    average_precision_score,
    f1_score,
    make_scorer,
    roc_auc_score,
)
from sklearn.metrics import get_scorer as _sklearn_get_scorer
from sklearn.metrics import get_scorer_names as _sklearn_get_scorer_names

# next to the metrics, where a user looks for it (defined with the conformal
# p-values it takes)
from .conformal import benjamini_hochberg

# the labels' one rule lives in skanomaly.labels; to_outlier_labels stays
# importable from here, where users look for it
from .labels import _checked_mask, _distinct, _in_convention, to_outlier_labels

__all__ = [
    "anomaly_average_precision_scorer",
    "benjamini_hochberg",
    "anomaly_f1_scorer",
    "anomaly_roc_auc_scorer",
    "aupro_score",
    "get_scorer",
    "get_scorer_names",
    "outlier_average_precision_scorer",
    "outlier_f1_scorer",
    "outlier_roc_auc_scorer",
    "pixel_roc_auc_score",
    "to_outlier_labels",
]

# Detectors rank by normality: decision_function, else score_samples.
_RANKING_METHODS = ("decision_function", "score_samples")


def _anomaly_mask(y_true, convention, scorer_name):
    """``y_true == anomaly`` after checking ``y_true`` is in ``convention``."""
    other = scorer_name.replace(
        convention, "outlier" if convention == "anomaly" else "anomaly", 1
    )
    if convention == "anomaly":
        consequence = "with which this scorer would invert the score"
        fix = f"Use {other} for +1/-1 labels."
    else:
        consequence = "would invert the score"
        fix = f", or use {other} for 0/1 labels"
    return _checked_mask(
        y_true, convention, who=scorer_name, consequence=consequence, fix=fix
    )


def _predicted_anomalies(y_pred, scorer_name):
    labels = _distinct(np.asarray(y_pred).reshape(-1))
    if not _in_convention(labels, "outlier"):
        raise ValueError(
            f"{scorer_name} needs an estimator whose predict returns +1 "
            f"(inlier) and -1 (outlier), as scikit-learn outlier detectors do; "
            f"predict returned {labels[:5]!r}."
        )
    return np.asarray(y_pred) == -1


# Score functions, module level so that the scorers pickle (e.g. to Dask
# workers). ``normality`` is decision_function (or score_samples) output.


def _ranking_score(y_true, normality, *, metric, convention, name):
    y = _anomaly_mask(y_true, convention, name)
    return metric(y, -np.asarray(normality, dtype=np.float64))


def _f1_score(y_true, y_pred, *, convention, name):
    y = _anomaly_mask(y_true, convention, name)
    return f1_score(y, _predicted_anomalies(y_pred, name))


def _make_scorers():
    scorers = {}
    for convention in ("anomaly", "outlier"):
        for metric_name, metric in (
            ("roc_auc", roc_auc_score),
            ("average_precision", average_precision_score),
        ):
            name = f"{convention}_{metric_name}"
            score = partial(
                _ranking_score, metric=metric, convention=convention, name=name
            )
            scorers[name] = make_scorer(score, response_method=_RANKING_METHODS)
        name = f"{convention}_f1"
        score = partial(_f1_score, convention=convention, name=name)
        scorers[name] = make_scorer(score, response_method="predict")
    return scorers


_SCORERS = _make_scorers()
anomaly_roc_auc_scorer = _SCORERS["anomaly_roc_auc"]
anomaly_average_precision_scorer = _SCORERS["anomaly_average_precision"]
anomaly_f1_scorer = _SCORERS["anomaly_f1"]
outlier_roc_auc_scorer = _SCORERS["outlier_roc_auc"]
outlier_average_precision_scorer = _SCORERS["outlier_average_precision"]
outlier_f1_scorer = _SCORERS["outlier_f1"]


def get_scorer(scoring):
    """Get a scorer by name: skanomaly's names, then scikit-learn's.

    Parameters
    ----------
    scoring : str, callable or None
        One of :func:`get_scorer_names` (skanomaly's anomaly scorers first,
        then every scikit-learn scorer name), or a scorer callable / None,
        returned as :func:`sklearn.metrics.get_scorer` does.

    Returns
    -------
    scorer : callable
        ``scorer(estimator, X, y)``; pass it as ``scoring`` to
        ``GridSearchCV``, ``cross_validate`` and the like (alone or in a
        dict for multi-metric evaluation).

    Examples
    --------
    >>> from sklearn.datasets import load_digits
    >>> from sklearn.metrics import roc_auc_score
    >>> from skanomaly import AutoEncoder
    >>> from skanomaly.metrics import get_scorer
    >>> X, digit = load_digits(return_X_y=True)
    >>> det = AutoEncoder(max_epochs=5, random_state=0).fit(X[digit == 0])
    >>> y = (digit != 0).astype(int)  # 1 = anomaly
    >>> auroc = get_scorer("anomaly_roc_auc")(det, X, y)
    >>> bool(auroc == roc_auc_score(y, -det.score_samples(X)))
    True
    >>> bool(auroc > 0.9)
    True
    """
    if isinstance(scoring, str) and scoring in _SCORERS:
        return copy.deepcopy(_SCORERS[scoring])
    return _sklearn_get_scorer(scoring)


def get_scorer_names():
    """Names :func:`get_scorer` accepts: skanomaly's, then scikit-learn's.

    Returns
    -------
    names : list of str

    Examples
    --------
    >>> from skanomaly.metrics import get_scorer_names
    >>> get_scorer_names()[:3]
    ['anomaly_average_precision', 'anomaly_f1', 'anomaly_roc_auc']
    """
    return sorted(_SCORERS) + list(_sklearn_get_scorer_names())


# ------------------------------------------------------------ pixel metrics


def _check_maps(masks, maps, name):
    """Masks as bool and maps as float64, both (n_images, height, width)."""
    masks, maps = np.asarray(masks), np.asarray(maps)
    if masks.shape != maps.shape:
        raise ValueError(
            f"{name}: masks of shape {masks.shape} and maps of shape {maps.shape}; "
            "expected one mask per map of the same height and width. Nothing is "
            "resized here: resize the maps (or read the masks) at one resolution "
            "first."
        )
    if masks.ndim == 2:
        masks, maps = masks[None], maps[None]
    if masks.ndim != 3 or masks.size == 0:
        raise ValueError(
            f"{name} expects masks and maps of shape (n_images, height, width) "
            f"or (height, width); got {masks.shape}."
        )
    if masks.dtype != bool:
        if not np.isin(masks, (0, 1)).all():
            raise ValueError(
                f"{name} expects binary masks (bool, or 0 and 1 with 1 = defect); "
                f"got values such as {np.unique(masks)[:5].tolist()}."
            )
        masks = masks.astype(bool)
    maps = maps.astype(np.float64)
    if not np.isfinite(maps).all():
        raise ValueError(f"{name}: the maps contain NaN or infinite values.")
    return masks, maps


def _check_both_kinds(masks, name):
    n_defect = int(masks.sum())
    if n_defect == 0 or n_defect == masks.size:
        kind = "defect" if n_defect == 0 else "normal"
        raise ValueError(
            f"{name} is undefined without {kind} pixels: the masks have none."
        )


def pixel_roc_auc_score(masks, maps):
    """AUROC of the anomaly maps as pixel classifiers, over all pixels of all images.

    Every pixel of every image counts once, images without defects included
    (their pixels are all normal).

    Parameters
    ----------
    masks : array-like of shape (n_images, height, width) or (height, width)
        Ground truth, True (or 1) on defect pixels.
    maps : array-like of the same shape
        Anomaly maps, higher = more anomalous (e.g. ``anomaly_map(X)``).
        No resizing happens: another shape is a ``ValueError``.

    Returns
    -------
    score : float

    Raises
    ------
    ValueError
        If the shapes differ, a mask is not binary, a map is not finite, or
        the masks have no defect pixel (or no normal pixel).

    Examples
    --------
    >>> import numpy as np
    >>> from skanomaly.metrics import pixel_roc_auc_score
    >>> masks = np.zeros((1, 2, 2), bool)
    >>> masks[0, 0, 0] = True
    >>> round(pixel_roc_auc_score(masks, [[[0.9, 0.5], [0.1, 0.95]]]), 4)
    0.6667
    """
    masks, maps = _check_maps(masks, maps, "pixel_roc_auc_score")
    _check_both_kinds(masks, "pixel_roc_auc_score")
    return float(roc_auc_score(masks.ravel(), maps.ravel()))


def aupro_score(masks, maps, *, fpr_limit=0.3):
    """Area under the per-region overlap curve up to a false positive rate.

    The localisation metric of the MVTec AD benchmark (Bergmann et al.,
    IJCV 2021), computed as its official evaluation code does:

    - the defect regions are the connected components of each mask, with
      8-connectivity (pixels touching at a corner are one region);
    - at a threshold ``t``, a region's overlap is the fraction of its pixels
      with a map value ``>= t``, and the per-region overlap (PRO) is the
      mean over all regions of all images; the false positive rate (FPR) is
      the fraction of the normal pixels of all images, defect-free images
      included, with a value ``>= t``;
    - every distinct map value is a threshold (pixels with equal values
      enter the curve together, so ties never make intermediate points);
      the curve starts at (0, 0);
    - the area under PRO(FPR) from 0 to ``fpr_limit``, by the trapezoidal
      rule with PRO interpolated linearly at ``fpr_limit``, divided by
      ``fpr_limit``.

    Counts are integers and the curve float64. The result lies in [0, 1]:
    PRO and FPR are fractions, and the area up to ``fpr_limit`` is at most
    ``fpr_limit``. 1 means every region is entirely above every normal
    pixel's value; a random map scores about ``fpr_limit / 2``.

    Parameters
    ----------
    masks : array-like of shape (n_images, height, width) or (height, width)
        Ground truth, True (or 1) on defect pixels; an image without defect
        has an all-False mask.
    maps : array-like of the same shape
        Anomaly maps, higher = more anomalous. No resizing happens: another
        shape is a ``ValueError``.
    fpr_limit : float, default=0.3
        Upper end of the integration, in (0, 1].

    Returns
    -------
    score : float

    Raises
    ------
    ValueError
        If the shapes differ, a mask is not binary, a map is not finite, or
        the masks have no defect pixel at all (the official code then
        divides by zero regions and returns NaN) or no normal pixel.

    Examples
    --------
    Two regions and three normal pixels; each region lies entirely above
    every normal pixel:

    >>> import numpy as np
    >>> from skanomaly.metrics import aupro_score
    >>> masks = np.array([[[1, 0, 0], [0, 0, 1], [0, 0, 1]]])
    >>> maps = np.array([[[0.9, 0.1, 0.2], [0.3, 0.0, 0.8], [0.3, 0.0, 0.7]]])
    >>> aupro_score(masks, maps)
    1.0
    """
    if not 0 < fpr_limit <= 1:
        raise ValueError(f"fpr_limit must lie in (0, 1]; got {fpr_limit}.")
    masks, maps = _check_maps(masks, maps, "aupro_score")
    _check_both_kinds(masks, "aupro_score")
    fpr, pro = _pro_curve(masks, maps)
    return _area_up_to(fpr, pro, fpr_limit) / fpr_limit


def _pro_curve(masks, maps):
    """FPR and PRO at every distinct value of the maps, from (0, 0)."""
    structure = np.ones((3, 3), dtype=bool)  # 8-connectivity
    labels = np.empty(masks.shape, dtype=np.int64)
    n_regions = 0
    for i, mask in enumerate(masks):
        labels[i], n = ndimage.label(mask, structure=structure)
        labels[i][mask] += n_regions  # unique across images
        n_regions += n
    labels = labels.ravel()
    sizes = np.bincount(labels, minlength=n_regions + 1)
    normal = labels == 0
    # each region weighs 1 in total: 1/size per pixel
    weight = np.where(normal, 0.0, 1.0 / sizes[labels])
    order = np.argsort(-maps.ravel(), kind="stable")
    values = maps.ravel()[order]
    false_positives = np.cumsum(normal[order], dtype=np.int64)
    overlap = np.cumsum(weight[order])
    # one point per distinct value: the last of each run of ties
    last = np.r_[values[1:] != values[:-1], True]
    fpr = false_positives[last] / int(normal.sum())
    pro = np.minimum(overlap[last] / n_regions, 1.0)
    return np.r_[0.0, fpr], np.r_[0.0, pro]


def _area_up_to(x, y, limit):
    """Trapezoidal area under y(x) for x in [0, limit] (x non-decreasing)."""
    inside = int(np.searchsorted(x, limit, side="right"))  # points with x <= limit
    xs, ys = x[:inside], y[:inside]
    if inside < len(x) and xs[-1] < limit:
        # interpolate y at the limit between the last point inside and the next
        x0, x1, y0, y1 = x[inside - 1], x[inside], y[inside - 1], y[inside]
        xs = np.r_[xs, limit]
        ys = np.r_[ys, y0 + (y1 - y0) * (limit - x0) / (x1 - x0)]
    return float(np.sum((xs[1:] - xs[:-1]) * (ys[1:] + ys[:-1]) / 2))
