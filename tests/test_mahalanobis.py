"""Mahalanobis: the Gaussian stage of Rippel et al. as a tabular detector."""

import pickle
import warnings

import numpy as np
import pytest
import torch
from scipy.linalg import solve_triangular
from sklearn.covariance import OAS, EmpiricalCovariance, LedoitWolf
from sklearn.datasets import load_digits
from sklearn.metrics import roc_auc_score
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

from skanomaly import Mahalanobis
from skanomaly.detectors.base import CalibrationWarning
from skanomaly.gaussian import group_distances


def _correlated(n_samples, n_features, seed=0):
    rng = np.random.default_rng(seed)
    mixing = rng.normal(size=(n_features, n_features))
    return rng.normal(size=(n_samples, n_features)) @ mixing + 3.0


@pytest.mark.parametrize(
    "covariance, reference",
    [("ledoit_wolf", LedoitWolf), ("oas", OAS), ("empirical", EmpiricalCovariance)],
)
def test_distances_match_sklearn_covariance(covariance, reference):
    # few samples for many features: the shrinkage matters
    X_train, X_test = _correlated(40, 25), _correlated(30, 25, seed=1)
    det = Mahalanobis(covariance=covariance).fit(X_train)
    expected = np.sqrt(reference().fit(X_train).mahalanobis(X_test))
    np.testing.assert_allclose(det.distances(X_test)[:, 0], expected, rtol=1e-6)
    np.testing.assert_allclose(det.score_samples(X_test), -expected, rtol=1e-6)
    if covariance != "empirical":
        assert det.shrinkages_[0] == pytest.approx(reference().fit(X_train).shrinkage_)


def test_groups_are_independent_gaussians_summed():
    X = _correlated(80, 6)
    X_test = _correlated(10, 6, seed=1)
    det = Mahalanobis(groups=[0, 0, 1, 1, 1, 0]).fit(X)
    first, second = [0, 1, 5], [2, 3, 4]
    expected = np.column_stack(
        [
            np.sqrt(LedoitWolf().fit(X[:, c]).mahalanobis(X_test[:, c]))
            for c in (first, second)
        ]
    )
    np.testing.assert_allclose(det.distances(X_test), expected, rtol=1e-6)
    np.testing.assert_allclose(
        det.score_samples(X_test), -expected.sum(axis=1), rtol=1e-6
    )
    # the same groups written as index lists and as slices
    as_lists = Mahalanobis(groups=[first, second]).fit(X)
    np.testing.assert_allclose(as_lists.distances(X_test), expected, rtol=1e-6)
    as_slices = Mahalanobis(groups=[slice(0, 2), slice(2, 6)]).fit(X)
    np.testing.assert_allclose(
        as_slices.distances(X_test)[:, 0],
        np.sqrt(LedoitWolf().fit(X[:, :2]).mahalanobis(X_test[:, :2])),
        rtol=1e-6,
    )
    assert [g.tolist() for g in as_slices.groups_] == [[0, 1], [2, 3, 4, 5]]


def test_scores_do_not_depend_on_block_size(monkeypatch):
    X = _correlated(60, 5)
    full = Mahalanobis().fit(X).score_samples(X)
    monkeypatch.setattr("skanomaly.gaussian._DISTANCE_BLOCK_BYTES", 8 * 5 * 7)
    np.testing.assert_allclose(Mahalanobis().fit(X).score_samples(X), full, rtol=1e-12)


@pytest.mark.parametrize(
    "groups, match",
    [
        ([0, 1], "one label per feature"),
        ([[0, 1], [7]], "outside"),
        ([[0, 1], []], "no columns"),
        ([[0.5, 1]], "column indices"),
        ([], "empty"),
    ],
)
def test_bad_groups(groups, match):
    with pytest.raises(ValueError, match=match):
        Mahalanobis(groups=groups).fit(_correlated(20, 3))


def test_rejects_images():
    images = np.zeros((5, 1, 4, 4))
    with pytest.raises(ValueError, match="takes 2-D tabular data"):
        Mahalanobis().fit(images)
    with pytest.raises(ValueError, match="takes 2-D tabular data"):
        Mahalanobis().fit(images[:, 0])


def test_singular_empirical_covariance_gets_a_ridge():
    X = _correlated(5, 10)  # rank 4 < 10 features
    with pytest.warns(UserWarning, match="singular"):
        det = Mahalanobis(covariance="empirical").fit(X)
    assert np.all(np.isfinite(det.score_samples(X)))
    # Ledoit-Wolf needs no ridge
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        warnings.simplefilter("ignore", CalibrationWarning)  # 5 samples
        Mahalanobis().fit(X)


def test_digits_pipeline_and_pickle():
    X, y = load_digits(return_X_y=True)
    normal = X[y == 0]
    pipe = make_pipeline(StandardScaler(), Mahalanobis()).fit(normal[:120])
    test = np.vstack([normal[120:], X[y != 0][:300]])
    is_anomaly = np.r_[np.zeros(len(normal) - 120), np.ones(300)]
    auc = roc_auc_score(is_anomaly, -pipe.score_samples(test))
    assert auc > 0.95
    restored = pickle.loads(pickle.dumps(pipe))
    np.testing.assert_array_equal(
        restored.score_samples(test), pipe.score_samples(test)
    )


def test_distances_match_a_triangular_solve():
    # the whitening matrix products of score_samples (and of the ONNX graph)
    # against a direct solve of L z = x - mu
    X = _correlated(50, 6)
    det = Mahalanobis(groups=[0, 0, 1, 1, 1, 0]).fit(X)
    X_test = _correlated(9, 6, seed=2)
    expected = np.empty((9, 2))
    for g, (columns, factor) in enumerate(zip(det.groups_, det.cholesky_)):
        z = solve_triangular(
            factor, (X_test[:, columns] - det.location_[columns]).T, lower=True
        )
        expected[:, g] = np.linalg.norm(z, axis=0)
    np.testing.assert_allclose(det.distances(X_test), expected, rtol=1e-10)


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_torch_distances_on_cuda_match_scipy():
    X = _correlated(400, 300)
    det = Mahalanobis(groups=np.arange(300) % 3).fit(X)
    X_test = _correlated(700, 300, seed=2)
    on_cuda = group_distances(
        X_test, det.location_, det.groups_, det.cholesky_, device="cuda"
    )
    np.testing.assert_allclose(on_cuda, det.distances(X_test), rtol=1e-9)
