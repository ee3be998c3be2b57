"""PaDiM and DeepMahalanobis: scoring time against a bare feature pass (issue 24).

Issue 24, item 1 asks the per-position work of PaDiM (and any other scoring
after the backbone) to cost at most the backbone: ``score_samples`` <= 2x a
bare pass of the same feature stage over the same images. On the DeepPCB
tiles of ``benchmarks/inspection_speed.py`` (native 256 px crops), each
detector is fitted at its defaults (``image_size=256``, ``random_state=0``)
on ``--train`` template tiles; then, interleaved, ``--rounds`` times in one
process on one torch thread, for each backbone runtime ('torch',
'onnxruntime'):

- ``features``: a bare pass of a feature stage built with the detector's
  feature-stage parameters (its own instance, fitted apart);
- ``score_samples`` of the fitted detector.

Median seconds, their ratio, images/s and the image AUROC per runtime::

    OMP_NUM_THREADS=1 python benchmarks/gaussian_throughput.py \\
        --pcb /path/to/DeepPCB/PCBData --train 300
"""

import argparse
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))


def _bare_features(detector, train):
    stage = detector.feature_extractor_
    return type(stage)(**stage.get_params()).fit(train[:8])


def main():
    from sklearn.metrics import roc_auc_score

    import skanomaly
    from benchmarks.inspection_speed import TILE, load_tiles

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pcb", required=True)
    parser.add_argument("--train", type=int, default=300)
    parser.add_argument("--test-pairs", type=int, default=32)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--detectors", nargs="+", default=["PaDiM", "DeepMahalanobis"])
    args = parser.parse_args()
    torch.set_num_threads(1)
    train, test, y_test, _ = load_tiles(args.pcb, args.train, args.test_pairs, 0)
    print(
        f"{len(train)} training tiles, {len(test)} test tiles of {TILE} px, "
        f"1 thread, median of {args.rounds}",
        flush=True,
    )
    print("| detector | runtime | features s | score_samples s | ratio | images/s "
          "| image AUROC |")  # fmt: skip
    print("|---|---|---|---|---|---|---|")
    for name in args.detectors:
        detector = getattr(skanomaly, name)(image_size=TILE, random_state=0)
        start = time.perf_counter()
        detector.fit(train)
        fit_s = time.perf_counter() - start
        bare = _bare_features(detector, train)
        times, aurocs = {}, {}
        for _ in range(args.rounds):
            for runtime in ("torch", "onnxruntime"):
                detector.feature_extractor_.runtime = runtime
                bare.runtime = runtime
                detector.score_samples(test[:2])  # the export, once
                bare.transform(test[:2])
                start = time.perf_counter()
                bare.transform(test)
                features_s = time.perf_counter() - start
                start = time.perf_counter()
                scores = detector.score_samples(test)
                score_s = time.perf_counter() - start
                times.setdefault(runtime, []).append((features_s, score_s))
                aurocs[runtime] = roc_auc_score(y_test, -scores)
        for runtime, values in times.items():
            features_s = statistics.median(v[0] for v in values)
            score_s = statistics.median(v[1] for v in values)
            print(
                f"| {name} (fit {fit_s:.0f} s) | {runtime} | {features_s:.2f} | "
                f"{score_s:.2f} | {score_s / features_s:.2f}x | "
                f"{len(test) / score_s:.1f} | {aurocs[runtime]:.4f} |",
                flush=True,
            )


if __name__ == "__main__":
    np.seterr(all="ignore")
    main()
