"""PatchCore images/s at 256 px: search ('exact', 'faiss') x backbone runtime.

Issue 24's target: PatchCore scoring >= 15 images/s on one thread with a
bank from ~760 DeepPCB tiles. Two models are fitted on the same tiles (the
tiles of ``benchmarks/inspection_speed.py``), ``search='exact'`` and
``search='faiss'``; each is then scored with its feature stage on torch and
on ONNX Runtime (``runtime`` is read at scoring time; the features agree
within 1e-4, tests/test_runtime.py), interleaved, median of ``--rounds``.

Run::

    OMP_NUM_THREADS=1 python benchmarks/patchcore_throughput.py \\
        --pcb /path/to/DeepPCB/PCBData --train 760
"""

import argparse
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))


def main():
    from benchmarks.inspection_speed import TILE, load_tiles
    from skanomaly import PatchCore

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pcb", required=True)
    parser.add_argument("--train", type=int, default=760)
    parser.add_argument("--test-pairs", type=int, default=32)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    torch.set_num_threads(1)
    train, test, y_test, _ = load_tiles(args.pcb, args.train, args.test_pairs, 0)
    from sklearn.metrics import roc_auc_score

    models = {}
    for search in ("exact", "faiss"):
        start = time.perf_counter()
        models[search] = PatchCore(image_size=TILE, random_state=0, search=search)
        models[search].fit(train)
        print(f"fit {search}: {time.perf_counter() - start:.0f} s", flush=True)
    times = {}
    aurocs = {}
    for _ in range(args.rounds):
        for search, model in models.items():
            for runtime in ("torch", "onnxruntime"):
                model.feature_extractor_.runtime = runtime
                model.score_samples(test[:2])  # the export, once
                start = time.perf_counter()
                scores = model.score_samples(test)
                times.setdefault((search, runtime), []).append(
                    time.perf_counter() - start
                )
                aurocs[search, runtime] = roc_auc_score(y_test, -scores)
    print(
        f"PatchCore, bank from {args.train} tiles of {TILE} px, {len(test)} test "
        f"tiles, 1 thread, median of {args.rounds}"
    )
    print("| search | runtime | images/s | image AUROC |")
    print("|---|---|---|---|")
    for (search, runtime), values in times.items():
        rate = len(test) / statistics.median(values)
        auroc = aurocs[search, runtime]
        print(f"| {search} | {runtime} | {rate:.1f} | {auroc:.4f} |")


if __name__ == "__main__":
    np.seterr(all="ignore")
    main()
