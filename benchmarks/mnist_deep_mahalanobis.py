"""MNIST, one digit normal: DeepMahalanobis on each packaged backbone vs the rest.

Protocol (one-class): for each normal digit, a fixed random subset
(``--seed``) of ``--n-train`` images of that digit from the MNIST test set is
the training set; the test set is ``--n-test-normal`` other images of that
digit plus ``--n-test-anomalous`` images drawn from the nine other digits
(the anomalies). Every model gets the same images, 28x28 uint8 grayscale
``(N, 1, 28, 28)``:

- DeepMahalanobis with each packaged ImageNet backbone
  (``tf_efficientnet_lite0/1/2``, their pip packages; nothing downloaded),
  constructor defaults: the backbone's native resolution (224/240/260, the
  digits are upsampled by the feature stage), all 9 levels, Ledoit-Wolf.
- The same with ``weights=None`` (random lite0), to show what the ImageNet
  weights add.
- skanomaly's AutoEncoder and GANomaly, constructor defaults except
  ``batch_size=16`` (with a few hundred training images a batch of 64 is a
  handful of optimizer steps an epoch; ``skanomaly benchmark`` caps the
  batch the same way) and ``random_state``.
- PyOD's KNN (defaults: 5 neighbours, largest distance) on the 784 pixels
  scaled to [0, 1].

AUROC uses the anomaly scores (higher = more anomalous: ``-score_samples``
for skanomaly, ``decision_function`` for PyOD). Throughput is images per
second of ``fit`` (training images / fit wall time, the backbone's building
included) and of scoring the test set. torch and BLAS run on one thread.

Run::

    python benchmarks/mnist_deep_mahalanobis.py /work/shared/data/mnist \\
        --out benchmarks/RESULTS_mnist_deep_mahalanobis.md
"""

import argparse
import os
import platform
import sys
import time
from pathlib import Path

for _variable in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS"):
    os.environ.setdefault(_variable, "1")

import numpy as np  # noqa: E402
import torch  # noqa: E402
from sklearn.metrics import roc_auc_score  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks._data import load_mnist  # noqa: E402


def one_class_split(images, labels, digit, args):
    """Train / test indices of the one-class protocol for ``digit``."""
    rng = np.random.default_rng(args.seed + digit)
    own = rng.permutation(np.flatnonzero(labels == digit))
    others = rng.permutation(np.flatnonzero(labels != digit))
    train = own[: args.n_train]
    test = np.r_[
        own[args.n_train : args.n_train + args.n_test_normal],
        others[: args.n_test_anomalous],
    ]
    return train, test


def models(seed):
    """Name -> (factory, input kind) of every compared model."""
    from skanomaly import AutoEncoder, DeepMahalanobis, GANomaly

    def knn():
        from pyod.models.knn import KNN

        return KNN()

    entries = {
        f"DeepMahalanobis lite{k}": (
            lambda k=k: DeepMahalanobis(backbone=f"tf_efficientnet_lite{k}"),
            "images",
        )
        for k in range(3)
    }
    entries["DeepMahalanobis lite0, random weights"] = (
        lambda: DeepMahalanobis(weights=None, random_state=seed),
        "images",
    )
    entries["AutoEncoder"] = (
        lambda: AutoEncoder(batch_size=16, random_state=seed),
        "images",
    )
    entries["GANomaly"] = (lambda: GANomaly(batch_size=16, random_state=seed), "images")
    entries["PyOD KNN (pixels)"] = (knn, "pixels")
    return entries


def evaluate(factory, kind, X_train, X_test, y_test):
    if kind == "pixels":
        X_train = X_train.reshape(len(X_train), -1) / 255.0
        X_test = X_test.reshape(len(X_test), -1) / 255.0
    model = factory()
    start = time.perf_counter()
    model.fit(X_train)
    fit_seconds = time.perf_counter() - start
    start = time.perf_counter()
    if kind == "pixels":
        anomaly = model.decision_function(X_test)
    else:
        anomaly = -model.score_samples(X_test)
    score_seconds = time.perf_counter() - start
    return (
        roc_auc_score(y_test, anomaly),
        len(X_train) / fit_seconds,
        len(X_test) / score_seconds,
    )


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("mnist", help="folder with the MNIST t10k IDX .gz files")
    parser.add_argument("--digits", type=int, nargs="+", default=[1, 3, 7])
    parser.add_argument("--n-train", type=int, default=200)
    parser.add_argument("--n-test-normal", type=int, default=50)
    parser.add_argument("--n-test-anomalous", type=int, default=200)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--only", nargs="*", help="run only these model names")
    parser.add_argument("--out", type=Path, help="write the results (markdown)")
    args = parser.parse_args(argv)
    torch.set_num_threads(1)

    images, labels = load_mnist(args.mnist)
    images = images[:, None]
    entries = models(args.seed)
    if args.only:
        entries = {name: entries[name] for name in args.only}
    results = {name: {} for name in entries}
    started = time.perf_counter()
    for digit in args.digits:
        train, test = one_class_split(images, labels, digit, args)
        y_test = (labels[test] != digit).astype(int)
        for name, (factory, kind) in entries.items():
            auroc, fit_rate, score_rate = evaluate(
                factory, kind, images[train], images[test], y_test
            )
            results[name][digit] = (auroc, fit_rate, score_rate)
            print(
                f"digit {digit}  {name:<38} AUROC {auroc:.3f}  "
                f"fit {fit_rate:7.1f} img/s  score {score_rate:7.1f} img/s",
                flush=True,
            )
    wall = time.perf_counter() - started

    header = (
        "| model | "
        + " | ".join(f"AUROC digit {d}" for d in args.digits)
        + " | mean AUROC | fit img/s | score img/s |"
    )
    lines = [header, "|" + "---|" * (len(args.digits) + 4)]
    for name, by_digit in results.items():
        aurocs = [by_digit[d][0] for d in args.digits]
        fit_rate = np.mean([by_digit[d][1] for d in args.digits])
        score_rate = np.mean([by_digit[d][2] for d in args.digits])
        cells = " | ".join(f"{a:.3f}" for a in aurocs)
        lines.append(
            f"| {name} | {cells} | {np.mean(aurocs):.3f} | {fit_rate:.1f} | "
            f"{score_rate:.1f} |"
        )
    table = "\n".join(lines)
    print(table)
    print(f"wall time {wall / 60:.1f} min")
    if args.out:
        command = "python benchmarks/mnist_deep_mahalanobis.py " + " ".join(
            argv if argv is not None else sys.argv[1:]
        )
        args.out.write_text(
            "# MNIST, one digit normal: DeepMahalanobis on packaged ImageNet "
            "backbones\n\n"
            f"Machine: {platform.machine()} CPU, {os.cpu_count()} cores (shared "
            f"with other jobs), torch {torch.__version__} on 1 thread, Python "
            f"{platform.python_version()}. Wall time {wall / 60:.1f} min.\n\n"
            f"```\n{command}\n```\n\n"
            f"Per normal digit: {args.n_train} training images of it, tested on "
            f"{args.n_test_normal} other images of it and {args.n_test_anomalous} "
            "of the nine other digits (MNIST test set, seed "
            f"{args.seed}); see the script's docstring for the settings.\n\n"
            f"{table}\n"
        )


if __name__ == "__main__":
    main()
