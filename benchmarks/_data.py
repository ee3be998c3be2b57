"""Readers for the benchmark data (paths are arguments; nothing is bundled)."""

import gzip
from pathlib import Path

import numpy as np

__all__ = [
    "deeppcb_pairs",
    "deeppcb_tiles",
    "load_adbench",
    "load_mnist",
    "mnist_defect_mosaics",
    "mnist_one_anomalous_digit",
]


def _read_idx(path):
    with gzip.open(path, "rb") as f:
        data = f.read()
    magic = int.from_bytes(data[:4], "big")
    ndim = magic & 0xFF
    dims = [int.from_bytes(data[4 + 4 * i : 8 + 4 * i], "big") for i in range(ndim)]
    return np.frombuffer(data, dtype=np.uint8, offset=4 + 4 * ndim).reshape(dims)


def load_mnist(folder):
    """The MNIST test set as (images uint8 (N, 28, 28), labels (N,))."""
    folder = Path(folder)
    images = _read_idx(folder / "t10k-images-idx3-ubyte.gz")
    labels = _read_idx(folder / "t10k-labels-idx1-ubyte.gz")
    return images, labels.astype(np.int64)


def mnist_one_anomalous_digit(folder, anomaly_digit, seed=0, train_fraction=0.8):
    """GANomaly protocol: one digit is the anomaly, the other nine are normal.

    A fixed split (``seed``) puts ``train_fraction`` of the normal images in
    training; the test set holds the remaining normals and every image of
    ``anomaly_digit``. Images are zero-padded to 32x32 and kept as uint8
    (N, 1, 32, 32). Test labels use 1 = anomaly.
    """
    images, labels = load_mnist(folder)
    images = np.pad(images, ((0, 0), (2, 2), (2, 2)))[:, None]
    normal = np.flatnonzero(labels != anomaly_digit)
    rng = np.random.default_rng(seed)
    normal = rng.permutation(normal)
    n_train = int(train_fraction * normal.size)
    train, test_normal = normal[:n_train], normal[n_train:]
    test = np.concatenate([test_normal, np.flatnonzero(labels == anomaly_digit)])
    y_test = (labels[test] == anomaly_digit).astype(np.int64)
    return images[train], images[test], y_test


def load_adbench(path):
    """An ADBench .npz as (X float64, y) with y 1 = anomaly, 0 = normal."""
    with np.load(path) as data:
        return np.asarray(data["X"], dtype=np.float64), np.asarray(data["y"]).astype(
            np.int64
        )


def deeppcb_pairs(folder):
    """DeepPCB's pairs: {name: (template path, tested path, defect boxes)}.

    DeepPCB (Tang et al. 2019, https://github.com/tangsanli5201/DeepPCB, MIT
    licence) holds 1,500 pairs of binarised 640 x 640 crops of printed
    circuit boards from a line-scan camera: a defect-free *template*
    (``<name>_temp.jpg``) and the aligned *tested* image of the same board
    area with 3 to 12 annotated defects (``<name>_test.jpg``; open, short,
    mousebite, spur, spurious copper, pin hole), whose boxes
    ``x1 y1 x2 y2 type`` are in ``<group>_not/<name>.txt``. ``folder`` is
    the repository's ``PCBData`` folder. Boxes are an int array (k, 5).
    """
    folder = Path(folder)
    pairs = {}
    for template in sorted(folder.glob("*/*/*_temp.jpg")):
        name = template.name[: -len("_temp.jpg")]
        tested = template.with_name(f"{name}_test.jpg")
        notes = template.parent.with_name(f"{template.parent.name}_not") / f"{name}.txt"
        if not (tested.exists() and notes.exists()):
            continue
        boxes = [
            [int(v) for v in line.replace(",", " ").split()]
            for line in notes.read_text().splitlines()
            if line.strip()
        ]
        pairs[name] = (template, tested, np.array(boxes, dtype=np.int64).reshape(-1, 5))
    return pairs


def deeppcb_tiles(paths, tiles, tile=160, size=128):
    """Tiles of DeepPCB images as uint8 (N, 1, size, size).

    ``paths[i]`` is read (grayscale), its ``tile`` x ``tile`` square at grid
    position ``tiles[i] = (row, col)`` cut out and resized to ``size`` with
    area averaging (thin tracks become grey levels).
    """
    from PIL import Image

    out = []
    for path, (row, col) in zip(paths, tiles):
        with Image.open(path) as image:
            box = (col * tile, row * tile, (col + 1) * tile, (row + 1) * tile)
            cut = image.convert("L").crop(box)
            out.append(np.asarray(cut.resize((size, size), Image.Resampling.BOX)))
    return np.stack(out)[:, None].astype(np.uint8)


# ------------------------------------------------ synthetic defects on MNIST

_CELL = 64  # a mosaic cell: a 28 px digit upscaled to 56 px, 4 px margins


def _mosaic(digits, rng, grid=4):
    """A (grid*64)^2 uint8 mosaic of ``grid``^2 random digits (upscaled)."""
    import torch
    import torch.nn.functional as F

    picks = digits[rng.choice(len(digits), grid * grid, replace=False)]
    big = F.interpolate(
        torch.from_numpy(picks[:, None].astype(np.float32)),
        size=(56, 56),
        mode="bilinear",
        align_corners=False,
    )[:, 0].clamp(0, 255)
    cells = np.zeros((grid * grid, _CELL, _CELL), np.float32)
    cells[:, 4:60, 4:60] = big.numpy()
    image = cells.reshape(grid, grid, _CELL, _CELL).transpose(0, 2, 1, 3)
    return image.reshape(grid * _CELL, grid * _CELL).round().astype(np.uint8)


def random_line(shape, rng, lengths, margin, width=1):
    """Mask of a straight line at any angle: length drawn from ``lengths``,
    centre at least ``margin`` px from the border, ``width`` px wide."""
    size = shape[0]
    length = rng.uniform(*lengths)
    angle = rng.uniform(0, np.pi)
    cy, cx = rng.uniform(margin, size - margin, 2)
    t = np.linspace(-length / 2, length / 2, int(length * 3))
    ys = np.clip(np.round(cy + t * np.sin(angle)), 0, size - 1).astype(int)
    xs = np.clip(np.round(cx + t * np.cos(angle)), 0, size - 1).astype(int)
    mask = np.zeros(shape, bool)
    for dy in range(width):
        for dx in range(width):
            mask[np.clip(ys + dy, 0, size - 1), np.clip(xs + dx, 0, size - 1)] = True
    return mask


def _scratch(image, rng):
    """A 2 px wide line of grey 160, 40-100 px long: visible on ink and on
    background. The mask is the line."""
    mask = random_line(image.shape, rng, (40, 100), margin=30, width=2)
    image[mask] = 160
    return mask


def _stain(image, rng):
    """An ellipse (radii 10-24 px) where intensities become 0.4 x + 100: the
    background turns grey, ink dims. The mask is the ellipse."""
    size = image.shape[0]
    ry, rx = rng.uniform(10, 24, 2)
    cy, cx = rng.uniform(24, size - 24, 2)
    yy, xx = np.mgrid[:size, :size]
    mask = ((yy - cy) / ry) ** 2 + ((xx - cx) / rx) ** 2 <= 1
    image[mask] = np.round(0.4 * image[mask] + 100).astype(np.uint8)
    return mask


def _foreign_patch(image, rng, donor):
    """A square (16-40 px) cut from another mosaic, turned 90 degrees and
    inverted (255 - x): a patch of foreign texture. The mask is the square."""
    size = image.shape[0]
    side = int(rng.integers(16, 41))
    y, x = rng.integers(0, size - side, 2)
    sy, sx = rng.integers(0, size - side, 2)
    image[y : y + side, x : x + side] = 255 - np.rot90(
        donor[sy : sy + side, sx : sx + side]
    )
    mask = np.zeros(image.shape, bool)
    mask[y : y + side, x : x + side] = True
    return mask


DEFECTS = {"scratch": _scratch, "stain": _stain, "patch": _foreign_patch}


def mnist_defect_mosaics(folder, n_train=100, n_test_good=100, n_test_bad=99, seed=0):
    """A localisation benchmark from real digits with synthetic defects.

    Images are 256 x 256 grayscale mosaics of 4 x 4 MNIST digits (each
    upscaled to 56 px in a 64 px cell), digits of every class; the training
    mosaics use the first half of the MNIST test set, the test mosaics the
    second half. A third of the defective test images each get one defect
    of a kind: a scratch (a 2 px grey line), a stain (an ellipse of dimmed,
    greyed intensities) or a foreign patch (a square cut from another
    mosaic, turned and inverted). Masks are the defects' exact footprints.

    Returns
    -------
    train : uint8 (n_train, 1, 256, 256)
    test : uint8 (n_test, 1, 256, 256)
    y_test : int (n_test,), 1 = defect
    masks : bool (n_test, 256, 256)
    kinds : list of str ('good' or the defect kind)
    """
    images, _ = load_mnist(folder)
    first, second = images[: len(images) // 2], images[len(images) // 2 :]
    rng = np.random.default_rng(seed)
    train = np.stack([_mosaic(first, rng) for _ in range(n_train)])
    test, masks, kinds = [], [], []
    for i in range(n_test_good + n_test_bad):
        image = _mosaic(second, rng)
        mask = np.zeros(image.shape, bool)
        kind = "good"
        if i >= n_test_good:
            kind = list(DEFECTS)[(i - n_test_good) % len(DEFECTS)]
            if kind == "patch":
                mask = _foreign_patch(image, rng, _mosaic(second, rng))
            else:
                mask = DEFECTS[kind](image, rng)
        test.append(image)
        masks.append(mask)
        kinds.append(kind)
    test = np.stack(test)
    y_test = np.array([kind != "good" for kind in kinds], dtype=np.int64)
    return train[:, None], test[:, None], y_test, np.stack(masks), kinds
