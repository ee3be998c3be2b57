"""``latent_weight``: the AutoEncoder's and the VAE's density term on the code."""

import numpy as np
import pytest
import torch
from sklearn.covariance import LedoitWolf
from sklearn.datasets import load_digits

import skanomaly
from skanomaly import VAE, AutoEncoder
from skanomaly.nn.latent import robust_standardisation

FAST = dict(max_epochs=3, random_state=0, calibration="training")


@pytest.fixture(scope="module")
def digits():
    X, y = load_digits(return_X_y=True)
    images = (X / 16.0).reshape(-1, 1, 8, 8).astype(np.float32)
    return images[y == 0][:80], images[:120]


def _codes_and_errors(detector, X):
    """Codes and reconstruction errors computed here, independently."""
    scaled = torch.as_tensor(detector._scale_input(X))
    module = detector.net_.module_
    module.eval()
    with torch.no_grad():
        if isinstance(detector, VAE):
            code = module.encode(scaled)[0]
            reconstruction = module.decode(code)[0]
        else:
            code = module.encoder(scaled)
            reconstruction = module(scaled)
    error = ((reconstruction - scaled) ** 2).flatten(1).mean(dim=1)
    return code.double().numpy(), error.double().numpy()


def _robust(values):
    low, median, high = np.percentile(values, [25, 50, 75])
    return median, (high - low) / 1.3489795003921634


@pytest.mark.parametrize("cls", [AutoEncoder, VAE])
def test_zero_weight_leaves_the_reconstruction_error(cls, digits):
    train, test = digits
    detector = cls(**FAST).fit(train)
    assert detector.latent_weight == 0
    _, error = _codes_and_errors(detector, test)
    np.testing.assert_allclose(-detector.score_samples(test), error, rtol=1e-5)


@pytest.mark.parametrize("cls", [AutoEncoder, VAE])
def test_weight_adds_the_standardised_mahalanobis_distance_of_the_code(cls, digits):
    train, test = digits
    detector = cls(latent_weight=1.5, **FAST).fit(train)
    codes, errors = _codes_and_errors(detector, train)
    gaussian = LedoitWolf().fit(codes)
    distances = gaussian.mahalanobis(codes)  # squared
    (e_center, e_scale), (d_center, d_scale) = _robust(errors), _robust(distances)
    test_codes, test_errors = _codes_and_errors(detector, test)
    expected = (test_errors - e_center) / e_scale + 1.5 * (
        gaussian.mahalanobis(test_codes) - d_center
    ) / d_scale
    np.testing.assert_allclose(
        -detector.score_samples(test), expected, rtol=1e-4, atol=1e-4
    )
    # the weight is read when scoring: the same fit, another weight
    detector.set_params(latent_weight=0.0)
    np.testing.assert_allclose(-detector.score_samples(test), test_errors, rtol=1e-5)


def test_the_latent_term_changes_the_ranking(digits):
    train, test = digits
    detector = AutoEncoder(**FAST).fit(train)
    error = -detector.score_samples(test)
    combined = -detector.set_params(latent_weight=1000.0).score_samples(test)
    assert not np.array_equal(np.argsort(error), np.argsort(combined))


def test_scores_do_not_depend_on_the_batch(digits):
    train, test = digits
    detector = AutoEncoder(latent_weight=1.0, batch_size=16, **FAST).fit(train)
    together = detector.score_samples(test)
    alone = np.concatenate([detector.score_samples(test[i : i + 1]) for i in range(5)])
    np.testing.assert_allclose(alone, together[:5], rtol=1e-5)
    np.testing.assert_array_equal(detector.score_samples(test), together)


def test_tabular_rows_take_the_option(digits):
    X, y = load_digits(return_X_y=True)
    detector = AutoEncoder(latent_weight=1.0, **FAST).fit(X[y == 0])
    assert detector.latent_precision_.shape == (8, 8)
    assert np.all(np.isfinite(detector.score_samples(X[:50])))


@pytest.mark.parametrize("weight", [-1.0, "one"])
def test_invalid_weights_are_refused_at_fit(weight, digits):
    with pytest.raises(ValueError, match="latent_weight"):
        AutoEncoder(latent_weight=weight, **FAST).fit(digits[0])


@pytest.mark.parametrize("weight", [np.inf, np.nan, -0.5])
def test_invalid_weights_set_after_fit_are_refused_when_scoring(weight, digits):
    detector = AutoEncoder(**FAST).fit(digits[0])
    detector.set_params(latent_weight=weight)
    with pytest.raises(ValueError, match="finite number >= 0"):
        detector.score_samples(digits[1])


def test_a_detector_fitted_before_the_option_refuses_only_a_weight(digits):
    detector = AutoEncoder(**FAST).fit(digits[0])
    for name in ("latent_mean_", "latent_precision_", "term_center_", "term_scale_"):
        delattr(detector, name)
    detector.score_samples(digits[1])  # weight 0: as before
    detector.set_params(latent_weight=1.0)
    with pytest.raises(ValueError, match="refit"):
        detector.score_samples(digits[1])


def test_vae_refuses_a_score_method_its_statistics_were_not_fitted_for(digits):
    detector = VAE(latent_weight=1.0, **FAST).fit(digits[0])
    assert detector.score_method_ == "reconstruction_error"
    detector.score_samples(digits[1])
    detector.set_params(score_method="elbo")
    with pytest.raises(ValueError, match="refit"):
        detector.score_samples(digits[1])
    detector.set_params(latent_weight=0.0)
    assert np.all(np.isfinite(detector.score_samples(digits[1])))


@pytest.mark.parametrize("cls", [AutoEncoder, VAE])
def test_save_and_load_keep_the_latent_score(cls, digits, tmp_path):
    train, test = digits
    detector = cls(latent_weight=2.0, **FAST).fit(train)
    path = tmp_path / "model.skanomaly"
    skanomaly.save(detector, path)
    loaded = skanomaly.load(path)
    assert loaded.latent_weight == 2.0
    np.testing.assert_array_equal(
        loaded.score_samples(test), detector.score_samples(test)
    )


@pytest.mark.parametrize("tabular", [False, True])
def test_onnx_export_carries_the_latent_term(tabular, tmp_path):
    pytest.importorskip("onnxruntime")
    from _export import check_export

    rng = np.random.default_rng(0)
    if tabular:
        X, X_test = rng.normal(size=(60, 5)), rng.normal(size=(20, 5))
    else:
        X = rng.integers(0, 256, size=(24, 1, 8, 8), dtype=np.uint8)
        X_test = rng.integers(0, 256, size=(12, 1, 8, 8), dtype=np.uint8)
    detector = AutoEncoder(**FAST).fit(X)
    unweighted = detector.score_samples(X_test)
    detector.set_params(latent_weight=1.0)
    # the graph's scores equal score_samples with the latent term
    check_export(detector, X_test, tmp_path / "model.onnx")
    assert not np.allclose(detector.score_samples(X_test), unweighted)


def test_robust_standardisation_falls_back_when_the_spread_is_zero():
    assert robust_standardisation(np.array([1.0, 1.0, 1.0, 1.0, 5.0])) == (1.0, 1.6)
    assert robust_standardisation(np.zeros(4)) == (0.0, 1.0)
