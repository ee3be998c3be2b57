"""Mahalanobis on pretrained ResNet18 embeddings of MVTec AD, next to baselines.

Data: ADBench's ``MVTec_ResNet18`` folder, one ``.npz`` per MVTec AD category
(512-d global-average-pooled ImageNet ResNet18 features, ``y`` 1 = anomaly).

Protocol (novelty, same split for every model): per category and seed, train
on 60% of the normal images, test on the other normals plus every anomaly;
AUROC of the anomaly scores. Training sets hold 43 to 258 images for 512
features, so the plain covariance is singular: that is what shrinkage is for.

Models: skanomaly's Mahalanobis with each covariance choice (and Ledoit-Wolf
after a StandardScaler), scikit-learn's EllipticEnvelope and IsolationForest,
PyOD's KNN and MCD, all with default settings.

Run::

    python benchmarks/mvtec_mahalanobis.py /work/shared/data/adbench/MVTec_ResNet18 \\
        --seeds 0 1 2 --out mvtec_table.md

BLAS runs single-threaded by default (``--threads``): on a shared machine
OpenBLAS threads oversubscribe and a 512x512 eigendecomposition (MCD runs
dozens) gets ten times slower.
"""

import argparse
import sys
import time
import warnings
from pathlib import Path

import numpy as np
from sklearn.covariance import EllipticEnvelope
from sklearn.ensemble import IsolationForest
from sklearn.metrics import roc_auc_score
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler
from threadpoolctl import threadpool_limits

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks._data import load_adbench  # noqa: E402
from skanomaly import Mahalanobis  # noqa: E402


def split(y, seed, train_fraction=0.6):
    """Indices of a novelty split: train on normals only, test on the rest."""
    normal = np.random.default_rng(seed).permutation(np.flatnonzero(y == 0))
    n_train = int(train_fraction * normal.size)
    return normal[:n_train], np.r_[normal[n_train:], np.flatnonzero(y == 1)]


def models(seed):
    from pyod.models.knn import KNN
    from pyod.models.mcd import MCD

    return {
        "Mahalanobis ledoit_wolf": Mahalanobis(),
        "Mahalanobis oas": Mahalanobis(covariance="oas"),
        "Mahalanobis empirical": Mahalanobis(covariance="empirical"),
        "Scaler + Mahalanobis LW": make_pipeline(StandardScaler(), Mahalanobis()),
        "EllipticEnvelope": EllipticEnvelope(random_state=seed),
        "IsolationForest": IsolationForest(random_state=seed),
        "PyOD KNN": KNN(),
        "PyOD MCD": MCD(random_state=seed),
    }


def anomaly_scores(model, X):
    # scikit-learn convention: higher score_samples = more normal; PyOD's
    # decision_function is already an anomaly score
    if type(model).__module__.startswith("pyod"):
        return model.decision_function(X)
    return -model.score_samples(X)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("folder", help="the MVTec_ResNet18 folder of .npz files")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--categories", nargs="*", help="file stems to keep")
    parser.add_argument("--models", nargs="*", help="model names to keep")
    parser.add_argument("--threads", type=int, default=1, help="BLAS threads")
    parser.add_argument("--out", help="write the markdown table here")
    args = parser.parse_args()

    files = sorted(Path(args.folder).glob("*.npz"))
    if args.categories:
        files = [f for f in files if f.stem in args.categories]
    rows = []  # (category, seed, model, auroc, fit seconds)
    with threadpool_limits(args.threads), warnings.catch_warnings():
        # the empirical covariance is singular here and gets a ridge; MCD
        # warns that its support covariance is singular
        warnings.simplefilter("ignore")
        for path in files:
            X, y = load_adbench(path)
            category = path.stem.removeprefix("MVTec-AD_")
            for seed in args.seeds:
                train, test = split(y, seed)
                for name, model in models(seed).items():
                    if args.models and name not in args.models:
                        continue
                    start = time.perf_counter()
                    model.fit(X[train])
                    fit_s = time.perf_counter() - start
                    auroc = roc_auc_score(y[test], anomaly_scores(model, X[test]))
                    rows.append((category, seed, name, auroc, fit_s))
                    print(
                        f"{category:11s} seed {seed} n_train {train.size:3d} "
                        f"{name:24s} AUROC {auroc:.3f} fit {fit_s:6.2f}s",
                        flush=True,
                    )

    names = list(dict.fromkeys(r[2] for r in rows))
    categories = list(dict.fromkeys(r[0] for r in rows))
    lines = [
        "| category | " + " | ".join(names) + " |",
        "|---" * (len(names) + 1) + "|",
    ]
    for category in categories:
        cells = [
            np.mean([r[3] for r in rows if r[0] == category and r[2] == name])
            for name in names
        ]
        lines.append(f"| {category} | " + " | ".join(f"{c:.3f}" for c in cells) + " |")
    means = [np.mean([r[3] for r in rows if r[2] == name]) for name in names]
    # spread over seeds of the 15-category mean
    spreads = [
        np.std(
            [
                np.mean([r[3] for r in rows if r[2] == name and r[1] == seed])
                for seed in args.seeds
            ]
        )
        for name in names
    ]
    lines.append(
        "| **mean** | "
        + " | ".join(f"**{m:.3f}** ± {s:.3f}" for m, s in zip(means, spreads))
        + " |"
    )
    fit_times = [np.mean([r[4] for r in rows if r[2] == name]) for name in names]
    lines.append("| fit s (mean) | " + " | ".join(f"{t:.2f}" for t in fit_times) + " |")
    table = "\n".join(lines)
    print(table)
    if args.out:
        Path(args.out).write_text(table + "\n")


if __name__ == "__main__":
    main()
