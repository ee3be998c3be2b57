"""Ctrl-C during training interrupts the fit: nothing half-trained is kept.

skorch's ``partial_fit`` swallows KeyboardInterrupt (its callbacks raise one
to stop early) and returns the net half-trained; the detectors' nets raise
it again after a real Ctrl-C (a SIGINT), so ``fit`` restores the state
before it and the command line writes no model, while early stopping stays
what it was.
"""

import os
import signal

import numpy as np
import pytest
from skorch import NeuralNet

import skanomaly
from skanomaly.app.cli import main
from skanomaly.testing import _data, fast_detector


@pytest.fixture
def interrupt_in_second_epoch(monkeypatch):
    epochs = []
    run_single_epoch = NeuralNet.run_single_epoch

    def interrupted(self, *args, **kwargs):
        epochs.append(len(self.history))
        if len(epochs) == 2:  # Ctrl-C: the signal, handled where it lands
            os.kill(os.getpid(), signal.SIGINT)
        return run_single_epoch(self, *args, **kwargs)

    def arm():
        epochs.clear()
        monkeypatch.setattr(NeuralNet, "run_single_epoch", interrupted)

    return arm


@pytest.mark.parametrize(
    "name", ["autoencoder", "vae", "ganomaly", "skipganomaly", "egbad", "anogan"]
)
def test_an_interrupted_fit_raises_and_keeps_the_previous_model(
    interrupt_in_second_epoch, name
):
    detector = fast_detector(skanomaly.get_detector(name), max_epochs=4)
    X = _data(detector)
    detector.fit(X)
    before = detector.score_samples(X)
    state = set(vars(detector))
    interrupt_in_second_epoch()
    with pytest.raises(KeyboardInterrupt):
        detector.fit(X[::-1].copy())
    assert set(vars(detector)) == state
    np.testing.assert_array_equal(detector.score_samples(X), before)


def test_an_interrupted_first_fit_leaves_it_unfitted(interrupt_in_second_epoch):
    detector = fast_detector(skanomaly.AutoEncoder, max_epochs=4)
    interrupt_in_second_epoch()
    with pytest.raises(KeyboardInterrupt):
        detector.fit(_data(detector))
    assert not hasattr(detector, "offset_") and not hasattr(detector, "net_")


def test_the_command_line_writes_no_model_when_interrupted(
    interrupt_in_second_epoch, tmp_path, capsys
):
    rows = tmp_path / "rows.npy"
    np.save(rows, np.random.default_rng(0).normal(size=(60, 5)))
    model = tmp_path / "model.ska"
    interrupt_in_second_epoch()
    status = main(["fit", "autoencoder", str(rows), "-o", str(model)])
    assert status == 130
    assert "interrupted" in capsys.readouterr().err
    assert not model.exists()


def test_early_stopping_still_stops_training_quietly():
    # skorch's EarlyStopping raises KeyboardInterrupt to stop: no Ctrl-C
    X = np.random.default_rng(0).normal(size=(200, 4))
    detector = skanomaly.AutoEncoder(
        max_epochs=200, early_stopping=True, n_iter_no_change=2, random_state=0
    ).fit(X)
    assert len(detector.net_.history) < 200
    assert np.isfinite(detector.offset_)
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler
