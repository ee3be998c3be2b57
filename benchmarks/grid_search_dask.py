"""Wall time of the example's GANomaly grid: n_jobs=1 vs a Dask LocalCluster.

Runs the grid of ``examples/grid_search_ganomaly.py`` (same data, detector,
grid and cross-validation) three times:

1. ``n_jobs=1`` in this process, with torch on ``--torch-threads`` threads;
2. on a fresh ``LocalCluster`` (``--workers`` worker processes, one thread
   each) through joblib's ``dask`` backend, *cold*: every worker still has
   to import torch and skanomaly during the search;
3. the same search again on the now *warm* workers.

It checks that the cluster's ``cv_results_`` equal the sequential ones
(``mean_test_score`` to 1e-12, same ``best_params_``) and prints the AUROC
of the best and the worst grid point. Needs the ``distributed`` extra::

    pip install "skanomaly[distributed]"
    python benchmarks/grid_search_dask.py --workers 2 --out result.json

The cluster start-up (spawning the workers) is timed separately from the
searches; the CPU seconds of every process (client and workers) are recorded
next to the wall times. On a machine shared with other work the numbers move with its
load; the 1-minute load average before and after is recorded.
"""

import argparse
import json
import os
import platform
import time

import numpy as np


def example_search(n_jobs):
    """The example's data and GridSearchCV (see the module docstring)."""
    from sklearn.datasets import load_digits
    from sklearn.model_selection import (
        GridSearchCV,
        StratifiedKFold,
        train_test_split,
    )

    from skanomaly import GANomaly
    from skanomaly.metrics import get_scorer, to_outlier_labels
    from skanomaly.model_selection import NoveltySplit

    X_digits, digit = load_digits(return_X_y=True)
    rng = np.random.default_rng(0)
    normal = np.flatnonzero(digit == 1)
    others = rng.choice(np.flatnonzero(digit != 1), size=80, replace=False)
    X_all = X_digits[np.r_[normal, others]]
    is_anomaly = np.r_[np.zeros(normal.size, int), np.ones(others.size, int)]
    X, _, is_anomaly_dev, _ = train_test_split(
        X_all, is_anomaly, test_size=0.2, stratify=is_anomaly, random_state=0
    )
    search = GridSearchCV(
        GANomaly(max_epochs=5, latent_dim=8, batch_size=16, random_state=0),
        {"w_con": [10, 25, 50, 100], "w_enc": [0.5, 1, 2]},
        scoring=get_scorer("outlier_roc_auc"),
        cv=NoveltySplit(StratifiedKFold(3, shuffle=True, random_state=0)),
        n_jobs=n_jobs,
    )
    return search, X, to_outlier_labels(is_anomaly_dev)


def cpu_seconds():
    """CPU time of this process and its children (the cluster's workers)."""
    import psutil  # a dependency of distributed

    total = 0.0
    process = psutil.Process()
    for proc in [process, *process.children(recursive=True)]:
        try:
            times = proc.cpu_times()
        except psutil.Error:
            continue
        total += times.user + times.system
    return total


def timed_fit(search, X, y):
    """Wall and CPU seconds (all processes) of ``search.fit(X, y)``."""
    cpu, start = cpu_seconds(), time.perf_counter()
    search.fit(X, y)
    return time.perf_counter() - start, cpu_seconds() - cpu


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument(
        "--torch-threads",
        type=int,
        default=1,
        help="torch threads of the n_jobs=1 run (the workers use one each)",
    )
    parser.add_argument("--out", help="write the results as JSON here")
    args = parser.parse_args()

    import joblib
    import torch
    from dask.distributed import Client, LocalCluster

    load_before = os.getloadavg()[0]
    torch.set_num_threads(args.torch_threads)
    # import torch's lazily loaded pieces outside the timings, as a warm
    # worker has them
    sequential, X, y = example_search(n_jobs=1)
    type(sequential.estimator)(max_epochs=1).fit(X[:32])

    seconds_sequential, cpu_sequential = timed_fit(sequential, X, y)
    print(
        f"n_jobs=1 ({args.torch_threads} torch thread(s)): "
        f"{seconds_sequential:.1f} s ({cpu_sequential:.1f} s CPU)"
    )

    start = time.perf_counter()
    with (
        LocalCluster(
            n_workers=args.workers,
            threads_per_worker=1,
            processes=True,
            host="127.0.0.1",
            dashboard_address=None,
        ) as cluster,
        Client(cluster) as client,
    ):
        seconds_startup = time.perf_counter() - start
        print(
            f"LocalCluster start-up ({args.workers} workers): {seconds_startup:.1f} s"
        )
        timings, cpu = {}, {}
        with joblib.parallel_config(backend="dask"):
            for run in ("cold", "warm"):
                search, _, _ = example_search(n_jobs=-1)
                timings[run], cpu[run] = timed_fit(search, X, y)
                print(
                    f"LocalCluster search, {run} workers: {timings[run]:.1f} s "
                    f"({cpu[run]:.1f} s CPU, client and workers)"
                )
        worker_threads = sorted(set(client.run(torch.get_num_threads).values()))

    np.testing.assert_allclose(
        search.cv_results_["mean_test_score"],
        sequential.cv_results_["mean_test_score"],
        rtol=0,
        atol=1e-12,
    )
    assert search.best_params_ == sequential.best_params_
    scores = sequential.cv_results_["mean_test_score"]
    params = sequential.cv_results_["params"]
    best, worst = int(np.argmax(scores)), int(np.argmin(scores))
    print("cluster cv_results_ equal the n_jobs=1 ones")
    print(f"best  grid point {params[best]}: CV AUROC {scores[best]:.4f}")
    print(f"worst grid point {params[worst]}: CV AUROC {scores[worst]:.4f}")

    result = {
        "n_candidates": len(params),
        "n_splits": sequential.n_splits_,
        "seconds_n_jobs_1": seconds_sequential,
        "torch_threads_n_jobs_1": args.torch_threads,
        "workers": args.workers,
        "worker_torch_threads": worker_threads,
        "seconds_cluster_startup": seconds_startup,
        "seconds_cluster_cold": timings["cold"],
        "seconds_cluster_warm": timings["warm"],
        "cpu_seconds_n_jobs_1": cpu_sequential,
        "cpu_seconds_cluster_cold": cpu["cold"],
        "cpu_seconds_cluster_warm": cpu["warm"],
        "results_equal": True,
        "best": {"params": params[best], "cv_auroc": float(scores[best])},
        "worst": {"params": params[worst], "cv_auroc": float(scores[worst])},
        "mean_test_score": scores.tolist(),
        "load_average_1min": [load_before, os.getloadavg()[0]],
        "cpu_count": os.cpu_count(),
        "python": platform.python_version(),
        "torch": torch.__version__,
    }
    if args.out:
        with open(args.out, "w") as file:
            json.dump(result, file, indent=2)


if __name__ == "__main__":
    main()
