"""GANomaly: the generator, the losses and the score."""

import pickle

import numpy as np
import pytest
import torch
from _images import bar_images, check_separates_bar_orientation
from sklearn.base import clone
from sklearn.model_selection import GridSearchCV, StratifiedKFold

from skanomaly import GANomaly
from skanomaly.detectors.base import get_detector_tags
from skanomaly.nn.gan import Discriminator
from skanomaly.nn.ganomaly import GANomalyGenerator, GANomalyLoss

FAST = {**get_detector_tags(GANomaly).test_params, "random_state": 0}


def test_defaults_are_the_authors():
    params = GANomaly().get_params()
    expected = dict(
        latent_dim=100,
        base_channels=64,
        w_adv=1.0,
        w_con=50.0,
        w_enc=1.0,
        reinit_discriminator_below=1e-5,
        lr=2e-4,
        beta1=0.5,
    )
    assert {k: params[k] for k in expected} == expected
    # the training budget: the authors' 15 epochs of 64 on large training
    # sets, more steps on small ones (the authors' are batch_size=64,
    # max_epochs=15)
    assert (params["batch_size"], params["max_epochs"]) == ("auto", "auto")
    assert params["min_steps"] == 200
    assert type(GANomaly())._default_epochs == 15


@pytest.mark.parametrize("shape", [(1, 32, 32), (3, 16, 16), (1, 28, 28), (2, 7, 9)])
def test_generator_shapes_for_any_image_size(shape):
    gen = GANomalyGenerator(shape, latent_dim=5, base_channels=4)
    x_hat, z, z_hat = gen(torch.randn(3, *shape))
    assert x_hat.shape == (3, *shape)
    assert z.shape == z_hat.shape == (3, 5)
    # tanh decoder for images scaled to [-1, 1]
    assert x_hat.abs().max() <= 1
    # the second encoder has the first one's layout but its own weights
    first = dict(gen.encoder.named_parameters())
    second = dict(gen.encoder_fake.named_parameters())
    assert first.keys() == second.keys()
    assert all(first[k] is not second[k] for k in first)
    assert not torch.equal(first["final.weight"], second["final.weight"])


def test_generator_chains_encoder_decoder_encoder():
    gen = GANomalyGenerator((6,), latent_dim=2, hidden_sizes=(5,)).eval()
    x = torch.randn(4, 6)
    x_hat, z, z_hat = gen(x)
    torch.testing.assert_close(z, gen.encoder(x))
    torch.testing.assert_close(x_hat, gen.decoder(z))
    torch.testing.assert_close(z_hat, gen.encoder_fake(x_hat))


class _FixedCritic(torch.nn.Module):
    """A discriminator with known outputs: logits = sum, features = 2x."""

    def forward(self, x):
        return x.flatten(1).sum(dim=1)

    def features(self, x):
        return 2 * x.flatten(1)


def test_losses_follow_the_formulas():
    torch.manual_seed(0)
    X, x_hat = torch.randn(4, 1, 2, 2), torch.randn(4, 1, 2, 2)
    z, z_hat = torch.randn(4, 3), torch.randn(4, 3)
    critic = _FixedCritic()
    loss = GANomalyLoss(w_adv=2.0, w_con=3.0, w_enc=5.0)

    adv = ((2 * X - 2 * x_hat) ** 2).mean()
    con = (X - x_hat).abs().mean()
    enc = ((z - z_hat) ** 2).mean()
    got = loss.generator_loss((x_hat, z, z_hat), X, critic)
    torch.testing.assert_close(got, 2 * adv + 3 * con + 5 * enc)

    p_real = torch.sigmoid(X.flatten(1).sum(1))
    p_fake = torch.sigmoid(x_hat.flatten(1).sum(1))
    bce = -(torch.log(p_real).mean() + torch.log(1 - p_fake).mean())
    got_d = loss.discriminator_loss((x_hat, z, z_hat), X, critic)
    torch.testing.assert_close(got_d, 0.5 * bce)


def test_generator_loss_gives_generator_grads_only():
    torch.manual_seed(0)
    gen = GANomalyGenerator((1, 8, 8), latent_dim=3, base_channels=4)
    disc = Discriminator((1, 8, 8), base_channels=4)
    X = torch.rand(6, 1, 8, 8) * 2 - 1
    loss = GANomalyLoss()
    loss.generator_loss(gen(X), X, disc).backward()
    # the discriminator is not stepped on this loss: no weight grads for it
    assert all(p.grad is None for p in disc.parameters())
    assert all(p.requires_grad for p in disc.parameters())
    grads = [p.grad.clone() for p in gen.parameters()]
    # the generator's gradients are those of the plain formula
    gen.zero_grad()
    x_hat, z, z_hat = gen(X)
    adv = ((disc.features(X) - disc.features(x_hat)) ** 2).mean()
    plain = adv + 50 * (X - x_hat).abs().mean() + ((z - z_hat) ** 2).mean()
    plain.backward()
    for got, expected in zip(grads, (p.grad for p in gen.parameters())):
        torch.testing.assert_close(got, expected)


def test_discriminator_is_the_dcgan_critic_with_feature_layer():
    det = GANomaly(**FAST).fit(bar_images(40, size=8))
    disc = det.net_.discriminator_
    assert isinstance(disc, Discriminator)
    x = torch.zeros(2, 1, 8, 8)
    assert disc(x).shape == (2,)
    assert disc.features(x).shape[0] == 2


def test_trains_on_images_and_separates_an_unseen_pattern():
    check_separates_bar_orientation(GANomaly)


def test_score_is_the_latent_error_without_test_set_scaling():
    images = bar_images(40, size=8)
    det = GANomaly(**FAST, score_scaling="none", complexity_correction=None)
    det.fit(images)
    module = det.net_.module_.eval()
    X = torch.as_tensor(det._scale_input(images))
    with torch.inference_mode():
        x_hat, z, z_hat = module(X)
    expected = ((z - z_hat) ** 2).mean(dim=1).numpy()
    np.testing.assert_allclose(-det.score_samples(images), expected, rtol=1e-5)
    # a sample's score does not depend on the rest of the batch it comes in
    np.testing.assert_allclose(
        det.score_samples(images[:3]), det.score_samples(images)[:3], rtol=1e-5
    )
    # anomaly maps are the squared reconstruction error
    np.testing.assert_allclose(
        det.anomaly_map(images), ((x_hat - X) ** 2).mean(dim=1).numpy(), rtol=1e-5
    )


def _latent_errors(det, images):
    X = torch.as_tensor(det._scale_input(images))
    with torch.inference_mode():
        _, z, z_hat = det.net_.module_.eval()(X)
    return (z - z_hat).double().numpy()


def test_standardized_score_weighs_latent_errors_by_their_training_spread():
    images = bar_images(40, size=8)
    # every sample trains (no calibration split), so the statistics below
    # come from exactly the samples the net was fitted on
    det = GANomaly(**FAST, calibration="training", complexity_correction=None)
    det.fit(images)
    assert det.score_scaling == "standardized"
    errors = _latent_errors(det, images)
    center, variance = errors.mean(axis=0), errors.var(axis=0)
    scale = np.sqrt(0.7 * variance / variance.mean() + 0.3)
    np.testing.assert_allclose(det.residual_center_, center, rtol=1e-4, atol=1e-6)
    np.testing.assert_allclose(det.residual_scale_, scale, rtol=1e-4)
    new = bar_images(10, vertical=True, size=8, seed=1)
    expected = (((_latent_errors(det, new) - center) / scale) ** 2).mean(axis=1)
    np.testing.assert_allclose(-det.score_samples(new), expected, rtol=1e-4)
    # the raw latent error is a parameter away, on the same network
    raw = (_latent_errors(det, new) ** 2).mean(axis=1)
    det.set_params(score_scaling="none")
    np.testing.assert_allclose(-det.score_samples(new), raw, rtol=1e-5)
    assert not np.allclose(raw, expected, rtol=1e-2)
    # a file saved before the scaling existed has no statistics: raw scores
    det.set_params(score_scaling="standardized")
    del det.residual_center_, det.residual_scale_
    np.testing.assert_allclose(-det.score_samples(new), raw, rtol=1e-5)


def test_score_scaling_is_validated():
    with pytest.raises(ValueError, match="score_scaling"):
        GANomaly(**FAST, score_scaling="zscore").fit(bar_images(20, size=8))


# w_con already dominates at 50: switching it off is the visible change
@pytest.mark.parametrize(
    "param, value", [("w_adv", 500.0), ("w_con", 0.0), ("w_enc", 500.0)]
)
def test_loss_weights_reach_the_loss_and_change_the_model(param, value):
    images = bar_images(40, size=8)
    raw = {**FAST, "complexity_correction": None}  # the relative change of the error
    base = GANomaly(**raw).fit(images).score_samples(images)
    changed = GANomaly(**raw).set_params(**{param: value}).fit(images)
    assert getattr(changed.net_.criterion_, param) == value
    difference = np.abs(changed.score_samples(images) - base).max()
    assert difference > 0.01 * np.abs(base).max()


def test_optimizer_settings_reach_the_net():
    det = GANomaly(**FAST, lr=1e-3, lr_d=5e-4, beta1=0.3).fit(bar_images(40, size=8))
    group_g = det.net_.optimizer_.param_groups[0]
    group_d = det.net_.optimizer_d_.param_groups[0]
    assert (group_g["lr"], group_d["lr"]) == (1e-3, 5e-4)
    assert group_g["betas"] == group_d["betas"] == (0.3, 0.999)
    assert det.net_.reinit_discriminator_below == 1e-5


def test_tabular_uses_mlps():
    X = np.random.default_rng(0).normal(size=(50, 6))
    det = GANomaly(**FAST).fit(X)
    module = det.net_.module_
    assert module.encoder[0].in_features == 6
    assert module.decoder[-1].out_features == 6
    with pytest.raises(ValueError, match="tabular"):
        det.anomaly_map(X)


def test_grid_search_scores_and_refits_on_inliers_only():
    rng = np.random.default_rng(0)
    inliers = rng.normal(size=(60, 4))
    outliers = rng.normal(size=(15, 4)) * 2 + 6
    X = np.vstack([inliers, outliers])
    y = np.r_[np.ones(60, dtype=int), -np.ones(15, dtype=int)]
    search = GridSearchCV(
        GANomaly(**FAST),
        {"w_con": [10, 50], "w_adv": [0.5, 1]},
        scoring="roc_auc",
        cv=StratifiedKFold(3),
    ).fit(X, y)
    assert search.cv_results_["mean_test_score"].shape == (4,)
    assert np.all(np.isfinite(search.cv_results_["mean_test_score"]))
    # the refit trained on the inliers alone
    alone = clone(search.best_estimator_).fit(inliers)
    np.testing.assert_array_equal(
        search.best_estimator_.score_samples(X), alone.score_samples(X)
    )


def test_pickle_and_random_state_reproduce_scores():
    images = bar_images(40, size=8)
    det = GANomaly(**FAST).fit(images)
    scores = det.score_samples(images)
    np.testing.assert_array_equal(
        pickle.loads(pickle.dumps(det)).score_samples(images), scores
    )
    np.testing.assert_array_equal(
        GANomaly(**FAST).fit(images).score_samples(images), scores
    )
    other = GANomaly(**{**FAST, "random_state": 1}).fit(images)
    assert not np.allclose(other.score_samples(images), scores)


@pytest.mark.cuda
def test_trains_and_scores_on_cuda():
    if not torch.cuda.is_available():
        pytest.skip("needs CUDA")
    images = bar_images(64, size=16)
    det = GANomaly(**{**FAST, "device": "cuda"}).fit(images)
    assert next(det.net_.module_.parameters()).is_cuda
    assert next(det.net_.discriminator_.parameters()).is_cuda
    scores = det.score_samples(images)
    assert scores.shape == (64,) and np.all(np.isfinite(scores))
    assert det.anomaly_map(images).shape == (64, 16, 16)
