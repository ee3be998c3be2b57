"""A search on a real Dask cluster equals the same search run with n_jobs=1.

Needs the ``distributed`` extra (``pip install "skanomaly[distributed]"``);
skipped without it.
"""

import importlib

import joblib
import numpy as np
import pytest
import torch
from sklearn.base import clone
from sklearn.datasets import load_digits
from sklearn.model_selection import GridSearchCV

from skanomaly.metrics import get_scorer, to_outlier_labels
from skanomaly.model_selection import NoveltySplit

pytest.importorskip("distributed")
from dask.distributed import Client, LocalCluster, get_task_stream  # noqa: E402

SEARCHES = {
    "AutoEncoder": (
        dict(hidden_sizes=(16,), max_epochs=2, batch_size=32, random_state=0),
        {"latent_dim": [2, 8], "lr": [1e-3, 1e-2]},
    ),
    "GANomaly": (
        dict(
            latent_dim=4,
            hidden_sizes=(16,),
            max_epochs=2,
            batch_size=32,
            random_state=0,
        ),
        {"w_con": [10, 50], "w_enc": [0.5, 2]},
    ),
}


def detector(name):
    try:
        return getattr(importlib.import_module("skanomaly"), name)
    except ImportError as exc:  # a detector still being written
        pytest.skip(f"{name} is not importable: {exc}")


@pytest.fixture(scope="module")
def cluster():
    # real worker processes on the loopback interface, as on a cluster
    with LocalCluster(
        n_workers=2,
        threads_per_worker=1,
        processes=True,
        host="127.0.0.1",
        dashboard_address=None,
    ) as cluster:
        yield cluster


@pytest.fixture(scope="module")
def digits():
    """Digit 1 as the normal class, 30 other digits as outliers (+1/-1)."""
    X, digit = load_digits(return_X_y=True)
    rng = np.random.default_rng(0)
    idx = np.r_[np.flatnonzero(digit == 1), rng.choice(np.flatnonzero(digit != 1), 30)]
    return X[idx], to_outlier_labels(digit[idx] != 1)


@pytest.mark.parametrize("name", sorted(SEARCHES))
def test_search_on_local_cluster_equals_sequential_search(cluster, digits, name):
    X, y = digits
    params, grid = SEARCHES[name]
    search = GridSearchCV(
        detector(name)(**params),
        grid,
        scoring=get_scorer("outlier_roc_auc"),
        cv=NoveltySplit(3),
        n_jobs=-1,
    )
    # The workers run torch on one thread (dask's nanny sets OMP_NUM_THREADS=1);
    # so does the sequential search, for the same floating-point sums.
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        sequential = clone(search).set_params(n_jobs=1).fit(X, y)
        with (
            Client(cluster) as client,
            get_task_stream(client) as tasks,
            joblib.parallel_config(backend="dask"),
        ):
            search.fit(X, y)
            worker_threads = client.run(torch.get_num_threads)
    finally:
        torch.set_num_threads(threads)

    # the fits ran in the worker processes, on one torch thread each
    assert {task["worker"] for task in tasks.data} <= set(worker_threads)
    assert len(tasks.data) > 0
    assert set(worker_threads.values()) == {1}

    n_candidates = len(search.cv_results_["params"])
    assert n_candidates == 4
    for key in ["mean_test_score", *(f"split{i}_test_score" for i in range(3))]:
        np.testing.assert_allclose(
            search.cv_results_[key], sequential.cv_results_[key], rtol=0, atol=1e-12
        )
    assert np.isfinite(search.cv_results_["mean_test_score"]).all()
    assert search.best_params_ == sequential.best_params_
    np.testing.assert_array_equal(
        search.best_estimator_.score_samples(X),
        sequential.best_estimator_.score_samples(X),
    )
