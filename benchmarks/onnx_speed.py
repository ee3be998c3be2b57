"""ONNX Runtime against score_samples, export time, and the HTML report's time.

Side by side in one process, one thread each (torch.set_num_threads(1);
ONNX Runtime intra_op_num_threads=1, inter_op_num_threads=1):

- **AutoEncoder, tabular**: fitted (default architecture) on 5,000 rows of
  20 Gaussian features, then 100,000 rows scored by ``score_samples`` (at
  the default ``batch_size=64`` and at 4096) and by the exported graph
  (all rows in one run, and in runs of 4096 rows). Throughput does not
  depend on the values, so the rows are synthetic.
- **DeepMahalanobis, images**: ``backbone='tf_efficientnet_lite0'`` with
  random weights (``weights=None``: speed does not depend on them, and
  nothing is downloaded), fitted on 200 MNIST digits, then ``--n-images``
  MNIST test digits (uint8 28x28, resized to 224 inside) scored by
  ``score_samples`` (``batch_size=32``) and by the graph (in runs of 32, and
  all at once).
- **Export time** of both (``skanomaly.export_onnx``; the first export in a
  process also loads torch's exporter).
- **Report**: an AutoEncoder on MNIST zeros, ``skanomaly.report`` on 1,000
  labelled test digits, with the scores given (the report alone) and
  without (scoring included).

Every time is the minimum over ``--repeats`` runs, the median in brackets.
The largest relative difference between the two sides' scores is printed
too.

Run::

    python benchmarks/onnx_speed.py /work/shared/data/mnist --repeats 5
"""

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks._data import load_mnist  # noqa: E402
from skanomaly import AutoEncoder, DeepMahalanobis, export_onnx, report  # noqa: E402


def timed(fn, repeats):
    """(min seconds, median seconds, last result) of ``repeats`` calls."""
    times, result = [], None
    for _ in range(repeats):
        start = time.perf_counter()
        result = fn()
        times.append(time.perf_counter() - start)
    return min(times), statistics.median(times), result


def session(path):
    import onnxruntime

    options = onnxruntime.SessionOptions()
    options.intra_op_num_threads = 1
    options.inter_op_num_threads = 1
    return onnxruntime.InferenceSession(
        str(path), options, providers=["CPUExecutionProvider"]
    )


def run_graph(sess, X, chunk=None):
    chunk = chunk or len(X)
    return np.concatenate(
        [
            sess.run(None, {"input": X[i : i + chunk]})[0]
            for i in range(0, len(X), chunk)
        ]
    )


def row(what, seconds, n, unit):
    best, median = seconds
    return f"| {what} | {best:.3f} ({median:.3f}) | {n / best:,.0f} {unit}/s |"


def relative_difference(onnx_scores, score_samples):
    return float(
        np.abs(onnx_scores + score_samples).max() / np.abs(score_samples).max()
    )


def bench_tabular(folder, repeats):
    rng = np.random.default_rng(0)
    train = rng.normal(size=(5000, 20))
    X = rng.normal(size=(100_000, 20))
    detector = AutoEncoder(max_epochs=5, random_state=0).fit(train)
    start = time.perf_counter()
    export_onnx(detector, folder / "ae.onnx")
    export_seconds = time.perf_counter() - start
    sess = session(folder / "ae.onnx")
    lines = [
        "| AutoEncoder, 100,000 x 20 rows (float64) | seconds | rows/s |",
        "|---|---|---|",
    ]
    for batch_size in (64, 4096):
        detector.set_params(batch_size=batch_size)
        *seconds, python = timed(lambda: detector.score_samples(X), repeats)
        lines.append(
            row(f"score_samples, batch_size={batch_size}", seconds, len(X), "rows")
        )
    for chunk, label in ((None, "all rows in one run"), (4096, "runs of 4096 rows")):
        *seconds, graph = timed(lambda c=chunk: run_graph(sess, X, c), repeats)
        lines.append(row(f"ONNX Runtime, {label}", seconds, len(X), "rows"))
    lines.append(f"\nmax relative difference: {relative_difference(graph, python):.1e}")
    return lines, export_seconds


def bench_images(mnist, folder, n_images, repeats):
    images, labels = load_mnist(mnist)
    train = images[labels == 0][:200][:, None]
    X = images[-n_images:][:, None]
    detector = DeepMahalanobis(
        "tf_efficientnet_lite0", weights=None, batch_size=32, random_state=0
    ).fit(train)
    start = time.perf_counter()
    export_onnx(detector, folder / "dm.onnx")
    export_seconds = time.perf_counter() - start
    sess = session(folder / "dm.onnx")
    title = f"DeepMahalanobis lite0, {n_images} MNIST images 28x28 -> 224"
    lines = [f"| {title} | seconds | images/s |", "|---|---|---|"]
    *seconds, python = timed(lambda: detector.score_samples(X), repeats)
    lines.append(row("score_samples, batch_size=32", seconds, len(X), "images"))
    for chunk, label in ((32, "runs of 32 images"), (None, "all images in one run")):
        *seconds, graph = timed(lambda c=chunk: run_graph(sess, X, c), repeats)
        lines.append(row(f"ONNX Runtime, {label}", seconds, len(X), "images"))
    lines.append(f"\nmax relative difference: {relative_difference(graph, python):.1e}")
    return lines, export_seconds


def bench_report(mnist, folder, repeats):
    images, labels = load_mnist(mnist)
    zeros = np.flatnonzero(labels == 0)
    detector = AutoEncoder(max_epochs=5, random_state=0).fit(images[zeros[:500]])
    X, y = images[:1000], (labels[:1000] != 0).astype(int)
    names = [f"mnist/{i:05d}.png" for i in range(len(X))]
    scores = detector.score_samples(X)
    path = folder / "report.html"

    def given():
        return report(detector, X, path, y=y, names=names, scores=scores)

    def scored():
        return report(detector, X, path, y=y, names=names)

    report_only = timed(given, repeats)[:2]
    with_scoring = timed(scored, repeats)[:2]
    size = path.stat().st_size / 2**20
    return [
        "| report, AutoEncoder, 1,000 MNIST test images | seconds |",
        "|---|---|",
        "| scores given (the report alone) | {:.2f} ({:.2f}) |".format(*report_only),
        "| scores computed by the report | {:.2f} ({:.2f}) |".format(*with_scoring),
        f"\nfile size: {size:.2f} MiB",
    ]


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("mnist", help="folder with the MNIST test set (IDX .gz files)")
    parser.add_argument("--n-images", type=int, default=128)
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    torch.set_num_threads(1)
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        tabular, tabular_export = bench_tabular(folder, args.repeats)
        images, images_export = bench_images(
            args.mnist, folder, args.n_images, max(1, args.repeats // 2)
        )
        reports = bench_report(args.mnist, folder, args.repeats)
    print("\n".join(tabular), end="\n\n")
    print("\n".join(images), end="\n\n")
    print("| export_onnx | seconds |\n|---|---|")
    print(
        f"| AutoEncoder, tabular (first export in the process) | {tabular_export:.1f} |"
    )
    print(
        f"| DeepMahalanobis, tf_efficientnet_lite0 | {images_export:.1f} |", end="\n\n"
    )
    print("\n".join(reports))


if __name__ == "__main__":
    main()
