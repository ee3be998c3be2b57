"""Every tabular detector of ours at its defaults next to PyOD's on ADBench tables.

Protocol (novelty, the same split for every model): per dataset and seed,
train on 60% of the normal rows (``novelty_split``); test on the other
normals plus every anomaly. Every model gets the rows standardised with the
training rows' statistics (ours standardise again inside ``fit``, a no-op).
Models run at their defaults, with ``random_state`` set to the seed; ours
calibrate their threshold by default on 20% of the training rows held out
of training (``calibration='split'``), which AUROC does not use, except the
default DTE (non-parametric), whose calibration is leave-one-out: it keeps
every training row, as PyOD's models do.

With ``--max-train N`` a set's training rows are capped at ``N``: the first
``N`` of the split's training rows, which ``novelty_split`` draws as a seeded
permutation of the normals, so the cap keeps a uniform random subset fixed by
the seed, the same rows for every model; the standardisation then uses the
kept rows' statistics. The test rows are never capped.

Results go line by line to a JSON-lines file (``--log``); a rerun skips
what is there, so an interrupted run resumes. ``--report`` writes the
markdown table from the log: AUROC per set (mean over seeds) and the mean
of each group of sets, fit and score seconds.

Run::

    python benchmarks/tabular.py run /work/shared/data/adbench/Classical \
        --seeds 0 1 2 --log tabular.jsonl
    python benchmarks/tabular.py run <ADBench Classical_large folder> \
        --seeds 0 1 2 --max-train 20000 --log large.jsonl
    python benchmarks/tabular.py report --log tabular.jsonl [more.jsonl ...]
    python benchmarks/tabular.py fit-time --rows 100000 --features 50
"""

import argparse
import json
import os
import resource
import sys
import time
from pathlib import Path

import numpy as np
import torch
from sklearn.metrics import roc_auc_score

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks._data import load_adbench  # noqa: E402
from benchmarks.adbench_autoencoders import novelty_split  # noqa: E402

# Sets DTE's defaults were chosen on (a few settings tried on seed 0); the
# others were not looked at before the three-seed run and are reported apart.
TUNING_SETS = ("14_glass", "18_Ionosphere", "6_cardio")
# ADBench's CV group (MVTec-AD categories as ResNet18 embeddings): the first
# five categories in name order, fixed before any result of the group was seen.
TUNING_SETS += tuple(
    f"MVTec-AD_{name}" for name in ("bottle", "cable", "capsule", "carpet", "grid")
)
# ADBench Classical sets fetched from the ADBench repository (every set there
# that is not in ../shared/data/adbench and has under 20,000 rows: 22 sets).
# Sorted by ADBench number, every other one from the first is "tuning", the
# rest "held out"; fixed before any result on them was read.
TUNING_SETS += (
    "7_Cardiotocography",
    "15_Hepatitis",
    "19_landsat",
    "21_Lymphography",
    "24_mnist",
    "26_optdigits",
    "31_satimage-2",
    "37_Stamps",
    "41_Waveform",
    "44_Wilt",
    "46_WPBC",
)
# ADBench Classical sets fetched from the ADBench repository with more than
# 20,000 rows (the nine left out above): a group of its own, entirely held
# out (none is in TUNING_SETS), run once at the defaults of 2026-12-07
# (``DTE()`` with n_neighbors=(2, 3, 5, 10)), training rows capped with
# ``--max-train 20000``; fixed before any result on them was read.
LARGE_SETS = (
    "1_ALOI",
    "5_campaign",
    "8_celeba",
    "10_cover",
    "11_donors",
    "16_http",
    "32_shuttle",
    "33_skin",
    "34_smtp",
)


def _posterior_mean_dte():
    """DTE-NP with another time estimate, tried for issue 25 and rejected.

    The posterior mean of the step when the data are the training rows, each
    noised as the forward process does: ``p(t | x)`` proportional to the sum
    over the ``k`` nearest rows of ``N(x; x_i, sigma2[t] I)``, uniform over
    the steps. Chosen on the tuning sets (0.949 against 0.938), it ranked
    below the committed rule on the held-out sets (RESULTS_tabular.md), so
    it lives here only, to rerun that comparison.
    """
    from skanomaly import DTE
    from skanomaly.nn.dte import NearestNeighbourTime

    class PosteriorMeanTime(NearestNeighbourTime):
        def forward(self, x, exclude=None):
            x = x.flatten(1)
            sq = (x**2).sum(1, keepdim=True) + self.rows_sq - 2.0 * x @ self.rows.T
            sq = sq.clamp(min=0.0)
            if exclude is not None:
                sq[torch.arange(len(x)), exclude] = float("inf")
            nearest = torch.topk(sq, self.n_neighbors, dim=1, largest=False).values
            log_likelihood = torch.logsumexp(
                -nearest[:, None, :] / (2.0 * self.variances[None, :, None]), dim=2
            ) - 0.5 * x.shape[1] * torch.log(self.variances)
            steps = torch.arange(len(self.variances), dtype=x.dtype)
            return log_likelihood.softmax(dim=1) @ steps

        searched_time = forward  # DTE's scoring path (one block here)

    class PosteriorMeanDTE(DTE):
        def _neighbour_module(self):
            module = super()._neighbour_module()
            return PosteriorMeanTime(module.rows, module.variances, self.n_neighbors_)

    # on the k = 5 it was measured against; brute force, whose searched_time
    # is overridden above (the k-d tree path reads the neighbours' steps)
    return PosteriorMeanDTE(n_neighbors=5, algorithm="brute")


# the numbers of neighbours whose variance modes "DTE k-mix" averages (issue
# 25): chosen on the tuning sets and run once on the held-out ones; DTE's
# default n_neighbors is the same without k = 1 ("DTE k-mix 2-10")
K_MIX = (1, 2, 3, 5, 10)


def models(seed, n_features):
    """Name -> factory of every model, at its defaults."""
    from pyod.models.auto_encoder import AutoEncoder as PyODAutoEncoder
    from pyod.models.deep_svdd import DeepSVDD
    from pyod.models.ecod import ECOD
    from pyod.models.iforest import IForest
    from pyod.models.knn import KNN

    from skanomaly import (
        DTE,
        EGBAD,
        VAE,
        AnoGAN,
        AutoEncoder,
        GANomaly,
        Mahalanobis,
        SkipGANomaly,
    )

    return {
        # the default: the geometric mean of DTE-NP's variance modes over
        # k = 2, 3, 5, 10, leave-one-out calibration (every row a neighbour).
        # Logs written before (RESULTS_tabular.md) name DTE-NP with k = 5
        # "DTE", and one section's logs K_MIX "DTE": see its dates.
        "DTE": lambda: DTE(random_state=seed),
        # the same trained on 80% of the rows, as the other models of ours
        "DTE split": lambda: DTE(calibration="split", random_state=seed),
        # the default's scores by the tiled brute-force search whatever the
        # number of columns (the only search before the k-d tree of
        # algorithm='auto'): for timing the two searches
        "DTE brute": lambda: DTE(algorithm="brute", random_state=seed),
        "DTE-NP posterior mean": _posterior_mean_dte,
        # DTE-NP with one k: k = 5 the paper's and the default before issue
        # 25's k-mix; the others tried on the tuning sets only
        **{
            f"DTE k={k}": (lambda k=k: DTE(n_neighbors=k, random_state=seed))
            for k in (1, 3, 5, 10, 20)
        },
        "DTE k-mix": lambda: DTE(n_neighbors=K_MIX, random_state=seed),
        # k-mix without k = 1, whose self-match puts every training row at
        # step 0 when scored in-sample (defined for that reason, before any
        # of its numbers were read): the default (same scores as "DTE")
        "DTE k-mix 2-10": lambda: DTE(n_neighbors=K_MIX[1:], random_state=seed),
        "DTE-C": lambda: DTE(variant="categorical", random_state=seed),
        "DTE-IG": lambda: DTE(variant="inverse_gamma", random_state=seed),
        "AutoEncoder": lambda: AutoEncoder(random_state=seed),
        "VAE": lambda: VAE(random_state=seed),
        "Mahalanobis": lambda: Mahalanobis(),
        "GANomaly": lambda: GANomaly(random_state=seed),
        "SkipGANomaly": lambda: SkipGANomaly(random_state=seed),
        "EGBAD": lambda: EGBAD(random_state=seed),
        "AnoGAN": lambda: AnoGAN(random_state=seed),
        "PyOD KNN": lambda: KNN(),
        # the authors: DTE-NP "provides the same results as kNN" with method="mean"
        "PyOD KNN mean": lambda: KNN(method="mean"),
        "PyOD IForest": lambda: IForest(random_state=seed),
        "PyOD ECOD": lambda: ECOD(),
        "PyOD AutoEncoder": lambda: PyODAutoEncoder(
            random_state=seed, verbose=0, device="cpu"
        ),
        "PyOD DeepSVDD": lambda: DeepSVDD(n_features, random_state=seed, verbose=0),
    }


def anomaly_scores(model, X):
    # skanomaly: higher score_samples = more normal; PyOD: higher = anomalous
    from skanomaly.detectors.base import BaseDetector

    if isinstance(model, BaseDetector):
        return -model.score_samples(X)
    return model.decision_function(X)


def run(args):
    log = Path(args.log)
    done = set()
    if log.exists():
        for line in log.read_text().splitlines():
            r = json.loads(line)
            done.add((r["dataset"], r["seed"], r["model"]))
    files = sorted(Path(args.folder).glob("*.npz"))
    if args.datasets:
        files = [f for f in files if f.stem in args.datasets]
    # seeds outermost: an interrupted run still covers every set
    for seed in args.seeds:
        for path in files:
            X, y = load_adbench(path)
            train, test = novelty_split(y, seed)
            if args.max_train is not None:
                # train is a seeded permutation of the normals: its first
                # rows are a uniform random subset, the same for every model
                train = train[: args.max_train]
            center, scale = X[train].mean(axis=0), X[train].std(axis=0)
            scale[scale < 1e-12] = 1.0
            X_train, X_test = (X[train] - center) / scale, (X[test] - center) / scale
            for name, factory in models(seed, X.shape[1]).items():
                if args.models and name not in args.models:
                    continue
                if (path.stem, seed, name) in done:
                    continue
                model = factory()
                start = time.perf_counter()
                model.fit(X_train)
                fit_s = time.perf_counter() - start
                start = time.perf_counter()
                scores = anomaly_scores(model, X_test)
                score_s = time.perf_counter() - start
                auroc = float(roc_auc_score(y[test], scores))
                record = dict(
                    dataset=path.stem,
                    seed=seed,
                    model=name,
                    auroc=auroc,
                    fit_s=fit_s,
                    score_s=score_s,
                    n_train=len(train),
                    n_test=len(test),
                    load=os.getloadavg()[0],
                )
                with log.open("a") as f:
                    f.write(json.dumps(record) + "\n")
                print(
                    f"seed {seed} {path.stem:16s} {name:17s} AUROC {auroc:.3f} "
                    f"fit {fit_s:6.2f}s score {score_s:6.3f}s",
                    flush=True,
                )


def report(args):
    rows, seen = [], set()
    for log in args.log:  # logs of runs side by side; the first of a repeat counts
        for line in Path(log).read_text().splitlines():
            r = json.loads(line)
            if (key := (r["dataset"], r["seed"], r["model"])) not in seen:
                seen.add(key)
                rows.append(r)
    names = list(dict.fromkeys(r["model"] for r in rows))
    datasets = sorted(dict.fromkeys(r["dataset"] for r in rows))
    seeds = sorted({r["seed"] for r in rows})

    def cell(model, sets, key="auroc", how=np.mean):
        sel = [r[key] for r in rows if r["model"] == model and r["dataset"] in sets]
        return how(sel) if sel else float("nan")

    def complete(model, sets):
        return len([r for r in rows if r["model"] == model and r["dataset"] in sets])

    tuning = [d for d in datasets if d in TUNING_SETS]
    held_out = [d for d in datasets if d not in TUNING_SETS]
    lines = [
        f"AUROC, mean over seeds {seeds}; (n) = runs where fewer than all",
        "",
        "| dataset | " + " | ".join(names) + " |",
        "|---" * (len(names) + 1) + "|",
    ]
    for group, sets in (("tuning", tuning), ("held out", held_out)):
        if not sets:
            continue
        for dataset in sets:
            cells = []
            for model in names:
                n = complete(model, [dataset])
                text = f"{cell(model, [dataset]):.3f}"
                cells.append(text if n == len(seeds) else f"{text} ({n})")
            lines.append(f"| {dataset} | " + " | ".join(cells) + " |")
        means = []
        for model in names:
            n = complete(model, sets)
            text = f"**{cell(model, sets):.3f}**"
            means.append(text if n == len(seeds) * len(sets) else f"{text} ({n})")
        lines.append(
            f"| **mean, {group} ({len(sets)} sets)** | " + " | ".join(means) + " |"
        )
    means = [f"**{cell(model, datasets):.3f}**" for model in names]
    lines.append(f"| **mean, all ({len(datasets)})** | " + " | ".join(means) + " |")
    fit = [f"{cell(m, datasets, 'fit_s', np.sum):.0f}" for m in names]
    score = [f"{cell(m, datasets, 'score_s', np.sum):.1f}" for m in names]
    lines.append("| fit seconds, total | " + " | ".join(fit) + " |")
    lines.append("| score seconds, total | " + " | ".join(score) + " |")
    print("\n".join(lines))


def _peak_mib():
    """The process's peak resident memory so far, MiB (Linux: KiB units)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def fit_time(args):
    """Fit on ``rows`` x ``features`` Gaussian rows, score ``score_rows`` new ones.

    Prints seconds and the peak resident memory after making the data, after
    the fit and after scoring. The peak only grows, so run one variant per
    process (``--variants``) to read each one's memory.
    """
    from skanomaly import DTE

    rng = np.random.default_rng(0)
    X = rng.normal(size=(args.rows, args.features))
    X_score = rng.normal(size=(args.score_rows, args.features))
    data_mib = _peak_mib()
    for variant in args.variants:
        start = time.perf_counter()
        detector = DTE(variant=variant, random_state=0).fit(X)
        fit_s = time.perf_counter() - start
        fit_mib = _peak_mib()
        start = time.perf_counter()
        scores = detector.score_samples(X_score)
        score_s = time.perf_counter() - start
        score_mib = _peak_mib()
        extra = ""
        if hasattr(detector, "n_epochs_"):
            extra = (
                f", {detector.n_epochs_} epochs of batches of {detector.batch_size_}"
            )
        print(
            f"DTE {variant}: fit on {args.rows} x {args.features} in "
            f"{fit_s:.1f}s{extra}; scoring {args.score_rows} rows {score_s:.2f}s "
            f"({np.isfinite(scores).sum()} finite); peak memory {data_mib:.0f} MiB "
            f"with the data, {fit_mib:.0f} after the fit, {score_mib:.0f} after "
            "scoring",
            flush=True,
        )


def _positive_int(text):
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text}")
    return value


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--threads", type=int, default=1, help="torch intra-op threads (default 1)"
    )
    commands = parser.add_subparsers(dest="command", required=True)
    run_parser = commands.add_parser("run")
    run_parser.add_argument("folder", help="folder of ADBench .npz files")
    run_parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    run_parser.add_argument("--datasets", nargs="*", help="file stems to keep")
    run_parser.add_argument("--models", nargs="*", help="model names to keep")
    run_parser.add_argument("--log", required=True)
    run_parser.add_argument(
        "--max-train",
        type=_positive_int,
        default=None,
        help="keep at most this many training rows per set (default: all)",
    )
    report_parser = commands.add_parser("report")
    report_parser.add_argument("--log", required=True, nargs="+")
    time_parser = commands.add_parser("fit-time")
    time_parser.add_argument("--rows", type=int, default=100_000)
    time_parser.add_argument("--features", type=int, default=50)
    time_parser.add_argument("--score-rows", type=int, default=100_000)
    time_parser.add_argument(
        "--variants", nargs="+", default=["nonparametric", "categorical"]
    )
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    {"run": run, "report": report, "fit-time": fit_time}[args.command](args)


if __name__ == "__main__":
    main()
