"""Calibrated thresholds: conformal arithmetic, schemes, guarantees on fresh data."""

import pickle
import warnings

import numpy as np
import pytest
from scipy import stats
from sklearn.base import clone
from sklearn.model_selection import GridSearchCV, StratifiedKFold

from skanomaly import Mahalanobis, PaDiM, PatchCore
from skanomaly.conformal import (
    benjamini_hochberg,
    conformal_p_values,
    conformal_threshold,
    smallest_level,
)
from skanomaly.detectors.base import (
    BaseDetector,
    CalibrationWarning,
    auto_threshold,
)
from skanomaly.metrics import benjamini_hochberg as bh_from_metrics
from skanomaly.testing import fast_detector


class NearestTrainingSample(BaseDetector):
    """Distance to the nearest training row: every training row scores 0.

    The worst case for a threshold taken from training scores: in-sample
    scores say nothing about new data.
    """

    def __init__(self, contamination="auto", calibration="auto", random_state=None):
        super().__init__(contamination=contamination, calibration=calibration)
        self.random_state = random_state

    def _fit(self, X):
        self.train_ = X.copy()

    def _score_samples(self, X):
        d2 = (
            (X**2).sum(1)[:, None]
            - 2 * X @ self.train_.T
            + (self.train_**2).sum(1)[None, :]
        )
        return -np.sqrt(np.maximum(d2.min(axis=1), 0.0))


# ------------------------------------------------------------ the arithmetic


def test_threshold_is_the_finite_sample_quantile():
    rng = np.random.default_rng(0)
    scores = rng.normal(size=37)
    anomaly = np.sort(-scores)
    for level in (0.03, 0.05, 0.1, 0.25, 0.5):
        # the ceil((n+1)(1-c))-th smallest anomaly score, as the issue states
        k = int(np.ceil((37 + 1) * (1 - level)))
        assert conformal_threshold(scores, level) == -anomaly[k - 1]
        # exactly floor((n+1) c) calibration scores lie at or below it
        assert np.sum(scores <= conformal_threshold(scores, level)) == int(
            np.floor(38 * level)
        )


def test_p_values_by_hand_and_consistent_with_the_threshold():
    calibration = np.array([3.0, 1.0, 2.0, 5.0])  # sorted: 1 2 3 5
    p = conformal_p_values(calibration, [0.0, 1.0, 2.5, 5.0, 7.0])
    np.testing.assert_allclose(p, [1 / 5, 2 / 5, 3 / 5, 1.0, 1.0])
    rng = np.random.default_rng(1)
    calibration, new = rng.normal(size=99), rng.normal(size=5000)
    for level in (0.01, 0.05, 0.1):
        flagged = new < conformal_threshold(calibration, level)
        np.testing.assert_array_equal(
            flagged, conformal_p_values(calibration, new) <= level
        )


def test_level_below_resolution_names_the_smallest_level_and_the_count():
    with pytest.raises(ValueError, match=r"needs at least 99 .* there are 40.*0\.0244"):
        conformal_threshold(np.arange(40.0), 0.01)
    assert smallest_level(99) == 0.01
    conformal_threshold(np.arange(99.0), 0.01)  # resolvable: no error


def test_benjamini_hochberg_by_hand():
    p = np.array([0.001, 0.008, 0.039, 0.041, 0.042, 0.06, 0.074, 0.205, 0.212, 0.9])
    # m = 10, alpha = 0.05: thresholds 0.005 k; the largest k with
    # p_(k) <= 0.005 k is k = 2 (0.008 <= 0.010; 0.039 > 0.015 ... 0.06 > 0.03)
    np.testing.assert_array_equal(
        benjamini_hochberg(p, 0.05), [True, True] + [False] * 8
    )
    # step-up at alpha = 0.1 (lines 0.01 k): 0.039 lies above its line
    # (0.03) but is flagged, because 0.06 <= 0.06 at k = 6; 0.074 > 0.07
    np.testing.assert_array_equal(benjamini_hochberg(p, 0.1), [True] * 6 + [False] * 4)
    shuffled = np.random.default_rng(0).permutation(10)
    np.testing.assert_array_equal(
        benjamini_hochberg(p[shuffled], 0.1), benjamini_hochberg(p, 0.1)[shuffled]
    )
    assert not benjamini_hochberg([0.5, 0.9], 0.05).any()
    assert bh_from_metrics is benjamini_hochberg
    with pytest.raises(ValueError, match="in \\[0, 1\\]"):
        benjamini_hochberg([0.1, 1.5])


def test_benjamini_hochberg_controls_fdr_on_conformal_p_values():
    rng = np.random.default_rng(0)
    fdp = []
    for _ in range(200):
        calibration = rng.normal(size=200)
        normal, anomalies = rng.normal(size=180), rng.normal(-3.5, 1.0, size=20)
        p = conformal_p_values(calibration, np.r_[normal, anomalies])
        flagged = benjamini_hochberg(p, 0.1)
        fdp.append(flagged[:180].sum() / max(flagged.sum(), 1))
    # FDR <= alpha * fraction of normals = 0.09 (+ Monte Carlo error)
    assert np.mean(fdp) <= 0.09 + 0.02


# ---------------------------------------------------- guarantees on new data


@pytest.mark.parametrize("calibration", ["auto", "split", 5])
def test_false_alarm_rate_on_fresh_normals_holds(calibration):
    """Over many fits, the rate on fresh normals is at most c (within noise)."""
    rng = np.random.default_rng(0)
    level, rates = 0.1, []
    for _ in range(60):
        X, fresh = rng.normal(size=(60, 8)), rng.normal(size=(1000, 8))
        det = Mahalanobis(contamination=level, calibration=calibration).fit(X)
        rates.append(np.mean(det.predict(fresh) == -1))
    standard_error = np.std(rates) / np.sqrt(len(rates))
    assert np.mean(rates) <= level + 3 * standard_error
    assert np.mean(rates) >= level - 0.04  # not uselessly conservative


def test_training_scores_break_the_promise_that_calibration_keeps():
    rng = np.random.default_rng(0)
    X, fresh = rng.normal(size=(300, 4)), rng.normal(size=(3000, 4))
    in_sample = NearestTrainingSample(contamination=0.05, calibration="training")
    assert np.mean(in_sample.fit(X).predict(fresh) == -1) > 0.9  # all flagged
    det = NearestTrainingSample(contamination=0.05, random_state=0).fit(X)
    assert det.calibration_ == "split" and det.calibration_scores_.size == 60
    rate = np.mean(det.predict(fresh) == -1)
    # one fit: Beta(3, 58) around 3/61; 3 binomial SDs of the fresh sample
    assert rate <= 0.05 + 3 * np.sqrt(0.05 * 0.95 / 3000) + 0.05


def test_p_values_of_fresh_normals_are_uniform():
    rng = np.random.default_rng(0)
    p = []
    for _ in range(40):
        X, fresh = rng.normal(size=(200, 5)), rng.normal(size=(100, 5))
        p.append(Mahalanobis().fit(X).conformal_p_values(fresh))
    p = np.concatenate(p)
    assert p.min() >= 1 / 201
    # discrete uniform on k / 201: compare with a continuous uniform
    assert stats.kstest(p, "uniform").pvalue > 1e-3
    anomalies = rng.normal(4.0, 1.0, size=(100, 5))
    assert np.median(Mahalanobis().fit(X).conformal_p_values(anomalies)) < 0.01


# --------------------------------------------------------------- the schemes


def test_leave_one_out_mahalanobis_equals_a_refit_without_the_row():
    rng = np.random.default_rng(0)
    X = rng.normal(size=(40, 6))
    for covariance in ("empirical", "ledoit_wolf", "oas"):
        det = Mahalanobis(covariance=covariance, groups=[0, 0, 0, 1, 1, 1]).fit(X)
        loo = -det._leave_one_out_distances(X, len(X)).sum(axis=1)
        np.testing.assert_allclose(np.sort(loo), det.calibration_scores_)
        for i in (0, 7):
            rest = np.delete(X, i, axis=0)
            expected = 0.0
            for g, columns in enumerate(det.groups_):
                # the refit with the shrinkage and its target held as fitted
                alpha, covariance_g = det.shrinkages_[g], det.covariances_[g]
                mu = np.trace(covariance_g) / len(columns)
                centred = rest[:, columns] - rest[:, columns].mean(axis=0)
                sigma = (1 - alpha) * centred.T @ centred / len(rest)
                sigma += alpha * mu * np.eye(len(columns))
                r = X[i, columns] - rest[:, columns].mean(axis=0)
                expected -= np.sqrt(r @ np.linalg.solve(sigma, r))
            assert loo[i] == pytest.approx(expected, rel=1e-9)


def _images(n=30, seed=0):
    return np.random.default_rng(seed).integers(0, 256, (n, 1, 32, 32), np.uint8)


@pytest.mark.parametrize("atypical", [False, True])
@pytest.mark.parametrize("pooling", [0.0, 0.5, 1.0])
def test_leave_one_out_padim_equals_a_refit_without_the_image(pooling, atypical):
    images = _images()
    if atypical:
        # an image unlike the others makes up much of the mean covariance
        # in some directions on its own: the series in its share converges
        # slowly there (the second-order sum was 11% off at w = 0.5)
        images = images[:10].copy()
        images[0] = 255 * (np.arange(32)[None, :, None] % 4 < 2)
    params = dict(covariance="empirical", covariance_pooling=pooling)
    det = fast_detector(PaDiM, **params).fit(images)
    assert det.calibration_ == "leave-one-out"
    loo = det._fit(images, leave_one_out=True)
    in_sample = det.score_samples(images)
    # with pooling the image also leaves the mean covariance (a series in
    # its share, summed or solved exactly where it converges slowly)
    rel = 1e-6 if pooling == 0 else 1e-4
    for i in (0, 1) if atypical else (0, 11):
        refit = fast_detector(PaDiM, calibration="training", **params)
        refit.fit(np.delete(images, i, axis=0))
        expected = refit.score_samples(images[i : i + 1])[0]
        assert loo[i] == pytest.approx(expected, rel=rel)
        # well apart from the in-sample score the approximation improves on
        assert abs(in_sample[i] - expected) > 100 * rel * abs(expected)


def test_leave_one_out_patchcore_hides_the_images_own_patches():
    images = _images(12)
    # with the whole bank kept, the bank without image i is the bank of a
    # fit without image i
    det = fast_detector(PatchCore, coreset_ratio=1.0).fit(images)
    loo = det._fit(images, leave_one_out=True)
    in_sample = det.score_samples(images)
    assert np.all(loo < in_sample)  # own patches at distance 0 no more
    for i in (0, 5):
        refit = fast_detector(PatchCore, coreset_ratio=1.0, calibration="training")
        refit.fit(np.delete(images, i, axis=0))
        assert loo[i] == pytest.approx(refit.score_samples(images[i : i + 1])[0])


def test_cross_fitting_calibrates_on_every_sample_and_refits_on_all():
    rng = np.random.default_rng(0)
    X = rng.normal(size=(50, 3))
    det = Mahalanobis(calibration=5).fit(X)
    assert det.calibration_ == "cross-fit" and det.calibration_scores_.size == 50
    full = Mahalanobis(calibration="training").fit(X)
    np.testing.assert_array_equal(det.score_samples(X), full.score_samples(X))
    # out-of-fold scores are less normal than the in-sample ones
    assert det.calibration_scores_.mean() < np.sort(full.score_samples(X)).mean()
    with pytest.raises(ValueError, match="at least 10 training samples"):
        Mahalanobis(calibration=5).fit(X[:8])


def test_split_is_deterministic_and_holds_out_calibration_size():
    rng = np.random.default_rng(0)
    X = rng.normal(size=(100, 3))
    first = NearestTrainingSample(random_state=3).fit(X)
    second = NearestTrainingSample(random_state=3).fit(X)
    np.testing.assert_array_equal(first.calibration_scores_, second.calibration_scores_)
    assert len(first.train_) == 80 and first.calibration_scores_.size == 20
    det = NearestTrainingSample(random_state=3).set_params()
    det.calibration_size = 0.5
    assert det.fit(X).calibration_scores_.size == 50


def test_leave_one_out_needs_a_detector_that_has_it():
    with pytest.raises(ValueError, match="no leave-one-out"):
        NearestTrainingSample(calibration="leave-one-out").fit(np.eye(5))
    assert NearestTrainingSample().fit(np.eye(5)).calibration_ == "split"
    assert Mahalanobis().fit(np.eye(5)).calibration_ == "leave-one-out"


def test_calibration_is_validated():
    for bad in ("conformal", 1, 0.3, None):
        with pytest.raises(ValueError, match="calibration"):
            Mahalanobis(calibration=bad).fit(np.eye(5))
    with pytest.raises(ValueError, match="calibration_size"):
        Mahalanobis(calibration="split", calibration_size=1.0).fit(np.eye(5))
    for bad in (0.0, 1.0, "0.9"):
        with pytest.raises(ValueError, match="calibration_confidence"):
            Mahalanobis(contamination=0.1, calibration_confidence=bad).fit(np.eye(5))


# ------------------------------------------------------ edges and the contract


def test_unresolvable_level_is_refused_at_fit_and_leaves_nothing_fitted():
    det = NearestTrainingSample(contamination=0.01, random_state=0)
    with pytest.raises(ValueError, match="needs at least 99 calibration samples"):
        det.fit(np.random.default_rng(0).normal(size=(100, 2)))
    assert not hasattr(det, "offset_") and not hasattr(det, "train_")


def test_few_calibration_samples_warn():
    X = np.random.default_rng(0).normal(size=(40, 2))
    with pytest.warns(CalibrationWarning, match="only 8 normal samples"):
        NearestTrainingSample(random_state=0).fit(X)
    with warnings.catch_warnings():
        warnings.simplefilter("error", CalibrationWarning)
        Mahalanobis().fit(X)  # leave-one-out: 40 calibration samples


def test_labelled_outliers_never_calibrate():
    rng = np.random.default_rng(0)
    X, outliers = rng.normal(size=(60, 3)), rng.normal(30, 1, size=(15, 3))
    y = np.r_[np.ones(60), -np.ones(15)]
    for det in (Mahalanobis(), NearestTrainingSample(random_state=0)):
        with_labels = clone(det).fit(np.r_[X, outliers], y)
        without = clone(det).fit(X)
        np.testing.assert_array_equal(
            with_labels.calibration_scores_, without.calibration_scores_
        )
        assert with_labels.offset_ == without.offset_


def test_fit_predict_only_where_the_threshold_is_about_the_training_set():
    X = np.random.default_rng(0).normal(size=(50, 2))
    assert Mahalanobis().novelty
    assert not hasattr(Mahalanobis(), "fit_predict")
    with pytest.raises(AttributeError) as error:
        Mahalanobis().fit_predict(X)
    # scikit-learn's available_if shows the reason as the cause
    assert "calibration='training'" in str(error.value.__cause__)
    in_sample = Mahalanobis(calibration="training", contamination=0.1)
    assert not in_sample.novelty
    assert np.sum(in_sample.fit_predict(X) == -1) == 5


def test_auto_contamination_holds_on_fresh_data():
    """'auto' flags new normals as often as it flags the calibration samples."""
    rng = np.random.default_rng(0)
    on_calibration, on_fresh = [], []
    for _ in range(30):
        X, fresh = rng.normal(size=(300, 6)), rng.normal(size=(2000, 6))
        det = Mahalanobis().fit(X)
        on_calibration.append(np.mean(det.calibration_scores_ < det.offset_))
        on_fresh.append(np.mean(det.predict(fresh) == -1))
    assert abs(np.mean(on_fresh) - np.mean(on_calibration)) < 0.006
    assert 0.01 <= np.mean(on_fresh) <= 0.03


def test_auto_threshold_by_hand():
    # 0..99: median 49.5, MAD 25, so the three-sigma rule (-61.7) lies below
    # every score and the 1 % floor (the 1st percentile, 0.99) takes over
    assert auto_threshold(np.arange(100.0)) == pytest.approx(0.99)
    # a tight bulk with 10 % far below it: the rule cuts between them (the
    # floor alone would flag 1 %), so 'auto' flags the far group
    rng = np.random.default_rng(0)
    scores = np.r_[rng.normal(size=900), rng.normal(-20.0, 1.0, size=100)]
    threshold = auto_threshold(scores)
    assert -20.0 < threshold < -3.0
    assert np.mean(scores < threshold) == pytest.approx(0.1, abs=0.002)
    det = Mahalanobis().fit(rng.normal(size=(200, 3)))
    assert det.offset_ == auto_threshold(det.calibration_scores_)


def test_pickle_and_grid_search_keep_calibration():
    rng = np.random.default_rng(0)
    X = rng.normal(size=(80, 3))
    det = Mahalanobis(contamination=0.1).fit(X)
    restored = pickle.loads(pickle.dumps(det))
    np.testing.assert_array_equal(
        det.conformal_p_values(X), restored.conformal_p_values(X)
    )
    y = np.r_[np.ones(80), -np.ones(20)]
    data = np.r_[X, rng.normal(6, 1, size=(20, 3))]
    search = GridSearchCV(
        Mahalanobis(),
        {"calibration": ["leave-one-out", "split", 3]},
        scoring="roc_auc",
        cv=StratifiedKFold(3, shuffle=True, random_state=0),
    ).fit(data, y)
    assert np.all(np.isfinite(search.cv_results_["mean_test_score"]))
    assert search.best_estimator_.calibration in ("leave-one-out", "split", 3)


# ------------------------------------------- a guarantee for one fit (confidence)


def test_rank_levels_are_the_beta_bounds_of_order_statistics():
    from skanomaly.conformal import rank_levels

    n = 30
    k = np.arange(1, n + 1)
    np.testing.assert_allclose(rank_levels(n), k / 31)
    bounds = rank_levels(n, confidence=0.9)
    np.testing.assert_allclose(stats.beta.cdf(bounds, k, n + 1 - k), 0.9)
    assert np.all(np.diff(bounds) > 0) and np.all(bounds > k / 31)
    # the smallest rank's bound in closed form: 1 - (1 - confidence)^(1/n)
    assert bounds[0] == pytest.approx(1 - 0.1 ** (1 / n))
    assert smallest_level(n, confidence=0.9) == pytest.approx(bounds[0])


def test_confident_threshold_keeps_one_fits_rate_below_the_level():
    """Over many calibration sets, the rate exceeds c in at most 10% of them.

    Uniform calibration scores: the false-alarm rate of a threshold t is t
    itself, so each draw's true rate is known without a test set.
    """
    rng = np.random.default_rng(0)
    n, level, draws = 60, 0.1, 4000
    marginal, confident = [], []
    for _ in range(draws):
        scores = rng.uniform(size=n)
        marginal.append(conformal_threshold(scores, level))
        confident.append(conformal_threshold(scores, level, confidence=0.9))
    marginal, confident = np.array(marginal), np.array(confident)
    # the marginal rule is right on average and exceeds c in about half the fits
    assert abs(marginal.mean() - 6 / 61) < 0.003
    assert np.mean(marginal > level) > 0.35
    # the confident rule: rank k = the largest with P(Beta(k, n+1-k) > c) <= 0.1
    k = int(np.sum(stats.beta.ppf(0.9, np.arange(1, n + 1), n - np.arange(n)) <= level))
    exceed = stats.beta.sf(level, k, n + 1 - k)
    assert exceed <= 0.1
    assert abs(np.mean(confident > level) - exceed) < 4 * np.sqrt(exceed / draws)
    assert np.all(confident <= marginal)


def test_confident_p_values_match_the_threshold_and_are_larger():
    rng = np.random.default_rng(1)
    calibration, new = rng.normal(size=200), rng.normal(size=3000)
    marginal = conformal_p_values(calibration, new)
    confident = conformal_p_values(calibration, new, confidence=0.95)
    assert np.all(confident >= marginal) and confident.max() == 1.0
    for level in (0.02, 0.05, 0.1, 0.3):
        threshold = conformal_threshold(calibration, level, confidence=0.95)
        np.testing.assert_array_equal(new < threshold, confident <= level)


def test_confident_level_below_resolution_names_the_samples_needed():
    # log(0.1) / log(0.9) = 21.85: 22 calibration samples resolve 0.1 at 0.9
    conformal_threshold(np.arange(22.0), 0.1, confidence=0.9)
    with pytest.raises(ValueError, match=r"confidence=0.9 needs at least 22 .*21"):
        conformal_threshold(np.arange(21.0), 0.1, confidence=0.9)
    for bad in (0.0, 1.0, "high", 1):
        with pytest.raises(ValueError, match="confidence"):
            conformal_threshold(np.arange(50.0), 0.1, confidence=bad)


def test_detector_with_calibration_confidence():
    rng = np.random.default_rng(0)
    X, fresh = rng.normal(size=(300, 4)), rng.normal(size=(500, 4))
    plain = Mahalanobis(contamination=0.1).fit(X)
    det = Mahalanobis(contamination=0.1, calibration_confidence=0.9).fit(X)
    np.testing.assert_array_equal(det.calibration_scores_, plain.calibration_scores_)
    assert det.offset_ == conformal_threshold(det.calibration_scores_, 0.1, 0.9)
    assert det.offset_ < plain.offset_
    np.testing.assert_array_equal(
        det.predict(fresh) == -1, det.conformal_p_values(fresh) <= 0.1
    )
    restored = pickle.loads(pickle.dumps(det))
    np.testing.assert_array_equal(
        restored.conformal_p_values(fresh), det.conformal_p_values(fresh)
    )


@pytest.mark.parametrize(
    "params, message",
    [
        ({"contamination": "auto"}, "float"),
        ({"contamination": 0.1, "calibration": "training"}, "training"),
        ({"contamination": 0.01}, "needs at least 230"),
        ({"contamination": 0.1, "calibration_confidence": 1.5}, "confidence"),
    ],
)
def test_calibration_confidence_is_refused_where_it_has_no_meaning(params, message):
    params = {"calibration_confidence": 0.9, **params}
    det = NearestTrainingSample(random_state=0)
    det.calibration_confidence = params.pop("calibration_confidence")
    det.set_params(**params)
    with pytest.raises(ValueError, match=message):
        det.fit(np.random.default_rng(0).normal(size=(100, 2)))
    assert not hasattr(det, "offset_") and not hasattr(det, "train_")
