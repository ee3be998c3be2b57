"""Flow benchmark: skanomaly's FastFlow vs its PaDiM, PatchCore and anomalib's FastFlow.

Two localisation tasks with pixel masks, every method on the same images,
the same backbone (``tf_efficientnet_lite0``, skanomaly's packaged ImageNet
weights) and the same resolution:

- ``mnist``: real digits with synthetic defects
  (:func:`benchmarks._data.mnist_defect_mosaics`: mosaics of 4 x 4 MNIST
  digits with a scratch, a stain or a foreign patch), read at ``--size``;
- ``pcb``: DeepPCB (``--pcb``, the repository's ``PCBData`` folder; not
  part of this repository): 160 px tiles of the binarised 640 px board
  crops, area-averaged to ``--size``. Training: one random tile of each
  training template. Test: for each test pair, the tile holding one of its
  defects' centres, from the template (normal) and from the tested image
  (defective); the mask is the union of the annotated defect boxes inside
  that tile.

Each method runs in its own process with one torch thread; the driver
computes every metric on the raw scores and maps (image AUROC, pixel AUROC,
AUPRO up to FPR 0.3). anomalib's FastFlow (``--anomalib-python``, a
separate virtualenv with anomalib 2.7) is its unmodified
``FastflowModel``, whose ResNet-only feature extractor is swapped for the
same ``tf_efficientnet_lite0`` levels (blocks.2 and blocks.4, strides 8 and
16) with our weights, its LayerNorms and flows rebuilt for them; it trains
with its own loss and optimiser settings (Adam, 1e-3, weight decay 1e-5)
for the batch size and epochs our FastFlow used::

    python benchmarks/flows.py --mnist /work/shared/data/mnist \\
        --pcb /work/data_real/deeppcb/PCBData \\
        --anomalib-python /work/venv-anomalib-flows/bin/python \\
        --results benchmarks/RESULTS_flows.md
"""

import argparse
import json
import os
import platform
import subprocess
import sys
import time
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

METHODS = {
    "ours-fastflow": "FastFlow (defaults: 8 flow steps, hidden ratio 1, clamp 2)",
    "ours-padim": "PaDiM (d=100, orthogonal projection)",
    "ours-patchcore": "PatchCore (10% coreset)",
    "anomalib-fastflow": "anomalib FastFlow (same steps and batches)",
}


# --------------------------------------------------------------------- data


def _data_module():
    from benchmarks import _data

    return _data


def _tile_masks(boxes, tiles, tile, size):
    """Masks (n, size, size) of the defect boxes inside each tile."""
    masks = np.zeros((len(tiles), size, size), bool)
    scale = size / tile
    for mask, box_list, (row, col) in zip(masks, boxes, tiles, strict=True):
        for x1, y1, x2, y2, _ in box_list:
            top, left = row * tile, col * tile
            r1, r2 = np.clip([y1 - top, y2 - top], 0, tile) * scale
            c1, c2 = np.clip([x1 - left, x2 - left], 0, tile) * scale
            if r2 > r1 and c2 > c1:
                mask[int(r1) : int(np.ceil(r2)), int(c1) : int(np.ceil(c2))] = True
    return masks


def load_pcb(folder, size, n_train, n_test, seed=0, tile=160):
    """DeepPCB tiles: ``train, test, y_test, masks`` (see the module docstring)."""
    data = _data_module()
    pairs = data.deeppcb_pairs(folder)
    rng = np.random.default_rng(seed)
    names = [list(pairs)[i] for i in rng.permutation(len(pairs))]
    train_names, test_names = names[:n_train], names[n_train : n_train + n_test]
    grid = 640 // tile
    train_tiles = [divmod(int(i), grid) for i in rng.integers(0, grid**2, n_train)]
    test_tiles = []
    for name in test_names:
        boxes = pairs[name][2]
        centres = np.c_[boxes[:, 1] + boxes[:, 3], boxes[:, 0] + boxes[:, 2]] // 2
        row, col = centres[rng.integers(len(centres))] // tile
        test_tiles.append((int(min(row, grid - 1)), int(min(col, grid - 1))))
    train = data.deeppcb_tiles(
        [pairs[n][0] for n in train_names], train_tiles, tile=tile, size=size
    )
    good = data.deeppcb_tiles(
        [pairs[n][0] for n in test_names], test_tiles, tile=tile, size=size
    )
    bad = data.deeppcb_tiles(
        [pairs[n][1] for n in test_names], test_tiles, tile=tile, size=size
    )
    bad_masks = _tile_masks([pairs[n][2] for n in test_names], test_tiles, tile, size)
    masks = np.concatenate([np.zeros_like(bad_masks), bad_masks])
    y = np.r_[np.zeros(n_test), np.ones(n_test)].astype(int)
    return train, np.concatenate([good, bad]), y, masks


def load_mnist(folder, size, n_train, n_test, seed=0):
    """MNIST defect mosaics resized to ``size``: ``train, test, y_test, masks``."""
    data = _data_module()
    train, test, y, masks, _ = data.mnist_defect_mosaics(
        folder,
        n_train=n_train,
        n_test_good=n_test,
        n_test_bad=n_test - n_test % 3,
        seed=seed,
    )
    return train, test, y, masks


# ------------------------------------------------------------------ workers


def _ours(name, args):
    from skanomaly import FastFlow, PaDiM, PatchCore

    common = dict(image_size=args.size, random_state=args.seed)
    if name == "ours-fastflow":
        return FastFlow(min_steps=args.steps, **common)
    if name == "ours-padim":
        return PaDiM(n_channels=100, **common)
    if name == "ours-patchcore":
        return PatchCore(**common)
    raise ValueError(name)


def _worker(args):
    import timm  # noqa: F401  (imports are not fit time, as for the peer)
    import torch

    torch.set_num_threads(1)
    train, test = load_arrays(args.data)
    detector = _ours(args.worker, args)
    scores, maps, timing = fit_score_maps(detector, train, test)
    if hasattr(detector, "net_"):
        timing.update(
            batch_size=detector.batch_size_,
            epochs=detector.n_epochs_,
            trained_on=len(train) - len(detector.calibration_scores_),
            first_loss=float(detector.net_.history[0, "train_loss"]),
            last_loss=float(detector.net_.history[-1, "train_loss"]),
        )
    write_result(args.out, scores, maps, timing)


def _anomalib_worker(args):
    """anomalib's FastflowModel on tf_efficientnet_lite0's blocks.2 and blocks.4."""
    import timm
    import torch
    from anomalib.models.image.fastflow.loss import FastflowLoss
    from anomalib.models.image.fastflow.torch_model import (
        FastflowModel,
        create_fast_flow_block,
    )
    from torch import nn

    torch.set_num_threads(1)
    with np.load(args.data) as data:
        train, test = data["train"], data["test"]
    size = args.size

    def normalised(images):
        x = torch.from_numpy(images).float().div_(255.0)
        x = torch.nn.functional.interpolate(
            x, size=(size, size), mode="bilinear", antialias=True
        )
        return ((x - 0.5) / 0.5).expand(-1, 3, -1, -1)

    torch.manual_seed(args.seed)
    model = FastflowModel((size, size), "resnet18", pre_trained=False)
    extractor = timm.create_model(
        "tf_efficientnet_lite0",
        pretrained=False,
        features_only=True,
        out_indices=[2, 3],
    )
    state = torch.load(args.weights, map_location="cpu")
    missing, _ = extractor.load_state_dict(state, strict=False)
    if missing:
        raise RuntimeError(f"backbone keys missing from the weights: {missing[:5]}")
    model.feature_extractor = extractor.eval().requires_grad_(False)
    channels = extractor.feature_info.channels()
    scales = extractor.feature_info.reduction()
    model.norms = nn.ModuleList(
        nn.LayerNorm([c, size // s, size // s]) for c, s in zip(channels, scales)
    )
    model.fast_flow_blocks = nn.ModuleList(
        create_fast_flow_block([c, size // s, size // s], False, 1.0, 8)
        for c, s in zip(channels, scales)
    )
    loss_fn = FastflowLoss()
    parameters = [p for p in model.parameters() if p.requires_grad]
    optimiser = torch.optim.Adam(parameters, lr=1e-3, weight_decay=1e-5)
    start = time.perf_counter()
    x_train = normalised(train)
    generator = torch.Generator().manual_seed(args.seed)
    model.train()
    for _ in range(args.epochs):
        order = torch.randperm(len(x_train), generator=generator)
        for begin in range(0, len(order), args.batch_size):
            batch = x_train[order[begin : begin + args.batch_size]]
            if len(batch) < 2:
                continue
            hidden, jacobians = model(batch)
            loss = loss_fn(hidden, jacobians)
            optimiser.zero_grad()
            loss.backward()
            optimiser.step()
    fit_seconds = time.perf_counter() - start
    model.eval()
    start = time.perf_counter()
    scores, maps = [], []
    with torch.inference_mode():
        for begin in range(0, len(test), 32):
            out = model(normalised(test[begin : begin + 32]))
            scores.append(out.pred_score.reshape(-1))
            maps.append(out.anomaly_map.reshape(-1, size, size))
    maps = torch.cat(maps)[:, None]
    maps = torch.nn.functional.interpolate(maps, size=test.shape[-2:], mode="bilinear")
    seconds = time.perf_counter() - start
    timing = {
        "fit_seconds": fit_seconds,
        "score_seconds": seconds,
        "map_seconds": seconds,  # one pass gives both
        "n_train": len(train),
        "n_test": len(test),
    }
    write_result(args.out, torch.cat(scores).numpy(), maps[:, 0].numpy(), timing)


# ------------------------------------------------------------------- driver


def _run(name, args, data_path, plan):
    out = str(Path(args.work) / f"{args.task}-{name}.npz")
    env = dict(os.environ, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1")
    options = ["--data", data_path, "--out", out, "--seed", str(args.seed)]
    options += ["--size", str(args.size), "--steps", str(args.steps)]
    if name.startswith("anomalib-"):
        command = [args.anomalib_python, __file__, "--anomalib-worker"]
        options += ["--weights", args.peer_weights]
        options += ["--batch-size", str(plan["batch_size"])]
        options += ["--epochs", str(plan["epochs"])]
    else:
        command = [sys.executable, __file__, "--worker", name]
    print(f"running {args.task} {name} ...", flush=True)
    subprocess.run([*command, *options], check=True, env=env)
    return read_result(out)


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--mnist", help="folder of the MNIST IDX files")
    parser.add_argument("--pcb", help="DeepPCB's PCBData folder")
    parser.add_argument("--anomalib-python", default=None)
    parser.add_argument("--work", default="/tmp/flows")
    parser.add_argument("--results", default=None, help="markdown file to write")
    parser.add_argument("--methods", default=",".join(METHODS))
    parser.add_argument("--tasks", default="mnist,pcb")
    parser.add_argument("--size", type=int, default=128)
    parser.add_argument("--steps", type=int, default=300)
    parser.add_argument("--n-train", type=int, default=100)
    parser.add_argument("--n-test", type=int, default=60)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--rows", nargs="+", default=None, help="only write the table")
    for hidden in ("--data", "--out", "--weights", "--worker"):
        parser.add_argument(hidden, default=None, help=argparse.SUPPRESS)
    parser.add_argument(
        "--anomalib-worker", action="store_true", help=argparse.SUPPRESS
    )
    parser.add_argument("--batch-size", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--epochs", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.anomalib_worker:
        return _anomalib_worker(args)
    sys.path.insert(0, str(HERE.parent))
    if args.worker:
        return _worker(args)
    if args.rows:
        rows = [json.loads(line) for path in args.rows for line in open(path)]
        return _finish(rows, args)

    # the localisation benchmark's metrics and weights file, shared
    from benchmarks.patch_localisation import _metrics, _packaged_weights_file

    Path(args.work).mkdir(parents=True, exist_ok=True)
    methods = args.methods.split(",")
    if "anomalib-fastflow" in methods:
        # the peer runs after ours, with our FastFlow's batches and epochs
        methods.remove("anomalib-fastflow")
        methods.append("anomalib-fastflow")
        args.peer_weights = _packaged_weights_file(Path(args.work))
    rows = []
    for task in args.tasks.split(","):
        args.task = task
        if task == "mnist":
            train, test, y, masks = load_mnist(
                args.mnist, args.size, args.n_train, args.n_test, args.seed
            )
        else:
            train, test, y, masks = load_pcb(
                args.pcb, args.size, args.n_train, args.n_test, args.seed
            )
        data_path = str(Path(args.work) / f"{task}.npz")
        np.savez(data_path, train=train, test=test)
        plan = None
        for name in methods:
            scores, maps, timing = _run(name, args, data_path, plan)
            if name == "ours-fastflow":
                plan = timing
            if maps.shape[1:] != masks.shape[1:]:
                raise ValueError(f"{name} gave maps of shape {maps.shape}")
            row = {
                "task": task,
                "method": METHODS[name],
                "n_test": len(test),
                "n_defective": int(y.sum()),
                **timing,
                **_metrics(y, masks, scores, maps),
            }
            rows.append(row)
            print(json.dumps(row), flush=True)
    return _finish(rows, args)


def _finish(rows, args):
    table = _table(rows, args)
    print(table)
    if args.results:
        Path(args.results).write_text(table)


def _table(rows, args):
    import torch

    lines = [
        "# Normalizing flow (FastFlow) vs PaDiM and PatchCore",
        "",
        __doc__.split("\n\n", 1)[1].split("::")[0].strip(),
        "",
        "| task | method | train images | test (defective) | image AUROC "
        "| pixel AUROC | AUPRO | fit s | fit img/s | score img/s | maps img/s |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(
            f"| {r['task']} | {r['method']} | {r['n_train']} "
            f"| {r['n_test']} ({r['n_defective']}) | {r['image_auroc']:.4f} "
            f"| {r['pixel_auroc']:.4f} | {r['aupro']:.4f} | {r['fit_seconds']:.1f} "
            f"| {r['n_train'] / r['fit_seconds']:.2f} "
            f"| {r['n_test'] / r['score_seconds']:.1f} "
            f"| {r['n_test'] / r['map_seconds']:.1f} |"
        )
    lines.append("")
    for r in rows:
        if "epochs" in r:
            lines.append(
                f"- {r['task']}: our FastFlow trained on {r['trained_on']} images "
                f"(the other {r['n_train'] - r['trained_on']} calibrate its "
                f"threshold), {r['epochs']} epochs of batches of {r['batch_size']} "
                f"(min_steps={args.steps}); loss {r['first_loss']:.3f} -> "
                f"{r['last_loss']:.3f} nats per channel. anomalib's trained on all "
                f"{r['n_train']} for the same epochs and batch size."
            )
    lines += [
        "",
        f"Machine: {platform.processor() or platform.machine()}, "
        f"{os.cpu_count()} cores shared with other engineers' jobs, 1 torch "
        f"thread per method; torch {torch.__version__}, image size {args.size} "
        f"px, seed {args.seed}. Command:",
        "",
        "```bash",
        f"python benchmarks/flows.py --mnist {args.mnist} --pcb {args.pcb} \\",
        f"    --anomalib-python {args.anomalib_python} --size {args.size} \\",
        f"    --n-train {args.n_train} --n-test {args.n_test} --steps {args.steps} "
        f"--seed {args.seed} \\",
        "    --results benchmarks/RESULTS_flows.md",
        "```",
        "",
    ]
    return "\n".join(lines)


if __name__ == "__main__":
    main()
