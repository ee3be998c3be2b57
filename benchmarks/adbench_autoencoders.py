"""skanomaly's AutoEncoder and VAE next to PyOD's on ADBench's classical tables.

Protocol (novelty, the same split for every model): per dataset and seed,
train on 60% of the normal rows; test on the other normals plus every
anomaly. Inputs are standardised with statistics of the training rows
(PyOD's ``preprocessing=True`` does the same inside its models; ours do it
inside ``fit``). Every model gets the same epochs, batch size and learning
rate; architectures are each library's defaults.

Run::

    python benchmarks/adbench_autoencoders.py ../shared/data/adbench/Classical \
        --epochs 20 --seeds 0 --out benchmarks/RESULTS_adbench_autoencoders.md
"""

import argparse
import sys
import time
from pathlib import Path

import numpy as np
import torch
from sklearn.metrics import roc_auc_score

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks._data import load_adbench  # noqa: E402


def novelty_split(y, seed, train_fraction=0.6):
    rng = np.random.default_rng(seed)
    normal = rng.permutation(np.flatnonzero(y == 0))
    n_train = int(train_fraction * normal.size)
    train = normal[:n_train]
    test = np.concatenate([normal[n_train:], np.flatnonzero(y == 1)])
    return train, test


def make_models(epochs, batch_size, lr, seed):
    from pyod.models.auto_encoder import AutoEncoder as PyODAutoEncoder
    from pyod.models.vae import VAE as PyODVAE

    from skanomaly import VAE, AutoEncoder

    common = dict(max_epochs=epochs, batch_size=batch_size, lr=lr, random_state=seed)
    pyod_common = dict(
        epoch_num=epochs,
        batch_size=batch_size,
        lr=lr,
        random_state=seed,
        verbose=0,
        device="cpu",
    )
    return {
        "skanomaly AutoEncoder": lambda: AutoEncoder(**common),
        "PyOD AutoEncoder": lambda: PyODAutoEncoder(**pyod_common),
        "skanomaly VAE": lambda: VAE(**common),
        "PyOD VAE": lambda: PyODVAE(**pyod_common),
    }


def anomaly_scores(model, X):
    # skanomaly: higher score_samples = more normal; PyOD: higher = anomalous
    if hasattr(model, "score_samples") and model.__module__.startswith("skanomaly"):
        return -model.score_samples(X)
    return model.decision_function(X)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("folder", help="ADBench Classical folder with .npz files")
    parser.add_argument("--epochs", type=int, default=20)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0])
    parser.add_argument("--datasets", nargs="*", help="file stems to keep")
    parser.add_argument("--out", help="write the markdown table here")
    parser.add_argument(
        "--threads",
        type=int,
        help="torch intra-op threads for every model (1 avoids OpenMP "
        "oversubscription when the machine is shared)",
    )
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)

    files = sorted(Path(args.folder).glob("*.npz"))
    if args.datasets:
        files = [f for f in files if f.stem in args.datasets]
    # warm-up: first-call costs (imports, thread pools) are not the models'
    warm = np.random.default_rng(0).normal(size=(64, 4))
    for factory in make_models(1, args.batch_size, args.lr, 0).values():
        factory().fit(warm)

    rows = []
    for path in files:
        X, y = load_adbench(path)
        for seed in args.seeds:
            train, test = novelty_split(y, seed)
            for name, factory in make_models(
                args.epochs, args.batch_size, args.lr, seed
            ).items():
                model = factory()
                start = time.perf_counter()
                model.fit(X[train])
                fit_s = time.perf_counter() - start
                start = time.perf_counter()
                scores = anomaly_scores(model, X[test])
                score_s = time.perf_counter() - start
                auroc = roc_auc_score(y[test], scores)
                rows.append((path.stem, seed, name, auroc, fit_s, score_s))
                print(
                    f"{path.stem:18s} seed {seed} {name:22s} AUROC {auroc:.3f} "
                    f"fit {fit_s:6.2f}s score {score_s:6.3f}s",
                    flush=True,
                )

    models = list(dict.fromkeys(r[2] for r in rows))
    datasets = list(dict.fromkeys(r[0] for r in rows))
    lines = [
        f"epochs {args.epochs}, batch {args.batch_size}, lr {args.lr}, "
        f"seeds {args.seeds}, torch threads {torch.get_num_threads()}; "
        "AUROC (mean over seeds), fit seconds in brackets",
        "",
        "| dataset | " + " | ".join(models) + " |",
        "|---" * (len(models) + 1) + "|",
    ]
    for dataset in datasets:
        cells = []
        for model in models:
            sel = [r for r in rows if r[0] == dataset and r[2] == model]
            auroc, fit_s = np.mean([r[3] for r in sel]), np.mean([r[4] for r in sel])
            cells.append(f"{auroc:.3f} ({fit_s:.1f}s)")
        lines.append(f"| {dataset} | " + " | ".join(cells) + " |")
    means = []
    for model in models:
        sel = [r for r in rows if r[2] == model]
        auroc, fit_s = np.mean([r[3] for r in sel]), np.sum([r[4] for r in sel])
        means.append(f"**{auroc:.3f}** ({fit_s:.0f}s total)")
    lines.append("| **mean** | " + " | ".join(means) + " |")
    table = "\n".join(lines)
    print(table)
    if args.out:
        Path(args.out).write_text(
            "# AutoEncoder and VAE vs PyOD on ADBench Classical\n\n" + table + "\n"
        )


if __name__ == "__main__":
    main()
