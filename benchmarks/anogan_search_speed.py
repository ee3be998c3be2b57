"""AnoGAN scoring speed: the batched latent search vs a per-sample loop.

Both ways run the same search (:func:`skanomaly.nn.anogan.latent_search`,
the one AnoGAN's ``score_samples`` runs) with the same number of Adam steps
and the same starting code on AnoGAN's default networks (DCGAN generator
and discriminator, latent 100, 64 base channels) for 1x32x32 images:

- batched: the queries in batches of ``--batch-size`` (AnoGAN scores in
  batches of its ``batch_size``) and in one batch of all of them;
- per-sample: one search per image in a Python loop (a fresh Adam each).

The networks are untrained (DCGAN initialisation, evaluation mode): the
cost of a search does not depend on the weights. Images are synthetic by
default, or MNIST test images zero-padded to 32x32 with ``--mnist FOLDER``.
The per-sample loop can run on the first ``--loop-images`` images only
(its cost is linear in the number of images); images/s is reported for
each way, and the largest difference between the two ways' scores on the
images both scored.

Usage::

    python -m benchmarks.anogan_search_speed --device cuda --steps 500
    python -m benchmarks.anogan_search_speed --device cpu --steps 20 --loop-images 32
"""

import argparse
import json
import time

import numpy as np
import torch

from skanomaly.nn.anogan import AnoGANGenerator, latent_search
from skanomaly.nn.gan import Discriminator

IMAGE_SHAPE = (1, 32, 32)


def _images(n, mnist_folder, seed):
    if mnist_folder is None:
        rng = np.random.default_rng(seed)
        return rng.uniform(-1, 1, size=(n, *IMAGE_SHAPE)).astype(np.float32)
    from ._data import load_mnist

    images, _ = load_mnist(mnist_folder)
    images = np.pad(images[:n], ((0, 0), (2, 2), (2, 2)))[:, None]
    return (images.astype(np.float32) / 127.5 - 1.0).astype(np.float32)


def _sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _timed(fn, device):
    _sync(device)
    start = time.perf_counter()
    result = fn()
    _sync(device)
    return result, time.perf_counter() - start


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument(
        "--device", default="cuda" if torch.cuda.is_available() else "cpu"
    )
    parser.add_argument("--n-images", type=int, default=256)
    parser.add_argument("--loop-images", type=int, default=None)
    parser.add_argument("--steps", type=int, default=500)
    parser.add_argument("--search-lr", type=float, default=1e-3)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--latent-dim", type=int, default=100)
    parser.add_argument("--base-channels", type=int, default=64)
    parser.add_argument("--mnist", default=None, help="folder of the MNIST IDX files")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    parser.add_argument("--json", default=None, help="write the results here")
    args = parser.parse_args(argv)

    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    torch.manual_seed(args.seed)
    generator = AnoGANGenerator(IMAGE_SHAPE, args.latent_dim, args.base_channels)
    discriminator = Discriminator(IMAGE_SHAPE, args.base_channels)
    generator.to(device).eval()
    discriminator.to(device).eval()
    X = torch.as_tensor(_images(args.n_images, args.mnist, args.seed), device=device)
    z_init = torch.randn(args.latent_dim, device=device).expand(len(X), -1)
    n_loop = min(args.loop_images or len(X), len(X))

    def search(X_part, z_part, steps=args.steps):
        return latent_search(
            generator.generate,
            discriminator.features,
            X_part,
            z_part,
            steps=steps,
            lr=args.search_lr,
            disc_weight=0.1,
        )[0]

    def batched(batch_size):
        return torch.cat(
            [
                search(X[i : i + batch_size], z_init[i : i + batch_size])
                for i in range(0, len(X), batch_size)
            ]
        )

    def per_sample():
        return torch.cat(
            [search(X[i : i + 1], z_init[i : i + 1]) for i in range(n_loop)]
        )

    # warm-up: allocator, cuDNN algorithm choice, one-off kernels
    search(X[: args.batch_size], z_init[: args.batch_size], steps=3)
    search(X, z_init, steps=3)
    search(X[:1], z_init[:1], steps=3)

    rows = []
    reference = None
    for name, fn, n in [
        (
            f"batched, batches of {args.batch_size}",
            lambda: batched(args.batch_size),
            len(X),
        ),
        (f"batched, one batch of {len(X)}", lambda: batched(len(X)), len(X)),
        ("per-sample loop", per_sample, n_loop),
    ]:
        scores, seconds = _timed(fn, device)
        if reference is None:
            reference = scores
        rel_diff = float(
            (
                (scores[:n_loop] - reference[:n_loop]).abs() / reference[:n_loop].abs()
            ).max()
        )
        rows.append(
            {
                "method": name,
                "images": n,
                "seconds": seconds,
                "images_per_s": n / seconds,
                "max_rel_diff_vs_batched": rel_diff,
            }
        )

    loop_rate = rows[-1]["images_per_s"]
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"
    threads = torch.get_num_threads()
    print(
        f"device: {name} (torch {torch.__version__}, {threads} CPU threads); "
        f"{args.steps} Adam steps per search; latent {args.latent_dim}, "
        f"{args.base_channels} base channels, {IMAGE_SHAPE} images"
    )
    print("| method | images | seconds | images/s | speed-up vs loop | max rel. diff |")
    print("|---|---|---|---|---|---|")
    for row in rows:
        row["speedup"] = row["images_per_s"] / loop_rate
        print(
            f"| {row['method']} | {row['images']} | {row['seconds']:.2f} | "
            f"{row['images_per_s']:.2f} | {row['speedup']:.1f}x | "
            f"{row['max_rel_diff_vs_batched']:.1e} |"
        )
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"device": name, "args": vars(args), "rows": rows}, f, indent=2)
    return rows


if __name__ == "__main__":
    main()
