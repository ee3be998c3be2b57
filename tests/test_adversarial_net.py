"""nets.AdversarialNet, the one GAN training loop, exercised through GANomaly."""

import numpy as np
import pytest
import torch
from skorch.callbacks import Callback

from skanomaly import GANomaly
from skanomaly.detectors.base import get_detector_tags
from skanomaly.nn.gan import Discriminator

# the training loop on all 40 images (no calibration hold-out)
FAST = {
    **get_detector_tags(GANomaly).test_params,
    "random_state": 0,
    "calibration": "training",
}


@pytest.fixture(scope="module")
def images():
    rng = np.random.default_rng(0)
    return rng.uniform(0, 1, size=(40, 1, 8, 8)).astype(np.float32)


def test_history_holds_both_losses_per_epoch_and_per_batch(images):
    det = GANomaly(**{**FAST, "max_epochs": 3, "batch_size": 16}).fit(images)
    history = det.net_.history
    assert len(history) == 3
    for epoch in history:
        assert np.isfinite(epoch["train_loss"]) and np.isfinite(epoch["train_loss_d"])
        # 40 samples in batches of 16: 16, 16, 8
        assert len(epoch["batches"]) == 3
        d_losses = [batch["train_loss_d"] for batch in epoch["batches"]]
        g_losses = [batch["train_loss"] for batch in epoch["batches"]]
        # the epoch values are the size-weighted batch means
        assert epoch["train_loss_d"] == pytest.approx(
            np.average(d_losses, weights=[16, 16, 8])
        )
        assert epoch["train_loss"] == pytest.approx(
            np.average(g_losses, weights=[16, 16, 8])
        )
    # a BCE discriminator loss starts near log 2 (0.5 * (log 2 + log 2))
    assert 0.3 < history[0, "batches", 0, "train_loss_d"] < 1.0
    # the generator loss is not the discriminator's
    assert history[-1, "train_loss"] != history[-1, "train_loss_d"]


def test_each_batch_updates_both_networks_once(images):
    steps = {"d": 0, "g": 0}

    class CountSteps(Callback):
        def on_train_begin(self, net, **kwargs):
            for name, optimizer in (("d", net.optimizer_d_), ("g", net.optimizer_)):
                optimizer.register_step_post_hook(
                    lambda *args, name=name: steps.__setitem__(name, steps[name] + 1)
                )

    GANomaly(
        **{**FAST, "max_epochs": 2, "batch_size": 16}, callbacks=[CountSteps()]
    ).fit(images)
    assert steps == {"d": 6, "g": 6}


def test_divergence_raises_naming_the_loss_and_epoch(images):
    det = GANomaly(**FAST, lr=1e30)
    with pytest.raises(
        FloatingPointError, match=r"(generator|discriminator) loss became .* in epoch 1"
    ):
        det.fit(images)
    # nothing half-fitted is left behind
    assert not hasattr(det, "net_")


def test_divergence_in_a_later_epoch_names_that_epoch(images):
    class PoisonDiscriminator(Callback):
        def on_epoch_begin(self, net, **kwargs):
            if len(net.history) == 2:
                with torch.no_grad():
                    for p in net.discriminator_.parameters():
                        p.fill_(float("nan"))

    det = GANomaly(**FAST, callbacks=[PoisonDiscriminator()])
    with pytest.raises(
        FloatingPointError, match="discriminator loss became nan in epoch 2"
    ):
        det.fit(images)


class _CountReinit:
    def __init__(self, monkeypatch):
        self.calls = 0
        original = Discriminator.reinitialize

        def counted(disc):
            self.calls += 1
            original(disc)

        monkeypatch.setattr(Discriminator, "reinitialize", counted)


@pytest.mark.parametrize(
    "threshold, expected",
    [
        (None, 0),
        (0.0, 0),  # a BCE loss is never below 0
        (1e-5, 0),  # the default: an untrained D is far above it
        (10.0, 2 * 2),  # every batch (BCE stays far below 10): 2 epochs x 2 batches
    ],
)
def test_discriminator_reinitialised_below_the_threshold(
    images, monkeypatch, threshold, expected
):
    counter = _CountReinit(monkeypatch)
    det = GANomaly(**FAST, reinit_discriminator_below=threshold).fit(images)
    # one call builds the discriminator; the rest are re-initialisations
    assert counter.calls - 1 == expected
    assert det.net_.reinit_discriminator_below == threshold


def test_reinitialisation_gives_fresh_weights(images):
    # a fast discriminator moves its weights far from the N(0, 0.02) init ...
    params = {**FAST, "lr_d": 0.05}
    trained = GANomaly(**params).fit(images).net_.discriminator_
    assert float(trained.feature_extractor[0].weight.detach().std()) > 0.05
    # ... unless it is re-initialised after every batch (the last one included)
    det = GANomaly(**params, reinit_discriminator_below=10.0).fit(images)
    conv = det.net_.discriminator_.feature_extractor[0].weight
    assert abs(float(conv.detach().std()) - 0.02) < 0.005


def test_prefixed_params_reach_the_net(images):
    det = GANomaly(**FAST)
    net = det._make_net((1, 8, 8))
    net.set_params(
        module__latent_dim=3,
        discriminator__base_channels=5,
        optimizer_d__lr=0.0123,
        optimizer__lr=0.0456,
        criterion__w_con=7.0,
        max_epochs=FAST["max_epochs"],
    )
    net.initialize()
    assert net.module_.encoder.out_features == 3
    assert net.discriminator_.feature_extractor[0].out_channels == 5
    assert net.optimizer_d_.param_groups[0]["lr"] == 0.0123
    assert net.optimizer_.param_groups[0]["lr"] == 0.0456
    assert net.criterion_.w_con == 7.0
    # the optimizers hold the right modules' parameters
    d_params = {id(p) for p in net.discriminator_.parameters()}
    g_params = {id(p) for p in net.module_.parameters()}
    assert {id(p) for p in net.optimizer_d_.param_groups[0]["params"]} == d_params
    assert {id(p) for p in net.optimizer_.param_groups[0]["params"]} == g_params
    # and the net trains with them
    net.fit(images * 2 - 1, None)
    assert len(net.history) == FAST["max_epochs"]


def test_save_params_load_params_round_trip(images, tmp_path):
    det = GANomaly(**FAST).fit(images)
    files = {
        "f_params": tmp_path / "g.pt",
        "f_discriminator": tmp_path / "d.pt",
        "f_optimizer": tmp_path / "og.pt",
        "f_optimizer_d": tmp_path / "od.pt",
        "f_history": tmp_path / "history.json",
    }
    det.net_.save_params(**files)

    fresh = GANomaly(**{**FAST, "random_state": 1})._make_net((1, 8, 8)).initialize()
    saved_g = det.net_.module_.state_dict()
    saved_d = det.net_.discriminator_.state_dict()
    # a different seed starts elsewhere, so the comparison below can fail
    assert not torch.equal(
        fresh.module_.state_dict()["encoder.final.weight"],
        saved_g["encoder.final.weight"],
    )

    fresh.load_params(**files)
    for name, value in saved_g.items():
        assert torch.equal(fresh.module_.state_dict()[name], value), name
    for name, value in saved_d.items():
        assert torch.equal(fresh.discriminator_.state_dict()[name], value), name
    assert (
        fresh.optimizer_d_.state_dict()["state"].keys()
        == det.net_.optimizer_d_.state_dict()["state"].keys()
    )
    for key, state in det.net_.optimizer_d_.state_dict()["state"].items():
        assert torch.equal(
            fresh.optimizer_d_.state_dict()["state"][key]["exp_avg"], state["exp_avg"]
        )
    assert len(fresh.history) == len(det.net_.history)

    # the restored net scores like the original
    det_restored = GANomaly(**FAST).fit(images)
    det_restored.net_ = fresh
    np.testing.assert_array_equal(
        det_restored.score_samples(images), det.score_samples(images)
    )


def test_callbacks_run_every_epoch(images):
    seen = []

    class Record(Callback):
        def on_epoch_end(self, net, **kwargs):
            seen.append(net.history[-1, "train_loss_d"])

    det = GANomaly(**{**FAST, "max_epochs": 3}, callbacks=[Record()]).fit(images)
    assert seen == list(det.net_.history[:, "train_loss_d"])
