"""Thin scratches on large images: PaDiM and PatchCore with and without tiles.

Synthetic woven textures of ``--size`` px (two oriented gratings with a
per-image phase, fine low-passed noise and a slow illumination gradient,
gray, uint8); each defective test image has one straight scratch 1 to 3 px
wide (the width drawn per image) and 3 to 12 % of the image long, 45 gray
levels brighter or darker than the texture around it. Masks are the
scratches' footprints. Each detector runs twice on the same images: as
today (the image resized to the backbone's 224 px) and with
``tile_size=224, tile_overlap=32`` (full resolution, cut into tiles).
Reports image AUROC, pixel AUROC (``skanomaly.metrics.pixel_roc_auc_score``),
fit seconds and seconds per test image for ``score_samples`` and
``anomaly_map`` (each a full backbone pass), on one torch thread::

    python benchmarks/tiling.py --sizes 1024,2048 --train 8 --test 8

``--deeppcb PCBData`` adds real images: DeepPCB's 640 px binarised board
crops (``benchmarks/_data.py``: ``deeppcb_pairs``), trained on
``--pcb-train`` defect-free templates, tested on the templates (good) and
the tested images (3 to 12 annotated defects each; masks are the
annotated boxes) of ``--pcb-test`` other pairs, at their own 640 px
(``--sizes ''`` runs DeepPCB alone).

Nothing is downloaded: the default backbone's weights come with skanomaly.
"""

import argparse
import os
import sys
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))

GRAY_STEP = 45


def textures(rng, n, size):
    """``n`` gray woven textures of ``size`` px, uint8 (n, 1, size, size)."""
    from scipy.ndimage import gaussian_filter

    y, x = np.mgrid[0:size, 0:size].astype(np.float32)
    out = np.empty((n, 1, size, size), np.uint8)
    for i in range(n):
        phase = rng.uniform(0, 2 * np.pi, 2)
        weave = np.sin(2 * np.pi * (x + 0.3 * y) / 9.0 + phase[0])
        weave += np.sin(2 * np.pi * (y - 0.2 * x) / 13.0 + phase[1])
        noise = gaussian_filter(rng.normal(size=(size, size)), 1.2) * 2.5
        slope = rng.uniform(-1, 1, 2) * 15 / size
        light = slope[0] * (x - size / 2) + slope[1] * (y - size / 2)
        image = 128 + 22 * weave + 20 * noise + light
        out[i, 0] = np.clip(image, 0, 255).astype(np.uint8)
    return out


def scratch(rng, size):
    """A straight scratch: its mask (size, size) and its width in px."""
    width = int(rng.integers(1, 4))
    length = rng.uniform(0.03, 0.12) * size
    angle = rng.uniform(0, np.pi)
    direction = np.array([np.sin(angle), np.cos(angle)])
    start = rng.uniform(0.1, 0.9, 2) * size
    end = np.clip(start + length * direction, 0, size - 1)
    y, x = np.mgrid[0:size, 0:size].astype(np.float32)
    # distance of each pixel centre to the segment
    d = end - start
    t = np.clip(((y - start[0]) * d[0] + (x - start[1]) * d[1]) / (d @ d), 0, 1)
    distance = np.hypot(y - start[0] - t * d[0], x - start[1] - t * d[1])
    return distance <= width / 2, width


def dataset(size, n_train, n_test, seed):
    """Training textures, test images (half with a scratch), labels, masks."""
    rng = np.random.default_rng(seed)
    train = textures(rng, n_train, size)
    good = textures(rng, n_test, size)
    bad = textures(rng, n_test, size)
    masks = np.zeros((2 * n_test, size, size), bool)
    widths = []
    for i in range(n_test):
        mask, width = scratch(rng, size)
        sign = rng.choice([-1, 1])
        image = bad[i, 0].astype(np.int16)
        image[mask] += sign * GRAY_STEP
        bad[i, 0] = np.clip(image, 0, 255).astype(np.uint8)
        masks[n_test + i] = mask
        widths.append(width)
    labels = np.r_[np.zeros(n_test, int), np.ones(n_test, int)]
    return train, np.concatenate([good, bad]), labels, masks, widths


def pcb_dataset(folder, n_train, n_test, seed):
    """DeepPCB at 640 px: templates to train, template/tested pairs to test."""
    from PIL import Image

    from benchmarks._data import deeppcb_pairs

    pairs = deeppcb_pairs(folder)
    names = sorted(pairs)
    order = np.random.default_rng(seed).permutation(len(names))
    picked = [names[i] for i in order[: n_train + n_test]]

    def read(path):
        with Image.open(path) as image:
            return np.asarray(image.convert("L"))[None]

    train = np.stack([read(pairs[name][0]) for name in picked[:n_train]])
    tested = picked[n_train:]
    good = [read(pairs[name][0]) for name in tested]
    bad = [read(pairs[name][1]) for name in tested]
    test = np.stack(good + bad)
    masks = np.zeros((len(test), *test.shape[-2:]), bool)
    for i, name in enumerate(tested):
        for x1, y1, x2, y2, _ in pairs[name][2]:
            masks[n_test + i, y1:y2, x1:x2] = True
    labels = np.r_[np.zeros(n_test, int), np.ones(n_test, int)]
    return train, test, labels, masks


METHODS = {
    # tiled PatchCore gets 1% of a 36x (1024 px) larger pool of patches,
    # a bank 3.6x the untiled one's, so that exact search stays affordable
    "padim": ("PaDiM", {}, {}),
    "patchcore": ("PatchCore", {}, {"coreset_ratio": 0.01}),
}


def run(method, tiled, train, test, labels, masks, args):
    from sklearn.metrics import roc_auc_score

    import skanomaly
    from skanomaly.metrics import pixel_roc_auc_score

    name, params, tiled_params = METHODS[method]
    params = dict(params, random_state=0)
    if tiled:
        params.update(tiled_params, tile_size=args.tile, tile_overlap=args.overlap)
    detector = getattr(skanomaly, name)(**params)
    # wall seconds, and CPU seconds of this process (what a contended
    # machine inflates least)
    start, cpu = time.perf_counter(), time.process_time()
    detector.fit(train)
    fit_s = time.perf_counter() - start
    start, cpu = time.perf_counter(), time.process_time()
    scores = -detector.score_samples(test)
    score_s = (time.perf_counter() - start) / len(test)
    score_cpu = (time.process_time() - cpu) / len(test)
    start, cpu = time.perf_counter(), time.process_time()
    maps = detector.anomaly_map(test)
    map_s = (time.perf_counter() - start) / len(test)
    map_cpu = (time.process_time() - cpu) / len(test)
    bad = labels == 1
    # the map's maximum on a defect (3 px of slack for the smoothing)
    from scipy.ndimage import binary_dilation

    found = np.mean(
        [
            binary_dilation(mask, iterations=3)[np.unravel_index(m.argmax(), m.shape)]
            for m, mask in zip(maps[bad], masks[bad], strict=True)
        ]
    )
    return {
        "method": name,
        "tiles": (
            f"{args.tile} px, overlap {args.overlap} "
            f"({detector.feature_extractor_.n_tiles_})"
            if tiled
            else "none (resized to 224)"
        ),
        "image_auroc": roc_auc_score(labels, scores),
        "pixel_auroc": pixel_roc_auc_score(masks, maps),
        "max_on_scratch": found,
        "fit_s": fit_s,
        "score_s": score_s,
        "map_s": map_s,
        "score_cpu": score_cpu,
        "map_cpu": map_cpu,
    }


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--sizes", default="1024", help="image sides, e.g. 1024,2048")
    parser.add_argument("--train", type=int, default=8, help="training images")
    parser.add_argument("--test", type=int, default=8, help="good and bad test images")
    parser.add_argument("--tile", type=int, default=224)
    parser.add_argument("--overlap", type=int, default=32)
    parser.add_argument("--methods", default="padim,patchcore")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--deeppcb", help="DeepPCB's PCBData folder (optional)")
    parser.add_argument("--pcb-train", type=int, default=20)
    parser.add_argument("--pcb-test", type=int, default=10)
    args = parser.parse_args()

    import torch

    torch.set_num_threads(1)
    print(
        f"torch {torch.__version__}, threads {torch.get_num_threads()}, "
        f"OMP_NUM_THREADS={os.environ.get('OMP_NUM_THREADS')}, "
        f"load average {os.getloadavg()[0]:.1f} at start",
        flush=True,
    )
    header = (
        "| images | method | tiles | image AUROC | pixel AUROC | map max on defect "
        "| fit s | score s/img (CPU s) | map s/img (CPU s) |"
    )
    print(header + "\n|" + "---|" * 9, flush=True)
    datasets = []
    for size in [int(s) for s in args.sizes.split(",") if s]:
        *data, widths = dataset(size, args.train, args.test, args.seed)
        datasets.append((f"textures {size} px", data, f"scratch widths {widths}"))
    if args.deeppcb:
        data = pcb_dataset(args.deeppcb, args.pcb_train, args.pcb_test, args.seed)
        datasets.append(("DeepPCB 640 px", data, f"{int(data[3].sum())} defect pixels"))
    for label, (train, test, labels, masks), note in datasets:
        for method in args.methods.split(","):
            for tiled in (False, True):
                r = run(method, tiled, train, test, labels, masks, args)
                print(
                    f"| {label} | {r['method']} | {r['tiles']} | "
                    f"{r['image_auroc']:.3f} | {r['pixel_auroc']:.3f} | "
                    f"{r['max_on_scratch']:.2f} | {r['fit_s']:.1f} | "
                    f"{r['score_s']:.2f} ({r['score_cpu']:.2f}) | "
                    f"{r['map_s']:.2f} ({r['map_cpu']:.2f}) |",
                    flush=True,
                )
        print(f"({label}: {note})", flush=True)
    print(f"load average {os.getloadavg()[0]:.1f} at the end", flush=True)


if __name__ == "__main__":
    main()
