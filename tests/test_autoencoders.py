"""AutoEncoder and VAE: quality on digits, images, maps, training machinery."""

import warnings

import numpy as np
import pytest
import torch
from sklearn.datasets import load_digits
from sklearn.exceptions import ConvergenceWarning
from sklearn.metrics import roc_auc_score

from skanomaly import VAE, AutoEncoder
from skanomaly.nets import TensorBatchIterator, torch_random_state
from skanomaly.nn import ConvDecoder, ConvEncoder, downsampling_plan


@pytest.fixture(scope="module")
def digits_one_class():
    """Digit 0 normal: train on 120 zeros, test on the rest (1 = anomaly)."""
    X, digit = load_digits(return_X_y=True)
    zeros = np.flatnonzero(digit == 0)
    train = zeros[:120]
    test = np.setdiff1d(np.arange(len(X)), train)
    return X[train], X[test], (digit[test] != 0).astype(int)


@pytest.mark.parametrize("cls", [AutoEncoder, VAE])
@pytest.mark.parametrize("as_images", [False, True])
def test_beats_random_on_digits(cls, as_images, digits_one_class):
    X_train, X_test, is_anomaly = digits_one_class
    if as_images:
        X_train, X_test = X_train.reshape(-1, 8, 8), X_test.reshape(-1, 8, 8)
    det = cls(max_epochs=5, random_state=0, base_channels=16).fit(X_train)
    auroc = roc_auc_score(is_anomaly, -det.score_samples(X_test))
    assert auroc > (0.95 if not as_images else 0.85), auroc
    assert len(det.net_.history) == 5


@pytest.mark.parametrize(
    "score_method", ["reconstruction_probability", "reconstruction_error", "elbo"]
)
def test_vae_score_methods(score_method, digits_one_class):
    X_train, X_test, is_anomaly = digits_one_class
    det = VAE(max_epochs=5, random_state=0, score_method=score_method).fit(X_train)
    scores = det.score_samples(X_test)
    assert roc_auc_score(is_anomaly, -scores) > 0.9
    # scoring is deterministic and independent of batch composition
    np.testing.assert_allclose(det.score_samples(X_test[:7]), scores[:7], rtol=1e-5)


def test_vae_auto_score_is_the_error_on_images_and_the_probability_on_tables(
    digits_one_class,
):
    X_train, X_test, _ = digits_one_class
    images = (X_train.reshape(-1, 1, 8, 8) * 16).astype(np.uint8)
    test_images = (X_test.reshape(-1, 1, 8, 8) * 16).astype(np.uint8)
    for X, X_eval, chosen in [
        (images, test_images, "reconstruction_error"),
        (X_train, X_test, "reconstruction_probability"),
    ]:
        det = VAE(max_epochs=3, random_state=0).fit(X)
        assert det.score_method == "auto" and det.score_method_ == chosen
        auto = det.score_samples(X_eval)
        explicit = det.set_params(score_method=chosen).score_samples(X_eval)
        np.testing.assert_array_equal(auto, explicit)
        other = {"reconstruction_error": "elbo"}.get(chosen, "reconstruction_error")
        assert not np.allclose(
            det.set_params(score_method=other).score_samples(X_eval), auto
        )


def test_vae_score_methods_differ(digits_one_class):
    X_train, X_test, _ = digits_one_class
    det = VAE(max_epochs=2, random_state=0).fit(X_train)
    probability = det.score_samples(X_test)
    elbo = det.set_params(score_method="elbo").score_samples(X_test)
    # the ELBO adds a positive KL term to the same Monte-Carlo NLL
    assert np.all(elbo < probability)


def test_beta_reaches_the_loss(digits_one_class):
    X_train, _, _ = digits_one_class
    a = VAE(max_epochs=2, random_state=0, beta=1.0).fit(X_train)
    b = VAE(max_epochs=2, random_state=0, beta=10.0).fit(X_train)
    assert a.net_.history[-1, "train_loss"] != b.net_.history[-1, "train_loss"]


def test_anomaly_map_is_the_per_pixel_error(digits_one_class):
    X_train, X_test, _ = digits_one_class
    images = X_test.reshape(-1, 8, 8)[:10]
    # the raw error (the corrected score: test_complexity.py)
    det = AutoEncoder(
        max_epochs=2, random_state=0, base_channels=8, complexity_correction=None
    )
    det.fit(X_train.reshape(-1, 8, 8))
    maps = det.anomaly_map(images)
    assert maps.shape == (10, 8, 8)
    # for one channel the score is the mean of the map
    np.testing.assert_allclose(
        maps.reshape(10, -1).mean(axis=1), -det.score_samples(images), rtol=1e-5
    )
    tabular = AutoEncoder(max_epochs=1).fit(X_train)
    with pytest.raises(ValueError, match="fitted on images"):
        tabular.anomaly_map(images)


def test_diverging_training_stops_with_a_named_error(digits_one_class):
    X_train, _, _ = digits_one_class
    det = AutoEncoder(max_epochs=20, lr=1e12, random_state=0)
    with pytest.raises(FloatingPointError, match=r"training loss became .* epoch \d"):
        det.fit(X_train)
    assert not hasattr(det, "net_")


def test_training_loss_decreases(digits_one_class):
    X_train, _, _ = digits_one_class
    det = AutoEncoder(max_epochs=10, batch_size=16, random_state=0)
    history = det.fit(X_train).net_.history
    losses = history[:, "train_loss"]
    assert losses[-1] < 0.8 * losses[0]


def test_seeding_does_not_touch_the_callers_generator():
    torch.manual_seed(123)
    expected = torch.rand(3)
    torch.manual_seed(123)
    with torch_random_state(7):
        inside = torch.rand(3)
    np.testing.assert_array_equal(torch.rand(3), expected)
    with torch_random_state(7):
        np.testing.assert_array_equal(torch.rand(3), inside)


def test_batch_iterator_covers_every_sample():
    data = np.arange(10, dtype=np.float32)[:, None]
    ordered = list(TensorBatchIterator(data, batch_size=4))
    assert [len(b) for b, _ in ordered] == [4, 4, 2]
    assert torch.cat([b for b, _ in ordered]).flatten().tolist() == list(range(10))
    torch.manual_seed(0)
    shuffled = torch.cat([b for b, _ in TensorBatchIterator(data, 4, shuffle=True)])
    assert sorted(shuffled.flatten().tolist()) == list(range(10))
    assert shuffled.flatten().tolist() != list(range(10))
    # a lone last sample would break BatchNorm: skipped for that epoch
    lone = TensorBatchIterator(np.zeros((9, 1)), batch_size=4, shuffle=True)
    assert [len(b) for b, _ in lone] == [4, 4] and len(lone) == 2


@pytest.mark.parametrize(
    "shape, plan_end",
    [
        ((1, 32, 32), (4, 4)),
        ((1, 28, 28), (7, 7)),
        ((3, 27, 30), (27, 30)),
        ((1, 64, 32), (8, 4)),
        ((2, 3, 3), (3, 3)),
    ],
)
def test_conv_stacks_handle_any_image_size(shape, plan_end):
    assert downsampling_plan(*shape[1:])[-1] == plan_end
    encoder, decoder = ConvEncoder(shape, 5, 4), ConvDecoder(shape, 5, 4)
    x = torch.zeros(2, *shape)
    assert encoder(x).shape == (2, 5)
    assert decoder(encoder(x)).shape == x.shape


def test_images_of_other_sizes_train(digits_one_class):
    rng = np.random.default_rng(0)
    images = rng.random((16, 3, 12, 10)).astype(np.float32)
    det = AutoEncoder(max_epochs=1, base_channels=4, random_state=0).fit(images)
    assert det.score_samples(images).shape == (16,)
    assert det.anomaly_map(images).shape == (16, 12, 10)


def test_uint8_images_are_scored_batch_by_batch_without_a_float_copy():
    import tracemalloc

    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, size=(2000, 1, 16, 16), dtype=np.uint8)  # 0.5 MB
    det = AutoEncoder(
        max_epochs=1, batch_size=50, base_channels=4, latent_dim=4, random_state=0
    ).fit(images[:200])
    floats = images.astype(np.float32) / 255  # 2 MB
    expected = det.score_samples(floats)
    tracemalloc.start()
    try:
        scores = det.score_samples(images)
        maps = det.anomaly_map(images)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    # the same numbers as the float images...
    np.testing.assert_array_equal(scores, expected)
    np.testing.assert_array_equal(maps, det.anomaly_map(floats))
    # ...without a whole-array float32 copy (2 MB): the maps (2 MB) and
    # per-batch buffers are all that is allocated
    assert peak < maps.nbytes + floats.nbytes // 2, peak


@pytest.mark.parametrize("batch_norm, dropout", [(True, 0.0), (False, 0.3)])
def test_tabular_regularisation_reaches_the_mlps(batch_norm, dropout):
    X = np.random.default_rng(0).normal(size=(40, 5))
    det = AutoEncoder(
        max_epochs=1, batch_norm=batch_norm, dropout=dropout, random_state=0
    ).fit(X)
    for mlp in (det.net_.module_.encoder, det.net_.module_.decoder):
        kinds = [type(layer) for layer in mlp]
        assert (torch.nn.BatchNorm1d in kinds) == batch_norm
        dropouts = [layer.p for layer in mlp if isinstance(layer, torch.nn.Dropout)]
        assert dropouts == ([dropout] * 2 if dropout else [])
    # evaluation mode when scoring: no dropout noise, batch statistics frozen
    np.testing.assert_array_equal(det.score_samples(X), det.score_samples(X))
    np.testing.assert_allclose(
        det.score_samples(X[:7]), det.score_samples(X)[:7], rtol=1e-5
    )


# ------------------------------------------------- divergence and scaling


def test_finite_divergence_warns_naming_the_loss_and_the_learning_rate(
    digits_one_class,
):
    # trained to a loss of 2e7 without a word (AUROC far below the 1.0 at the
    # default learning rate)
    X_train, _, _ = digits_one_class
    with pytest.warns(ConvergenceWarning) as record:
        AutoEncoder(lr=1e3, random_state=0).fit(X_train)
    (message,) = [str(w.message) for w in record if "diverged" in str(w.message)]
    assert "training loss ended at" in message and "lr=1000.0" in message


def test_a_reconstruction_loss_that_never_decreases_warns(digits_one_class):
    # tanh outputs saturate: the loss stays near its first value (AUROC 0.28)
    X_train, _, _ = digits_one_class
    images = (X_train.reshape(-1, 1, 8, 8) * 16).astype(np.uint8)
    match = r"did not decrease in \d+ epochs.*lr=1000.0"
    with pytest.warns(ConvergenceWarning, match=match):
        AutoEncoder(lr=1e3, random_state=0).fit(images)


def test_vae_divergence_warns_on_images(digits_one_class):
    X_train, _, _ = digits_one_class
    images = (X_train.reshape(-1, 1, 8, 8) * 16).astype(np.uint8)
    with pytest.warns(ConvergenceWarning, match="VAE training diverged"):
        VAE(lr=1e3, max_epochs=5, random_state=0).fit(images)


@pytest.mark.parametrize("cls", [AutoEncoder, VAE])
def test_default_training_does_not_warn(cls, digits_one_class):
    X_train, _, _ = digits_one_class
    with warnings.catch_warnings():
        warnings.simplefilter("error", ConvergenceWarning)
        cls(random_state=0).fit(X_train)
        cls(random_state=0).fit((X_train.reshape(-1, 1, 8, 8) * 16).astype(np.uint8))


def test_float32_data_at_1e30_is_scaled_in_float64(digits_one_class):
    # float32 statistics overflowed: input_scale_ = inf, one score for all
    X_train, X_test, y_test = digits_one_class
    det = AutoEncoder(max_epochs=5, random_state=0)
    det.fit(X_train.astype(np.float32) * np.float32(1e30))
    assert np.isfinite(det.input_scale_).all()
    scores = det.score_samples(X_test.astype(np.float32) * np.float32(1e30))
    assert roc_auc_score(y_test, -scores) > 0.9


def test_statistics_beyond_float32_are_an_error_naming_the_column(digits_one_class):
    X_train, _, _ = digits_one_class
    det = AutoEncoder(max_epochs=1)
    with pytest.raises(ValueError, match=r"cannot scale column \d+ .*float32"):
        det.fit(X_train * 1e300)
    assert not hasattr(det, "input_scale_")


def test_batches_of_one_row_with_batch_norm_are_a_clear_error():
    X = np.random.default_rng(0).normal(size=(30, 5))
    detector = AutoEncoder(batch_size=1, max_epochs=1)
    with pytest.raises(
        ValueError, match="batches of at least 2 samples.*batch_norm=False"
    ):
        detector.fit(X)
    assert not hasattr(detector, "net_")
    # without batch normalisation a batch of one trains
    AutoEncoder(batch_size=1, max_epochs=1, batch_norm=False).fit(X)


def test_an_invalid_batch_size_set_after_fit_is_a_clear_error_when_scoring():
    X = np.random.default_rng(0).normal(size=(40, 5))
    detector = AutoEncoder(max_epochs=1, random_state=0).fit(X)
    with pytest.raises(ValueError):  # the refit refuses it; the model stays
        detector.set_params(batch_size=0).fit(X)
    with pytest.raises(ValueError, match="batch_size, which is 0: set it to a"):
        detector.score_samples(X)
    assert detector.set_params(batch_size=7).score_samples(X).shape == (40,)
