"""GPU runs of the torch detectors (skipped without CUDA)."""

import pickle

import numpy as np
import pytest
import torch
from sklearn.datasets import load_digits
from sklearn.metrics import roc_auc_score

import skanomaly
from skanomaly.testing import fast_detector

pytestmark = [
    pytest.mark.cuda,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU"),
]

_TORCH_DETECTORS = ["autoencoder", "vae", "ganomaly", "skipganomaly", "egbad", "anogan"]


@pytest.fixture(scope="module")
def digit_images():
    X, digit = load_digits(return_X_y=True)
    return X.reshape(-1, 8, 8).astype(np.float32), (digit != 0).astype(int)


@pytest.mark.parametrize("name", _TORCH_DETECTORS)
def test_fits_and_scores_on_cuda(name, digit_images):
    if name not in skanomaly.list_detectors():
        pytest.skip(f"{name} is not available")
    X, is_anomaly = digit_images
    cls = skanomaly.get_detector(name)
    params = fast_detector(cls, max_epochs=3, device="cuda").get_params()
    det = cls(**params).fit(X[is_anomaly == 0][:150])
    assert next(det.net_.module_.parameters()).is_cuda
    scores = det.score_samples(X[:400])
    assert np.all(np.isfinite(scores))
    assert roc_auc_score(is_anomaly[:400], -scores) > 0.5
    # the same seed gives the same scores on the GPU too
    again = cls(**params).fit(X[is_anomaly == 0][:150]).score_samples(X[:400])
    np.testing.assert_allclose(again, scores, rtol=1e-4, atol=1e-5)
    # a pickled GPU model scores identically
    restored = pickle.loads(pickle.dumps(det))
    np.testing.assert_array_equal(restored.score_samples(X[:400]), scores)
