"""Checks a detector (built-in or plugin) should pass, for use in its test suite.

Example, in a plugin's tests::

    from skanomaly.testing import parametrize_detector_checks

    @parametrize_detector_checks([MyDetector(max_epochs=2)])
    def test_my_detector(estimator, check):
        check(estimator)

This runs scikit-learn's estimator checks (for detectors that take tabular
data) plus skanomaly's own contract checks (:func:`detector_contract_checks`),
on the input kinds the detector declares in its tags
(:class:`~skanomaly.DetectorTags`): tabular rows, images or both.
"""

import pickle
from functools import partial

import numpy as np
from sklearn.base import clone

from ._compat import param_names
from .conformal import conformal_threshold
from .detectors.base import get_detector_tags

__all__ = [
    "check_calibrated_threshold",
    "check_deterministic_under_random_state",
    "check_fit_drops_labelled_outliers",
    "check_image_input",
    "check_pickle_keeps_scores",
    "check_rejects_bad_input",
    "detector_contract_checks",
    "fast_detector",
    "parametrize_detector_checks",
]


def _table(seed=0, n_samples=60, n_features=5):
    return np.random.default_rng(seed).normal(size=(n_samples, n_features))


def _images(seed=0, n_samples=24, shape=(1, 8, 8)):
    rng = np.random.default_rng(seed)
    return rng.integers(0, 256, size=(n_samples, *shape), dtype=np.uint8)


def _data(detector, seed=0, n_samples=None):
    """Test data of a kind the detector takes: a small table, else images."""
    if get_detector_tags(detector).tabular:
        return _table(seed, n_samples or 60)
    return _images(seed, n_samples or 24)


def fast_detector(cls, **params):
    """``cls`` with its tags' ``test_params`` (and ``random_state=0``), updated
    with ``params``: a detector that fits in well under a second on tiny data.

    Parameters
    ----------
    cls : detector class
    **params
        Constructor parameters over the test parameters.

    Returns
    -------
    detector : estimator

    Examples
    --------
    >>> from skanomaly import AutoEncoder
    >>> from skanomaly.testing import fast_detector
    >>> fast_detector(AutoEncoder)
    AutoEncoder(base_channels=4, hidden_sizes=(8,), max_epochs=2, random_state=0)
    """
    merged = dict(get_detector_tags(cls).test_params)
    if "random_state" in param_names(cls):
        merged.setdefault("random_state", 0)
    return cls(**{**merged, **params})


def check_calibrated_threshold(name, detector):
    """``offset_`` is the conformal threshold of the calibration scores.

    With a float contamination ``c``, ``predict`` flags exactly the samples
    whose conformal p-value is at most ``c``; with ``calibration='training'``
    it flags that fraction of the training set, as scikit-learn's detectors.
    """
    X = _data(detector)
    level = 0.25  # resolvable by the few calibration samples of tiny data
    det = clone(detector).set_params(contamination=level).fit(X)
    calibration = det.calibration_scores_
    assert calibration.ndim == 1 and calibration.size >= 1, name
    assert np.all(np.diff(calibration) >= 0), name
    assert det.offset_ == conformal_threshold(calibration, level), name
    np.testing.assert_allclose(
        det.decision_function(X), det.score_samples(X) - det.offset_
    )
    p_values = det.conformal_p_values(X)
    assert p_values.min() >= 1 / (calibration.size + 1) - 1e-12, name
    assert p_values.max() <= 1.0, name
    np.testing.assert_array_equal(det.predict(X) == -1, p_values <= level)
    if "calibration" not in det.get_params():
        return  # written before the parameter: calibrates with the default
    in_sample = clone(detector).set_params(contamination=0.1, calibration="training")
    labels = in_sample.fit_predict(X)
    assert abs(np.mean(labels == -1) - 0.1) <= 1.5 / len(X), name


def check_fit_drops_labelled_outliers(name, detector):
    """fit(X, y) with y = -1 rows trains as if those rows were not there."""
    X = _data(detector)
    outliers = _data(detector, seed=1, n_samples=10)
    outliers = outliers * 10 + 50 if outliers.dtype != np.uint8 else 255 - outliers
    y = np.r_[np.ones(len(X)), -np.ones(len(outliers))]
    with_labels = clone(detector).fit(np.concatenate([X, outliers]), y)
    without = clone(detector).fit(X)
    np.testing.assert_allclose(
        with_labels.score_samples(X), without.score_samples(X), rtol=1e-6, atol=1e-8
    )


def check_pickle_keeps_scores(name, detector):
    """A pickled and unpickled detector gives identical scores."""
    X = _data(detector)
    det = clone(detector).fit(X)
    restored = pickle.loads(pickle.dumps(det))
    np.testing.assert_array_equal(det.score_samples(X), restored.score_samples(X))


def check_deterministic_under_random_state(name, detector):
    """Two fits with the same integer random_state give identical scores.

    Skipped (``unittest.SkipTest``, which pytest reports as a skip) for a
    detector without a ``random_state`` parameter: there is nothing to check.
    """
    if "random_state" not in detector.get_params():
        from unittest import SkipTest

        raise SkipTest(f"{name} has no random_state parameter.")
    X = _data(detector)
    first = clone(detector).set_params(random_state=7).fit(X).score_samples(X)
    second = clone(detector).set_params(random_state=7).fit(X).score_samples(X)
    np.testing.assert_array_equal(first, second)


def check_rejects_bad_input(name, detector):
    """NaN, wrong rank and wrong width give a ValueError that says what was wrong."""
    X = _data(detector)
    det = clone(detector).fit(X)
    bad = X.astype(np.float64)
    bad.flat[0] = np.nan
    if X.ndim == 2:
        cases = [(bad, "NaN"), (X[:, :-1], "features"), (X.reshape(-1), "2D")]
    else:
        cases = [
            (bad / 255, "NaN"),
            (X[:, :, :-1], "shape"),
            (X.reshape(len(X), -1)[:, :, None, None, None], "rank"),
        ]
    for X_bad, words in cases:
        try:
            det.score_samples(X_bad)
        except ValueError as exc:
            message = str(exc).lower().replace("-", "")
            assert words.lower() in message, (name, str(exc))
        else:
            raise AssertionError(f"{name} accepted bad input ({words}).")


def check_image_input(name, detector):
    """Detectors that take images fit (N, H, W) uint8 and (N, C, H, W) floats."""
    images = _images()[:, 0]
    det = clone(detector).fit(images)
    assert det.image_shape_ == (1, 8, 8)
    scores = det.score_samples(images)
    assert scores.shape == (24,) and np.all(np.isfinite(scores))
    # uint8 is read as value / 255
    np.testing.assert_allclose(
        det.score_samples(images[:, None].astype(np.float32) / 255), scores, rtol=1e-5
    )
    try:
        det.score_samples(images[:, :6, :6])
    except ValueError as exc:
        assert "shape" in str(exc)
    else:
        raise AssertionError(f"{name} scored images of the wrong size.")
    if get_detector_tags(detector).anomaly_maps:
        maps = det.anomaly_map(images[:3])
        assert maps.shape == (3, 8, 8) and np.all(np.isfinite(maps)), name


_CONTRACT_CHECKS = [
    check_calibrated_threshold,
    check_fit_drops_labelled_outliers,
    check_pickle_keeps_scores,
    check_deterministic_under_random_state,
    check_rejects_bad_input,
]


def detector_contract_checks(detector):
    """Yield skanomaly's contract checks, each a callable taking the detector.

    The checks run on the input kinds the detector's tags declare:
    :func:`check_image_input` only for detectors that take images.

    Parameters
    ----------
    detector : estimator
        An unfitted detector with small settings.

    Yields
    ------
    check : callable
    """
    name = type(detector).__name__
    images = get_detector_tags(detector).images
    for check in _CONTRACT_CHECKS + ([check_image_input] if images else []):
        yield partial(check, name)


def parametrize_detector_checks(detectors, expected_failed_checks=None):
    """``pytest.mark.parametrize`` over scikit-learn's and skanomaly's checks.

    Parameters
    ----------
    detectors : list of estimators
        Unfitted detectors with small settings.
    expected_failed_checks : callable, default=None
        Given a detector, returns ``{check_name: reason}`` for checks
        expected to fail; they are marked ``xfail`` (as in scikit-learn's
        ``parametrize_with_checks``). skanomaly's built-ins need none.

    Returns
    -------
    decorator
        Parametrises a test ``(estimator, check)`` that calls
        ``check(estimator)``.
    """
    import pytest
    from sklearn.utils.estimator_checks import estimator_checks_generator

    params = []
    for detector in detectors:
        expected = expected_failed_checks(detector) if expected_failed_checks else {}
        if get_detector_tags(detector).tabular:
            # items are (estimator, check) pairs or pytest params marked xfail
            params.extend(
                estimator_checks_generator(
                    detector, expected_failed_checks=expected, mark="xfail"
                )
            )
        for check in detector_contract_checks(detector):
            params.append((detector, check))
    return pytest.mark.parametrize("estimator, check", params, ids=_param_id)


def _param_id(value):
    while isinstance(value, partial):
        value = value.func
    if callable(value) and hasattr(value, "__name__"):
        return value.__name__
    return type(value).__name__
