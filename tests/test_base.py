"""The contract in BaseDetector and the shared input validation."""

import warnings

import numpy as np
import pytest
from sklearn.exceptions import NotFittedError

from skanomaly import AutoEncoder
from skanomaly.detectors.base import BaseDetector


class _Distance(BaseDetector):
    """Minimal detector: minus the distance to the training mean."""

    def __init__(self, *, fail=False, contamination="auto", calibration="auto"):
        super().__init__(contamination=contamination, calibration=calibration)
        self.fail = fail

    def _fit(self, X):
        self.center_ = X.reshape(len(X), -1).mean(axis=0)
        if self.fail:
            raise RuntimeError("training blew up")

    def _score_samples(self, X):
        return -np.linalg.norm(X.reshape(len(X), -1) - self.center_, axis=1)


@pytest.fixture
def X():
    return np.random.default_rng(0).normal(size=(200, 4))


def test_decision_and_predict_follow_offset(X):
    det = _Distance(contamination=0.1).fit(X)
    decision = det.decision_function(X)
    np.testing.assert_allclose(decision, det.score_samples(X) - det.offset_)
    # 40 held-out samples calibrate: the floor(41 * 0.1) = 4th lowest score
    assert det.calibration_ == "split" and len(det.calibration_scores_) == 40
    assert det.offset_ == det.calibration_scores_[3]
    far = X[:1] + 100
    assert det.predict(far).tolist() == [-1]
    # scikit-learn's rule on the training scores
    det = _Distance(contamination=0.1, calibration="training").fit(X)
    assert np.sum(det.predict(X) == -1) == 20


def test_a_detector_written_before_calibration_calibrates(X):
    class _Legacy(BaseDetector):  # no calibration parameters
        def __init__(self, contamination="auto"):
            self.contamination = contamination

        _fit = _Distance._fit
        _score_samples = _Distance._score_samples
        fail = False

    det = _Legacy(contamination=0.1).fit(X)
    assert det.calibration_ == "split" and len(det.calibration_scores_) == 40
    assert "calibration" not in det.get_params()


def test_auto_contamination_is_robust_three_sigma_with_a_floor(X):
    det = _Distance().fit(X)
    scores = det.calibration_scores_
    median = np.median(scores)
    mad = np.median(np.abs(scores - median))
    expected = max(median - 3 * 1.4826 * mad, np.percentile(scores, 1))
    assert det.offset_ == pytest.approx(expected)
    fresh = np.random.default_rng(1).normal(size=(20_000, 4))
    assert 0.01 <= np.mean(det.predict(fresh) == -1) <= 0.1


def test_y_minus_one_rows_are_left_out_of_training(X):
    outliers = X[:20] + 50
    y = np.r_[np.ones(len(X)), -np.ones(20)]
    det = _Distance().fit(np.vstack([X, outliers]), y)
    np.testing.assert_allclose(det.center_, _Distance().fit(X).center_)
    det = _Distance(calibration="training").fit(np.vstack([X, outliers]), y)
    np.testing.assert_allclose(det.center_, X.mean(axis=0))


@pytest.mark.parametrize("labels", [[0, 1], [1, 2], ["a", "b"]])
def test_other_label_encodings_warn_and_are_ignored(X, labels):
    y = np.resize(np.asarray(labels), len(X))
    with pytest.warns(UserWarning, match="ignores y"):
        det = _Distance(calibration="training").fit(X, y)
    np.testing.assert_allclose(det.center_, X.mean(axis=0))


def test_all_outlier_labels_is_an_error(X):
    with pytest.raises(ValueError, match="no inliers"):
        _Distance().fit(X, -np.ones(len(X)))


def test_one_inlier_left_by_y_is_an_error(X):
    y = -np.ones(len(X))
    y[0] = 1
    with pytest.raises(ValueError, match="at least 2 inlier samples.*labels 1 of"):
        _Distance().fit(X, y)


@pytest.mark.parametrize("kind", ["int64", "list"])
def test_integer_and_list_tables_are_read_in_float64(kind):
    # large integers (timestamps, counts) lose digits in float32: the same
    # values as integers, a list or float64 must score alike
    rng = np.random.default_rng(0)
    X = (1_700_000_000 + rng.integers(0, 1000, size=(200, 3))).astype(np.float64)
    given = X.astype(np.int64) if kind == "int64" else X.tolist()
    det = _Distance().fit(X)
    np.testing.assert_array_equal(det.score_samples(given), det.score_samples(X))
    np.testing.assert_array_equal(_Distance().fit(given).center_, det.center_)


@pytest.mark.parametrize(
    ("params", "message"),
    [
        (
            dict(contamination=0.01),
            "needs at least 99 calibration samples; there are 40",
        ),
        (
            dict(contamination=0.05, calibration_confidence=0.99),
            "with confidence=0.99 needs at least 90 calibration samples; there are 40",
        ),
        (
            dict(contamination=0.001, calibration=5),
            "needs at least 999 calibration samples; there are 200",
        ),
    ],
)
def test_an_unreachable_level_is_refused_before_training(X, params, message):
    calls = []

    class Counting(_Distance):
        def _fit(self, X):
            calls.append(len(X))
            return super()._fit(X)

    confidence = params.pop("calibration_confidence", None)
    detector = Counting(**params)
    detector.calibration_confidence = confidence
    with pytest.raises(ValueError, match=message):
        detector.fit(X)
    assert calls == []
    # the level the message names as reachable fits
    detector.set_params(contamination=0.05)
    detector.calibration_confidence = None
    detector.fit(X)


def test_failed_fit_leaves_nothing_half_fitted(X):
    det = _Distance(fail=True)
    with pytest.raises(RuntimeError, match="blew up"):
        det.fit(X)
    assert not hasattr(det, "center_") and not hasattr(det, "n_features_in_")
    with pytest.raises(NotFittedError):
        det.score_samples(X)
    # a refit that fails restores the previous fitted state untouched
    det.set_params(fail=False).fit(X)
    center = det.center_.copy()
    with pytest.raises(ValueError):
        det.fit(np.full((5, 4), np.nan))
    np.testing.assert_array_equal(det.center_, center)
    assert det.n_features_in_ == 4


def test_non_finite_scores_raise_in_fit():
    class _Broken(_Distance):
        def _score_samples(self, X):
            return np.full(len(X), np.nan)

    with pytest.raises(FloatingPointError, match="non-finite.*training data"):
        _Broken().fit(np.ones((5, 2)))


def test_extreme_test_samples_are_flagged_not_fatal(X):
    det = AutoEncoder(max_epochs=1, random_state=0).fit(X)
    test = X[:4].copy()
    test[0, 0] = 1e300  # squares to inf (rows are scored in float64)
    with pytest.warns(RuntimeWarning, match="1 non-finite score"):
        scores = det.score_samples(test)
    assert scores[0] == np.finfo(np.float64).min
    assert np.all(np.isfinite(scores)) and np.all(scores[1:] > scores[0])
    with pytest.warns(RuntimeWarning):
        assert det.predict(test)[0] == -1
    np.testing.assert_allclose(scores[1:], det.score_samples(X[1:4]), rtol=1e-12)


def test_threshold_from_a_subset_when_scoring_is_costly(X):
    seen = []

    class _Costly(_Distance):
        def __skanomaly_tags__(self):
            tags = super().__skanomaly_tags__()
            tags.max_offset_samples = 50
            return tags

        def _score_samples(self, X):
            seen.append(len(X))
            return super()._score_samples(X)

    det = _Costly(contamination=0.1, calibration="training").fit(X)
    assert seen == [50]
    subset = np.sort(np.random.default_rng(0).choice(len(X), 50, replace=False))
    expected = np.percentile(det.score_samples(X[subset]), 10)
    assert det.offset_ == pytest.approx(expected)
    seen.clear()
    _Costly(calibration="training").fit(X[:40])  # fewer than the limit: all
    assert seen == [40]
    seen.clear()
    det = _Costly().fit(np.r_[X, X + 0.1])  # 80 held out, 50 of them scored
    assert seen == [50] and len(det.calibration_scores_) == 50


@pytest.mark.parametrize(
    "bad, message",
    [
        (np.zeros((0, 4)), "0 sample"),
        (np.zeros((1, 4)), "1 sample"),
        (np.zeros((3, 2, 2, 2, 2)), "rank 5"),
        (np.full((3, 4), np.inf), "infinity"),
        (np.zeros((3, 8, 8, 3)), "channels-last"),
        (np.zeros((3, 1, 8, 8)).astype(str), "images of numbers.*dtype <U"),
        (np.zeros((3, 1, 8, 8), complex), "images of numbers.*dtype complex128"),
        (np.full((3, 1, 8, 8), "x", dtype=object), "images of numbers.*dtype object"),
    ],
)
def test_bad_fit_input_is_a_clear_value_error(bad, message):
    with pytest.raises(ValueError, match=message):
        _Distance().fit(bad)


def test_image_shapes_and_kinds_must_match_at_predict_time():
    rng = np.random.default_rng(0)
    images = rng.random((10, 3, 8, 8))
    det = _Distance().fit(images)
    assert det.image_shape_ == (3, 8, 8) and det.n_features_in_ == 192
    with pytest.raises(ValueError, match=r"fitted on images of shape \(3, 8, 8\)"):
        det.score_samples(rng.random((2, 3, 6, 6)))
    with pytest.raises(ValueError, match="with 3 channel.*got images with 1"):
        det.score_samples(rng.random((2, 1, 8, 8)))
    with pytest.raises(ValueError, match="got a 2-D tabular array"):
        det.score_samples(rng.random((2, 192)))
    tabular = _Distance().fit(rng.random((10, 5)))
    assert tabular.image_shape_ is None
    with pytest.raises(ValueError, match="fitted on 2-D tabular data"):
        tabular.score_samples(rng.random((2, 1, 5, 5)))


def test_grayscale_images_get_a_channel_and_uint8_is_scaled():
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, size=(10, 8, 8), dtype=np.uint8)
    det = _Distance(calibration="training").fit(images)
    assert det.image_shape_ == (1, 8, 8)
    expected = images.reshape(10, -1).mean(0) / 255
    np.testing.assert_allclose(det.center_, expected, rtol=1e-6)


def test_dataframe_feature_names_are_checked(X):
    pd = pytest.importorskip("pandas")
    frame = pd.DataFrame(X, columns=list("abcd"))
    det = _Distance().fit(frame)
    assert list(det.feature_names_in_) == list("abcd")
    with pytest.warns(UserWarning, match="feature names"):
        det.score_samples(X)


def test_unknown_device_is_reported_before_training(X):
    import torch

    if torch.cuda.is_available():
        pytest.skip("CUDA is available here")
    det = AutoEncoder(device="cuda", max_epochs=1)
    with pytest.raises(ValueError, match="CUDA is not available"):
        det.fit(X)
    assert not hasattr(det, "net_")


# ------------------------------------------------- images read as in fit


@pytest.fixture(scope="module")
def digit_images():
    from sklearn.datasets import load_digits

    X, digit = load_digits(return_X_y=True)
    images = (X.reshape(-1, 1, 8, 8) * 16).astype(np.uint8)
    return images[digit == 0][:60], images[::25]


@pytest.fixture(scope="module")
def uint8_autoencoder(digit_images):
    from skanomaly.testing import fast_detector

    return fast_detector(AutoEncoder).fit(digit_images[0])


def test_int64_images_are_read_as_the_uint8_of_fit(uint8_autoencoder, digit_images):
    # int64 images (np.array of a list) predicted every image an outlier
    test = digit_images[1]
    assert uint8_autoencoder.image_dtype_ == "uint8"
    with pytest.warns(
        UserWarning,
        match=r"fitted on uint8 images \(read as values in \[0, 1\]\) and got int64"
        r".*/ 255",
    ):
        scores = uint8_autoencoder.score_samples(test.astype(np.int64))
    np.testing.assert_array_equal(scores, uint8_autoencoder.score_samples(test))
    with pytest.raises(ValueError, match=r"values in \[0, 381\], outside the uint8"):
        uint8_autoencoder.score_samples(np.arange(128).reshape(2, 1, 8, 8) * 3)


def test_float_images_after_a_uint8_fit_must_be_in_0_1(uint8_autoencoder, digit_images):
    test = digit_images[1]
    with pytest.raises(ValueError, match=r"values in \[0, 1\].*divide by 255"):
        uint8_autoencoder.score_samples(test.astype(np.float32))
    np.testing.assert_allclose(
        uint8_autoencoder.score_samples(test.astype(np.float32) / 255),
        uint8_autoencoder.score_samples(test),
        rtol=1e-5,
    )


def test_uint8_images_after_an_integer_fit_read_as_values(digit_images):
    train, test = digit_images
    det = _Distance().fit(train.astype(np.int64))
    assert det.image_dtype_ == "int64"
    with pytest.warns(
        UserWarning,
        match=r"fitted on int64 images \(read as values in \[0, 255\]\) and got uint8",
    ):
        scores = det.score_samples(test)
    np.testing.assert_array_equal(scores, det.score_samples(test.astype(np.int64)))
    # integers of the same reading need no warning
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        det.score_samples(test.astype(np.int32))


def test_tabular_data_records_no_image_dtype(X):
    assert _Distance().fit(X).image_dtype_ is None


@pytest.mark.parametrize("fitted", [False, True])
def test_sparse_input_is_a_value_error(X, fitted):
    from scipy import sparse

    det = _Distance().fit(X) if fitted else _Distance()
    method = det.score_samples if fitted else det.fit
    # was sklearn's TypeError
    with pytest.raises(ValueError, match="sparse.*X.toarray()"):
        method(sparse.csr_matrix(X))


def test_a_pickle_without_a_later_parameter_gets_its_default():
    import pickle

    from skanomaly import DTE

    X = np.random.default_rng(0).normal(size=(40, 3))
    det = DTE().fit(X)
    earlier = pickle.loads(pickle.dumps(det))
    del earlier.algorithm  # as pickled before DTE had the parameter
    old = pickle.loads(pickle.dumps(earlier))
    assert old.get_params()["algorithm"] == "auto"
    np.testing.assert_array_equal(old.score_samples(X), det.score_samples(X))


def test_object_images_of_numbers_are_read_as_floats():
    images = np.random.default_rng(0).random((6, 1, 4, 4))
    det = _Distance().fit(images)
    np.testing.assert_array_equal(
        det.score_samples(images.astype(object)), det.score_samples(images)
    )
