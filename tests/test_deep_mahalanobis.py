"""DeepMahalanobis: TimmFeatures + one Gaussian per level, as one detector.

Most backbones are randomly initialised (seeded) resnet18s at 32x32, for
checks of the composition; the default backbone's real ImageNet weights
(installed with skanomaly, nothing is downloaded) are checked on digits.
"""

import pickle
import warnings

import numpy as np
import pytest
import torch

import skanomaly
from skanomaly import DeepMahalanobis, Mahalanobis, TimmFeatures
from skanomaly.conformal import conformal_threshold
from skanomaly.detectors.base import CalibrationWarning
from skanomaly.testing import check_image_input

FAST = {"backbone": "resnet18", "weights": None, "image_size": 32, "random_state": 0}


def _images(n=40, seed=0):
    rng = np.random.default_rng(seed)
    return rng.integers(100, 156, size=(n, 3, 32, 32), dtype=np.uint8)


def _with_squares(images):
    bad = images.copy()
    bad[:, :, 8:24, 8:24] = 255
    return bad


@pytest.fixture(scope="module")
def fitted():
    return DeepMahalanobis(**FAST).fit(_images())


def test_is_features_then_one_gaussian_per_level(fitted):
    train, test = _images(), _images(n=8, seed=1)
    features = TimmFeatures(
        "resnet18", weights=None, image_size=32, random_state=0
    ).fit(train)
    slices = list(features.level_slices_.values())
    gaussian = Mahalanobis(groups=slices).fit(features.transform(train))
    expected = gaussian.distances(features.transform(test))
    assert fitted.levels_ == features.levels_
    np.testing.assert_allclose(fitted.level_distances(test), expected, rtol=1e-5)
    np.testing.assert_allclose(
        fitted.score_samples(test), -expected.sum(axis=1), rtol=1e-5
    )


def test_flags_images_unlike_the_training_set(fitted):
    good, bad = _images(n=10, seed=2), _with_squares(_images(n=5, seed=3))
    assert fitted.score_samples(bad).max() < fitted.score_samples(good).min()
    assert np.all(fitted.predict(bad) == -1)


def test_calibration_reuses_the_training_features(monkeypatch):
    # fit reuses the training features for the leave-one-out calibration
    # scores: one pass of the backbone over the training images
    passes = []
    transform = TimmFeatures._transform
    monkeypatch.setattr(
        TimmFeatures,
        "_transform",
        lambda self, X: passes.append(len(X)) or transform(self, X),
    )
    train = _images()
    det = DeepMahalanobis(**FAST, contamination=0.1).fit(train)
    assert passes == [len(train)]
    features = det.feature_extractor_.transform(train)
    loo = -det.gaussian_._leave_one_out_distances(features, len(train)).sum(axis=1)
    np.testing.assert_allclose(det.calibration_scores_, np.sort(loo), rtol=1e-6)
    assert det.offset_ == conformal_threshold(det.calibration_scores_, 0.1)
    # leave-one-out scores are less normal than the in-sample ones
    assert np.all(loo < det.score_samples(train))


def test_one_calibration_and_one_warning_of_its_own_name():
    # the inner Gaussian's threshold is unused: no leave-one-out of its own,
    # and a small training set warns once, naming the detector the user fitted
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        det = DeepMahalanobis(**FAST).fit(_images(n=12))
    messages = [str(w.message) for w in caught if w.category is CalibrationWarning]
    assert len(messages) == 1 and messages[0].startswith("DeepMahalanobis ")
    assert det.gaussian_.calibration == "training"


def test_pickle_keeps_scores(fitted):
    images = _with_squares(_images(n=6, seed=4))
    restored = pickle.loads(pickle.dumps(fitted))
    np.testing.assert_array_equal(
        restored.score_samples(images), fitted.score_samples(images)
    )


def test_contract_on_images():
    check_image_input("DeepMahalanobis", DeepMahalanobis(**FAST))


def test_levels_and_covariance_are_passed_on():
    det = DeepMahalanobis(**FAST, levels=["layer4", "layer3"], covariance="oas")
    det.fit(_images())
    assert det.levels_ == ("layer4", "layer3")
    assert det.gaussian_.covariance == "oas"
    assert [g.size for g in det.gaussian_.groups_] == [512, 256]
    assert det.level_distances(_images(n=3)).shape == (3, 2)


def test_rejects_tabular_input():
    with pytest.raises(ValueError, match="Mahalanobis"):
        DeepMahalanobis(**FAST).fit(np.zeros((10, 4)))


def test_offline_error_leaves_it_unfitted(monkeypatch, tmp_path):
    from huggingface_hub import constants

    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path))
    det = DeepMahalanobis(backbone="resnet18", image_size=32)
    with pytest.raises(
        OSError, match="'resnet18'.*tf_efficientnet_lite0.*weights=<path>.*weights=None"
    ):
        det.fit(_images(n=4))
    assert not hasattr(det, "offset_") and not hasattr(det, "feature_extractor_")


def test_default_real_weights_separate_digits():
    # one-class digits, upsampled to 64x64, on the packaged ImageNet weights
    from sklearn.datasets import load_digits
    from sklearn.metrics import roc_auc_score

    X, y = load_digits(return_X_y=True)
    images = np.round(X.reshape(-1, 1, 8, 8) * (255 / 16)).astype(np.uint8)
    rng = np.random.default_rng(0)
    normal = rng.permutation(np.flatnonzero(y == 3))
    test = np.r_[normal[60:90], rng.permutation(np.flatnonzero(y != 3))[:60]]
    det = DeepMahalanobis(image_size=64).fit(images[normal[:60]])
    assert det.feature_extractor_.backbone == "tf_efficientnet_lite0"
    assert det.levels_[0] == "stem" and det.levels_[-1] == "head"
    assert roc_auc_score(y[test] != 3, -det.score_samples(images[test])) > 0.95


def test_registered():
    assert skanomaly.get_detector("deep_mahalanobis") is DeepMahalanobis
    assert skanomaly.get_detector("mahalanobis") is Mahalanobis
    det = skanomaly.make_detector("deep_mahalanobis", backbone="efficientnet_b0")
    assert det.get_params()["backbone"] == "efficientnet_b0"
    defaults = DeepMahalanobis().get_params()
    assert defaults["backbone"] == "tf_efficientnet_lite0"
    assert defaults["weights"] == "imagenet"


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_separates_like_cpu():
    det = DeepMahalanobis(**{**FAST, "device": "cuda"}).fit(_images())
    good, bad = _images(n=10, seed=2), _with_squares(_images(n=5, seed=3))
    assert det.feature_extractor_.backbone_.conv1.weight.is_cuda
    assert det.score_samples(bad).max() < det.score_samples(good).min()


def test_float_images_in_0_255_are_refused_when_scoring_too(fitted):
    # fit refused them, score_samples scored them (as if in [0, 1])
    floats = _images(n=4, seed=1).astype(np.float32)
    for method in [fitted.score_samples, fitted.level_distances, fitted.predict]:
        with pytest.raises(ValueError, match=r"values in \[0, 1\].*divide by 255"):
            method(floats)
    np.testing.assert_allclose(
        fitted.score_samples(floats / 255), fitted.score_samples(_images(4, seed=1))
    )


def test_after_a_float_fit_scoring_checks_the_range_too():
    det = DeepMahalanobis(**FAST).fit(_images().astype(np.float32) / 255)
    with pytest.raises(ValueError, match=r"values in \[0, 1\].*divide by 255"):
        det.score_samples(_images(n=4, seed=1).astype(np.float32))
