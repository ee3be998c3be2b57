"""Every registered detector, plugins included, passes the estimator checks.

The one place the estimator checks run: each detector with its tags'
``test_params``, on the input kinds its tags declare, with no expected
failures.
"""

import pytest

import skanomaly
from skanomaly.detectors.base import get_detector_tags
from skanomaly.testing import fast_detector, parametrize_detector_checks


def _fast_detectors():
    return [
        fast_detector(skanomaly.get_detector(n)) for n in skanomaly.list_detectors()
    ]


@parametrize_detector_checks(_fast_detectors())
def test_detector_conformance(estimator, check):
    check(estimator)


def test_every_builtin_is_registered():
    names = set(skanomaly.list_detectors())
    assert {"autoencoder", "vae"} <= names
    for name in names:
        assert skanomaly.get_detector(name).__module__.startswith(
            ("skanomaly.detectors.", "skanomaly_example_plugin")
        )


def test_builtins_are_the_registry_entries_and_the_top_level_names():
    builtins = skanomaly.registry.builtin_detector_classes()
    assert set(builtins.values()) == {
        n for n in skanomaly.list_detectors() if not n.startswith("mean_distance")
    }
    for class_name, name in builtins.items():
        assert getattr(skanomaly, class_name) is skanomaly.get_detector(name)
        assert class_name in skanomaly.__all__


def test_sklearn_input_tags_follow_the_declared_kinds():
    for name in skanomaly.list_detectors():
        detector = skanomaly.make_detector(name)
        declared = get_detector_tags(detector)
        inputs = detector.__sklearn_tags__().input_tags
        assert (inputs.two_d_array, inputs.three_d_array) == (
            declared.tabular,
            declared.images,
        ), name


@pytest.mark.parametrize("name", ["autoencoder", "vae"])
def test_make_detector_sets_params(name):
    det = skanomaly.make_detector(name, max_epochs=3, random_state=1)
    assert det.get_params()["max_epochs"] == 3


def _torch_detector_names():
    from skanomaly.detectors.torch_base import BaseTorchDetector

    return [
        name
        for name in skanomaly.list_detectors()
        if issubclass(skanomaly.get_detector(name), BaseTorchDetector)
    ]


@pytest.mark.parametrize("kind", ["images", "table"])
@pytest.mark.parametrize("name", _torch_detector_names())
def test_normal_training_does_not_warn_of_divergence(name, kind):
    # A false alarm is a bug. Trained for as many epochs as the "did not
    # decrease" warning needs (the test parameters' 2 could never raise it);
    # benchmarks/divergence_digits.py measures the defaults and the benchmark
    # settings too.
    import warnings

    import numpy as np
    from sklearn.datasets import load_digits
    from sklearn.exceptions import ConvergenceWarning

    from skanomaly.detectors.torch_base import _MIN_EPOCHS_TO_DECREASE

    X, digit = load_digits(return_X_y=True)
    X = X[digit == 1]
    if kind == "images":
        X = (X.reshape(-1, 1, 8, 8) * 16).astype(np.uint8)
    detector = fast_detector(
        skanomaly.get_detector(name), max_epochs=_MIN_EPOCHS_TO_DECREASE
    )
    with warnings.catch_warnings():
        warnings.simplefilter("error", ConvergenceWarning)
        detector.fit(X)
