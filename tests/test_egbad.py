"""EGBAD: BiGAN losses, images, score weights, weight averaging."""

import pickle

import numpy as np
import pytest
import torch
from _images import uniform_images
from skorch.callbacks import Callback
from torch.nn import functional as F

from skanomaly.detectors.base import get_detector_tags
from skanomaly.detectors.egbad import EGBAD
from skanomaly.nn.egbad import BiGANLoss, BiGANModule

FAST = {**get_detector_tags(EGBAD).test_params, "random_state": 0}


@pytest.fixture(scope="module")
def fitted_images():
    X = uniform_images()
    # the raw score, whose formula these tests check (the correction:
    # test_complexity.py)
    params = {**FAST, "batch_size": 16, "complexity_correction": None}
    return EGBAD(**params).fit(X), X


def test_bigan_losses_label_pairs():
    # stub critic: the logit is the first entry of the code in the pair
    discriminator = lambda x, z: z[:, 0]  # noqa: E731
    encoded = torch.tensor([[2.0], [0.5]])  # E(x), paired with data
    z = torch.tensor([[-1.0], [3.0]])  # prior draws, paired with G(z)
    output = (encoded, z, torch.zeros(2, 3))
    X = torch.zeros(2, 3)
    loss = BiGANLoss()
    # D: (x, E(x)) real, (G(z), z) fake
    expected_d = F.softplus(-encoded[:, 0]).mean() + F.softplus(z[:, 0]).mean()
    # G: (G(z), z) real; E: (x, E(x)) fake
    expected_g = F.softplus(-z[:, 0]).mean() + F.softplus(encoded[:, 0]).mean()
    torch.testing.assert_close(
        loss.discriminator_loss(output, X, discriminator), expected_d
    )
    torch.testing.assert_close(
        loss.generator_loss(output, X, discriminator), expected_g
    )


def test_module_returns_codes_prior_draws_and_samples():
    module = BiGANModule((1, 8, 8), latent_dim=5, base_channels=4)
    torch.manual_seed(3)
    encoded, z, generated = module(torch.zeros(6, 1, 8, 8))
    assert encoded.shape == z.shape == (6, 5)
    assert generated.shape == (6, 1, 8, 8)
    torch.manual_seed(3)
    torch.testing.assert_close(z, torch.randn(6, 5))
    torch.testing.assert_close(generated, module.generator(z))


def test_one_optimizer_trains_generator_and_encoder(fitted_images):
    det, _ = fitted_images
    net = det.net_
    optimized = {id(p) for g in net.optimizer_.param_groups for p in g["params"]}
    module = net.module_
    assert {id(p) for p in module.generator.parameters()} <= optimized
    assert {id(p) for p in module.encoder.parameters()} <= optimized
    assert net.optimizer_.param_groups[0]["betas"] == (0.5, 0.999)


def test_lr_d_reaches_the_discriminator_optimizer():
    det = EGBAD(**{**FAST, "lr_d": 1e-2, "max_epochs": 1}).fit(uniform_images(n=16))
    assert det.net_.optimizer_d_.param_groups[0]["lr"] == 1e-2
    assert det.net_.optimizer_.param_groups[0]["lr"] == FAST["lr"]


def test_trains_on_images_and_maps_anomalies(fitted_images):
    det, X = fitted_images
    history = det.net_.history
    assert len(history) == FAST["max_epochs"]
    assert np.all(np.isfinite(history[:, "train_loss"]))
    assert np.all(np.isfinite(history[:, "train_loss_d"]))
    maps = det.anomaly_map(X[:6])
    assert maps.shape == (6, 8, 8)
    scaled = torch.as_tensor(det._scale_input(X[:6]))
    with torch.no_grad():
        reconstruction = det.net_.module_.generator(det.net_.module_.encoder(scaled))
    np.testing.assert_allclose(
        maps, ((reconstruction - scaled) ** 2).mean(dim=1).numpy(), rtol=1e-5
    )


def test_non_square_rgb_images():
    X = uniform_images(n=20, shape=(3, 6, 10))
    det = EGBAD(**{**FAST, "batch_size": 8}).fit(X)
    assert det.image_shape_ == (3, 6, 10)
    assert det.anomaly_map(X[:2]).shape == (2, 6, 10)


def test_score_weights_and_discriminator_term(fitted_images):
    det, X = fitted_images
    det.set_params(score_scaling="none")
    scaled = torch.as_tensor(det._scale_input(X[:6]))
    module, critic = det.net_.module_, det.net_.discriminator_
    with torch.no_grad():
        encoded = module.encoder(scaled)
        reconstruction = module.generator(encoded)
        residual = (scaled - reconstruction).abs().sum(dim=(1, 2, 3)).numpy()
        fm = (
            (
                critic.features(scaled, encoded)
                - critic.features(reconstruction, encoded)
            )
            .abs()
            .sum(dim=1)
            .numpy()
        )
        ce = F.softplus(-critic(reconstruction, encoded)).numpy()
    scores = {}
    for weight in (0.0, 0.1, 1.0):
        for disc_loss in ("fm", "ce"):
            det.set_params(disc_weight=weight, disc_loss=disc_loss)
            scores[weight, disc_loss] = -det.score_samples(X[:6])
    det.set_params(disc_weight=0.1, disc_loss="fm", score_scaling="auto")
    np.testing.assert_allclose(scores[0.0, "fm"], residual, rtol=1e-5)
    np.testing.assert_allclose(scores[1.0, "fm"], fm, rtol=1e-5)
    np.testing.assert_allclose(scores[1.0, "ce"], ce, rtol=1e-5)
    # w = 0.1 weights the discriminator term
    np.testing.assert_allclose(scores[0.1, "fm"], 0.9 * residual + 0.1 * fm, rtol=1e-5)
    np.testing.assert_allclose(scores[0.1, "ce"], 0.9 * residual + 0.1 * ce, rtol=1e-5)


def _residuals(det, X):
    scaled = torch.as_tensor(det._scale_input(X))
    with torch.no_grad():
        return (scaled - det.net_.module_.reconstruct(scaled)).flatten(1).double()


def test_standardized_residual_in_units_of_its_training_spread():
    X = uniform_images()
    X[:, :, :, :2] = 0.5  # two columns that never vary in training
    params = {**FAST, "batch_size": 16, "calibration": "training"}
    det = EGBAD(**params, complexity_correction=None).fit(X)
    assert det.score_scaling == "auto"  # 'standardized' for images
    training = _residuals(det, X).numpy()
    center, variance = training.mean(axis=0), training.var(axis=0)
    scale = np.sqrt(0.7 * variance / variance.mean() + 0.3)
    np.testing.assert_allclose(det.residual_center_, center, rtol=1e-4, atol=1e-6)
    np.testing.assert_allclose(det.residual_scale_, scale, rtol=1e-4, atol=1e-6)
    # constant pixels get the floor, not a near-zero scale that would let
    # them dominate every score
    constant = np.zeros((8, 8), bool)
    constant[:, :2] = True
    assert det.residual_scale_[constant.ravel()].min() >= np.sqrt(0.3) * 0.999
    new = uniform_images(6, seed=1)
    det.set_params(disc_weight=0.0)
    expected = np.abs((_residuals(det, new).numpy() - center) / scale).sum(axis=1)
    np.testing.assert_allclose(-det.score_samples(new), expected, rtol=1e-4)
    det.set_params(score_scaling="none")
    raw = np.abs(_residuals(det, new).numpy()).sum(axis=1)
    np.testing.assert_allclose(-det.score_samples(new), raw, rtol=1e-5)
    # files saved before the scaling existed score as they did
    det.set_params(score_scaling="auto")
    del det.residual_center_, det.residual_scale_
    np.testing.assert_allclose(-det.score_samples(new), raw, rtol=1e-5)


def test_auto_score_scaling_leaves_tabular_residuals_raw():
    X = np.random.default_rng(0).normal(size=(60, 5)) * [1, 1, 1, 0.1, 5]
    det = EGBAD(**{**FAST, "disc_weight": 0.0}).fit(X)
    assert det.residual_scale_.shape == (5,)
    auto = det.score_samples(X)
    det.set_params(score_scaling="none")
    np.testing.assert_array_equal(det.score_samples(X), auto)
    det.set_params(score_scaling="standardized")
    assert not np.allclose(det.score_samples(X), auto)


class _RecordWeights(Callback):
    """Copies every parameter before training and after each training batch."""

    def initialize(self):
        self.snapshots = []
        return self

    @staticmethod
    def _copy(net):
        params = [*net.module_.parameters(), *net.discriminator_.parameters()]
        return [p.detach().clone().double() for p in params]

    def on_train_begin(self, net, **kwargs):
        self.initial = self._copy(net)

    def on_batch_end(self, net, training=None, **kwargs):
        if training:
            self.snapshots.append(self._copy(net))


@pytest.mark.parametrize("decay", [None, 0.3, 0.9])
def test_weights_are_averaged_for_scoring(decay):
    recorder = _RecordWeights()
    det = EGBAD(
        **{**FAST, "batch_size": 8, "max_epochs": 3},
        ema_decay=decay,
        callbacks=[recorder],
    ).fit(uniform_images(n=24))
    net = det.net_
    final = [*net.module_.parameters(), *net.discriminator_.parameters()]
    steps = len(recorder.snapshots)
    assert steps == 9  # three batches a epoch, three epochs
    for i, param in enumerate(final):
        if decay is None:
            expected = recorder.snapshots[-1][i]
        else:
            # TensorFlow's EMA with num_updates: the decay warms up to `decay`
            expected = recorder.initial[i]
            for t, snapshot in enumerate(recorder.snapshots, start=1):
                rate = min(decay, (1 + t) / (10 + t))
                expected = rate * expected + (1 - rate) * snapshot[i]
            assert not torch.allclose(expected, recorder.snapshots[-1][i])
        torch.testing.assert_close(
            param.detach().double(), expected, rtol=1e-5, atol=1e-6
        )


def test_auto_latent_size_follows_the_authors():
    params = {**FAST, "latent_dim": "auto", "max_epochs": 1}
    tabular = EGBAD(**params).fit(np.random.default_rng(0).normal(size=(20, 3)))
    assert tabular.latent_dim_ == 32
    assert tabular.net_.module_.encoder.out_features == 32
    images = EGBAD(**params).fit(uniform_images(n=8))
    assert images.latent_dim_ == 200
    assert images.net_.module_.encoder.out_features == 200


def test_image_pickle_and_random_state(fitted_images):
    det, X = fitted_images
    restored = pickle.loads(pickle.dumps(det))
    np.testing.assert_array_equal(restored.score_samples(X), det.score_samples(X))
    again = EGBAD(**det.get_params()).fit(X)
    np.testing.assert_array_equal(again.score_samples(X), det.score_samples(X))
    other = EGBAD(**{**det.get_params(), "random_state": 1}).fit(X)
    assert not np.allclose(other.score_samples(X), det.score_samples(X))


@pytest.mark.parametrize("shape", [(30, 6), (30, 1, 8, 8)], ids=["table", "images"])
def test_no_hidden_sizes_is_a_clear_error_and_fits_nothing(shape):
    X = np.random.default_rng(0).random(shape).astype(np.float32)
    detector = EGBAD(hidden_sizes=(), max_epochs=1)
    with pytest.raises(ValueError, match=r"at least one hidden size \(hidden_sizes\)"):
        detector.fit(X)
    assert not hasattr(detector, "net_")
