"""MNIST, one digit anomalous: skanomaly's four GANs next to anomalib's GANomaly.

Protocol (GANomaly's: one digit is the anomaly, the nine others are normal):
``benchmarks._data.mnist_one_anomalous_digit`` reads the MNIST test set,
puts a fixed 80% of the normal images (seed 0) in training and the other
normals plus every image of the anomalous digit in the test set, and pads
the 28x28 digits to 32x32. Then, so that everything runs in the time
budget of a shared 2-core machine, a fixed random subset of ``--max-train``
training images and a stratified subset of ``--max-test`` test images are
kept (AnoGAN, whose scoring searches a latent code per image, scores a
stratified subset of ``--anogan-max-test`` of those with
``--anogan-steps`` search steps; its fit, which scores the training set
only to set the threshold ``offset_`` that AUROC ignores, runs with 0
search steps).

Every model gets the same images, epochs and batch size; architectures and
learning rates are each model's defaults (GANomaly: latent 100, 64 base
channels, Adam 2e-4, beta1 0.5, the authors' and anomalib's). The pixels
are mapped to [-1, 1] for anomalib (its runner's contract) and by our
detectors themselves (training range to [-1, 1]: the same map on MNIST).

anomalib runs in its own virtualenv through ``benchmarks/anomalib_ganomaly.py``
(``--channels 1``: the same one-channel GANomaly network as ours; see that
script), as a subprocess, on the same arrays written to a temporary folder.
If the virtualenv or the script is missing, a note is printed and the rest
runs.

Throughput, side by side: the machine is shared, so its load drifts over
minutes; anomalib's GANomaly and ours therefore train *at the same time*,
one torch thread each (``--side-by-side-threads``), so both see the same
load, and their ratio is what to read. Throughput is training images per
second of the training loop alone, ``epochs * n_train / seconds``: from
``on_train_begin`` to ``on_train_end`` for ours (the fit's threshold
scoring is left out) and anomalib's ``on_train_start``-``on_train_end``.
Whichever finishes first leaves the other a less loaded machine, which
favours the slower one. Skip-GANomaly, EGBAD and AnoGAN then run one after
the other with ``--threads`` threads; their images/s are not comparable
with the side-by-side pair. CPU seconds are reported too: ours for the
training loop, anomalib's for its whole process (imports and scoring
included, an upper bound). AUROC uses the anomaly scores, higher = more
anomalous (``-score_samples``).

Run::

    python benchmarks/mnist_gans.py /work/shared/data/mnist --digits 0 \
        --epochs 3 --max-train 4000 --max-test 1000 --anogan-steps 100 \
        --anogan-max-test 300 --out benchmarks/RESULTS_mnist_gans.md
"""

import argparse
import json
import os
import platform
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from sklearn.metrics import roc_auc_score
from skorch.callbacks import Callback

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks._data import mnist_one_anomalous_digit  # noqa: E402

HERE = Path(__file__).resolve().parent
ANOMALIB_RUNNER = HERE / "anomalib_ganomaly.py"
DETECTORS = ("GANomaly", "SkipGANomaly", "EGBAD", "AnoGAN")


def stratified_subset(y, n, seed):
    """Indices of at most ``n`` samples keeping the proportion of each label."""
    if n is None or n >= len(y):
        return np.arange(len(y))
    rng = np.random.default_rng(seed)
    keep = []
    for label in np.unique(y):
        members = np.flatnonzero(y == label)
        k = max(1, round(n * members.size / len(y)))
        keep.append(rng.choice(members, size=min(k, members.size), replace=False))
    return np.sort(np.concatenate(keep))


def start_anomalib(python, X_train, X_test, y_test, args, threads):
    """Start anomalib's GANomaly in its own venv; a handle, or None with a note."""
    if not Path(python).exists() or not ANOMALIB_RUNNER.exists():
        print(
            f"note: anomalib is not run: {python} or {ANOMALIB_RUNNER} is missing "
            "(see benchmarks/anomalib_ganomaly.py for the set-up)."
        )
        return None
    tmp = Path(tempfile.mkdtemp(prefix="mnist_gans_"))
    to_unit = lambda X: (X.astype(np.float32) / 255.0) * 2 - 1  # noqa: E731
    np.save(tmp / "train.npy", to_unit(X_train))
    np.save(tmp / "test.npy", to_unit(X_test))
    np.save(tmp / "labels.npy", y_test.astype(np.int64))
    command = [
        str(python),
        str(ANOMALIB_RUNNER),
        "--train", str(tmp / "train.npy"),
        "--test", str(tmp / "test.npy"),
        "--test-labels", str(tmp / "labels.npy"),
        "--epochs", str(args.epochs),
        "--batch-size", str(args.batch_size),
        "--channels", "1",
        "--threads", str(threads),
        "--seed", str(args.seed),
        "--out", str(tmp / "result.json"),
    ]  # fmt: skip
    cpu_before = _children_cpu()
    process = subprocess.Popen(
        command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    return process, tmp, cpu_before, time.perf_counter()


def finish_anomalib(handle):
    """Wait for anomalib; its result dict, or None with a note."""
    if handle is None:
        return None
    process, tmp, cpu_before, started = handle
    _, stderr = process.communicate()
    wall = time.perf_counter() - started
    try:
        if process.returncode != 0:
            print(f"note: anomalib failed (exit {process.returncode}):")
            print(stderr[-3000:])
            return None
        result = json.loads((tmp / "result.json").read_text())
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    result["wall_seconds"] = wall
    result["process_cpu_seconds"] = _children_cpu() - cpu_before
    return result


def _children_cpu():
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


class TrainClock(Callback):
    """Wall and CPU time of skorch's training loop."""

    def on_train_begin(self, net, **kwargs):
        self.wall_, self.cpu_ = time.perf_counter(), time.process_time()

    def on_train_end(self, net, **kwargs):
        self.wall_ = time.perf_counter() - self.wall_
        self.cpu_ = time.process_time() - self.cpu_


def make_detector(name, args, clock):
    import skanomaly

    try:
        cls = getattr(skanomaly, name)
    except (ImportError, AttributeError) as exc:
        print(f"note: {name} is not available ({exc.__class__.__name__}: {exc}).")
        return None
    params = dict(
        max_epochs=args.epochs,
        batch_size=args.batch_size,
        random_state=args.seed,
        callbacks=[clock],
    )
    if name == "AnoGAN":
        # fit() scores the training set to set the threshold offset_, which
        # AUROC does not use: no latent search there (0 steps), then
        # --anogan-steps for the test scores (see run_ours)
        params["search_steps"] = 0
    if name == "EGBAD" and args.egbad_lr is not None:
        params["lr"] = args.egbad_lr
    return cls(**params)


def run_ours(name, X_train, X_test, y_test, args):
    clock = TrainClock()
    det = make_detector(name, args, clock)
    if det is None:
        return None
    started = time.perf_counter()
    det.fit(X_train)
    fit_seconds = time.perf_counter() - started
    if name == "AnoGAN":
        det.set_params(search_steps=args.anogan_steps)
        keep = stratified_subset(y_test, args.anogan_max_test, args.seed)
        X_test, y_test = X_test[keep], y_test[keep]
    started = time.perf_counter()
    scores = -det.score_samples(X_test)
    score_seconds = time.perf_counter() - started
    history = det.net_.history
    return {
        "auroc": float(roc_auc_score(y_test, scores)),
        "train_seconds": clock.wall_,
        "train_cpu_seconds": clock.cpu_,
        "images_per_s": args.epochs * len(X_train) / clock.wall_,
        "fit_seconds": fit_seconds,
        "score_seconds": score_seconds,
        "n_train": len(X_train),
        "n_test": len(X_test),
        "last_losses": (history[-1, "train_loss"], history[-1, "train_loss_d"]),
        "threads": torch.get_num_threads(),
    }


def machine_line(args):
    return (
        f"{platform.machine()} CPU, {os.cpu_count()} cores "
        f"({len(os.sched_getaffinity(0))} usable), shared with other jobs; "
        f"torch {torch.__version__}; Python {platform.python_version()}"
    )


def run_digit(digit, args):
    X_train, X_test, y_test = mnist_one_anomalous_digit(args.mnist, digit)
    rng = np.random.default_rng(args.seed)
    if args.max_train < len(X_train):
        X_train = X_train[np.sort(rng.choice(len(X_train), args.max_train, False))]
    keep = stratified_subset(y_test, args.max_test, args.seed)
    X_test, y_test = X_test[keep], y_test[keep]
    print(
        f"digit {digit}: {len(X_train)} training images, {len(X_test)} test "
        f"images ({int(y_test.sum())} anomalous)",
        flush=True,
    )
    rows = {}
    # side by side: anomalib's GANomaly and ours train at the same time
    threads = args.side_by_side_threads
    handle = None
    if args.anomalib_python:
        handle = start_anomalib(
            args.anomalib_python, X_train, X_test, y_test, args, threads
        )
    if "GANomaly" in args.detectors:
        torch.set_num_threads(threads)
        rows["GANomaly"] = run_ours("GANomaly", X_train, X_test, y_test, args)
        print("GANomaly", rows["GANomaly"], flush=True)
    if args.anomalib_python:
        rows = {"anomalib GANomaly": finish_anomalib(handle), **rows}
        print("anomalib", rows["anomalib GANomaly"], flush=True)
    torch.set_num_threads(args.threads)
    for name in args.detectors:
        if name != "GANomaly":
            rows[name] = run_ours(name, X_train, X_test, y_test, args)
            print(name, rows[name], flush=True)
    return rows


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("mnist", help="folder with t10k-images/labels-idx*-ubyte.gz")
    parser.add_argument("--digits", type=int, nargs="+", default=[0])
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--max-train", type=int, default=4000)
    parser.add_argument("--max-test", type=int, default=1000)
    parser.add_argument("--anogan-steps", type=int, default=100)
    parser.add_argument("--anogan-max-test", type=int, default=300)
    parser.add_argument("--detectors", nargs="+", default=list(DETECTORS))
    parser.add_argument(
        "--egbad-lr",
        type=float,
        default=None,
        help="EGBAD's learning rate (default: its own, the authors' 1e-5, which "
        "needs far more steps than a short run gives)",
    )
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--threads", type=int, default=len(os.sched_getaffinity(0)),
        help="torch threads for the models that run alone",
    )  # fmt: skip
    parser.add_argument(
        "--side-by-side-threads", type=int, default=1,
        help="torch threads of each of anomalib's GANomaly and ours",
    )  # fmt: skip
    parser.add_argument(
        "--anomalib-python", default="/work/venv-bench/bin/python",
        help="python of the virtualenv with anomalib ('' to skip anomalib)",
    )  # fmt: skip
    parser.add_argument("--out", help="write the Markdown tables here")
    args = parser.parse_args()

    started = time.perf_counter()
    load_before = os.getloadavg()[0]
    sections = [(digit, run_digit(digit, args)) for digit in args.digits]
    total = time.perf_counter() - started
    report = format_report(sections, args, total, load_before, os.getloadavg()[0])
    print(report)
    if args.out:
        Path(args.out).write_text(report)


def format_report(sections, args, total, load_before, load_after):
    lines = [
        "# MNIST, one digit anomalous: skanomaly's GANs and anomalib's GANomaly",
        "",
        f"Machine: {machine_line(args)}. Load average {load_before:.1f} at the "
        f"start and {load_after:.1f} at the end; the whole run took "
        f"{total / 60:.1f} minutes.",
        "",
        "```",
        "python benchmarks/mnist_gans.py " + " ".join(sys.argv[1:]),
        "```",
        "",
        f"Epochs {args.epochs}, batch size {args.batch_size}, seed {args.seed}; "
        f"AnoGAN scores with {args.anogan_steps} latent-search steps on at most "
        f"{args.anogan_max_test} test images. AUROC on the anomaly scores; "
        "images/s = epochs x training images / seconds of the training loop. "
        f"anomalib's GANomaly and ours train side by side, "
        f"{args.side_by_side_threads} torch thread(s) each (the ratio is "
        f"theirs); the others run alone with {args.threads} threads.",
        "",
    ]
    for digit, rows in sections:
        reference = rows.get("anomalib GANomaly")
        lines += [
            f"## Anomalous digit {digit}",
            "",
            "| model | AUROC | train images/s | vs anomalib (side by side) "
            "| train s | train CPU s | score s | train / test images |",
            "|---|---|---|---|---|---|---|---|",
        ]
        for name, row in rows.items():
            if row is None:
                lines.append(f"| {name} | not available | | | | | | |")
                continue
            if name == "anomalib GANomaly":
                ratio = "1.00x"
                cpu = f"{row['process_cpu_seconds']:.0f} (whole process)"
            else:
                cpu = f"{row['train_cpu_seconds']:.0f}"
                ratio = (
                    f"**{row['images_per_s'] / reference['images_per_s']:.2f}x**"
                    if reference and name == "GANomaly"
                    else "(ran alone)"
                )
            lines.append(
                f"| {name} | {row['auroc']:.3f} | {row['images_per_s']:.1f} | "
                f"{ratio} | {row['train_seconds']:.0f} | {cpu} | "
                f"{row['score_seconds']:.1f} | {row['n_train']} / {row['n_test']} |"
            )
        lines.append("")
    return "\n".join(lines)


if __name__ == "__main__":
    main()
