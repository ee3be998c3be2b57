"""AnoGAN: DCGAN losses, the batched latent search, images, weights."""

import pickle

import numpy as np
import pytest
import torch
from _images import uniform_images
from torch.nn import functional as F

from skanomaly.detectors.anogan import AnoGAN
from skanomaly.detectors.base import get_detector_tags
from skanomaly.nn.anogan import (
    AnoGANGenerator,
    anogan_loss,
    best_starts,
    latent_search,
)
from skanomaly.nn.gan import DCGANLoss, Discriminator
from skanomaly.persistence import load, save

FAST = {**get_detector_tags(AnoGAN).test_params, "random_state": 0}


@pytest.fixture(scope="module")
def fitted_images():
    X = uniform_images()
    # the raw score, whose formula these tests check (the correction:
    # test_complexity.py)
    params = {**FAST, "search_steps": 5, "batch_size": 16}
    det = AnoGAN(**params, complexity_correction=None).fit(X)
    return det, X


def test_dcgan_losses_label_real_and_fake():
    # a stub critic whose logit is the first value of its input
    discriminator = lambda x: x[:, 0]  # noqa: E731
    real = torch.tensor([[2.0], [0.5]])
    fake = torch.tensor([[-1.0], [3.0]])
    loss = DCGANLoss()
    expected_d = F.softplus(-real[:, 0]).mean() + F.softplus(fake[:, 0]).mean()
    expected_g = F.softplus(-fake[:, 0]).mean()
    torch.testing.assert_close(
        loss.discriminator_loss(fake, real, discriminator), expected_d
    )
    torch.testing.assert_close(
        loss.generator_loss(fake, real, discriminator), expected_g
    )


def _frozen_dcgan(image_shape=(1, 8, 8), latent_dim=6):
    torch.manual_seed(0)
    generator = AnoGANGenerator(image_shape, latent_dim, base_channels=4).eval()
    discriminator = Discriminator(image_shape, base_channels=4).eval()
    return generator, discriminator


def test_batched_search_equals_per_sample_searches():
    generator, discriminator = _frozen_dcgan()
    X = torch.rand(7, 1, 8, 8) * 2 - 1
    z_init = torch.randn(7, 6)
    kwargs = dict(steps=15, lr=0.05, disc_weight=0.1)
    loss, z, reconstruction, _ = latent_search(
        generator.generate, discriminator.features, X, z_init, **kwargs
    )
    for i in range(len(X)):
        loss_i, z_i, rec_i, _ = latent_search(
            generator.generate,
            discriminator.features,
            X[i : i + 1],
            z_init[i : i + 1],
            **kwargs,
        )
        torch.testing.assert_close(loss[i : i + 1], loss_i, rtol=1e-4, atol=1e-4)
        torch.testing.assert_close(z[i : i + 1], z_i, rtol=1e-4, atol=1e-4)
        torch.testing.assert_close(reconstruction[i : i + 1], rec_i)
    # the codes moved, and the search lowered the loss it reports
    assert not torch.allclose(z, z_init)
    initial, _, _, _ = latent_search(
        generator.generate, discriminator.features, X, z_init, steps=0
    )
    assert loss.mean() < initial.mean()


def test_converged_queries_stop_alone_and_leave_the_batch():
    generator, discriminator = _frozen_dcgan()
    with torch.no_grad():  # queries the generator can explain: the loss falls
        X = generator.generate(torch.randn(9, 6) * 2)
    z_init = torch.randn(9, 6)
    kwargs = dict(steps=200, lr=0.05, disc_weight=0.1, tol=1e-2, patience=5)
    loss, z, _, n_steps = latent_search(
        generator.generate, discriminator.features, X, z_init, **kwargs
    )
    # the tolerance stopped searches early, at different steps
    assert n_steps.max() < 200 and len(set(n_steps.tolist())) > 1
    for i in range(len(X)):
        # alone, each query stops at the same step with the same score
        loss_i, z_i, _, steps_i = latent_search(
            generator.generate,
            discriminator.features,
            X[i : i + 1],
            z_init[i : i + 1],
            **kwargs,
        )
        assert steps_i.item() == n_steps[i].item()
        torch.testing.assert_close(loss[i : i + 1], loss_i, rtol=1e-4, atol=1e-4)
        # and its code is the one it had when it stopped: a search of exactly
        # that many steps without a tolerance ends at the same code
        fixed, z_fixed, _, _ = latent_search(
            generator.generate,
            discriminator.features,
            X[i : i + 1],
            z_init[i : i + 1],
            steps=int(steps_i),
            lr=0.05,
            disc_weight=0.1,
        )
        torch.testing.assert_close(z_i, z_fixed, rtol=1e-5, atol=1e-5)


def test_best_start_is_the_candidate_whose_image_fits_best():
    generator, discriminator = _frozen_dcgan()
    candidates = torch.randn(9, 6)
    with torch.no_grad():
        X = generator.generate(candidates[[4, 1, 7]])  # loss 0 at their own codes
    starts = best_starts(generator.generate, discriminator.features, X, candidates)
    torch.testing.assert_close(starts, candidates[[4, 1, 7]], rtol=0, atol=0)
    # the choice is by the full AnoGAN loss, sample by sample
    with torch.no_grad():
        images = generator.generate(candidates)
        losses = torch.stack(
            [
                anogan_loss(
                    X,
                    discriminator.features(X),
                    images[k].expand_as(X),
                    discriminator.features(images[k : k + 1]).expand(3, -1),
                    0.1,
                )
                for k in range(9)
            ],
            dim=1,
        )
    torch.testing.assert_close(starts, candidates[losses.argmin(dim=1)])
    alone = best_starts(generator.generate, discriminator.features, X[1:2], candidates)
    torch.testing.assert_close(alone, starts[1:2])


def test_more_starts_lower_every_unsearched_loss(fitted_images):
    det, X = fitted_images
    params = det.get_params()
    one = det.set_params(search_steps=0, search_starts=1).score_samples(X)
    many = det.set_params(search_starts=32).score_samples(X)
    # latent_init_ is one of the 32 candidates: no loss can rise
    assert np.all(many >= one - 1e-5) and np.any(many > one + 1e-3)
    assert det._start_codes().shape == (32, det.latent_dim)
    np.testing.assert_array_equal(det._start_codes()[0], det.latent_init_)
    # and they are a fixed draw: scoring again gives the same scores
    np.testing.assert_array_equal(det.score_samples(X), many)
    det.set_params(**params)


def test_search_score_is_the_weighted_loss_at_the_final_code():
    generator, discriminator = _frozen_dcgan()
    X = torch.rand(5, 1, 8, 8) * 2 - 1
    z_init = torch.randn(5, 6)
    with torch.no_grad():
        loss, z, reconstruction, _ = latent_search(
            generator.generate,
            discriminator.features,
            X,
            z_init,
            steps=4,
            lr=0.05,
            disc_weight=0.1,
        )
        torch.testing.assert_close(reconstruction, generator.generate(z))
        residual = (X - reconstruction).abs().sum(dim=(1, 2, 3))
        discrimination = (
            (discriminator.features(X) - discriminator.features(reconstruction))
            .abs()
            .sum(dim=1)
        )
    # lambda = 0.1 weights the discrimination term (not the residual)
    torch.testing.assert_close(loss, 0.9 * residual + 0.1 * discrimination)
    torch.testing.assert_close(
        anogan_loss(
            X,
            discriminator.features(X),
            reconstruction,
            discriminator.features(reconstruction),
            1.0,
        ),
        discrimination,
    )


def test_search_leaves_the_networks_untouched(fitted_images):
    det, X = fitted_images
    modules = [det.net_.module_, det.net_.discriminator_]
    for module in modules:  # training leaves gradients behind
        module.zero_grad(set_to_none=True)
    before = [{k: v.clone() for k, v in m.state_dict().items()} for m in modules]
    det.score_samples(X[:5])
    for module, state in zip(modules, before):
        for key, value in module.state_dict().items():
            torch.testing.assert_close(value, state[key], rtol=0, atol=0)
        assert all(p.grad is None for p in module.parameters())


def test_scores_do_not_depend_on_batching(fitted_images):
    det, X = fitted_images
    batched = det.score_samples(X)
    one_by_one = det.set_params(batch_size=1).score_samples(X)
    det.set_params(batch_size=16)
    np.testing.assert_allclose(one_by_one, batched, rtol=1e-5)
    np.testing.assert_allclose(det.score_samples(X[7:9]), batched[7:9], rtol=1e-5)


def test_trains_on_images_and_maps_anomalies(fitted_images):
    det, X = fitted_images
    history = det.net_.history
    assert len(history) == FAST["max_epochs"]
    assert np.all(np.isfinite(history[:, "train_loss"]))
    assert np.all(np.isfinite(history[:, "train_loss_d"]))
    maps = det.anomaly_map(X[:6])
    assert maps.shape == (6, 8, 8)
    # the map is the squared error against G(z) at the end of the same search
    scaled = torch.as_tensor(det._scale_input(X[:6]))
    net = det.net_
    reconstruction = det._reconstruct(net, scaled)
    np.testing.assert_allclose(
        maps, ((reconstruction - scaled) ** 2).mean(dim=1).numpy(), rtol=1e-5
    )


def test_non_square_rgb_images():
    X = uniform_images(n=20, shape=(3, 6, 10))
    det = AnoGAN(**{**FAST, "batch_size": 8}).fit(X)
    assert det.image_shape_ == (3, 6, 10)
    assert det.anomaly_map(X[:2]).shape == (2, 6, 10)


def test_disc_weight_reaches_the_score(fitted_images):
    det, X = fitted_images
    scaled = torch.as_tensor(det._scale_input(X[:6]))
    features = det.net_.discriminator_.features
    det.set_params(disc_weight=0.0)
    residual_only = -det.score_samples(X[:6])
    reconstruction = det._reconstruct(det.net_, scaled)
    np.testing.assert_allclose(
        residual_only, (scaled - reconstruction).abs().sum(dim=(1, 2, 3)), rtol=1e-5
    )
    det.set_params(disc_weight=1.0)
    features_only = -det.score_samples(X[:6])
    reconstruction = det._reconstruct(det.net_, scaled)
    with torch.no_grad():
        expected = (features(scaled) - features(reconstruction)).abs().sum(dim=1)
    np.testing.assert_allclose(features_only, expected, rtol=1e-5)
    det.set_params(disc_weight=0.1)


def test_search_parameters_reach_the_search(fitted_images):
    det, X = fitted_images
    searched = det.score_samples(X[:8])
    det.set_params(search_steps=0)
    unsearched = det.score_samples(X[:8])
    det.set_params(search_lr=2e-3, search_steps=5)
    slow = det.score_samples(X[:8])
    det.set_params(search_steps=5, search_lr=FAST["search_lr"])
    # scores are negated losses: the search raises them, less so with small steps
    assert searched.mean() > slow.mean() > unsearched.mean()


def test_lr_d_reaches_the_discriminator_optimizer():
    X = uniform_images(n=16)
    det = AnoGAN(**{**FAST, "lr_d": 1e-2, "max_epochs": 1}).fit(X)
    assert det.net_.optimizer_d_.param_groups[0]["lr"] == 1e-2
    assert det.net_.optimizer_.param_groups[0]["lr"] == det.lr
    assert det.net_.optimizer_.param_groups[0]["betas"] == (0.5, 0.999)


def test_image_pickle_and_random_state(fitted_images):
    det, X = fitted_images
    restored = pickle.loads(pickle.dumps(det))
    np.testing.assert_array_equal(restored.score_samples(X), det.score_samples(X))
    again = AnoGAN(**det.get_params()).fit(X)
    np.testing.assert_array_equal(again.latent_init_, det.latent_init_)
    np.testing.assert_array_equal(again.score_samples(X), det.score_samples(X))
    other = AnoGAN(**{**det.get_params(), "random_state": 1}).fit(X)
    assert not np.allclose(other.score_samples(X), det.score_samples(X))


def test_standardized_score_scales_the_final_residual(tmp_path):
    X = uniform_images(n=24)
    params = {**FAST, "search_steps": 3, "batch_size": 8, "complexity_correction": None}
    plain = AnoGAN(**params).fit(X)
    assert not hasattr(plain, "residual_scale_")  # not fitted unless asked
    det = AnoGAN(**params, score_scaling="standardized").fit(X)
    # the same networks and search: only the score differs
    np.testing.assert_array_equal(det.latent_init_, plain.latent_init_)
    # one centre and scale per pixel, fitted on the final residuals
    assert det.residual_center_.shape == det.residual_scale_.shape == (64,)
    assert np.all(det.residual_scale_ > 0)
    assert not np.allclose(det.residual_scale_, det.residual_scale_.mean())
    scaled = torch.as_tensor(det._scale_input(X[:5]))
    loss, _, reconstruction, _ = det._search(det.net_, scaled)
    residual = (scaled - reconstruction).flatten(1)
    standardized = (residual - torch.as_tensor(det.residual_center_)) / torch.as_tensor(
        det.residual_scale_
    )
    features = det.net_.discriminator_.features
    with torch.no_grad():
        disc = (features(scaled) - features(reconstruction)).abs().sum(dim=1)
    expected = 0.9 * standardized.abs().sum(dim=1) + 0.1 * disc
    np.testing.assert_allclose(-det.score_samples(X[:5]), expected, rtol=1e-5)
    assert not np.allclose(-det.score_samples(X[:5]), loss.numpy(), rtol=1e-3)
    # saved and loaded (.ska and pickle) with its scaling
    path = tmp_path / "anogan.ska"
    save(det, path)
    for restored in (load(path), pickle.loads(pickle.dumps(det))):
        np.testing.assert_array_equal(restored.residual_scale_, det.residual_scale_)
        np.testing.assert_array_equal(
            restored.score_samples(X[:5]), det.score_samples(X[:5])
        )
    # 'none' gives the paper's loss again; a refit with 'none' drops the scaling
    det.set_params(score_scaling="none")
    np.testing.assert_allclose(-det.score_samples(X[:5]), loss.numpy(), rtol=1e-5)
    det.fit(X)
    assert not hasattr(det, "residual_scale_")


def test_score_scaling_is_validated():
    with pytest.raises(ValueError, match="score_scaling"):
        AnoGAN(**FAST, score_scaling="auto").fit(uniform_images(n=8))
