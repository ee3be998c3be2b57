"""The training budget of the torch detectors: batch_size/max_epochs 'auto',
min_steps, the too-few-steps warning and early stopping on held-out inliers."""

import warnings

import numpy as np
import pytest
from sklearn.datasets import load_digits
from sklearn.exceptions import ConvergenceWarning
from sklearn.metrics import roc_auc_score

import skanomaly
from skanomaly import AutoEncoder
from skanomaly.detectors.torch_base import TooFewStepsWarning, training_plan

X_DIGITS, Y_DIGITS = load_digits(return_X_y=True)
# the budget planned for all the samples given (no calibration hold-out)
SMALL = dict(hidden_sizes=(8,), random_state=0, calibration="training")


def _steps(detector):
    return sum(len(epoch["batches"]) for epoch in detector.net_.history)


@pytest.mark.parametrize(
    "n, expected",
    [
        (60, (8, 63, 504)),  # small: batches of 8, epochs raised to min_steps
        (65, (8, 63, 504)),  # a lone 65th sample is skipped, not a batch of 1
        (200, (25, 63, 504)),
        (512, (64, 63, 504)),
        (50_000, (64, 30, 23_460)),  # large: the default epochs, as before
    ],
)
def test_auto_plan(n, expected):
    assert (
        training_plan(n, "auto", "auto", min_steps=500, default_epochs=30) == expected
    )


def test_explicit_batch_and_epochs_are_kept():
    assert training_plan(60, 64, 15, min_steps=500, default_epochs=30) == (64, 15, 15)
    assert training_plan(60, 16, "auto", min_steps=500, default_epochs=30) == (
        16,
        125,
        500,
    )


def test_fit_follows_the_plan_and_history_shows_the_steps():
    X = X_DIGITS[Y_DIGITS == 0][:60]
    det = AutoEncoder(**SMALL).fit(X)
    assert (det.batch_size_, det.n_epochs_) == (8, 63)
    assert len(det.net_.history) == 63 and _steps(det) == 504
    # large training sets train the default epochs in batches of 64
    big = np.random.default_rng(0).normal(size=(1200, 5))
    det = AutoEncoder(**SMALL).fit(big)
    assert (det.batch_size_, det.n_epochs_) == (64, 30)
    assert _steps(det) == 30 * 19


def test_too_few_steps_warn_and_name_the_parameters():
    X = X_DIGITS[Y_DIGITS == 0][:60]
    with pytest.warns(TooFewStepsWarning, match="only 15 optimizer steps.*max_epochs"):
        AutoEncoder(batch_size=64, max_epochs=15, **SMALL).fit(X)
    with warnings.catch_warnings():
        warnings.simplefilter("error", TooFewStepsWarning)
        AutoEncoder(**SMALL).fit(X)  # the default budget is enough


def test_early_stopping_holds_out_inliers_and_stops():
    X = X_DIGITS[Y_DIGITS == 0]
    det = AutoEncoder(
        early_stopping=True,
        n_iter_no_change=3,
        max_epochs=300,
        lr=1e-2,
        **SMALL,
    ).fit(X)
    history = det.net_.history
    assert len(history) < 300  # stopped on the validation loss
    assert np.isfinite(history[-1, "valid_loss"])
    # the kept weights are the best epoch's: their validation loss is the
    # lowest seen
    best = min(history[:, "valid_loss"])
    assert history[:, "valid_loss_best"][int(np.argmin(history[:, "valid_loss"]))]
    assert best <= history[-1, "valid_loss"]
    # it trained on the other 90%
    assert history[0, "batches"][0]["train_batch_size"] <= len(X) - len(X) // 10
    with pytest.raises(ValueError, match="at least 2 training samples"):
        AutoEncoder(early_stopping=True, validation_fraction=0.5, **SMALL).fit(X[:3])


@pytest.mark.parametrize(
    "name", ["autoencoder", "vae", "ganomaly", "skipganomaly", "egbad", "anogan"]
)
def test_defaults_learn_a_small_training_set(name):
    # 60 images of one digit at the constructor defaults: held-out images of
    # that digit must rank above the other digits. Too few optimizer steps
    # (the old defaults: 1 step an epoch) ranked them below (GANomaly: 0.35).
    images = (X_DIGITS.reshape(-1, 1, 8, 8) * 16).astype(np.uint8)
    zeros = np.flatnonzero(Y_DIGITS == 0)
    others = np.flatnonzero(Y_DIGITS != 0)[:60]
    with warnings.catch_warnings():
        # nor does a normal default fit look diverged or too short
        warnings.simplefilter("error", ConvergenceWarning)
        warnings.simplefilter("error", TooFewStepsWarning)
        det = skanomaly.make_detector(name, random_state=0).fit(images[zeros[:60]])
    scores = det.score_samples(images[np.r_[zeros[60:100], others]])
    is_anomaly = np.r_[np.zeros(40), np.ones(len(others))]
    assert roc_auc_score(is_anomaly, -scores) > 0.9
    # a negative of a training image is nothing like a digit
    negative = 255 - images[zeros[:1]]
    assert det.score_samples(negative)[0] < scores[:40].min()


def test_egbad_defaults_rank_the_main_benchmarks_digit_one():
    # `skanomaly benchmark`'s digit 1 (91 training images): with the
    # discriminator as fast as the generator (lr_d=None, the default before)
    # the discriminator won and EGBAD ranked the other digits as more normal
    # than the held-out ones (AUROC 0.40); the slower default lr_d learns it
    # (0.90 here).
    from skanomaly.app.datasets import load_digits_novelty

    X_train, X_test, y_test = load_digits_novelty(1, random_state=0)
    det = skanomaly.EGBAD(random_state=0).fit(X_train)
    assert roc_auc_score(y_test == 1, det.score_samples(X_test)) > 0.8
