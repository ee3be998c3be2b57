"""Scorers for both label conventions, the label converter, the pixel metrics."""

import pickle

import numpy as np
import pytest
from sklearn.base import BaseEstimator, OutlierMixin
from sklearn.datasets import load_digits
from sklearn.metrics import (
    average_precision_score,
    f1_score,
    make_scorer,
    roc_auc_score,
)
from sklearn.metrics import get_scorer as sklearn_get_scorer

from skanomaly import AutoEncoder
from skanomaly.metrics import (
    anomaly_roc_auc_scorer,
    aupro_score,
    get_scorer,
    get_scorer_names,
    outlier_roc_auc_scorer,
    pixel_roc_auc_score,
    to_outlier_labels,
)

RANKING = ["roc_auc", "average_precision"]
SKANOMALY_NAMES = [
    f"{convention}_{metric}"
    for convention in ("anomaly", "outlier")
    for metric in ("roc_auc", "average_precision", "f1")
]


@pytest.fixture(scope="module")
def fitted():
    """A detector trained on digit 9, test data with 1 = anomaly labels.

    Digit 9 is a hard normal class: AUROC well below 1 and anomaly AP far
    from inlier AP, so a swapped class or an inverted score shows.
    """
    X, digit = load_digits(return_X_y=True)
    det = AutoEncoder(hidden_sizes=(16,), max_epochs=3, random_state=0)
    det.fit(X[digit == 9][:120])
    rng = np.random.default_rng(0)
    others = rng.choice(np.flatnonzero(digit != 9), 15, replace=False)
    test = np.concatenate([np.flatnonzero(digit == 9)[120:], others])
    y_anomaly = (digit[test] != 9).astype(int)
    return det, X[test], y_anomaly


# -- to_outlier_labels ------------------------------------------------------


@pytest.mark.parametrize(
    "y, kwargs",
    [
        ([0, 1, 1, 0], {}),
        ([False, True, True, False], {}),
        ([0.0, 1.0, 1.0, 0.0], {}),
        (["good", "cut", "cut", "good"], {"anomaly_label": "cut"}),
        ([5, 7, 7, 5], {"anomaly_label": 7}),
        ([1, -1, -1, 1], {"anomaly_label": -1}),
    ],
)
def test_to_outlier_labels_maps_anomalies_to_minus_one(y, kwargs):
    out = to_outlier_labels(y, **kwargs)
    assert out.tolist() == [1, -1, -1, 1]
    assert out.dtype.kind == "i"


def test_to_outlier_labels_one_class():
    assert to_outlier_labels([0, 0, 0]).tolist() == [1, 1, 1]
    assert to_outlier_labels([1, 1]).tolist() == [-1, -1]


@pytest.mark.parametrize(
    "y, kwargs, match",
    [
        (
            [1, -1, 1],
            {},
            "looks like it is in the outlier convention",
        ),  # would be inverted
        ([-1, -1], {}, "looks like it is in the outlier convention"),
        ([0, 1, 2], {}, "3 distinct labels"),  # which ones are normal?
        (["good", "cut"], {}, "anomaly_label"),  # which one is the anomaly?
        ([0, 2], {}, "anomaly_label"),
        ([[0, 1]], {}, "1-D"),
    ],
)
def test_to_outlier_labels_refuses_ambiguous_input(y, kwargs, match):
    with pytest.raises(ValueError, match=match):
        to_outlier_labels(y, **kwargs)


def test_to_outlier_labels_output_is_what_fit_drops():
    # the converted labels make fit train on the normal samples only
    X, digit = load_digits(return_X_y=True)
    X, digit = X[digit <= 1], digit[digit <= 1]
    params = dict(hidden_sizes=(8,), max_epochs=2, random_state=0)
    with_labels = AutoEncoder(**params).fit(X, to_outlier_labels(digit == 1))
    on_normals = AutoEncoder(**params).fit(X[digit == 0])
    np.testing.assert_array_equal(
        with_labels.score_samples(X), on_normals.score_samples(X)
    )


# -- scorers: same AUROC as a manual roc_auc_score on anomaly scores --------


def test_every_auroc_scorer_matches_manual_roc_auc(fitted):
    det, X, y_anomaly = fitted
    y_outlier = to_outlier_labels(y_anomaly)
    manual = roc_auc_score(y_anomaly, -det.score_samples(X))
    assert 0.6 < manual < 0.95  # informative, so an inversion would show
    assert get_scorer("anomaly_roc_auc")(det, X, y_anomaly) == pytest.approx(
        manual, abs=1e-12
    )
    assert anomaly_roc_auc_scorer(det, X, y_anomaly) == pytest.approx(manual, abs=1e-12)
    assert get_scorer("outlier_roc_auc")(det, X, y_outlier) == pytest.approx(
        manual, abs=1e-12
    )
    assert outlier_roc_auc_scorer(det, X, y_outlier) == pytest.approx(manual, abs=1e-12)
    # scikit-learn's own scorer is right with outlier-convention labels
    assert sklearn_get_scorer("roc_auc")(det, X, y_outlier) == pytest.approx(
        manual, abs=1e-12
    )


def test_average_precision_scorers_score_the_anomaly_class(fitted):
    det, X, y_anomaly = fitted
    y_outlier = to_outlier_labels(y_anomaly)
    normality = det.score_samples(X)
    manual = average_precision_score(y_anomaly, -normality)
    assert get_scorer("anomaly_average_precision")(det, X, y_anomaly) == pytest.approx(
        manual, abs=1e-12
    )
    assert get_scorer("outlier_average_precision")(det, X, y_outlier) == pytest.approx(
        manual, abs=1e-12
    )
    # scikit-learn's 'average_precision' scores the positive class, +1: inliers
    inlier_ap = average_precision_score(y_outlier == 1, normality)
    sk = sklearn_get_scorer("average_precision")(det, X, y_outlier)
    assert sk == pytest.approx(inlier_ap, abs=1e-12)
    assert abs(sk - manual) > 0.05
    # and pos_label=-1 cannot fix it: detectors' scores are not flipped, the
    # ranking is inverted (why outlier_average_precision exists)
    flipped = make_scorer(
        average_precision_score, response_method="decision_function", pos_label=-1
    )(det, X, y_outlier)
    assert flipped == pytest.approx(average_precision_score(y_anomaly, normality))
    assert flipped < manual - 0.05


def test_f1_scorers_score_the_anomaly_class(fitted):
    det, X, y_anomaly = fitted
    y_outlier = to_outlier_labels(y_anomaly)
    predicted = det.predict(X)
    manual = f1_score(y_anomaly, predicted == -1)
    assert get_scorer("anomaly_f1")(det, X, y_anomaly) == pytest.approx(manual)
    assert get_scorer("outlier_f1")(det, X, y_outlier) == pytest.approx(manual)
    # scikit-learn: 'f1' scores the inliers; pos_label=-1 gives the anomaly F1
    inlier_f1 = f1_score(y_outlier, predicted)
    assert sklearn_get_scorer("f1")(det, X, y_outlier) == pytest.approx(inlier_f1)
    assert inlier_f1 != pytest.approx(manual)
    assert make_scorer(f1_score, pos_label=-1)(det, X, y_outlier) == pytest.approx(
        manual
    )


# -- wrong pairings raise instead of inverting ------------------------------


@pytest.mark.parametrize("metric", ["roc_auc", "average_precision", "f1"])
def test_anomaly_scorer_refuses_outlier_labels(fitted, metric):
    det, X, y_anomaly = fitted
    with pytest.raises(ValueError, match=rf"outlier convention.*outlier_{metric}"):
        get_scorer(f"anomaly_{metric}")(det, X, to_outlier_labels(y_anomaly))


@pytest.mark.parametrize("metric", ["roc_auc", "average_precision", "f1"])
def test_outlier_scorer_refuses_zero_one_labels(fitted, metric):
    det, X, y_anomaly = fitted
    with pytest.raises(ValueError, match=r"contains 0.*to_outlier_labels"):
        get_scorer(f"outlier_{metric}")(det, X, y_anomaly)


@pytest.mark.parametrize("name", SKANOMALY_NAMES)
def test_scorers_refuse_other_labels(fitted, name):
    det, X, y_anomaly = fitted
    with pytest.raises(ValueError, match="expects labels"):
        get_scorer(name)(det, X, np.where(y_anomaly == 1, 2, -2))


def test_sklearn_roc_auc_with_zero_one_labels_is_inverted(fitted):
    # What the anomaly_* scorers guard against: scikit-learn's scorer cannot
    # know that 1 means anomaly, and silently returns 1 - AUROC.
    det, X, y_anomaly = fitted
    manual = roc_auc_score(y_anomaly, -det.score_samples(X))
    assert sklearn_get_scorer("roc_auc")(det, X, y_anomaly) == pytest.approx(
        1 - manual, abs=1e-12
    )


class ZeroOneDetector(OutlierMixin, BaseEstimator):
    """Predicts 1 for outliers, like PyOD detectors."""

    def fit(self, X, y=None):
        return self

    def predict(self, X):
        return (np.asarray(X)[:, 0] > 0).astype(int)


@pytest.mark.parametrize("name", ["anomaly_f1", "outlier_f1"])
def test_f1_scorers_refuse_zero_one_predictions(name):
    X = np.array([[-1.0], [1.0], [2.0]])
    y = [0, 1, 1] if name.startswith("anomaly") else [1, -1, -1]
    with pytest.raises(ValueError, match=r"predict returned \[0, 1\]"):
        get_scorer(name)(ZeroOneDetector().fit(X), X, y)


# -- lookup and pickling ------------------------------------------------------


def test_get_scorer_names_and_fallback():
    names = get_scorer_names()
    assert names[:6] == sorted(SKANOMALY_NAMES)
    assert "roc_auc" in names and "neg_log_loss" in names
    assert get_scorer("roc_auc")._score_func is roc_auc_score
    with pytest.raises(ValueError, match="not a valid scoring value"):
        get_scorer("anomaly_auroc")


def test_get_scorer_returns_independent_copies():
    first = get_scorer("anomaly_roc_auc")
    first._kwargs["extra"] = 1
    assert "extra" not in get_scorer("anomaly_roc_auc")._kwargs


@pytest.mark.parametrize("name", SKANOMALY_NAMES)
def test_scorers_pickle(fitted, name):
    # scorers travel to joblib and Dask workers
    det, X, y_anomaly = fitted
    y = y_anomaly if name.startswith("anomaly") else to_outlier_labels(y_anomaly)
    scorer = get_scorer(name)
    assert pickle.loads(pickle.dumps(scorer))(det, X, y) == scorer(det, X, y)


def test_scorers_work_with_scikit_learn_detectors():
    from sklearn.ensemble import IsolationForest

    rng = np.random.default_rng(0)
    X = rng.normal(size=(200, 4))
    y_anomaly = (rng.random(200) < 0.15).astype(int)
    X[y_anomaly == 1] += 1.5
    det = IsolationForest(random_state=0).fit(X[y_anomaly == 0])
    manual = roc_auc_score(y_anomaly, -det.decision_function(X))
    assert 0.7 < manual < 1.0
    assert get_scorer("anomaly_roc_auc")(det, X, y_anomaly) == pytest.approx(manual)
    assert get_scorer("outlier_roc_auc")(
        det, X, to_outlier_labels(y_anomaly)
    ) == pytest.approx(manual)


# ------------------------------------------------------------ pixel metrics


def _rows(*rows):
    """Images of one row each: (n_images, 1, width)."""
    return np.array(rows, dtype=float)[:, None, :]


def test_aupro_hand_computed_with_a_defect_free_image():
    # image 1: region {0.9, 0.6}, normal {0.7, 0.1}; image 2 has no defect.
    # 6 normal pixels; curve (0,0) (0,.5) (1/6,.5) (1/6,1) (1/3,1) ...:
    # area to 0.3 = 0.5/6 + 1 * (0.3 - 1/6) = 13/60
    masks = _rows([1, 1, 0, 0], [0, 0, 0, 0])
    maps = _rows([0.9, 0.6, 0.7, 0.1], [0.5, 0.4, 0.3, 0.2])
    assert aupro_score(masks, maps) == pytest.approx(13 / 18, abs=1e-12)
    # without the defect-free image the FPR steps are 1/2: PRO stays 0.5
    assert aupro_score(masks[:1], maps[:1]) == pytest.approx(0.5, abs=1e-12)


def test_aupro_ties_enter_the_curve_together():
    # the region pixel ties with a normal pixel: one point (0.5, 1), not a
    # step; PRO interpolated at 0.3 is 0.6, area 0.09
    masks = _rows([1, 0, 0])
    maps = _rows([0.5, 0.5, 0.0])
    assert aupro_score(masks, maps) == pytest.approx(0.3, abs=1e-12)
    # a constant map: the curve is the diagonal, AUPRO = limit / 2
    assert aupro_score(masks, np.zeros_like(maps)) == pytest.approx(0.15)
    assert aupro_score(masks, np.zeros_like(maps), fpr_limit=1.0) == pytest.approx(0.5)


def test_aupro_regions_are_8_connected_and_weigh_one_each():
    masks = np.zeros((1, 4, 4), bool)
    masks[0, 0, 0] = masks[0, 1, 1] = True  # touch at a corner: one region
    masks[0, 3, 3] = True  # a second region
    maps = np.linspace(0.1, 0.8, 16).reshape(1, 4, 4)
    maps[0, 3, 3], maps[0, 0, 0], maps[0, 1, 1] = 0.95, 0.9, 0.0
    # region {(3,3)} fully and half of {(0,0),(1,1)} above every normal
    # pixel: PRO = (1 + 1/2) / 2 at FPR 0 (4-connectivity would give 2/3)
    assert aupro_score(masks, maps) == pytest.approx(0.75, abs=1e-12)


def test_aupro_many_small_regions():
    masks = np.zeros((2, 10, 10), bool)
    masks[:, ::2, ::2] = True  # 25 isolated pixels per image: 50 regions
    rng = np.random.default_rng(0)
    maps = rng.uniform(0.2, 0.8, size=masks.shape)
    region = np.flatnonzero(masks.ravel())
    high = rng.choice(region, 20, replace=False)
    maps.ravel()[region] = 0.0
    maps.ravel()[high] = 1.0
    assert aupro_score(masks, maps) == pytest.approx(20 / 50, abs=1e-12)


def _brute_force_aupro(masks, maps, limit):
    """The definition, threshold by threshold (slow; tiny inputs only)."""
    from scipy import ndimage

    regions = []
    for mask, values in zip(masks, maps):
        labels, n = ndimage.label(mask, structure=np.ones((3, 3)))
        regions += [values[labels == r] for r in range(1, n + 1)]
    normal = maps[~masks]
    points = [(0.0, 0.0)]
    for t in np.unique(maps)[::-1]:
        pro = np.mean([np.mean(r >= t) for r in regions])
        points.append((np.mean(normal >= t), pro))
    area = 0.0
    for (x0, y0), (x1, y1) in zip(points[:-1], points[1:]):
        if x1 <= limit:
            area += (x1 - x0) * (y0 + y1) / 2
        elif x0 < limit:
            y = y0 + (y1 - y0) * (limit - x0) / (x1 - x0)
            area += (limit - x0) * (y0 + y) / 2
    return area / limit


@pytest.mark.parametrize("seed", range(40))
def test_aupro_matches_the_definition_and_stays_in_0_1(seed):
    rng = np.random.default_rng(seed)
    n, h, w = rng.integers(1, 4), rng.integers(2, 9), rng.integers(2, 9)
    masks = rng.random((n, h, w)) < rng.uniform(0.05, 0.6)
    masks.flat[rng.integers(masks.size)] = True
    masks.flat[rng.integers(masks.size)] = False
    if masks.all() or not masks.any():
        pytest.skip("one kind of pixel only")
    maps = rng.normal(size=masks.shape) + rng.uniform(0, 3) * masks
    if seed % 2:
        maps = np.round(maps * 2) / 2  # heavy ties
    limit = float(rng.choice([0.05, 0.3, 1.0]))
    score = aupro_score(masks, maps, fpr_limit=limit)
    assert 0.0 <= score <= 1.0
    assert score == pytest.approx(_brute_force_aupro(masks, maps, limit), abs=1e-9)
    # only the order of the map values matters
    assert aupro_score(masks, np.exp(maps) * 100 - 50, fpr_limit=limit) == (
        pytest.approx(score, abs=1e-9)
    )


def test_pixel_roc_auc_counts_every_pixel_of_every_image():
    masks = _rows([1, 0, 0], [0, 0, 0])
    maps = _rows([0.6, 0.5, 0.1], [0.7, 0.0, 0.0])
    # the defect pixel outranks 4 of the 5 normal pixels
    assert pixel_roc_auc_score(masks, maps) == pytest.approx(0.8)
    assert pixel_roc_auc_score(masks[:1], maps[:1]) == pytest.approx(1.0)


@pytest.mark.parametrize("metric", [aupro_score, pixel_roc_auc_score])
def test_pixel_metrics_refuse_what_they_would_have_to_guess(metric):
    masks = np.zeros((2, 4, 4), bool)
    masks[0, 1, 1] = True
    maps = np.random.default_rng(0).random((2, 4, 4))
    with pytest.raises(ValueError, match="resize"):
        metric(masks, maps[:, :, :3])
    with pytest.raises(ValueError, match="resize"):
        metric(masks[:1], maps)
    with pytest.raises(ValueError, match="binary"):
        metric(masks * 255, maps)
    with pytest.raises(ValueError, match="without defect pixels"):
        metric(np.zeros_like(masks), maps)
    with pytest.raises(ValueError, match="NaN"):
        metric(masks, np.where(masks, np.nan, maps))
    # a single (height, width) image is one image
    assert metric(masks[0], maps[0]) == metric(masks[:1], maps[:1])
