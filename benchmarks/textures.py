"""Localisation on real textures: skanomaly's PaDiM and PatchCore vs anomalib 2.7's.

The data are real photographs of textures with synthetic defects and exact
masks: scikit-image's bundled ``brick.png``, ``gravel.png`` and ``grass.png``
(512 x 512 grayscale; the photos are CC0 per their docstrings in
``skimage/data/_fetchers.py``, scikit-image itself BSD-3). Pass the folder
that holds them (``skimage/data`` of any scikit-image install); no image is
copied into the repository. Per texture:

- training crops come from the top half of the photo (rows 0-255), test
  crops from the bottom half (rows 256-511), so no test pixel was seen in
  training; crops are 128 x 128 px at random offsets, upsampled to 256 x 256
  (bilinear) for both libraries (the same uint8 arrays);
- half of the test crops get one defect, made at the crop's own resolution
  before upsampling (masks upsampled with nearest neighbours, so they are
  the exact footprint): a *cut* (a dark 1 px line, 15-45 px long, ``0.35 x``),
  a *stain* (:func:`benchmarks._data._stain`: an ellipse of radii 10-24 px
  where intensities become ``0.4 x + 100``) or a *foreign* patch (an 8-24 px
  square cut from another of the textures).

``grass`` is held out: it was not looked at while choosing any default and
is reported apart. Every method runs in its own process with one torch
thread; the anomalib peers run ``benchmarks/anomalib_patch.py`` in their own
virtualenv with the same ``tf_efficientnet_lite0`` weights and normalisation
(see ``benchmarks/patch_localisation.py``). Metrics (image AUROC, pixel
AUROC, AUPRO up to FPR 0.3) are computed here on the raw scores and maps::

    SKIMAGE_DATA=/work/venv-anomalib-flows/lib/python3.11/site-packages/skimage/data
    python benchmarks/textures.py --textures $SKIMAGE_DATA \\
        --anomalib-python /work/venv-anomalib-flows/bin/python \\
        --work /tmp/textures --results benchmarks/RESULTS_textures.md

``--methods`` picks methods (see ``METHODS``; the ``diag-*`` ones are
diagnostic variants of ours), ``--texture-names`` the textures.
"""

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))

from benchmarks._data import _stain, random_line  # noqa: E402
from benchmarks._worker import (  # noqa: E402
    fit_score_maps,
    load_arrays,
    read_result,
    write_result,
)
from benchmarks.patch_localisation import (  # noqa: E402
    _metrics,
    _packaged_weights_file,
    _resized,
)

TEXTURES = ("brick", "gravel", "grass")
HELD_OUT = ("grass",)
CROP = 128
SIZE = 256
KINDS = ("cut", "stain", "foreign")

# name -> (description, detector, keyword arguments, diagnostic patch)
METHODS = {
    "ours-padim": ("skanomaly PaDiM (default)", "padim", {}, None),
    "anomalib-padim": ("anomalib PaDiM (d=100, random subset)", None, {}, None),
    "ours-patchcore": ("skanomaly PatchCore (default)", "patchcore", {}, None),
    "anomalib-patchcore": ("anomalib PatchCore (10%)", None, {}, None),
    # diagnostic variants of ours (step 2 of issue 24 item 6)
    "diag-padim-random": (
        "PaDiM, channel_reduction='random' (anomalib's subset)",
        "padim",
        {"channel_reduction": "random"},
        None,
    ),
    "diag-padim-nearest": (
        "PaDiM, deeper levels upsampled by nearest neighbours (anomalib's)",
        "padim",
        {},
        "nearest-levels",
    ),
    "diag-padim-random-nearest": (
        "PaDiM, random subset + nearest levels (anomalib's pipeline)",
        "padim",
        {"channel_reduction": "random"},
        "nearest-levels",
    ),
    "diag-patchcore-nearest-map": (
        "PatchCore, patch scores upsampled by nearest neighbours (anomalib's)",
        "patchcore",
        {},
        "nearest-map",
    ),
    "diag-padim-standardized": (
        "PaDiM, image_score='standardized'",
        "padim",
        {"image_score": "standardized"},
        None,
    ),
    "diag-padim-random-standardized": (
        "PaDiM, channel_reduction='random', image_score='standardized'",
        "padim",
        {"channel_reduction": "random", "image_score": "standardized"},
        None,
    ),
    "diag-padim-nearest-map": (
        "PaDiM, distances upsampled by nearest neighbours",
        "padim",
        {},
        "nearest-map",
    ),
}


def _one_parameter(detector, **params):
    """A ``METHODS`` entry: our detector at its defaults but ``params``."""
    name = "PaDiM" if detector == "padim" else "PatchCore"
    shown = ", ".join(
        f"{key}={value:g}" if isinstance(value, float) else f"{key}={value!r}"
        for key, value in params.items()
    )
    return f"{name}, {shown}", detector, params, None


METHODS.update(
    {
        # the ridge and the shrinkage: what decides the distances in the
        # directions that few training patches span (see "Why PaDiM fails
        # on stochastic textures")
        **{
            f"diag-padim-reg{reg:g}": _one_parameter("padim", reg_covar=reg)
            for reg in (0.1, 1.0, 10.0)
        },
        "diag-padim-ledoit-wolf": _one_parameter("padim", covariance="ledoit_wolf"),
        # d below the number of training images: full-rank covariances, so
        # the ridge no longer decides the unspanned directions (40 images)
        "diag-padim-d39": _one_parameter("padim", n_channels=39),
        # each position's covariance blended with the mean over positions
        # (the first rows of RESULTS_textures.md came from a monkeypatch of
        # the same formula, before it was the library's option)
        **{
            f"diag-padim-pooled{w:g}": _one_parameter("padim", covariance_pooling=w)
            for w in (0.0, 0.5, 0.9)
        },
        # the coreset selected on all 152 channels (no projection below 256),
        # as anomalib's 239-dimensional projection nearly does
        "diag-patchcore-proj256": _one_parameter("patchcore", projection_dim=256),
    }
)
for _sigma in (0, 2, 8):
    for _det in ("padim", "patchcore"):
        METHODS[f"diag-{_det}-sigma{_sigma}"] = (
            f"{'PaDiM' if _det == 'padim' else 'PatchCore'}, sigma={_sigma}",
            _det,
            {"sigma": float(_sigma)},
            None,
        )


# ------------------------------------------------------------------ data


def _read_texture(folder, name):
    from torchvision.io import ImageReadMode, read_image

    image = read_image(str(Path(folder) / f"{name}.png"), mode=ImageReadMode.GRAY)
    return image[0].numpy()


def _crop(photo, rows, rng):
    """A CROP x CROP crop at a random offset inside ``photo[rows]``."""
    top = int(rng.integers(rows.start, rows.stop - CROP + 1))
    left = int(rng.integers(0, photo.shape[1] - CROP + 1))
    return photo[top : top + CROP, left : left + CROP].copy()


def _cut(image, rng):
    """A dark 1 px line, 15-45 px long, at any angle: intensities ``0.35 x``."""
    mask = random_line(image.shape, rng, (15, 45), margin=12)
    image[mask] = np.round(0.35 * image[mask]).astype(np.uint8)
    return mask


def _foreign(image, rng, donor):
    """An 8-24 px square of another texture (``donor``, same resolution)."""
    size = image.shape[0]
    side = int(rng.integers(8, 25))
    y, x = rng.integers(0, size - side, 2)
    sy, sx = rng.integers(0, donor.shape[0] - side, 2)
    image[y : y + side, x : x + side] = donor[sy : sy + side, sx : sx + side]
    mask = np.zeros(image.shape, bool)
    mask[y : y + side, x : x + side] = True
    return mask


def texture_data(folder, name, n_train=40, n_test_good=60, n_test_bad=60, seed=0):
    """Training and test crops of one texture, with defects and masks.

    Returns train uint8 (n_train, 1, SIZE, SIZE), test uint8 (n_test, 1,
    SIZE, SIZE), y (n_test,), masks bool (n_test, SIZE, SIZE), kinds.
    """
    photo = _read_texture(folder, name)
    donors = [_read_texture(folder, other) for other in TEXTURES if other != name]
    # one stream per texture, whatever the order textures are run in
    rng = np.random.default_rng([seed, TEXTURES.index(name)])
    half = photo.shape[0] // 2
    train = np.stack([_crop(photo, range(0, half), rng) for _ in range(n_train)])
    test, masks, kinds = [], [], []
    for i in range(n_test_good + n_test_bad):
        image = _crop(photo, range(half, photo.shape[0]), rng)
        mask = np.zeros(image.shape, bool)
        kind = "good"
        if i >= n_test_good:
            kind = KINDS[(i - n_test_good) % len(KINDS)]
            if kind == "cut":
                mask = _cut(image, rng)
            elif kind == "stain":
                mask = _stain(image, rng)
            else:
                donor = donors[int(rng.integers(len(donors)))]
                mask = _foreign(image, rng, _crop(donor, range(0, 512), rng))
        test.append(image)
        masks.append(mask)
        kinds.append(kind)
    factor = SIZE // CROP
    train = _resized(train[:, None], SIZE)
    test = _resized(np.stack(test)[:, None], SIZE)
    masks = np.stack(masks).repeat(factor, axis=1).repeat(factor, axis=2)
    y = np.array([kind != "good" for kind in kinds], dtype=np.int64)
    return train, test, y, masks, kinds


# ------------------------------------------------------------------ ours


def _patch(kind):
    """Diagnostic changes to our pipeline, to isolate anomalib's choices."""
    import torch.nn.functional as F

    from skanomaly.nn import backbones, maps

    if kind == "nearest-levels":
        interpolate = F.interpolate

        def nearest(x, size=None, mode="nearest", align_corners=None, **kw):
            return interpolate(x, size=size, mode="nearest")

        class _F:
            def __getattr__(self, attr):
                return nearest if attr == "interpolate" else getattr(F, attr)

        backbones.F = _F()
    elif kind == "nearest-map":
        original = maps.F.interpolate

        def smooth(scores, *, size, sigma):
            out = original(scores.float().unsqueeze(1), size=tuple(size))
            out = out.squeeze(1)
            return maps.gaussian_blur(out, sigma) if sigma > 0 else out

        maps.smooth_maps = smooth
        from skanomaly.detectors import patch_base

        patch_base.smooth_maps = smooth
    elif kind is not None:
        raise ValueError(kind)


def _ours(name, weights, seed):
    from skanomaly import PaDiM, PatchCore

    _, detector, kwargs, patch = METHODS[name]
    _patch(patch)
    common = dict(weights=weights, image_size=SIZE, random_state=seed)
    cls = PaDiM if detector == "padim" else PatchCore
    return cls(**common, **kwargs)


def _worker(args):
    import timm  # noqa: F401  (imports are not fit time, as for the peer)
    import torch

    torch.set_num_threads(1)
    train, test = load_arrays(args.data)
    detector = _ours(args.worker, args.weights, args.seed)
    write_result(args.out, *fit_score_maps(detector, train, test))


def _run(name, args, data_path, out):
    env = dict(os.environ, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1")
    if name.startswith("anomalib-"):
        program = [args.anomalib_python, str(HERE / "anomalib_patch.py")]
        program.append(name.removeprefix("anomalib-"))
        weights = args.peer_weights
    else:
        program = [sys.executable, __file__, "--worker", name]
        weights = args.weights
    options = ["--data", data_path, "--weights", weights, "--out", out]
    subprocess.run([*program, *options, "--seed", str(args.seed)], check=True, env=env)
    return read_result(out)


def _pixel_auroc_without(masks, maps, kinds, kind):
    """Pixel AUROC over the test images that are not of defect ``kind``."""
    from skanomaly.metrics import pixel_roc_auc_score

    keep = np.asarray(kinds) != kind
    return pixel_roc_auc_score(masks[keep], maps[keep])


def _check_data(kind, folder, seed, n_train):
    """``(train, test, y, masks)`` of the checks outside the textures."""
    if kind == "mnist":
        from benchmarks._data import mnist_defect_mosaics

        train, test, y, masks, _ = mnist_defect_mosaics(
            folder, n_train=n_train, seed=seed
        )
        return train, test, y, masks
    if kind == "deeppcb":
        from benchmarks.inspection_speed import load_tiles

        return load_tiles(folder, n_train, 100, seed)
    raise ValueError(kind)


def image_score_check(kind, folder, seed, n_train, weights="imagenet"):
    """PaDiM's two image scores, read from one fit, on MNIST mosaics or DeepPCB.

    One ``PaDiM(image_score='standardized')`` at 256 px (the images' own
    size, so the map's maximum is the score ``image_score='max'`` gives):
    image AUROC of ``-score_samples`` and of each map's maximum, with the
    pixel metrics (the same maps for both).
    """
    import time

    import torch

    from skanomaly import PaDiM

    torch.set_num_threads(1)
    train, test, y, masks = _check_data(kind, folder, seed, n_train)
    detector = PaDiM(
        weights=weights, image_size=SIZE, random_state=seed, image_score="standardized"
    )
    start = time.perf_counter()
    detector.fit(train)
    fit_seconds = time.perf_counter() - start
    scores = -detector.score_samples(test)
    maps = detector.anomaly_map(test)
    plain = maps.reshape(len(maps), -1).max(axis=1)
    row = {
        "check": kind,
        "seed": seed,
        "n_train": len(train),
        "n_test": len(test),
        "fit_seconds": fit_seconds,
        **_metrics(y, masks, plain, maps),
        "image_auroc_standardized": _metrics(y, masks, scores, maps)["image_auroc"],
    }
    print(json.dumps(row), flush=True)
    return row


def score_rules(folder, texture, seed, n_train, weights="imagenet"):
    """Image AUROC of one fitted default PaDiM, its image score read several ways.

    The maps are those of ``anomaly_map`` (smoothed, 256 px); the rules: their
    maximum (the default), the maximum of the raw distance grid, the mean of
    their top 1 %, their maximum without a 16 px border, the maximum of the
    grid standardised per position by the training crops' leave-one-out
    grids, and the maximum of the map standardised per pixel by the training
    crops' in-sample or leave-one-out maps (all, or a fixed random 50 or 20
    of them). Also the fraction of normal and defective images whose map
    maximum lies within 16 px of the border.
    """
    import torch

    from skanomaly import PaDiM

    torch.set_num_threads(1)
    train, test, y, masks, kinds = texture_data(
        folder, texture, n_train=n_train, seed=seed
    )
    detector = PaDiM(weights=weights, image_size=SIZE, random_state=seed).fit(train)
    device = torch.device("cpu")
    with torch.inference_mode():
        grids = torch.cat([grid for _, grid, _ in detector._batch_scores(test)])
        in_sample = torch.cat([grid for _, grid, _ in detector._batch_scores(train)])
        distances, c, n = detector._leave_one_out_distances(device, len(train))
        loo = torch.cat(
            [
                detector._leave_one_out_grid(batch, distances, c, n)
                for _, batch in detector.feature_extractor_.patch_batches(train)
            ]
        )
        maps = detector._smoothed(grids).numpy()
        loo_maps = detector._smoothed(loo).numpy()
        in_sample_maps = detector._smoothed(in_sample).numpy()
    grids, loo = grids.numpy(), loo.numpy()

    def peak(x):
        return x.reshape(len(x), -1).max(axis=1)

    def standardized(x, reference):
        return peak((x - reference.mean(axis=0)) / reference.std(axis=0))

    flat = maps.reshape(len(maps), -1)
    top = np.sort(flat, axis=1)[:, -flat.shape[1] // 100 :]
    rules = {
        "max": peak(maps),
        "max of the grid": peak(grids),
        "top 1% mean": top.mean(axis=1),
        "max without a 16 px border": peak(maps[:, 16:-16, 16:-16]),
        "max of the grid standardised (LOO)": standardized(grids, loo),
        "max standardised (in-sample maps)": standardized(maps, in_sample_maps),
        "max standardised (LOO maps)": standardized(maps, loo_maps),
    }
    for k in (50, 20):
        subset = np.random.default_rng(0).choice(len(loo_maps), k, replace=False)
        rules[f"max standardised (LOO maps of {k})"] = standardized(
            maps, loo_maps[subset]
        )
    row = {"texture": texture, "seed": seed, "n_train": n_train}
    for name, scores in rules.items():
        row[name] = _metrics(y, masks, scores, maps)["image_auroc"]
    at = flat.argmax(axis=1)
    rows, cols = np.unravel_index(at, maps.shape[1:])
    edge = (np.minimum(rows, cols) < 16) | (np.maximum(rows, cols) >= SIZE - 16)
    row["border peaks, normal"] = float(edge[y == 0].mean())
    row["border peaks, defective"] = float(edge[y == 1].mean())
    print(json.dumps(row), flush=True)
    return row


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument(
        "--textures", help="folder with brick.png, gravel.png, grass.png"
    )
    parser.add_argument("--texture-names", default=",".join(TEXTURES))
    parser.add_argument("--weights", default=None)
    parser.add_argument("--anomalib-python", default=None)
    parser.add_argument("--work", default="/tmp/textures")
    parser.add_argument(
        "--methods",
        default="ours-padim,anomalib-padim,ours-patchcore,anomalib-patchcore",
    )
    parser.add_argument(
        "--n-train",
        type=int,
        default=None,
        help="training images (default: 40; --check: 100 for mnist, 300 for deeppcb)",
    )
    parser.add_argument(
        "--n-test", type=int, default=60, help="normal and defective each"
    )
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--rows", nargs="+", default=None, help="JSON-lines files to tabulate"
    )
    parser.add_argument("--results", default=None)
    parser.add_argument(
        "--check",
        choices=["mnist", "deeppcb"],
        default=None,
        help="PaDiM's image scores on MNIST mosaics or DeepPCB (from --data-folder)",
    )
    parser.add_argument("--data-folder", default=None)
    parser.add_argument(
        "--score-rules",
        action="store_true",
        help="PaDiM's image score read several ways from one fit (--texture-names)",
    )
    parser.add_argument("--worker", default=None, help=argparse.SUPPRESS)
    parser.add_argument("--data", default=None, help=argparse.SUPPRESS)
    parser.add_argument("--out", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        return _worker(args)
    if args.check:
        n_train = args.n_train or (100 if args.check == "mnist" else 300)
        return image_score_check(args.check, args.data_folder, args.seed, n_train)
    args.n_train = args.n_train or 40
    if args.score_rules:
        for texture in args.texture_names.split(","):
            score_rules(args.textures, texture, args.seed, args.n_train)
        return None
    if args.rows:
        rows = [
            json.loads(line)
            for path in args.rows
            for line in open(path)
            if line.startswith("{")
        ]
        table = _summary(rows) + "\n" + _table(rows)
        print(table)
        if args.results:
            Path(args.results).write_text(table)
        return None
    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    args.peer_weights = args.weights or str(work / "tf_efficientnet_lite0.pth")
    if not Path(args.peer_weights).exists():
        _packaged_weights_file(work)
    args.weights = args.weights or "imagenet"
    rows = []
    for texture in args.texture_names.split(","):
        train, test, y, masks, kinds = texture_data(
            args.textures,
            texture,
            n_train=args.n_train,
            n_test_good=args.n_test,
            n_test_bad=args.n_test,
            seed=args.seed,
        )
        data_path = str(work / f"{texture}-{args.seed}.npz")
        kept = {"y": y, "masks": masks, "kinds": np.array(kinds)}
        np.savez_compressed(str(work / f"{texture}-{args.seed}-truth.npz"), **kept)
        np.savez(data_path, train=train, test=test)
        kinds = np.array(kinds)
        for name in args.methods.split(","):
            out = str(work / f"{texture}-{args.seed}-{name}.npz")
            print(f"{texture}: running {name} ...", flush=True)
            scores, maps, timing = _run(name, args, data_path, out)
            if maps.shape[1:] != masks.shape[1:]:
                raise ValueError(f"{name} gave maps of shape {maps.shape}")
            row = {
                "texture": texture,
                "seed": args.seed,
                "name": name,
                "method": METHODS[name][0],
                **timing,
                **_metrics(y, masks, scores, maps),
            }
            for kind in KINDS:
                keep = (kinds == kind) | (kinds == "good")
                row[f"aupro_{kind}"] = _metrics(
                    y[keep], masks[keep], scores[keep], maps[keep]
                )["aupro"]
            # the image AUROC of each map's maximum: for ours at 256 px, the
            # score image_score='max' gives, read from the same fitted model
            row["image_auroc_map_max"] = _metrics(
                y, masks, maps.reshape(len(maps), -1).max(axis=1), maps
            )["image_auroc"]
            # the stains are most defect pixels: pixel AUROC without them
            row["pixel_auroc_no_stain"] = _pixel_auroc_without(
                masks, maps, kinds, "stain"
            )
            rows.append(row)
            print(json.dumps(row), flush=True)
    table = _table(rows)
    print(table)
    if args.results:
        Path(args.results).write_text(table)
    return None


def _summary(rows):
    """Mean over seeds of each texture and method, tuning textures then held out."""
    groups = {}
    for r in rows:
        key = (r["texture"], r["n_train"], r["n_test"], r["name"])
        groups.setdefault(key, []).append(r)
    lines = [
        "| texture | train / test images | method | seeds | image AUROC "
        "| pixel AUROC | AUPRO | pixel AUROC without the stains | AUPRO cut "
        "| AUPRO stain | AUPRO foreign |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    keys = ("image_auroc", "pixel_auroc", "aupro", "pixel_auroc_no_stain")
    keys += ("aupro_cut", "aupro_stain", "aupro_foreign")
    order = sorted(
        groups,
        key=lambda k: (
            k[0] in HELD_OUT,
            TEXTURES.index(k[0]),
            k[1],
            k[2],
            list(METHODS).index(k[3]),
        ),
    )
    for key in order:
        group = groups[key]
        held = " (held out)" if key[0] in HELD_OUT else ""
        seeds = ",".join(str(r["seed"]) for r in group)
        means = [np.mean([r.get(k, np.nan) for r in group]) for k in keys]
        cells = " | ".join(
            f"{m:.4f}" if i < 4 else f"{m:.3f}" for i, m in enumerate(means)
        )
        lines.append(
            f"| {key[0]}{held} | {key[1]} / {key[2]} | {METHODS[key[3]][0]} "
            f"| {seeds} | {cells} |"
        )
    return "\n".join(lines) + "\n"


def _table(rows):
    lines = [
        "| texture | seed | method | image AUROC | pixel AUROC | AUPRO | AUPRO cut "
        "| AUPRO stain | AUPRO foreign | fit s | maps img/s |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        held = " (held out)" if r["texture"] in HELD_OUT else ""
        lines.append(
            f"| {r['texture']}{held} | {r['seed']} | {r['method']} "
            f"| {r['image_auroc']:.4f} | {r['pixel_auroc']:.4f} | {r['aupro']:.4f} "
            f"| {r['aupro_cut']:.3f} | {r['aupro_stain']:.3f} "
            f"| {r['aupro_foreign']:.3f} | {r['fit_seconds']:.1f} "
            f"| {r['n_test'] / r['map_seconds']:.1f} |"
        )
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
