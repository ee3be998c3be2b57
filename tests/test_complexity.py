"""The input-complexity correction of the reconstruction detectors."""

import pickle

import numpy as np
import pytest
import torch
from scipy.ndimage import gaussian_filter
from sklearn.datasets import load_digits
from sklearn.metrics import roc_auc_score

from skanomaly import EGBAD, VAE, AnoGAN, AutoEncoder, GANomaly, SkipGANomaly
from skanomaly.nn.complexity import complexity_corrected, detail_energy

RECONSTRUCTION_DETECTORS = [AutoEncoder, VAE, GANomaly, SkipGANomaly, EGBAD, AnoGAN]
FAST = {"max_epochs": 2, "min_steps": 0, "batch_size": 16, "random_state": 0}


def _fast(cls, **params):
    detector = cls(**FAST, **params)
    if cls is AnoGAN:
        detector.set_params(search_steps=3, search_starts=1)
    return detector


def test_detail_energy_matches_a_gaussian_filter():
    rng = np.random.default_rng(0)
    images = rng.random((3, 2, 9, 7)).astype(np.float32)
    for sigma in (1.0, 2.0):
        # scipy's 'nearest' mode is replicate padding; with truncate=3 its
        # radius is round(3 sigma), ours ceil(3 sigma): equal here
        blurred = gaussian_filter(
            images, sigma=(0, 0, sigma, sigma), mode="nearest", truncate=3.0
        )
        expected = ((images - blurred) ** 2).reshape(3, -1).mean(axis=1)
        energy = detail_energy(torch.as_tensor(images), sigma).numpy()
        np.testing.assert_allclose(energy, expected, rtol=1e-5, atol=1e-8)


def test_detail_energy_of_a_constant_image_is_zero():
    images = torch.full((2, 1, 5, 5), 0.3)
    assert detail_energy(images, 2.0).abs().max() < 1e-12


def test_corrected_score_is_a_log_ratio_in_the_errors_units():
    score = torch.tensor([0.5, 2.0, 0.0])
    energy = torch.tensor([0.1, 0.4, 0.2])
    squared = complexity_corrected(score, energy, power=2, floor=0.01)
    absolute = complexity_corrected(score, energy, power=1, floor=0.01)
    np.testing.assert_allclose(
        squared[:2].numpy(), np.log([0.5, 2.0]) - np.log([0.11, 0.41]), rtol=1e-6
    )
    np.testing.assert_allclose(
        absolute[:2].numpy(),
        np.log([0.5, 2.0]) - 0.5 * np.log([0.11, 0.41]),
        rtol=1e-6,
    )
    # a perfect reconstruction is very normal, not -inf
    assert torch.isfinite(squared[2]) and squared[2] < squared[0]


def _noise_and_flat_images(rng, n_train=60):
    """Training: noise textures; test: more textures, and flat images."""
    train = rng.random((n_train, 1, 12, 12)).astype(np.float32)
    textures = rng.random((20, 1, 12, 12)).astype(np.float32)
    flat = np.broadcast_to(
        rng.uniform(0.3, 0.7, (20, 1, 1, 1)), (20, 1, 12, 12)
    ).astype(np.float32)
    return train, np.concatenate([textures, flat]), np.r_[np.ones(20), np.zeros(20)]


@pytest.mark.parametrize("cls", [AutoEncoder, SkipGANomaly])
def test_plain_images_rank_as_anomalies_only_with_the_correction(cls):
    # the failure it fixes: a model trained on textures reconstructs a flat
    # image better than any texture, so the raw error calls it most normal
    train, test, is_normal = _noise_and_flat_images(np.random.default_rng(0))
    detector = _fast(cls, complexity_correction="auto").fit(train)
    corrected = roc_auc_score(is_normal, detector.score_samples(test))
    detector.set_params(complexity_correction=None)
    raw = roc_auc_score(is_normal, detector.score_samples(test))
    assert raw < 0.3
    assert corrected > 0.95


def test_autoencoder_score_is_log_error_minus_log_detail():
    X, y = load_digits(return_X_y=True)
    images = (X[y == 3] / 16).reshape(-1, 1, 8, 8).astype(np.float32)
    detector = _fast(
        AutoEncoder, complexity_correction=1.5, calibration="training"
    ).fit(images[:50])
    test = images[50:70]
    corrected = -detector.score_samples(test)
    detector.set_params(complexity_correction=None)
    error = -detector.score_samples(test)
    scaled = (test - detector.input_center_) / detector.input_scale_
    blurred = gaussian_filter(
        scaled, sigma=(0, 0, 1.5, 1.5), mode="nearest", truncate=3.0
    )
    detail = ((scaled - blurred) ** 2).reshape(len(test), -1).mean(axis=1)
    expected = np.log(error) - np.log(detail + detector.complexity_floor_)
    np.testing.assert_allclose(corrected, expected, rtol=1e-4, atol=1e-5)
    # the floor: 1e-3 of the training images' median detail
    train = (images[:50] - detector.input_center_) / detector.input_scale_
    blurred = gaussian_filter(
        train, sigma=(0, 0, 1.5, 1.5), mode="nearest", truncate=3.0
    )
    median = np.median(((train - blurred) ** 2).reshape(50, -1).mean(axis=1))
    assert detector.complexity_floor_ == pytest.approx(1e-3 * median, rel=1e-4)


@pytest.mark.parametrize("cls", RECONSTRUCTION_DETECTORS)
def test_auto_leaves_tabular_scores_unchanged(cls):
    X, y = load_digits(return_X_y=True)
    X = X[y == 1][:60] / 16 + np.random.default_rng(0).normal(0, 0.01, (60, 64))
    auto = _fast(cls, complexity_correction="auto").fit(X)
    raw = _fast(cls).fit(X)
    assert not hasattr(auto, "complexity_floor_")
    np.testing.assert_array_equal(auto.score_samples(X), raw.score_samples(X))


@pytest.mark.parametrize("cls", RECONSTRUCTION_DETECTORS)
def test_an_explicit_blur_on_tabular_data_is_refused_before_training(cls):
    X = np.random.default_rng(0).normal(size=(40, 5))
    detector = _fast(cls, complexity_correction=2.0)
    with pytest.raises(ValueError, match=r"complexity_correction=2\.0.*needs images"):
        detector.fit(X)
    assert not hasattr(detector, "net_")
    assert not hasattr(detector, "offset_")


@pytest.mark.parametrize("bad", [0.0, -1.0, "blur", True])
def test_invalid_values_are_rejected(bad):
    images = np.random.default_rng(0).random((20, 1, 8, 8))
    with pytest.raises(ValueError, match="complexity_correction"):
        _fast(AutoEncoder, complexity_correction=bad).fit(images)


def test_vae_likelihood_scores_are_not_corrected():
    images = np.random.default_rng(0).random((40, 1, 8, 8)).astype(np.float32)
    vae = _fast(
        VAE, score_method="reconstruction_probability", complexity_correction="auto"
    ).fit(images)
    assert not hasattr(vae, "complexity_floor_")
    raw = _fast(
        VAE, score_method="reconstruction_probability", complexity_correction=None
    ).fit(images)
    np.testing.assert_array_equal(vae.score_samples(images), raw.score_samples(images))
    with pytest.raises(ValueError, match="not one"):
        _fast(
            VAE, score_method="reconstruction_probability", complexity_correction=2.0
        ).fit(images)


def test_constant_training_images_give_finite_scores():
    images = np.full((30, 1, 8, 8), 0.5, dtype=np.float32)
    detector = _fast(AutoEncoder, complexity_correction="auto").fit(images)
    assert detector.complexity_floor_ > 0
    other = np.random.default_rng(0).random((5, 1, 8, 8)).astype(np.float32)
    assert np.isfinite(detector.score_samples(np.r_[images[:5], other])).all()


@pytest.mark.parametrize("cls", [AutoEncoder, EGBAD])
def test_pickles_from_before_the_parameter_load_uncorrected(cls):
    images = np.random.default_rng(0).random((40, 1, 8, 8)).astype(np.float32)
    detector = _fast(cls, complexity_correction=None).fit(images)
    state = detector.__getstate__()
    del state["complexity_correction"]
    old = cls.__new__(cls)
    old.__setstate__(pickle.loads(pickle.dumps(state)))
    assert old.complexity_correction is None
    np.testing.assert_array_equal(
        old.score_samples(images), detector.score_samples(images)
    )


def test_switching_the_correction_on_or_to_another_blur_after_fit_is_refused():
    images = np.random.default_rng(0).random((40, 1, 8, 8)).astype(np.float32)
    raw = _fast(AutoEncoder).fit(images)
    assert raw.complexity_sigma_ is None
    raw.set_params(complexity_correction="auto")
    # no floor was fitted, and offset_ is in the raw error's units
    with pytest.raises(ValueError, match="fitted with no correction.*Refit"):
        raw.score_samples(images)
    corrected = _fast(AutoEncoder, complexity_correction="auto").fit(images)
    assert corrected.complexity_sigma_ == 2.0
    corrected.set_params(complexity_correction=1.0)
    # the threshold is refused as for any parameter the score reads, and
    # scoring itself as there is no floor for that blur
    with pytest.raises(
        ValueError, match="fitted with complexity_correction=2.0.*Refit"
    ):
        corrected.predict(images)
    with pytest.raises(ValueError, match="fitted with a 2.0 px blur.*Refit"):
        corrected.score_samples(images)
    # off after fit: the raw error of the same network (the correction does
    # not change training, so the raw fit's network is the same)
    corrected.set_params(complexity_correction=None)
    np.testing.assert_array_equal(
        corrected.score_samples(images),
        _fast(AutoEncoder).fit(images).score_samples(images),
    )


def test_switching_the_correction_off_after_fit_refuses_the_threshold():
    # offset_ is in corrected units: the raw error against it flagged
    # almost everything or nothing
    images = np.random.default_rng(0).random((40, 1, 8, 8)).astype(np.float32)
    corrected = _fast(AutoEncoder, complexity_correction="auto").fit(images)
    decision = corrected.decision_function(images)
    assert corrected.scoring_params_ == {"complexity_correction": 2.0}
    corrected.set_params(complexity_correction=None)
    with pytest.raises(ValueError, match="fitted with complexity_correction=2.0"):
        corrected.predict(images)
    # the same blur written as a number is the fitted setting
    corrected.set_params(complexity_correction=2.0)
    np.testing.assert_array_equal(corrected.decision_function(images), decision)


def test_a_vae_switched_to_a_likelihood_after_fit_scores_it_uncorrected():
    images = np.random.default_rng(0).random((40, 1, 8, 8)).astype(np.float32)
    vae = _fast(VAE, complexity_correction=2.0).fit(images)
    vae.set_params(score_method="elbo")
    elbo = vae.score_samples(images)
    vae.set_params(complexity_correction=None)
    np.testing.assert_array_equal(elbo, vae.score_samples(images))


def test_a_blur_wider_than_the_images_is_refused_before_training():
    images = np.random.default_rng(0).random((20, 1, 6, 9)).astype(np.float32)
    detector = _fast(AutoEncoder, complexity_correction=10.0)
    with pytest.raises(ValueError, match=r"wider than the 6x9 images; use at most 9"):
        detector.fit(images)
    assert not hasattr(detector, "net_")
    _fast(AutoEncoder, complexity_correction=9.0).fit(images)
