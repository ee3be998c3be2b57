"""Skip-GANomaly: the U-Net, the losses and the score."""

import pickle

import numpy as np
import pytest
import torch
from _images import bar_images, check_separates_bar_orientation
from sklearn.base import clone
from sklearn.model_selection import GridSearchCV, StratifiedKFold

from skanomaly import SkipGANomaly
from skanomaly.detectors.base import get_detector_tags
from skanomaly.nn.skipganomaly import (
    SkipGANomalyDiscriminator,
    SkipGANomalyLoss,
    UNetGenerator,
    unet_depth,
)

FAST = {**get_detector_tags(SkipGANomaly).test_params, "random_state": 0}


def test_defaults_are_the_authors():
    params = SkipGANomaly().get_params()
    expected = dict(
        latent_dim=100,
        base_channels=64,
        w_adv=1.0,
        w_con=50.0,
        w_lat=1.0,
        score_lambda=0.9,
        lr=2e-4,
        beta1=0.5,
    )
    assert {k: params[k] for k in expected} == expected
    # the training budget: the authors' 15 epochs of 64 on large training
    # sets, more steps on small ones (the authors' are batch_size=64,
    # max_epochs=15)
    assert (params["batch_size"], params["max_epochs"]) == ("auto", "auto")
    assert params["min_steps"] == 200
    assert type(SkipGANomaly())._default_epochs == 15


@pytest.mark.parametrize(
    "size, depth", [((32, 32), 5), ((16, 16), 4), ((28, 28), 2), ((8, 12), 2)]
)
def test_unet_depth_rule(size, depth):
    assert unet_depth(*size) == depth
    gen = UNetGenerator((2, *size), base_channels=4)
    assert len(gen.down) == len(gen.up) == depth
    x = torch.randn(3, 2, *size)
    assert gen(x).shape == x.shape
    # the innermost map: halved `depth` times
    h = x
    for down in gen.down:
        h = down(h)
    assert h.shape[-2:] == (size[0] // 2**depth, size[1] // 2**depth)


def test_unet_channels_follow_pix2pix():
    gen = UNetGenerator((1, 32, 32), base_channels=4)
    widths = [
        down[-1].num_features if i not in (0, 4) else None
        for i, down in enumerate(gen.down)
    ]
    convs = [
        next(m for m in down if isinstance(m, torch.nn.Conv2d)) for down in gen.down
    ]
    assert [c.out_channels for c in convs] == [4, 8, 16, 32, 32]
    assert widths[1:4] == [8, 16, 32]  # BatchNorm on the middle levels only
    assert isinstance(gen.up[0][-1], torch.nn.Tanh)
    assert not any(isinstance(m, torch.nn.Dropout) for m in gen.modules())


@pytest.mark.parametrize("size", [(6, 6), (7, 16), (2, 2)])
def test_sizes_it_cannot_halve_twice_raise(size):
    with pytest.raises(ValueError, match="multiples of 4"):
        unet_depth(*size)
    images = np.zeros((10, 1, *size), dtype=np.float32)
    images[::2] = 1.0
    with pytest.raises(ValueError, match="multiples of 4"):
        SkipGANomaly(**FAST).fit(images)


def test_skip_connections_carry_the_input():
    gen = UNetGenerator((1, 8, 8), base_channels=4).eval()
    x = torch.randn(2, 1, 8, 8)
    skips = []
    h = x
    for down in gen.down:
        h = down(h)
        skips.append(h)
    # the outermost decoder layer reads the first encoder level's output
    expected = gen.up[0](
        torch.cat(
            [skips[0], gen.up[1](torch.cat([skips[1], gen.up[2](skips[2])], dim=1))],
            dim=1,
        )
    )
    torch.testing.assert_close(gen(x), expected)


def test_tabular_unet_has_skips_and_needs_a_hidden_layer():
    gen = UNetGenerator((6,), hidden_sizes=(5, 4), latent_dim=3)
    assert [d[-1].out_features for d in gen.down] == [5, 4, 3]
    # decoder layers above the bottleneck read [skip, up] concatenated
    assert [u[-1].in_features for u in gen.up] == [10, 8, 3]
    assert gen(torch.randn(7, 6)).shape == (7, 6)
    with pytest.raises(ValueError, match="hidden"):
        UNetGenerator((6,), hidden_sizes=())


@pytest.mark.parametrize("shape", [(1, 16, 16), (5,)])
def test_discriminator_features_and_logit(shape):
    disc = SkipGANomalyDiscriminator(
        shape, latent_dim=6, base_channels=4, hidden_sizes=(8,)
    )
    x = torch.randn(3, *shape)
    features = disc.features(x)
    assert features.shape == (3, 6)
    logits = disc(x)
    assert logits.shape == (3,)
    torch.testing.assert_close(logits, disc.classify(features))
    before = [p.detach().clone() for p in disc.parameters()]
    with torch.no_grad():
        for p in disc.parameters():
            p.add_(1.0)
    disc.reinitialize()
    # fresh weights, not the shifted ones
    assert all(not torch.equal(p, b + 1) for p, b in zip(disc.parameters(), before))


class _FixedCritic(torch.nn.Module):
    """Known outputs: features = 2x, logits = sum of features."""

    def features(self, x):
        return 2 * x.flatten(1)

    def classify(self, features):
        return features.sum(dim=1)

    def forward(self, x):
        return self.classify(self.features(x))


def test_losses_follow_the_formulas():
    torch.manual_seed(0)
    X, x_hat = torch.randn(4, 1, 2, 2), torch.randn(4, 1, 2, 2)
    critic = _FixedCritic()
    loss = SkipGANomalyLoss(w_adv=2.0, w_con=3.0, w_lat=5.0)

    p_fake = torch.sigmoid(2 * x_hat.flatten(1).sum(1))
    adv = -torch.log(p_fake).mean()
    con = (X - x_hat).abs().mean()
    lat = ((2 * X - 2 * x_hat) ** 2).mean()
    got = loss.generator_loss(x_hat, X, critic)
    torch.testing.assert_close(got, 2 * adv + 3 * con + 5 * lat)

    p_real = torch.sigmoid(2 * X.flatten(1).sum(1))
    bce = -(torch.log(p_real).mean() + torch.log(1 - p_fake).mean())
    torch.testing.assert_close(loss.discriminator_loss(x_hat, X, critic), bce)


def test_generator_loss_gives_generator_grads_only():
    gen = UNetGenerator((1, 8, 8), base_channels=4)
    disc = SkipGANomalyDiscriminator((1, 8, 8), latent_dim=3, base_channels=4)
    X = torch.rand(6, 1, 8, 8) * 2 - 1
    SkipGANomalyLoss().generator_loss(gen(X), X, disc).backward()
    assert all(p.grad is None for p in disc.parameters())
    assert all(p.requires_grad for p in disc.parameters())
    assert all(p.grad is not None for p in gen.parameters())


def test_trains_on_images_and_separates_an_unseen_pattern():
    check_separates_bar_orientation(SkipGANomaly)


def test_score_mixes_reconstruction_and_features_with_lambda():
    images = bar_images(40, size=8)
    det = SkipGANomaly(**FAST, score_lambda=0.3, complexity_correction=None)
    det.fit(images)
    gen = det.net_.module_.eval()
    disc = det.net_.discriminator_.eval()
    X = torch.as_tensor(det._scale_input(images))
    with torch.inference_mode():
        x_hat = gen(X)
        rec = ((X - x_hat) ** 2).flatten(1).mean(1)
        lat = ((disc.features(X) - disc.features(x_hat)) ** 2).mean(1)
    expected = (0.3 * rec + 0.7 * lat).numpy()
    np.testing.assert_allclose(-det.score_samples(images), expected, rtol=1e-5)
    # lambda = 1: the score is the mean of the anomaly map
    det.set_params(score_lambda=1.0)
    np.testing.assert_allclose(
        -det.score_samples(images),
        det.anomaly_map(images).mean(axis=(1, 2)),
        rtol=1e-5,
    )
    np.testing.assert_allclose(
        det.score_samples(images[:3]), det.score_samples(images)[:3], rtol=1e-5
    )


@pytest.mark.parametrize(
    "param, value", [("w_adv", 500.0), ("w_con", 0.0), ("w_lat", 500.0)]
)
def test_loss_weights_reach_the_loss_and_change_the_model(param, value):
    images = bar_images(40, size=8)
    params = {**FAST, "batch_size": 8}

    def reconstruction(det):
        X = torch.as_tensor(det._scale_input(images))
        with torch.inference_mode():
            return det.net_.module_.eval()(X).numpy()

    # the score is dominated by |x|^2 after a few steps (the U-Net's output
    # starts near 0), so compare what the generator learnt
    base = reconstruction(SkipGANomaly(**params).fit(images))
    changed = SkipGANomaly(**params).set_params(**{param: value}).fit(images)
    assert getattr(changed.net_.criterion_, param) == value
    difference = np.abs(reconstruction(changed) - base).max()
    assert difference > 0.02 * np.abs(base).max()


def test_reinit_threshold_reaches_the_net():
    det = SkipGANomaly(**FAST, reinit_discriminator_below=0.25)
    det.fit(bar_images(40, size=8))
    assert det.net_.reinit_discriminator_below == 0.25


def test_grid_search_scores_and_refits_on_inliers_only():
    rng = np.random.default_rng(0)
    inliers = rng.normal(size=(60, 4))
    outliers = rng.normal(size=(15, 4)) * 2 + 6
    X = np.vstack([inliers, outliers])
    y = np.r_[np.ones(60, dtype=int), -np.ones(15, dtype=int)]
    search = GridSearchCV(
        SkipGANomaly(**FAST),
        {"w_con": [10, 50], "w_adv": [0.5, 1]},
        scoring="roc_auc",
        cv=StratifiedKFold(3),
    ).fit(X, y)
    assert search.cv_results_["mean_test_score"].shape == (4,)
    # shifted outliers are easy: every setting should rank them well
    assert search.best_score_ > 0.9
    alone = clone(search.best_estimator_).fit(inliers)
    np.testing.assert_array_equal(
        search.best_estimator_.score_samples(X), alone.score_samples(X)
    )


def test_pickle_and_random_state_reproduce_scores():
    images = bar_images(40, size=8)
    det = SkipGANomaly(**FAST).fit(images)
    scores = det.score_samples(images)
    np.testing.assert_array_equal(
        pickle.loads(pickle.dumps(det)).score_samples(images), scores
    )
    again = SkipGANomaly(**FAST).fit(images).score_samples(images)
    np.testing.assert_array_equal(again, scores)
    other = SkipGANomaly(**{**FAST, "random_state": 1}).fit(images)
    assert not np.allclose(other.score_samples(images), scores)


@pytest.mark.cuda
def test_trains_and_scores_on_cuda():
    if not torch.cuda.is_available():
        pytest.skip("needs CUDA")
    images = bar_images(64, size=16)
    det = SkipGANomaly(**{**FAST, "device": "cuda"}).fit(images)
    assert next(det.net_.module_.parameters()).is_cuda
    assert next(det.net_.discriminator_.parameters()).is_cuda
    scores = det.score_samples(images)
    assert scores.shape == (64,) and np.all(np.isfinite(scores))
    assert det.anomaly_map(images).shape == (64, 16, 16)
