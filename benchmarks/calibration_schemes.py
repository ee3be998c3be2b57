"""Calibration schemes side by side: false alarms on unseen normals and AUROC.

The questions behind ``calibration='auto'``. For the trained networks: hold
out ``calibration_size`` of the normal samples (exact split-conformal, the
model trains on 80%) or cross-fit five folds and refit on all samples (every
sample calibrates and trains, at six fits' cost, but the final model is not
the one that made the calibration scores). For the Gaussians and PatchCore
(``--family pretrained``): their leave-one-out scores against a held-out
split. On scikit-learn's digits, one
class normal, 100 training images, the other classes anomalies, several
seeds: the false-alarm rate on the unseen normals at 0.05 and 0.1 and the
AUROC of both schemes, on the same splits.

Run (one thread, as every timing here)::

    OMP_NUM_THREADS=1 python benchmarks/calibration_schemes.py \\
        --out calibration_schemes.jsonl [--family pretrained --seeds 10]

Results are appended as JSON lines (an interrupted run resumes);
``--summary`` prints the table of ``RESULTS_calibration.md``'s scheme
section from them.
"""

import argparse
import json
import math
import time
import warnings
from pathlib import Path

import numpy as np
from sklearn.datasets import load_digits
from sklearn.metrics import roc_auc_score

LEVELS = (0.05, 0.1)
# classes 0 and 8 were used while choosing the defaults; 5 is held out
TASKS = {0: "tuning", 8: "tuning", 5: "held-out"}
FAMILIES = {
    "trained": (("AutoEncoder", "VAE", "GANomaly"), ("split", 5)),
    "pretrained": (
        ("DeepMahalanobis", "PaDiM", "PatchCore"),
        ("leave-one-out", "split"),
    ),
}
# the pretrained detectors see the 8x8 digits at this size
_IMAGE_SIZE = 64


def _task(normal_class, seed):
    X, y = load_digits(return_X_y=True)
    images = (X.reshape(-1, 1, 8, 8) * (255 / 16)).round().astype(np.uint8)
    rng = np.random.default_rng(seed)
    normal = rng.permutation(np.flatnonzero(y == normal_class))
    anomalies = rng.permutation(np.flatnonzero(y != normal_class))[:200]
    train, held = normal[:100], normal[100:]
    test = np.r_[held, anomalies]
    is_anomaly = np.r_[np.zeros(len(held), bool), np.ones(len(anomalies), bool)]
    return images[train], images[test], is_anomaly


def _run(detector, scheme, normal_class, seed):
    import skanomaly
    from skanomaly.conformal import conformal_threshold

    X_train, X_test, is_anomaly = _task(normal_class, seed)
    cls = getattr(skanomaly, detector)
    det = cls(calibration=scheme, random_state=seed)
    if "image_size" in det.get_params():
        det.set_params(image_size=_IMAGE_SIZE)
    start = time.perf_counter()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        det.fit(X_train)
    fit_s = time.perf_counter() - start
    scores = det.score_samples(X_test)
    row = {
        "detector": detector,
        "scheme": str(scheme),
        "normal_class": normal_class,
        "role": TASKS[normal_class],
        "seed": seed,
        "n_cal": len(det.calibration_scores_),
        "n_test_normal": int((~is_anomaly).sum()),
        "auroc": float(roc_auc_score(is_anomaly, -scores)),
        "fit_s": fit_s,
    }
    for level in LEVELS:
        threshold = conformal_threshold(det.calibration_scores_, level)
        n = len(det.calibration_scores_)
        row[f"fa_{level}"] = float(np.mean(scores[~is_anomaly] < threshold))
        row[f"expected_{level}"] = math.floor((n + 1) * level + 1e-9) / (n + 1)
    return row


def _summary(rows, detectors, schemes):
    lines = [
        "| detector | tasks | scheme | n_cal | mean FA at 0.05 | mean FA at 0.1 "
        "| mean abs(FA - c) at 0.05 / 0.1 | mean AUROC | fit s |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for detector in detectors:
        for role in ("tuning", "held-out"):
            for scheme in map(str, schemes):
                cells = [
                    r
                    for r in rows
                    if r["detector"] == detector
                    and r["scheme"] == scheme
                    and r["role"] == role
                ]
                if not cells:
                    continue

                def mean(key, cells=cells):
                    return np.mean([r[key] for r in cells])

                dev = [np.mean([abs(r[f"fa_{c}"] - c) for r in cells]) for c in LEVELS]
                lines.append(
                    f"| {detector} | {role} ({len(cells)}) | {scheme} "
                    f"| {mean('n_cal'):.0f} | {mean('fa_0.05'):.3f} "
                    f"| {mean('fa_0.1'):.3f} | {dev[0]:.3f} / {dev[1]:.3f} "
                    f"| {mean('auroc'):.4f} | {mean('fit_s'):.1f} |"
                )
    return "\n".join(lines)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("calibration_schemes.jsonl"))
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--summary", action="store_true")
    parser.add_argument("--family", choices=sorted(FAMILIES), default="trained")
    parser.add_argument("--detectors", nargs="+", help="a subset of the family's")
    args = parser.parse_args()
    detectors, schemes = FAMILIES[args.family]
    if args.detectors:
        unknown = set(args.detectors) - set(detectors)
        if unknown:
            parser.error(f"not in --family {args.family}: {sorted(unknown)}")
        detectors = tuple(args.detectors)
    done = []
    if args.out.exists():
        done = [json.loads(line) for line in args.out.read_text().splitlines()]
    if args.summary:
        print(_summary(done, detectors, schemes))
        return
    keys = {(r["detector"], r["scheme"], r["normal_class"], r["seed"]) for r in done}
    for seed in range(args.seeds):
        for normal_class in TASKS:
            for detector in detectors:
                for scheme in schemes:
                    if (detector, str(scheme), normal_class, seed) in keys:
                        continue
                    row = _run(detector, scheme, normal_class, seed)
                    with args.out.open("a") as f:
                        f.write(json.dumps(row) + "\n")
                    print(json.dumps(row), flush=True)
    rows = [json.loads(line) for line in args.out.read_text().splitlines()]
    print(_summary(rows, detectors, schemes))


if __name__ == "__main__":
    main()
