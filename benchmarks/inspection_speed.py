"""PatchCore's scoring time against its backbone on real inspection tiles (issue 24).

Images: DeepPCB (``--pcb``, the repository's ``PCBData`` folder, read by
``benchmarks._data.deeppcb_pairs``; MIT licence), binarised 640 px crops of
printed circuit boards. Every sample is a native 256 x 256 crop (no
resizing). The pairs are shuffled with ``--seed``; the first
``--test-pairs`` pairs give the test set: for each, a crop around a random
defect's centre (offset at random), cut from the defect-free template (a
normal) and from the tested image (an anomaly, its pixel mask the annotated
boxes); the templates of the next pairs give one random crop each for
training (the first 300 of them for a 300-image bank, and so on).

For each training size, PatchCore (default backbone and weights,
``image_size=256``, ``random_state=0``) is fitted, and on the test tiles
these run side by side, interleaved, ``--rounds`` times in one process on one
torch thread (median and fastest seconds reported):

- ``features``: a bare :class:`PatchFeatures` pass with the detector's
  feature-stage parameters (its own instance, fitted apart);
- ``score_samples`` with the exact search of this commit;
- ``score_samples`` with the exact search before it (one (queries x bank)
  distance block per 64 MB, ``|q|^2`` added to every entry, the copy below);
- ``score_samples`` with ``search='faiss'`` (``--faiss``).

The ratio to ``features`` is the issue's target (<= 2). The exact scoring is
broken into backbone (the detector's own feature pass), search (the
nearest-neighbour search of all test patches) and the rest (re-weighting,
transfers). AUROC is ``roc_auc_score`` of ``-score_samples`` on the test
tiles, pixel AUROC of ``anomaly_map`` against the defect boxes. For the faiss
search: recall@1 (share of test patches whose nearest bank row it finds,
ties by distance counted as found) and the AUROCs next to the exact ones.
``--ratios`` refits with other ``coreset_ratio`` values (the exact search)::

    OMP_NUM_THREADS=1 python benchmarks/inspection_speed.py \\
        --pcb /work/data_real/deeppcb/PCBData --sizes 300,760 --faiss \\
        --ratios 0.01,0.05
"""

import argparse
import itertools
import json
import statistics
import sys
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))

TILE = 256


def _crop(path, top, left):
    from PIL import Image

    with Image.open(path) as image:
        cut = image.convert("L").crop((left, top, left + TILE, top + TILE))
        return np.asarray(cut)


def load_tiles(folder, n_train, n_test_pairs, seed):
    """``(train, test, y_test, masks)``: uint8 (N, 1, 256, 256) tiles."""
    from benchmarks._data import deeppcb_pairs

    pairs = deeppcb_pairs(folder)
    rng = np.random.default_rng(seed)
    names = [list(pairs)[i] for i in rng.permutation(len(pairs))]
    if len(names) < n_test_pairs + n_train:
        raise ValueError(f"{len(names)} pairs; asked for {n_test_pairs + n_train}")
    good, bad, masks = [], [], []
    for name in names[:n_test_pairs]:
        template, tested, boxes = pairs[name]
        x1, y1, x2, y2, _ = boxes[rng.integers(len(boxes))]
        centre_y, centre_x = (y1 + y2) // 2, (x1 + x2) // 2
        size = 640
        top = int(np.clip(centre_y - rng.integers(32, TILE - 32), 0, size - TILE))
        left = int(np.clip(centre_x - rng.integers(32, TILE - 32), 0, size - TILE))
        good.append(_crop(template, top, left))
        bad.append(_crop(tested, top, left))
        mask = np.zeros((size, size), bool)
        for bx1, by1, bx2, by2, _ in boxes:
            mask[by1:by2, bx1:bx2] = True
        masks.append(mask[top : top + TILE, left : left + TILE])
    train = []
    for name in names[n_test_pairs : n_test_pairs + n_train]:
        top, left = rng.integers(0, 640 - TILE + 1, 2)
        train.append(_crop(pairs[name][0], int(top), int(left)))
    test = np.stack(good + bad)[:, None]
    masks = np.stack([np.zeros_like(masks[0])] * len(good) + masks)
    y_test = np.r_[np.zeros(len(good)), np.ones(len(bad))].astype(int)
    return np.stack(train)[:, None], test, y_test, masks


def old_nearest_neighbours(
    queries, bank, bank_norms2, k=1, *, query_groups=None, bank_groups=None
):
    """The exact search before this commit (for the 'before' column)."""
    import torch

    from skanomaly.nn.patchcore import nearest_in_bank

    rows = max(1, 64 * 2**20 // (4 * max(1, bank.shape[0])))
    distances, indices = [], []
    for start in range(0, queries.shape[0], rows):
        groups = None
        if query_groups is not None:
            groups = (query_groups[start : start + rows], bank_groups)
        value, index = nearest_in_bank(
            queries[start : start + rows], bank, bank_norms2, k, groups=groups
        )
        distances.append(value)
        indices.append(index)
    return torch.cat(distances), torch.cat(indices)


def _seconds(function):
    start = time.perf_counter()
    out = function()
    return time.perf_counter() - start, out


def _aurocs(detector, test, y_test, masks):
    from sklearn.metrics import roc_auc_score

    image = roc_auc_score(y_test, -detector.score_samples(test))
    maps = detector.anomaly_map(test)
    pixel = roc_auc_score(masks.ravel(), maps.ravel())
    return float(image), float(pixel)


def _fit(train, **params):
    from skanomaly import PatchCore

    detector = PatchCore(image_size=TILE, random_state=0, **params)
    seconds, _ = _seconds(lambda: detector.fit(train))
    return detector, seconds


def _bare_features(detector, train):
    from skanomaly import PatchFeatures

    params = detector.feature_extractor_.get_params()
    return PatchFeatures(**params).fit(train[:8])


def _breakdown(detector, test):
    """Backbone, search and total seconds of the exact scoring, one pass."""
    import torch

    from skanomaly.nn.patchcore import nearest_neighbours

    total, _ = _seconds(lambda: detector.score_samples(test))

    def backbone():
        with torch.inference_mode():
            return [b for _, b in detector.feature_extractor_.patch_batches(test)]

    backbone_s, batches = _seconds(backbone)
    bank = torch.from_numpy(detector.memory_bank_)
    norms2 = bank.square().sum(1)

    def search():
        with torch.inference_mode():
            for batch in batches:
                flat = batch.flatten(2).transpose(1, 2).reshape(-1, batch.shape[1])
                nearest_neighbours(flat, bank, norms2)

    search_s, _ = _seconds(search)
    return {
        "backbone": backbone_s,
        "search": search_s,
        "rest": total - backbone_s - search_s,
        "total": total,
    }


def _fastest_parts(parts):
    """The fastest round of each part (the machine is shared); rest by difference."""
    best = {key: min(one[key] for one in parts) for key in parts[0]}
    best["rest"] = best["total"] - best["backbone"] - best["search"]
    return best


def _recall(detector, faiss_detector, test):
    """Recall@1 of the faiss search against the exact one on the test patches."""
    import torch

    from skanomaly.nn.patchcore import nearest_neighbours

    with torch.inference_mode():
        flat = torch.cat(
            [
                b.flatten(2).transpose(1, 2).reshape(-1, b.shape[1])
                for _, b in detector.feature_extractor_.patch_batches(test)
            ]
        )
    bank = torch.from_numpy(detector.memory_bank_)
    exact, _ = nearest_neighbours(flat, bank, bank.square().sum(1))
    state = faiss_detector._device_state(torch.device("cpu"))
    approx, _ = faiss_detector._search(flat, state)
    found = approx[:, 0] <= exact[:, 0] * (1 + 1e-5) + 1e-6
    return float(found.float().mean()), float((approx - exact).abs().max())


def run_size(n, train, test, y_test, masks, args):
    detector, fit_s = _fit(train[:n])
    bare = _bare_features(detector, train)
    faiss_detector = None
    if args.faiss:
        faiss_detector, faiss_fit_s = _fit(train[:n], search="faiss")
    runs = {"features": [], "exact": [], "exact_before": []}
    runs.update({f"faiss_{p}": [] for p in (args.probes if args.faiss else ())})
    for _ in range(args.rounds):
        runs["features"].append(_seconds(lambda: bare.transform(test))[0])
        runs["exact"].append(_seconds(lambda: detector.score_samples(test))[0])
        # the same fitted detector with the old search (an instance override)
        detector._searcher = lambda: old_nearest_neighbours
        try:
            runs["exact_before"].append(
                _seconds(lambda: detector.score_samples(test))[0]
            )
        finally:
            del detector._searcher
        for probes in args.probes if args.faiss else ():
            faiss_detector.set_params(n_probes=probes)
            runs[f"faiss_{probes}"].append(
                _seconds(lambda: faiss_detector.score_samples(test))[0]
            )
    median = {key: statistics.median(v) for key, v in runs.items() if v}
    fastest = {key: min(v) for key, v in runs.items() if v}
    parts = [_breakdown(detector, test) for _ in range(args.rounds)]
    row = {
        "images": n,
        "bank": len(detector.memory_bank_),
        "fit_s": fit_s,
        "seconds": median,
        "ratio": {
            key: median[key] / median["features"] for key in median if key != "features"
        },
        "fastest": fastest,
        "fastest_ratio": {
            key: fastest[key] / fastest["features"]
            for key in fastest
            if key != "features"
        },
        "breakdown": _fastest_parts(parts),
        "auroc": _aurocs(detector, test, y_test, masks),
    }
    if faiss_detector is not None:
        row["faiss"] = {
            "fit_s": faiss_fit_s,
            "cells": len(faiss_detector.search_centroids_),
        }
        for probes in args.probes:
            faiss_detector.set_params(n_probes=probes)
            recall, worst = _recall(detector, faiss_detector, test)
            row["faiss"][probes] = {
                "recall_at_1": recall,
                "largest_distance_excess": worst,
                "auroc": _aurocs(faiss_detector, test, y_test, masks),
            }
    return row


def run_ratio(n, ratio, train, test, y_test, masks, args):
    detector, fit_s = _fit(train[:n], coreset_ratio=ratio)
    bare = _bare_features(detector, train)
    runs = {"features": [], "exact": []}
    for _ in range(args.rounds):
        runs["features"].append(_seconds(lambda: bare.transform(test))[0])
        runs["exact"].append(_seconds(lambda: detector.score_samples(test))[0])
    median = {key: statistics.median(v) for key, v in runs.items()}
    fastest = {key: min(v) for key, v in runs.items()}
    return {
        "images": n,
        "coreset_ratio": ratio,
        "bank": len(detector.memory_bank_),
        "fit_s": fit_s,
        "seconds": median,
        "ratio": median["exact"] / median["features"],
        "fastest_ratio": fastest["exact"] / fastest["features"],
        "auroc": _aurocs(detector, test, y_test, masks),
    }


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--pcb", required=True, help="DeepPCB's PCBData folder")
    parser.add_argument("--sizes", default="300,760")
    parser.add_argument("--test-pairs", type=int, default=32)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--faiss", action="store_true")
    parser.add_argument(
        "--probes", default="4,8,16,32", help="n_probes of the faiss search"
    )
    parser.add_argument("--ratios", default="", help="e.g. 0.01,0.05")
    parser.add_argument("--ratio-size", type=int, default=760)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", default=None, help="JSON lines file")
    args = parser.parse_args()

    import torch

    torch.set_num_threads(1)
    if args.faiss:
        import faiss

        faiss.omp_set_num_threads(1)
    sizes = [int(s) for s in args.sizes.split(",") if s]
    args.probes = [int(p) for p in args.probes.split(",") if p]
    ratios = [float(r) for r in args.ratios.split(",") if r]
    n_train = max(sizes + ([args.ratio_size] if ratios else []))
    train, test, y_test, masks = load_tiles(
        args.pcb, n_train, args.test_pairs, args.seed
    )
    rows = (run_size(n, train, test, y_test, masks, args) for n in sizes)
    more = (
        run_ratio(args.ratio_size, r, train, test, y_test, masks, args) for r in ratios
    )
    for row in itertools.chain(rows, more):
        line = json.dumps(row)
        print(line, flush=True)
        if args.out:
            with open(args.out, "a") as handle:
                handle.write(line + "\n")


if __name__ == "__main__":
    main()
