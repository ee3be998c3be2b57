"""Every registered detector passes scikit-learn's and skanomaly's checks."""

import pytest

import skanomaly
from skanomaly.testing import parametrize_detector_checks

# Detectors that need pretrained network weights or large images to fit are
# exercised in their own test files with their own fixtures.
_NOT_ON_RANDOM_TABLES = {"deep_mahalanobis"}


def _fast_detectors():
    detectors = []
    for name in skanomaly.list_detectors():
        if name in _NOT_ON_RANDOM_TABLES:
            continue
        cls = skanomaly.get_detector(name)
        params = dict(getattr(cls, "_fast_test_params", {}))
        if "random_state" in cls().get_params():
            params.setdefault("random_state", 0)
        detectors.append(cls(**params))
    return detectors


def _expected_failures(detector):
    return getattr(detector, "_expected_failed_checks", dict)()


@parametrize_detector_checks(_fast_detectors(), _expected_failures)
def test_detector_conformance(estimator, check):
    check(estimator)


def test_every_builtin_is_registered():
    names = set(skanomaly.list_detectors())
    assert {"autoencoder", "vae"} <= names
    for name in names:
        assert skanomaly.get_detector(name).__module__.startswith(
            ("skanomaly.", "skanomaly_example_plugin")
        )


@pytest.mark.parametrize("name", ["autoencoder", "vae"])
def test_make_detector_sets_params(name):
    det = skanomaly.make_detector(name, max_epochs=3, random_state=1)
    assert det.get_params()["max_epochs"] == 3
