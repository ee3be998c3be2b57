"""DeepMahalanobis end-to-end throughput against a bare timm forward pass.

Both sides see the same uint8 images at the backbone's input size (so
nothing is resized), the same batch size and the same device:

- *bare forward*: ``timm.create_model(backbone)(x)`` under
  ``torch.inference_mode``, once "plain" (float32 NCHW batches normalised
  ahead, untimed, then moved to the device) and once "tuned" the way
  TimmFeatures runs (uint8 batches moved to the device, scaled and normalised
  there, channels-last, bfloat16 autocast on CUDA);
- *DeepMahalanobis*: ``score_samples(images)`` of a fitted detector, i.e.
  input validation, uint8 scaling, normalisation, the forward pass through
  every level, global average pooling, the copy back to the host and the
  Mahalanobis distances of every level.

Overhead = DeepMahalanobis time / bare time - 1, against each bare variant;
the tuned one does the same device work but the pooling and the Gaussians.
Rounds alternate the sides and the median round is reported, which damps the
noise of a shared machine. Weights are random (``weights=None``): speed does
not depend on them, and nothing is downloaded.

It also times ``Mahalanobis.fit`` on 300 x 2944 features (the size of
EfficientNet-B4's nine pooled levels), as one Gaussian and as nine.

Run::

    python benchmarks/deep_mahalanobis_speed.py --backbone resnet18 \\
        --image-size 128 --n-images 256 --batch-size 32 --device cpu
    python benchmarks/deep_mahalanobis_speed.py --backbone efficientnet_b4 \\
        --image-size 384 --n-images 512 --batch-size 64 --device cuda
"""

import argparse
import contextlib
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from skanomaly import DeepMahalanobis, Mahalanobis  # noqa: E402
from skanomaly.gaussian import group_distances  # noqa: E402

# widths of efficientnet_b4's levels: stem, blocks.0-6, head (2944 in all)
_B4_LEVELS = (48, 24, 32, 56, 112, 160, 272, 448, 1792)


def _sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def bare_forward(model, batches, device, tuned, mean, std):
    """Forward every batch; tuned: uint8 to the device, then as TimmFeatures."""
    autocast = (
        torch.autocast("cuda", dtype=torch.bfloat16)
        if tuned and device.type == "cuda"
        else contextlib.nullcontext()
    )
    mean, std = mean.to(device), std.to(device)
    start = time.perf_counter()
    with torch.inference_mode(), autocast:
        for batch in batches:
            x = batch.to(device, non_blocking=True)
            if tuned:
                x = ((x.float() / 255 - mean) / std).contiguous(
                    memory_format=torch.channels_last
                )
            model(x)
    _sync(device)
    return time.perf_counter() - start


def mahalanobis_fit_times(repeats):
    rng = np.random.default_rng(0)
    mixing = rng.normal(size=(2944, 2944)) / np.sqrt(2944)
    X = (rng.normal(size=(300, 2944)) @ mixing).astype(np.float32)
    groups = np.repeat(np.arange(len(_B4_LEVELS)), _B4_LEVELS)
    times = {}
    for name, det in [
        ("one Gaussian (2944-d)", Mahalanobis()),
        ("nine level Gaussians", Mahalanobis(groups=groups)),
    ]:
        runs = []
        for _ in range(repeats):
            start = time.perf_counter()
            det.fit(X)
            runs.append(time.perf_counter() - start)
        times[name] = min(runs)
    return times


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--backbone", default="resnet18")
    parser.add_argument("--image-size", type=int, default=128)
    parser.add_argument("--n-images", type=int, default=256)
    parser.add_argument("--n-train", type=int, default=64)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--threads", type=int, help="torch intra-op threads")
    parser.add_argument("--skip-fit-timing", action="store_true")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    import timm

    size = args.image_size
    rng = np.random.default_rng(0)
    train = rng.integers(0, 256, size=(args.n_train, 3, size, size), dtype=np.uint8)
    test = rng.integers(0, 256, size=(args.n_images, 3, size, size), dtype=np.uint8)

    det = DeepMahalanobis(
        args.backbone,
        weights=None,
        image_size=size,
        batch_size=args.batch_size,
        device=args.device,
        random_state=0,
    ).fit(train)
    mean = torch.tensor(det.feature_extractor_.mean_).view(1, -1, 1, 1)
    std = torch.tensor(det.feature_extractor_.std_).view(1, -1, 1, 1)
    uint8_batches = [
        torch.from_numpy(test[i : i + args.batch_size])
        for i in range(0, args.n_images, args.batch_size)
    ]
    float_batches = [(b.float() / 255 - mean) / std for b in uint8_batches]
    plain = timm.create_model(args.backbone, pretrained=False).eval().to(device)
    tuned = timm.create_model(args.backbone, pretrained=False).eval()
    tuned = tuned.to(device=device, memory_format=torch.channels_last)

    def run_plain(batches):
        return bare_forward(plain, batches, device, False, mean, std)

    def run_tuned(batches):
        return bare_forward(tuned, batches, device, True, mean, std)

    # warm-up (allocator, cuDNN autotuning, thread pools)
    run_plain(float_batches[:1])
    run_tuned(uint8_batches[:1])
    det.score_samples(test[: args.batch_size])

    runs = {"bare (plain)": [], "bare (tuned)": [], "DeepMahalanobis": []}
    for _ in range(args.rounds):
        runs["bare (plain)"].append(run_plain(float_batches))
        runs["bare (tuned)"].append(run_tuned(uint8_batches))
        start = time.perf_counter()
        det.score_samples(test)
        _sync(device)
        runs["DeepMahalanobis"].append(time.perf_counter() - start)

    median = {name: statistics.median(times) for name, times in runs.items()}
    print(
        f"{args.backbone} {size}x{size}, {args.n_images} images, batch "
        f"{args.batch_size}, device {args.device}, torch threads "
        f"{torch.get_num_threads()}, {args.rounds} rounds (median)"
    )
    for name, seconds in median.items():
        print(f"  {name:16s} {args.n_images / seconds:8.1f} images/s  ({seconds:.3f}s)")
    for name in ("bare (plain)", "bare (tuned)"):
        print(
            f"  DeepMahalanobis overhead vs {name}: "
            f"{100 * (median['DeepMahalanobis'] / median[name] - 1):+.1f}%"
        )
    # where DeepMahalanobis spends its time (median of 3 each)
    features = det.feature_extractor_._transform(test)
    parts = {
        "features only": lambda: det.feature_extractor_._transform(test),
        "Gaussians on the host": lambda: det.gaussian_.distances(features),
    }
    if device.type != "cpu":
        gaussian = det.gaussian_
        parts["Gaussians on the device"] = lambda: group_distances(
            features, gaussian.location_, gaussian.groups_, gaussian.cholesky_, device
        )
    for name, part in parts.items():
        times = []
        for _ in range(3):
            start = time.perf_counter()
            part()
            _sync(device)
            times.append(time.perf_counter() - start)
        print(f"  {name:31s} {statistics.median(times):.4f}s")
    if not args.skip_fit_timing:
        for name, seconds in mahalanobis_fit_times(3).items():
            print(f"  Mahalanobis.fit 300x2944, {name}: {seconds:.3f}s (best of 3)")


if __name__ == "__main__":
    main()
