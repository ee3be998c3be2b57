"""One self-contained HTML file that shows what a fitted detector does on data.

:func:`report` writes the dataset, the model and its parameters, the score
distribution with the threshold ``offset_``, how that threshold was
calibrated and the conformal p-values, and, for images, the most anomalous
samples with their anomaly maps overlaid; with labels also the false-alarm
rate on the normal samples next to the requested level, the ROC and
precision-recall curves, the confusion matrix at the threshold and the
least normal-looking normal samples; with ground-truth masks the pixel
metrics. Plots are SVG (matplotlib), images PNG, all inline: the file opens
from disk, needs no network and can be mailed as it is.
"""

import base64
import dataclasses
import datetime
import html
import io
import math
from numbers import Real
from pathlib import Path

import numpy as np
from sklearn.utils.validation import check_is_fitted

from ._validation import validate_images
from .detectors.base import get_detector_tags

# the labels' one rule lives in skanomaly.labels; anomaly_mask stays
# importable from here, where it was first defined
from .labels import anomaly_mask

__all__ = ["anomaly_mask", "report"]

# Section ids, in page order (also what the tests look for).
SECTIONS = {
    "summary": "Summary",
    "dataset": "Dataset",
    "model": "Model",
    "scores": "Score distribution",
    "calibration": "Threshold calibration",
    "curves": "ROC and precision-recall curves",
    "confusion": "Confusion matrix at the threshold",
    "kinds": "AUROC per kind of anomaly",
    "pixel-metrics": "Pixel metrics",
    "examples": "Samples",
}

_TILE_PIXELS = (96, 192)  # shown images are scaled into this range of sizes
_HISTOGRAM_BINS = 50


def report(
    detector,
    X,
    path,
    *,
    y=None,
    names=None,
    scores=None,
    kinds=None,
    masks=None,
    dataset=None,
    title=None,
    n_examples=8,
):
    """Write an HTML report of a fitted detector on ``X``.

    One self-contained file (plots and images inline, no network) with the
    dataset, the model and its parameters, the distribution of
    ``score_samples`` with the threshold ``offset_``, and how the threshold
    was calibrated: the scheme (``calibration_``), the number of calibration
    samples, the false-alarm level it was set for (``contamination``) and a
    histogram of the conformal p-values (``conformal_p_values``), which
    should look uniform on normal data. With labels, the false-alarm rate
    on the labelled normal samples (the fraction predicted anomalous) stands
    next to that level. For images, a grid of
    the most anomalous samples, with their anomaly maps overlaid when the
    detector's tags declare ``anomaly_maps`` (otherwise the report says it
    has none); for tabular data, a table of them. With labels ``y``, also
    the ROC and precision-recall curves, the confusion matrix at the
    threshold, the AUROC per kind of anomaly (``kinds``) and the least
    normal-looking normal samples. With ground-truth ``masks``, the pixel
    metrics of :mod:`skanomaly.metrics` (``pixel_roc_auc_score``,
    ``aupro_score``) of the anomaly maps.

    Parameters
    ----------
    detector : fitted detector
    X : array-like
        Tabular rows (n_samples, n_features) or images (n_samples, height,
        width) / (n_samples, channels, height, width), as for
        ``score_samples``: images are read in the value range of ``fit``
        (``image_value_range_``) by the rule of ``score_samples``, also when
        ``scores`` are given (images of another range are refused or
        converted as there), and shown in that range.
    path : str or path-like
        The HTML file to write (replaced if it exists).
    y : array-like of shape (n_samples,), default=None
        Labels, either 1 = anomaly / 0 = normal, or scikit-learn's outlier
        convention +1 normal / -1 anomaly (or booleans, True = anomaly);
        both classes must occur. None: the report leaves out what needs
        labels.
    names : sequence of str, default=None
        A name per sample (e.g. its file); default: its index.
    scores : array-like of shape (n_samples,), default=None
        ``detector.score_samples(X)`` when already computed.
    kinds : sequence of str, default=None
        The kind of each anomalous sample (e.g. the defect folder), for the
        AUROC per kind; entries of normal samples are ignored.
    masks : array-like of shape (n_samples, height, width), default=None
        Ground-truth anomaly masks of images (nonzero = anomalous pixel), at
        the images' height and width (``skanomaly evaluate --report`` reads
        them from an MVTec AD ``ground_truth`` folder).
    dataset : str, default=None
        A description of the data (e.g. its path).
    title : str, default=None
        Page title; default: the detector's name and the dataset.
    n_examples : int, default=8
        Samples per group in the grid of examples.

    Returns
    -------
    path : pathlib.Path
        The file written.

    Raises
    ------
    ImportError
        If matplotlib is not installed (``pip install 'skanomaly[report]'``).
    ValueError
        If the lengths of ``X``, ``y``, ``names``, ``scores``, ``kinds`` or
        ``masks`` differ, or ``y`` is not in one of the two conventions with
        both classes.

    Examples
    --------
    >>> import tempfile
    >>> from sklearn.datasets import load_digits
    >>> from skanomaly import AutoEncoder, report
    >>> X, digit = load_digits(return_X_y=True)
    >>> images = (X.reshape(-1, 8, 8) * 255 / 16).astype("uint8")
    >>> detector = AutoEncoder(max_epochs=3, random_state=0).fit(images[digit == 0])
    >>> path = report(detector, images[:200], tempfile.mkdtemp() + "/report.html",
    ...               y=digit[:200] != 0, dataset="digits, 0 normal")
    >>> page = path.read_text()
    >>> 'id="curves"' in page and 'id="examples"' in page
    True
    """
    from .persistence.format import write_atomically

    check_is_fitted(detector, "offset_")
    # the threshold it writes belongs to the fitted score
    check_scoring = getattr(detector, "_check_scoring_setting", None)
    if check_scoring is not None:
        check_scoring()
    figures = _matplotlib()
    data = _ReportData(detector, X, y, names, scores, kinds, masks, n_examples)
    sections = [
        _summary_section(data),
        _dataset_section(data, dataset),
        _model_section(data),
        _scores_section(data, figures),
        _calibration_section(data, figures),
    ]
    if data.anomalous is not None:
        sections += [
            _curves_section(data, figures),
            _confusion_section(data),
            _kinds_section(data),
        ]
    if data.masks is not None:
        sections.append(_pixel_metrics_section(data))
    sections.append(_examples_section(data))
    name = type(detector).__name__
    if title is None:
        title = f"{name} on {dataset}" if dataset else f"{name} report"
    page = _page(title, [section for section in sections if section])
    path = Path(path)
    if not path.parent.is_dir():
        raise FileNotFoundError(f"Output folder {str(path.parent)!r} does not exist.")
    write_atomically(path, page.encode("utf-8"))
    return path


# ---------------------------------------------------------------- the data


_AUTO_RULE = (
    "contamination='auto': flag below median - 3 x 1.4826 x MAD of the "
    "calibration scores, at least their 1st percentile; new normals are "
    "flagged as often as the calibration samples, and at least 1% of them"
)


@dataclasses.dataclass(frozen=True)
class _ThresholdFacts:
    """What a fitted detector's threshold was set for, in numbers and words.

    Attributes
    ----------
    scheme : str or None
        ``calibration_`` ('split', 'leave-one-out', 'cross-fit' or
        'training'); None for a model without calibration scores (saved
        before calibrated thresholds, or a plugin without them).
    n_calibration : int
        Number of calibration scores (``len(calibration_scores_)``).
    contamination : float, str or None
        The detector's ``contamination``.
    level : float or None
        The false-alarm rate on new normal samples that the threshold was
        set for: ``contamination`` when it is a float; for 'auto', the
        expected rate below.
    expected : float or None
        The probability that a new normal sample, exchangeable with the
        calibration samples, is predicted anomalous. With ``m`` of the ``n``
        calibration scores below ``offset_``: ``(m + 1) / (n + 1)``, exact,
        when ``offset_`` is one of them (a float ``contamination``);
        otherwise (``'auto'``) the rate ``m / n`` at which the calibration
        samples are flagged, which lies between the bounds ``m / (n + 1)``
        and ``(m + 1) / (n + 1)``. None without calibration scores, or when
        they are the training samples' own (``calibration_ == 'training'``).
    expected_text : str or None
        How ``expected`` follows from the calibration scores.
    calibration_text, level_text : str
        One line each, for the report and the command line.
    """

    scheme: str | None
    n_calibration: int
    contamination: object
    level: float | None
    expected: float | None
    expected_text: str | None
    calibration_text: str
    level_text: str


def _threshold_facts(detector):
    """The :class:`_ThresholdFacts` of a fitted detector.

    Parameters
    ----------
    detector : fitted detector

    Returns
    -------
    facts : _ThresholdFacts

    Examples
    --------
    >>> import numpy as np
    >>> from skanomaly import Mahalanobis
    >>> from skanomaly.reporting import _threshold_facts
    >>> X = np.random.default_rng(0).normal(size=(200, 2))
    >>> facts = _threshold_facts(Mahalanobis(contamination=0.05).fit(X))
    >>> facts.scheme, facts.n_calibration, facts.level
    ('leave-one-out', 200, 0.05)
    """
    scores = getattr(detector, "calibration_scores_", None)
    scheme = None
    if scores is not None:
        scheme = getattr(detector, "calibration_", "unknown scheme")
    contamination = getattr(detector, "contamination", None)
    n = 0 if scores is None else len(scores)
    expected = expected_text = None
    if scores is not None and scheme != "training":
        below = int(np.searchsorted(scores, detector.offset_, side="left"))
        if np.searchsorted(scores, detector.offset_, side="right") > below:
            expected = (below + 1) / (n + 1)
            expected_text = (
                f"offset_ is the calibration score of rank {below + 1}: "
                f"{below + 1} / ({n} + 1)"
            )
        else:
            expected = below / n
            expected_text = f"{below} of the {n} calibration scores lie below offset_"
    if isinstance(contamination, Real) and not isinstance(contamination, bool):
        level = float(contamination)
        level_text = f"{level:g} (contamination={level:g})"
    elif contamination == "auto":
        level = expected
        shown = "unknown" if level is None else f"{level:.4g}"
        level_text = f"{shown} ({_AUTO_RULE})"
    else:
        level = None
        level_text = f"unknown (contamination={contamination!r})"
    if scheme == "training":
        level_text += (
            "; calibrated on the training samples, which the model scores as "
            "more normal: new normal samples are flagged more often"
        )
    return _ThresholdFacts(
        scheme=scheme,
        n_calibration=n,
        contamination=contamination,
        level=level,
        expected=expected,
        expected_text=expected_text,
        calibration_text=_calibration_text(detector, scheme, n),
        level_text=level_text,
    )


def _calibration_text(detector, scheme, n):
    if scheme is None:
        return (
            "none: the model keeps no calibration scores (saved before "
            "calibrated thresholds, or a detector without them); refit it for "
            "p-values and a threshold that holds on new data"
        )
    what = {
        "split": "held-out normal training samples the model did not fit",
        "leave-one-out": (
            "training samples, each scored by the model fitted without it"
        ),
        "cross-fit": (
            f"training samples, each scored by one of "
            f"{getattr(detector, 'calibration', 'K')} models fitted without its fold"
        ),
        "training": "training samples, scored by the model fitted on them",
    }.get(scheme, "samples")
    return f"{scheme}, {n} {what}"


def _p_values_of(detector, scores):
    """Conformal p-values of ``scores`` (``score_samples``), or None.

    The p-values ``detector.conformal_p_values`` gives for the samples of
    these scores, computed from ``calibration_scores_`` without scoring
    again; None for a model without calibration scores.

    Parameters
    ----------
    detector : fitted detector
    scores : array-like of shape (n_samples,)
        ``detector.score_samples(X)``.

    Returns
    -------
    p_values : ndarray of shape (n_samples,) or None

    Examples
    --------
    >>> import numpy as np
    >>> from skanomaly import Mahalanobis
    >>> from skanomaly.reporting import _p_values_of
    >>> X = np.random.default_rng(0).normal(size=(200, 2))
    >>> detector = Mahalanobis().fit(X)
    >>> p = _p_values_of(detector, detector.score_samples(X[:5]))
    >>> bool(np.array_equal(p, detector.conformal_p_values(X[:5])))
    True
    """
    calibration = getattr(detector, "calibration_scores_", None)
    if calibration is None:
        return None
    from .conformal import conformal_p_values

    return conformal_p_values(calibration, scores)


def _false_alarm_rate(anomalous, predicted):
    """Fraction of the normal samples predicted anomalous, and how many.

    Parameters
    ----------
    anomalous : array-like of bool
        True = labelled anomalous.
    predicted : array-like of bool
        True = predicted anomalous (``predict == -1``).

    Returns
    -------
    rate : float
        NaN when no sample is normal.
    n_false : int
    n_normal : int

    Examples
    --------
    >>> from skanomaly.reporting import _false_alarm_rate
    >>> _false_alarm_rate([False, False, False, True], [True, False, False, True])
    (0.3333333333333333, 1, 3)
    """
    anomalous = np.asarray(anomalous, dtype=bool)
    predicted = np.asarray(predicted, dtype=bool)
    n_normal = int((~anomalous).sum())
    n_false = int((predicted & ~anomalous).sum())
    return (n_false / n_normal if n_normal else math.nan), n_false, n_normal


@dataclasses.dataclass(frozen=True)
class _Evaluation:
    """What labels say of a detector's scores: the numbers of ``skanomaly
    evaluate`` and of the report, computed once by :func:`_evaluate`.

    Attributes
    ----------
    auroc, average_precision : float
        Of the anomaly scores (``-score_samples``), anomalies positive.
    f1 : float
        Of the predictions at the threshold, anomalies positive (0 when
        nothing is predicted anomalous).
    false_alarm_rate : float
        Fraction of the normal samples predicted anomalous (NaN without
        normal samples); ``n_false_alarms`` of ``n_normal``.
    n_false_alarms, n_normal, n_anomalous, n_predicted : int
    confusion : dict
        ``{(labelled anomalous, predicted anomalous): count}`` for the four
        pairs of booleans.
    kinds : list of (kind, n_samples, auroc)
        Without ``kinds``, empty; else per kind of anomaly, sorted, the AUROC
        of its samples against all normal samples.
    """

    auroc: float
    average_precision: float
    f1: float
    false_alarm_rate: float
    n_false_alarms: int
    n_normal: int
    n_anomalous: int
    n_predicted: int
    confusion: dict
    kinds: list


def _evaluate(anomalous, scores, predicted, kinds=None):
    """AUROC, AP, F1, the false-alarm rate, the confusion and AUROC per kind.

    The one evaluation of labelled data: ``skanomaly evaluate`` prints it,
    :func:`report` shows it.

    Parameters
    ----------
    anomalous : array-like of bool
        True = labelled anomalous (see :func:`skanomaly.labels.anomaly_mask`).
    scores : array-like of float
        ``score_samples`` (higher = more normal).
    predicted : array-like of bool
        True = predicted anomalous (``predict == -1``).
    kinds : array-like of str, default=None
        The kind of each sample (entries of normal samples are ignored).

    Returns
    -------
    evaluation : _Evaluation

    Examples
    --------
    >>> from skanomaly.reporting import _evaluate
    >>> e = _evaluate([False, False, True, True], [3.0, 1.0, 2.0, 0.0],
    ...               [False, True, False, True], kinds=["", "", "a", "b"])
    >>> e.auroc, e.false_alarm_rate, e.kinds
    (0.75, 0.5, [('a', 1, 0.5), ('b', 1, 1.0)])
    """
    from sklearn.metrics import average_precision_score, f1_score, roc_auc_score

    anomalous = np.asarray(anomalous, dtype=bool)
    predicted = np.asarray(predicted, dtype=bool)
    anomaly_score = -np.asarray(scores, dtype=np.float64)
    rate, n_false, n_normal = _false_alarm_rate(anomalous, predicted)
    per_kind = []
    if kinds is not None:
        kinds = np.asarray(kinds, dtype=object)
        for kind in sorted(set(kinds[anomalous].tolist())):
            chosen = (kinds == kind) & anomalous
            keep = chosen | ~anomalous
            auroc = roc_auc_score(anomalous[keep], anomaly_score[keep])
            per_kind.append((kind, int(chosen.sum()), float(auroc)))
    return _Evaluation(
        auroc=float(roc_auc_score(anomalous, anomaly_score)),
        average_precision=float(average_precision_score(anomalous, anomaly_score)),
        f1=float(f1_score(anomalous, predicted, zero_division=0.0)),
        false_alarm_rate=rate,
        n_false_alarms=n_false,
        n_normal=n_normal,
        n_anomalous=int(anomalous.sum()),
        n_predicted=int(predicted.sum()),
        confusion={
            (a, p): int(np.sum((anomalous == a) & (predicted == p)))
            for a in (False, True)
            for p in (False, True)
        },
        kinds=per_kind,
    )


def _pixel_metrics(masks, maps):
    """Pixel AUROC and AUPRO (up to FPR 0.3) of anomaly maps against masks.

    The pixel metrics of ``skanomaly evaluate`` and of :func:`report`.

    Parameters
    ----------
    masks : array-like of shape (n_images, height, width)
        Ground truth, True on defect pixels.
    maps : array-like of the same shape
        ``anomaly_map`` of the images.

    Returns
    -------
    pixel_auroc, aupro : float

    Examples
    --------
    >>> import numpy as np
    >>> from skanomaly.reporting import _pixel_metrics
    >>> masks = np.zeros((1, 2, 2), bool)
    >>> masks[0, 0, 0] = True
    >>> _pixel_metrics(masks, [[[0.9, 0.5], [0.1, 0.2]]])
    (1.0, 1.0)
    """
    from .metrics import aupro_score, pixel_roc_auc_score

    return pixel_roc_auc_score(masks, maps), aupro_score(masks, maps)


class _ReportData:
    """The validated inputs and everything derived from the scores."""

    def __init__(self, detector, X, y, names, scores, kinds, masks, n_examples):
        self.detector = detector
        self.tags = get_detector_tags(detector)
        self.X = X
        n = len(X)
        if n == 0:
            raise ValueError("report needs at least one sample; X is empty.")
        self.offset = float(detector.offset_)
        self.anomalous = None if y is None else anomaly_mask(y)
        self.names = [str(i) for i in range(n)] if names is None else list(names)
        self.kinds = None if kinds is None else np.asarray(kinds, dtype=object)
        self.masks = None if masks is None else np.asarray(masks) != 0
        self.images = detector.image_shape_ is not None
        self.value_range = None
        if self.images:
            self.X = self._read_images(X)  # indexed for the grid
        self.scores = (
            detector.score_samples(self.X)
            if scores is None
            else np.asarray(scores, dtype=np.float64).reshape(-1)
        )
        for what, value in [
            ("y", self.anomalous),
            ("names", self.names),
            ("scores", self.scores),
            ("kinds", self.kinds),
            ("masks", self.masks),
        ]:
            if value is not None and len(value) != n:
                raise ValueError(
                    f"{what} has {len(value)} entries but X has {n} samples."
                )
        if self.masks is not None:
            expected = self.X.shape[-2:] if self.images else None
            if expected is None or self.masks.shape[1:] != expected:
                raise ValueError(
                    f"masks must have shape (n_samples, height, width) = "
                    f"{(n, *expected) if expected else 'images only'}, the size of "
                    f"the images; got {self.masks.shape}."
                )
        self.predicted = self.scores < self.offset  # predict() == -1
        self.threshold = _threshold_facts(detector)
        self.p_values = _p_values_of(detector, self.scores)
        self.evaluation = (
            None
            if y is None
            else _evaluate(self.anomalous, self.scores, self.predicted, self.kinds)
        )
        self.n_examples = int(n_examples)

    def _read_images(self, X):
        """``X`` read as ``score_samples`` reads it, where the detector has the rule.

        A detector that records ``image_value_range_`` (every
        :class:`~skanomaly.BaseDetector`) refuses or converts images of
        another range (see ``BaseDetector``); the report shows and scores
        the images as read, so given scores, maps and the grid all agree.
        """
        detector = self.detector
        if not hasattr(detector, "image_value_range_"):
            return np.asarray(X)  # a plugin without the rule of fit
        self.value_range = detector.image_value_range_
        return validate_images(
            X,
            name=type(detector).__name__,
            keep_uint8=True,
            estimator=detector,
            reset=False,
        )

    def images_of(self, rows):
        """Images of ``rows`` as uint8 (n, height, width, 1 or 3)."""
        images = self.X[rows]
        if images.ndim == 3:
            images = images[:, None]
        if images.dtype != np.uint8:
            images = images.astype(np.float64)
            if self.value_range is not None:  # the range of fit, not stretched
                images = images * (255.0 / self.value_range[1])
            else:
                low, high = float(images.min()), float(images.max())
                if low < 0 or high > 1:  # floats of another range: stretch them
                    images = (images - low) / (high - low or 1.0)
                images = images * 255.0
            images = np.clip(np.rint(images), 0, 255).astype(np.uint8)
        return images.transpose(0, 2, 3, 1)


# ---------------------------------------------------------------- plots


def _matplotlib():
    try:
        from matplotlib.figure import Figure
    except ImportError:
        raise ImportError(
            "The HTML report draws its plots with matplotlib, which is not "
            "installed: pip install 'skanomaly[report]'."
        ) from None
    return Figure


def _svg(figure):
    import matplotlib

    buffer = io.BytesIO()
    with matplotlib.rc_context({"svg.hashsalt": "skanomaly", "svg.fonttype": "path"}):
        figure.savefig(
            buffer, format="svg", bbox_inches="tight", metadata={"Date": None}
        )
    return _img(buffer.getvalue(), "image/svg+xml", "plot")


def _text(value):
    """``value`` as HTML text (or a quoted attribute value): every string that
    comes from a detector, its parameters or the data goes through this."""
    return html.escape(str(value))


def _img(data, mime, css_class, alt=""):
    encoded = base64.b64encode(data).decode("ascii")
    return (
        f'<img class="{css_class}" alt="{_text(alt)}" '
        f'src="data:{mime};base64,{encoded}">'
    )


def _histogram(data, Figure):
    scores, offset = data.scores, data.offset
    low, high = _shown_range(np.append(scores, offset))
    clipped = np.clip(scores, low, high)
    bins = np.linspace(low, high, _HISTOGRAM_BINS + 1)
    figure = Figure(figsize=(7, 3.2))
    axes = figure.subplots()
    if data.anomalous is None:
        axes.hist(clipped, bins=bins, color="#4c72b0", label="all samples")
        axes.set_ylabel("samples")
    else:
        # one density per class: a rare class stays visible
        for mask, label, color in [
            (~data.anomalous, "normal", "#4c72b0"),
            (data.anomalous, "anomalous", "#dd8452"),
        ]:
            axes.hist(
                clipped[mask],
                bins=bins,
                density=True,
                histtype="stepfilled",
                alpha=0.5,
                edgecolor=color,
                color=color,
                label=f"{label} ({int(mask.sum())})",
            )
        axes.set_ylabel("density (per class)")
    axes.axvline(offset, color="black", linestyle="--", label=f"offset_ = {offset:.4g}")
    axes.set_xlabel("score_samples (higher = more normal)")
    axes.legend(frameon=False)
    n_outside = int(np.sum((scores < low) | (scores > high)))
    return _svg(figure), n_outside


def _shown_range(values):
    """A histogram range that extreme scores (e.g. the lowest float) do not squash."""
    values = values[np.isfinite(values)]
    q_low, q_high = np.percentile(values, [0.5, 99.5])
    spread = (q_high - q_low) or 1.0
    low = max(float(values.min()), q_low - 2 * spread)
    high = min(float(values.max()), q_high + 2 * spread)
    return (low, high) if high > low else (low - 0.5, high + 0.5)


def _curves(data, Figure):
    from sklearn.metrics import precision_recall_curve, roc_curve

    anomaly_score = -data.scores
    figure = Figure(figsize=(8, 3.6))
    roc_axes, pr_axes = figure.subplots(1, 2)
    fpr, tpr, _ = roc_curve(data.anomalous, anomaly_score)
    roc_axes.plot(fpr, tpr, color="#4c72b0")
    roc_axes.plot([0, 1], [0, 1], color="grey", linestyle=":")
    point_fpr = data.predicted[~data.anomalous].mean()
    point_tpr = data.predicted[data.anomalous].mean()
    roc_axes.plot(point_fpr, point_tpr, "o", color="black", label="at offset_")
    roc_axes.set(xlabel="false positive rate", ylabel="true positive rate")
    roc_axes.set_title(f"ROC, AUROC {data.evaluation.auroc:.4f}", fontsize=10)
    roc_axes.legend(frameon=False, loc="lower right")
    precision, recall, _ = precision_recall_curve(data.anomalous, anomaly_score)
    pr_axes.plot(recall, precision, color="#dd8452")
    pr_axes.axhline(data.anomalous.mean(), color="grey", linestyle=":")
    pr_axes.set(xlabel="recall (anomalies)", ylabel="precision", ylim=(0, 1.02))
    pr_axes.set_title(
        f"Precision-recall, AP {data.evaluation.average_precision:.4f}", fontsize=10
    )
    for axes in (roc_axes, pr_axes):
        axes.set_aspect("equal", adjustable="box")
    figure.tight_layout()
    return _svg(figure)


# ---------------------------------------------------------------- sections


def _section(key, body, note=None):
    note = f'<p class="note">{note}</p>' if note else ""
    return f'<section id="{key}"><h2>{SECTIONS[key]}</h2>{note}{body}</section>'


def _table(rows, header=None):
    head = ""
    if header:
        head = "<tr>" + "".join(f"<th>{cell}</th>" for cell in header) + "</tr>"
    body = "".join(
        "<tr>" + "".join(f"<td>{cell}</td>" for cell in row) + "</tr>" for row in rows
    )
    return f"<table>{head}{body}</table>"


def _summary_section(data):
    n = len(data.scores)
    cards = [
        ("samples", f"{n}"),
        ("predicted anomalous", f"{int(data.predicted.sum())}"),
    ]
    if data.anomalous is not None:
        cards.insert(1, ("labelled anomalous", f"{int(data.anomalous.sum())}"))
        cards += [
            ("AUROC", f"{data.evaluation.auroc:.4f}"),
            ("AP", f"{data.evaluation.average_precision:.4f}"),
            ("F1 at offset_", f"{data.evaluation.f1:.4f}"),
            _false_alarm_card(data),
        ]
    body = "".join(
        f'<div class="card"><div class="value">{value}</div>'
        f'<div class="label">{label}</div></div>'
        for label, value in cards
    )
    note = None
    if data.anomalous is None:
        note = (
            "No labels: the curves, the confusion matrix and the metrics that "
            "need them are left out."
        )
    return _section("summary", f'<div class="cards">{body}</div>', note)


def _false_alarm_card(data):
    rate = data.evaluation.false_alarm_rate
    level = data.threshold.level
    wanted = "" if level is None else f" (requested {level:.4g})"
    return (f"false-alarm rate{wanted}", "n/a" if math.isnan(rate) else f"{rate:.4f}")


def _dataset_section(data, dataset):
    n = len(data.scores)
    if data.images:
        shape = np.shape(data.X)[1:]
        kind = f"images, {'x'.join(map(str, shape))} (channels first)"
    else:
        kind = f"tabular, {np.shape(data.X)[1]} features"
    rows = [
        ("source", _text(dataset or "(not given)")),
        ("kind", kind),
        ("samples", n),
    ]
    if data.anomalous is not None:
        n_anomalous = int(data.anomalous.sum())
        rows += [("normal", n - n_anomalous), ("anomalous", n_anomalous)]
    if data.masks is not None:
        rows.append(
            (
                "ground-truth masks",
                f"{int(data.masks.any(axis=(1, 2)).sum())} images with defect pixels",
            )
        )
    return _section("dataset", _table(rows))


def _model_section(data):
    from . import __version__
    from .registry import registered_name

    detector = data.detector
    cls = type(detector)
    registered = registered_name(cls) or "(not registered)"
    fitted = detector.image_shape_ or (detector.n_features_in_,)
    rows = [
        ("detector", f"{_text(cls.__name__)} (<code>{_text(registered)}</code>)"),
        ("class", f"<code>{_text(f'{cls.__module__}.{cls.__qualname__}')}</code>"),
        ("fitted on", _text("x".join(map(str, fitted)))),
        ("input", _text(_input_text(detector))),
        ("threshold offset_", f"{data.offset:.6g}"),
        ("anomaly maps", "yes" if data.tags.anomaly_maps else "no"),
        ("skanomaly", __version__),
    ]
    params = sorted(detector.get_params(deep=False).items())
    parameters = _table(
        [(f"<code>{_text(name)}</code>", _text(repr(value))) for name, value in params],
        header=("parameter", "value"),
    )
    return _section("model", _table(rows) + "<h3>Parameters</h3>" + parameters)


def _input_text(detector):
    """How the detector reads its input: the dtype and value range of fit."""
    if detector.image_shape_ is None:
        return "tabular rows"
    dtype = getattr(detector, "image_dtype_", None)
    if dtype is None or not hasattr(detector, "image_value_range_"):
        return "images"
    value_range = detector.image_value_range_
    if value_range is None:
        return f"{dtype} images, read as they are (values outside [0, 255] in fit)"
    reading = " as value / 255" if dtype == "uint8" else ""
    return f"{dtype} images, read{reading} in [{value_range[0]:g}, {value_range[1]:g}]"


def _scores_section(data, Figure):
    plot, n_outside = _histogram(data, Figure)
    note = (
        "score_samples of every sample (higher = more normal); samples below "
        f"the threshold offset_ = {data.offset:.6g} are predicted anomalous "
        "(decision_function = score_samples - offset_ &lt; 0)."
    )
    if n_outside:
        note += f" {n_outside} extreme score(s) are drawn at the edges of the plot."
    return _section("scores", plot, note)


def _calibration_section(data, Figure):
    facts = data.threshold
    rows = [
        ("threshold offset_", f"{data.offset:.6g}"),
        ("calibration", _text(facts.calibration_text)),
        ("false-alarm level requested", _text(facts.level_text)),
    ]
    if facts.expected is not None:
        rows.append(
            (
                "expected false-alarm rate on new normals",
                f"{facts.expected:.4g} ({_text(facts.expected_text)})",
            )
        )
    if data.anomalous is not None:
        rows.append(("false-alarm rate on the labelled normals", _observed(data)))
    table = _table(rows)
    if data.p_values is None:
        note = (
            "The model keeps no calibration scores, so there are no conformal p-values."
        )
        return _section("calibration", table, note)
    note = (
        "Conformal p-value of a sample: (1 + the calibration scores at or below "
        "its score_samples) / (n + 1), as conformal_p_values gives it. For "
        "normal samples like the calibration samples it is uniform on "
        "{1/(n+1), ..., 1}: the histogram of the normals should be flat at "
        "density 1 (the dashed line); a pile near 0 means more false alarms "
        "than requested (drift, or calibration on data unlike these)."
    )
    if data.anomalous is None:
        note += (
            " Without labels the histogram holds every sample: the normals "
            "spread evenly, anomalies pile up near 0."
        )
    else:
        note += " The histogram holds the labelled normal samples only."
    if facts.scheme == "training":
        note += (
            " Calibrated on the training samples: the p-values of new normals "
            "are not uniform, and there is no guarantee."
        )
    return _section("calibration", table + _p_value_histogram(data, Figure), note)


def _observed(data):
    evaluation = data.evaluation
    rate = evaluation.false_alarm_rate
    n_false, n_normal = evaluation.n_false_alarms, evaluation.n_normal
    if not n_normal:
        return "no labelled normal samples"
    text = f"{rate:.4f} ({n_false} of {n_normal} normal samples predicted anomalous"
    level = data.threshold.level
    if level is not None:
        spread = math.sqrt(level * (1 - level) / n_normal)
        text += (
            f"; at the requested level {level:.4g}, {n_normal} samples vary by a "
            f"binomial standard deviation of {spread:.4f}"
        )
    return text + ")"


def _p_value_bins(n_calibration):
    """Bin edges between the p-values {1/(n+1), ..., 1}, at most 20 bins.

    Each bin holds whole steps of the p-value grid, so uniform p-values have
    density 1 in every bin.
    """
    steps = n_calibration + 1
    cuts = np.unique(np.round(np.linspace(0, steps, min(20, steps) + 1)))
    return (cuts + 0.5) / steps


def _p_value_histogram(data, Figure):
    bins = _p_value_bins(data.threshold.n_calibration)
    figure = Figure(figsize=(7, 3.2))
    axes = figure.subplots()
    # the normals only, when labels say which: their flatness is the check
    shown = np.ones(len(data.p_values), bool)
    if data.anomalous is not None:
        shown = ~data.anomalous
    if shown.any():
        axes.hist(
            data.p_values[shown],
            bins=bins,
            density=True,
            histtype="stepfilled",
            alpha=0.5,
            edgecolor="#4c72b0",
            color="#4c72b0",
            label=f"{'all' if data.anomalous is None else 'normal'} samples "
            f"({int(shown.sum())})",
        )
    axes.axhline(1.0, color="black", linestyle="--", label="uniform")
    level = data.threshold.level
    if level is not None:
        axes.axvline(level, color="grey", linestyle=":", label=f"level {level:.4g}")
    axes.set_xlim(0, 1)
    axes.set_xlabel("conformal p-value (small = unlike the calibration samples)")
    axes.set_ylabel("density")
    axes.legend(frameon=False)
    return _svg(figure)


def _curves_section(data, Figure):
    note = (
        "Anomalies are the positive class; the dot is the operating point at offset_."
    )
    return _section("curves", _curves(data, Figure), note)


def _confusion_section(data):
    counts = data.evaluation.confusion
    rows = [
        ("<th>normal</th>", counts[False, False], counts[False, True]),
        ("<th>anomalous</th>", counts[True, False], counts[True, True]),
    ]
    table = _table(rows, header=("labelled \\ predicted", "normal", "anomalous"))
    table = table.replace("<td><th>", "<th>").replace("</th></td>", "</th>")
    true_positive = counts[True, True]
    precision = true_positive / max(1, data.evaluation.n_predicted)
    recall = true_positive / max(1, data.evaluation.n_anomalous)
    note = (
        f"At offset_ = {data.offset:.6g}: precision {precision:.4f}, recall "
        f"{recall:.4f} (anomalies positive)."
    )
    return _section("confusion", table, note)


def _kinds_section(data):
    if data.kinds is None:
        return None
    rows = [
        (_text(kind), n, f"{auroc:.4f}") for kind, n, auroc in data.evaluation.kinds
    ]
    table = _table(rows, header=("kind", "samples", "AUROC vs normal"))
    return _section("kinds", table)


def _pixel_metrics_section(data):
    if not data.images or not data.tags.anomaly_maps:
        note = (
            f"{_text(type(data.detector).__name__)} has no anomaly maps, so there are "
            "no pixel metrics."
        )
        return _section("pixel-metrics", "", note)
    pixel_auroc, aupro = _pixel_metrics(data.masks, data.detector.anomaly_map(data.X))
    rows = [
        ("pixel AUROC", f"{pixel_auroc:.4f}"),
        ("AUPRO (FPR up to 0.3)", f"{aupro:.4f}"),
    ]
    note = (
        "Every pixel of every image counts once for the pixel AUROC; AUPRO is "
        "the per-region overlap of the MVTec AD benchmark, normalised to 1 "
        "(skanomaly.metrics)."
    )
    return _section("pixel-metrics", _table(rows, header=("metric", "value")), note)


def _examples_section(data):
    order = np.argsort(data.scores, kind="stable")  # most anomalous first
    k = data.n_examples
    groups = [("Most anomalous samples (lowest score_samples)", order[:k])]
    if data.anomalous is not None:
        normal = order[~data.anomalous[order]]
        groups.append(
            (
                "Least normal-looking normal samples (candidate false positives)",
                normal[:k],
            )
        )
    else:
        groups.append(("Most normal samples (highest score_samples)", order[::-1][:k]))
    if not data.images:
        body = "".join(
            f"<h3>{title}</h3>" + _rows_table(data, rows) for title, rows in groups
        )
        note = "Tabular data: the samples are listed, there are no images to show."
        return _section("examples", body, note)
    if not data.tags.anomaly_maps:
        body = "".join(
            f"<h3>{title}</h3>" + _rows_table(data, rows) for title, rows in groups
        )
        note = (
            f"{_text(type(data.detector).__name__)} has no anomaly maps (its tags do "
            "not declare anomaly_maps): no image grid, the samples are listed."
        )
        return _section("examples", body, note)
    shown = np.concatenate([rows for _, rows in groups])
    maps = data.detector.anomaly_map(data.X[shown]) if len(shown) else None
    low, high = _map_range(maps)
    tiles = dict(zip(shown.tolist(), _tiles(data.images_of(shown), maps, low, high)))
    body = ""
    for title, rows in groups:
        cells = "".join(_tile_html(data, row, tiles[row]) for row in rows.tolist())
        body += f'<h3>{title}</h3><div class="grid">{cells}</div>'
    note = (
        "Each sample: the image and its anomaly map overlaid (inferno colours, "
        f"one scale for all maps shown: {low:.4g} dark to {high:.4g} bright)."
    )
    if data.anomalous is not None:
        note += " A red frame marks a prediction that differs from the label."
    return _section("examples", body, note)


def _caption_lines(data, row):
    lines = [f"score {data.scores[row]:.5g}"]
    if data.p_values is not None:
        lines.append(f"p-value {data.p_values[row]:.3g}")
    if data.anomalous is not None:
        lines.append("anomalous" if data.anomalous[row] else "normal")
    lines.append("predicted anomalous" if data.predicted[row] else "predicted normal")
    return lines


def _rows_table(data, rows):
    header = ["sample", "score_samples", "prediction"]
    if data.p_values is not None:
        header.insert(2, "p-value")
    if data.anomalous is not None:
        header.insert(-1, "label")
    table_rows = []
    for row in rows.tolist():
        cells = [
            f"<code>{_text(data.names[row])}</code>",
            f"{data.scores[row]:.6g}",
        ]
        if data.p_values is not None:
            cells.append(f"{data.p_values[row]:.4g}")
        if data.anomalous is not None:
            cells.append("anomalous" if data.anomalous[row] else "normal")
        cells.append("anomalous" if data.predicted[row] else "normal")
        table_rows.append(cells)
    return _table(table_rows, header=header)


def _tile_html(data, row, png):
    name = data.names[row]
    caption = "<br>".join(_text(line) for line in _caption_lines(data, row))
    wrong = data.anomalous is not None and data.anomalous[row] != data.predicted[row]
    return (
        f'<figure class="tile{" wrong" if wrong else ""}">'
        f"{_img(png, 'image/png', 'sample', alt=name)}"
        f'<figcaption><span class="name" title="{_text(name)}">'
        f"{_text(_short_name(name))}</span><br>{caption}</figcaption></figure>"
    )


def _short_name(name, limit=40):
    return name if len(name) <= limit else "…" + name[-(limit - 1) :]


# ---------------------------------------------------------------- image tiles


def _map_range(maps):
    if maps is None or not maps.size:
        return 0.0, 1.0
    finite = maps[np.isfinite(maps)]
    low, high = float(finite.min()), float(np.percentile(finite, 99.5))
    return low, high if high > low else low + 1.0


def _tiles(images, maps, low, high):
    """PNG bytes per image: the image and its map overlay, side by side."""
    from matplotlib import colormaps
    from PIL import Image

    palette = (colormaps["inferno"](np.linspace(0, 1, 256))[:, :3] * 255).astype(
        np.uint8
    )
    height, width = images.shape[1:3]
    scale = _display_scale(height, width)
    size = (max(1, round(width * scale)), max(1, round(height * scale)))
    resample = Image.NEAREST if scale >= 1 else Image.BILINEAR
    gap = np.full((size[1], 4, 3), 255, dtype=np.uint8)
    out = []
    for image, pixel_map in zip(images, maps):
        rgb = np.repeat(image, 3, axis=2) if image.shape[2] == 1 else image[..., :3]
        level = np.clip((pixel_map - low) / (high - low), 0, 1)
        level = np.nan_to_num(level, nan=1.0)
        heat = palette[np.rint(level * 255).astype(np.uint8)]
        blend = (0.45 * rgb + 0.55 * heat).astype(np.uint8)
        panels = [
            np.asarray(Image.fromarray(panel).resize(size, resample))
            for panel in (rgb, blend)
        ]
        buffer = io.BytesIO()
        Image.fromarray(np.concatenate([panels[0], gap, panels[1]], axis=1)).save(
            buffer, format="PNG"
        )
        out.append(buffer.getvalue())
    return out


def _display_scale(height, width):
    smallest, largest = _TILE_PIXELS
    side = max(height, width)
    if side < smallest:
        return float(np.ceil(smallest / side))  # whole pixels for small images
    return min(1.0, largest / side)


# ---------------------------------------------------------------- page


_STYLE = """
body { font-family: system-ui, -apple-system, "Segoe UI", sans-serif; margin: 0;
  color: #222; background: #fafafa; }
header { background: #223; color: #fff; padding: 16px 32px; }
header h1 { margin: 0 0 4px 0; font-size: 22px; }
header p { margin: 0; color: #ccd; font-size: 13px; }
nav { padding: 8px 32px; background: #eef; font-size: 13px; }
nav a { margin-right: 14px; color: #335; }
main { padding: 8px 32px 32px 32px; max-width: 1200px; }
section { background: #fff; border: 1px solid #ddd; border-radius: 6px;
  padding: 12px 20px; margin: 16px 0; }
h2 { font-size: 18px; margin: 4px 0 10px 0; }
h3 { font-size: 15px; margin: 16px 0 8px 0; }
table { border-collapse: collapse; font-size: 13px; }
th, td { border: 1px solid #ddd; padding: 4px 10px; text-align: left; }
th { background: #f3f3f6; }
.note { color: #555; font-size: 13px; }
.cards { display: flex; flex-wrap: wrap; gap: 12px; }
.card { border: 1px solid #ddd; border-radius: 6px; padding: 8px 16px;
  min-width: 110px; }
.card .value { font-size: 22px; font-weight: 600; }
.card .label { font-size: 12px; color: #666; }
img.plot { max-width: 100%; height: auto; }
.grid { display: flex; flex-wrap: wrap; gap: 10px; }
figure.tile { margin: 0; padding: 6px; border: 1px solid #ddd; border-radius: 4px;
  background: #fff; font-size: 11px; }
figure.tile.wrong { border-color: #c44; background: #fff5f5; }
figure.tile img { display: block; image-rendering: pixelated; }
figure.tile .name { font-family: monospace; }
"""


def _page(title, sections):
    from . import __version__

    ids = [section.split('"', 2)[1] for section in sections]
    links = "".join(f'<a href="#{key}">{SECTIONS[key]}</a>' for key in ids)
    created = datetime.datetime.now().astimezone().strftime("%Y-%m-%d %H:%M %Z")
    return (
        "<!DOCTYPE html>\n"
        '<html lang="en"><head><meta charset="utf-8">'
        '<meta name="viewport" content="width=device-width, initial-scale=1">'
        f"<title>{_text(title)}</title><style>{_STYLE}</style></head><body>"
        f"<header><h1>{_text(title)}</h1>"
        f"<p>skanomaly {__version__} report, written {created}</p></header>"
        f"<nav>{links}</nav><main>{''.join(sections)}</main></body></html>\n"
    )
