"""Localisation benchmark: skanomaly's PaDiM and PatchCore vs anomalib 2.7's.

The data are real digits with synthetic defects and exact masks
(:func:`benchmarks._data.mnist_defect_mosaics`: 256 x 256 mosaics of 4 x 4
MNIST digits; defects are scratches, stains and foreign patches). Every
method runs in its own process with one torch thread, on the same split,
with the same ``tf_efficientnet_lite0`` weights file and the same input
normalisation; the anomalib peers run in a separate virtualenv
(``benchmarks/anomalib_patch.py``). All metrics are computed here, on the
raw scores and maps, with ``skanomaly.metrics`` and scikit-learn::

    python benchmarks/patch_localisation.py --mnist /work/shared/data/mnist \\
        --anomalib-python /work/venv-anomalib/bin/python \\
        --work /tmp/localisation --results benchmarks/RESULTS_patch_localisation.md

Both sides use skanomaly's packaged ``tf_efficientnet_lite0`` ImageNet
weights (the peer gets them as a state dict file written to ``--work``;
``--weights`` takes another file). Pass ``--methods`` to run a subset
(``ours-padim,anomalib-padim,...``).
"""

import argparse
import json
import os
import platform
import subprocess
import sys
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))

from benchmarks._worker import (  # noqa: E402
    fit_score_maps,
    load_arrays,
    read_result,
    write_result,
)

# name -> (library, what to build); ours are built in _ours below
METHODS = {
    "ours-padim": "PaDiM (default: semi-orthogonal projection to d=100, 0.01 I)",
    "ours-padim-random": "PaDiM (the paper's random subset of d=100, 0.01 I)",
    "ours-padim-ledoit-wolf": "PaDiM (random subset of d=100, Ledoit-Wolf + 0.01 I)",
    "anomalib-padim": "anomalib PaDiM (d=100)",
    "ours-patchcore": "PatchCore (default: 10%, one selection up to 65,536 patches)",
    "ours-patchcore-shards": "PatchCore (10%, shards of 16,384 patches)",
    "ours-patchcore-exact": "PatchCore (10%, one greedy selection)",
    "anomalib-patchcore": "anomalib PatchCore (10%)",
    "ours-patchcore-proj256": "PatchCore (coreset selected on the 152 channels)",
    "ours-padim-pooled": "PaDiM (default, covariance_pooling=0.5)",
    "ours-autoencoder": "AutoEncoder (20 epochs, at 64 px)",
}


def _ours(name, weights, seed):
    from skanomaly import AutoEncoder, PaDiM, PatchCore

    common = dict(weights=weights, image_size=256, random_state=seed)
    if name == "ours-padim":
        return PaDiM(n_channels=100, **common)
    if name == "ours-padim-random":
        return PaDiM(n_channels=100, channel_reduction="random", **common)
    if name == "ours-padim-ledoit-wolf":
        return PaDiM(
            n_channels=100,
            channel_reduction="random",
            covariance="ledoit_wolf",
            **common,
        )
    if name == "ours-patchcore":
        return PatchCore(**common)
    if name == "ours-patchcore-exact":
        return PatchCore(shard_size=None, **common)
    if name == "ours-padim-pooled":
        return PaDiM(n_channels=100, covariance_pooling=0.5, **common)
    if name == "ours-patchcore-proj256":  # no projection below 256 channels
        return PatchCore(projection_dim=256, **common)
    if name == "ours-patchcore-shards":
        return PatchCore(shard_size=16384, **common)
    if name == "ours-autoencoder":
        return AutoEncoder(max_epochs=20, batch_size=16, random_state=seed)
    raise ValueError(name)


def _worker(args):
    import timm  # noqa: F401  (imports are not fit time, as for the peer)
    import torch

    torch.set_num_threads(1)
    train, test = load_arrays(args.data)
    detector = _ours(args.worker, args.weights, args.seed)
    size = test.shape[-2:]
    if args.worker == "ours-autoencoder":
        # the convolutional autoencoder at 256 px is too slow for this CPU:
        # it sees the images at 64 px, its maps are upsampled back
        train, test = _resized(train, 64), _resized(test, 64)

    def back_to_size(maps):
        if maps.shape[-2:] != size:
            maps = _resized(maps[:, None], size[0])[:, 0]
        return maps

    scores, maps, timing = fit_score_maps(detector, train, test, back_to_size)
    write_result(args.out, scores, maps, timing)


def _packaged_weights_file(folder):
    """skanomaly's packaged lite0 weights as a timm state dict, for the peer."""
    import torch

    from skanomaly.weights import create_packaged_model

    path = folder / "tf_efficientnet_lite0.pth"
    model = create_packaged_model("tf_efficientnet_lite0")
    torch.save(model.state_dict(), path)
    return str(path)


def _resized(images, size):
    """uint8 or float images (N, C, H, W) resized bilinearly (antialiased)."""
    import torch
    import torch.nn.functional as F

    x = torch.from_numpy(np.ascontiguousarray(images)).float()
    x = F.interpolate(x, size=(size, size), mode="bilinear", antialias=True)
    if images.dtype == np.uint8:
        return x.round().clamp(0, 255).numpy().astype(np.uint8)
    return x.numpy()


def _run(name, args, data_path):
    out = str(Path(args.work) / f"{name}.npz")
    env = dict(os.environ, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1")
    weights = args.weights
    if name.startswith("anomalib-"):
        program = [args.anomalib_python, str(HERE / "anomalib_patch.py")]
        program.append(name.removeprefix("anomalib-"))
        weights = args.peer_weights
    else:
        program = [sys.executable, __file__, "--worker", name]
    options = ["--data", data_path, "--weights", weights, "--out", out]
    command = [*program, *options, "--seed", str(args.seed)]
    print(f"running {name} ...", flush=True)
    subprocess.run(command, check=True, env=env)
    return read_result(out)


def _metrics(y, masks, scores, maps):
    from sklearn.metrics import roc_auc_score

    from skanomaly.metrics import aupro_score, pixel_roc_auc_score

    return {
        "image_auroc": roc_auc_score(y, scores),
        "pixel_auroc": pixel_roc_auc_score(masks, maps),
        "aupro": aupro_score(masks, maps),
    }


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--mnist", help="folder of the MNIST IDX files")
    parser.add_argument(
        "--weights",
        default=None,
        help="a tf_efficientnet_lite0 state dict (.pth); default: skanomaly's "
        "packaged ImageNet weights (written to --work for the peer)",
    )
    parser.add_argument("--anomalib-python", default=None)
    parser.add_argument("--work", default="/tmp/localisation")
    parser.add_argument("--results", default=None, help="markdown file to write")
    parser.add_argument("--methods", default=",".join(METHODS))
    parser.add_argument("--n-train", type=int, default=100)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--rows",
        nargs="+",
        default=None,
        help="only write the table from the JSON rows earlier runs printed "
        "(files of one row per line)",
    )
    parser.add_argument("--worker", default=None, help=argparse.SUPPRESS)
    parser.add_argument("--data", default=None, help=argparse.SUPPRESS)
    parser.add_argument("--out", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        return _worker(args)
    if args.rows:
        rows = [json.loads(line) for path in args.rows for line in open(path)]
        table = _table(rows, args)
        print(table)
        if args.results:
            Path(args.results).write_text(table)
        return None

    from benchmarks._data import mnist_defect_mosaics

    Path(args.work).mkdir(parents=True, exist_ok=True)
    # ours load the packaged weights themselves; the peer reads them from a file
    args.peer_weights = args.weights or _packaged_weights_file(Path(args.work))
    args.weights = args.weights or "imagenet"
    train, test, y, masks, kinds = mnist_defect_mosaics(
        args.mnist, n_train=args.n_train, seed=args.seed
    )
    data_path = str(Path(args.work) / "data.npz")
    np.savez(data_path, train=train, test=test)
    kinds = np.array(kinds)
    rows = []
    for name in args.methods.split(","):
        scores, maps, timing = _run(name, args, data_path)
        if maps.shape[1:] != masks.shape[1:]:
            raise ValueError(f"{name} gave maps of shape {maps.shape}")
        row = {"method": METHODS[name], **timing, **_metrics(y, masks, scores, maps)}
        for kind in ("scratch", "stain", "patch"):
            keep = (kinds == kind) | (kinds == "good")
            row[f"aupro_{kind}"] = _metrics(
                y[keep], masks[keep], scores[keep], maps[keep]
            )["aupro"]
        rows.append(row)
        print(json.dumps(row), flush=True)
    table = _table(rows, args)
    print(table)
    if args.results:
        Path(args.results).write_text(table)


def _table(rows, args):
    import torch

    lines = [
        "# Localisation: PaDiM and PatchCore vs anomalib 2.7",
        "",
        "Real digits with synthetic defects and exact masks: 256 x 256 mosaics of "
        "4 x 4 MNIST digits (each upscaled to 56 px; training mosaics from the "
        "first half of the MNIST test set, test mosaics from the second half). "
        "100 (or 50) normal training images; the test set has 100 normal "
        "images and 99 with one defect each, a third of each kind: a scratch (a "
        "2 px grey line, 40-100 px long), a stain (an ellipse of radii 10-24 px "
        "where intensities become 0.4 x + 100) and a foreign patch (a 16-40 px "
        "square from another mosaic, turned 90 degrees and inverted). Masks are "
        "the defects' footprints. Backbone `tf_efficientnet_lite0`, the same "
        "weights file and the same normalisation (mean = std = 0.5) on both "
        "sides, at 256 px (no resizing); PaDiM levels blocks.1 + blocks.2 + "
        "blocks.4 (176 channels, 100 kept at random), PatchCore blocks.2 + "
        "blocks.4 (152 channels), 10% coreset, 9 neighbours for the "
        "re-weighting. Metrics on raw scores and maps: image AUROC "
        "(scikit-learn), pixel AUROC and AUPRO (up to FPR 0.3) from "
        "`skanomaly.metrics`; AUPRO per defect kind against the normal images.",
        "",
        "| method | train images | image AUROC | pixel AUROC | AUPRO | AUPRO scratch "
        "| AUPRO stain | AUPRO patch | fit s | fit img/s | score img/s | maps img/s "
        "| peak RSS MB |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(
            f"| {r['method']} | {r['n_train']} | {r['image_auroc']:.4f} "
            f"| {r['pixel_auroc']:.4f} "
            f"| {r['aupro']:.4f} | {r['aupro_scratch']:.3f} | {r['aupro_stain']:.3f} "
            f"| {r['aupro_patch']:.3f} | {r['fit_seconds']:.1f} "
            f"| {r['n_train'] / r['fit_seconds']:.1f} "
            f"| {r['n_test'] / r['score_seconds']:.1f} "
            f"| {r['n_test'] / r['map_seconds']:.1f} | {r['peak_bytes'] / 2**20:,.0f} |"
        )
    lines += [
        "",
        "anomalib computes scores and maps in one pass, so its score and maps "
        "rates are the same number; skanomaly's `score_samples` and "
        "`anomaly_map` are separate passes (each runs the backbone). Peak RSS is "
        "the whole process (data and libraries included).",
        "",
        f"Machine: {platform.processor() or platform.machine()}, 1 torch thread "
        f"per method (OMP_NUM_THREADS=1), shared with other jobs; torch "
        f"{torch.__version__}, seed {args.seed}. Command:",
        "",
        "```bash",
        "python benchmarks/patch_localisation.py --mnist /work/shared/data/mnist \\",
        "    --anomalib-python /work/venv-anomalib/bin/python \\",
        "    --results benchmarks/RESULTS_patch_localisation.md",
        "```",
        "",
    ]
    return "\n".join(lines)


if __name__ == "__main__":
    main()
