"""Fitting at scale: PatchCore and PaDiM fit time and peak memory against n images.

Issue 24, item 7. Each (detector, n) fit runs in a fresh subprocess on ``n``
synthetic 256 px RGB textures (smooth noise plus stripes; generated, nothing
downloaded), at the detectors' defaults (packaged EfficientNet-Lite0) with
``image_size=256`` and ``calibration='auto'`` (leave-one-out for both), one
torch thread. Reported: wall and CPU seconds of ``fit``, seconds per image,
and the process's peak resident memory (``ru_maxrss``) minus the peak after
generating the images and building the detector, i.e. what fitting added.
Linear time shows as constant seconds per image; bounded memory as a peak
that does not grow with ``n`` beyond the detector's fitted state (PatchCore's
memory bank grows with ``n`` by design: 10% of the patches).

Run::

    OMP_NUM_THREADS=1 python benchmarks/fit_scale.py --sizes 250 500 1000 2000
"""

import argparse
import json
import resource
import subprocess
import sys
import time


def _textures(n, size, seed=0):
    import numpy as np

    rng = np.random.default_rng(seed)
    out = np.empty((n, 3, size, size), np.uint8)
    yy, xx = np.mgrid[0:size, 0:size]
    for i in range(n):
        angle = rng.uniform(0, np.pi)
        stripes = np.sin((xx * np.cos(angle) + yy * np.sin(angle)) / rng.uniform(3, 6))
        noise = rng.normal(0, 0.3, (size, size))
        image = 128 + 60 * stripes + 30 * noise
        out[i] = np.clip(image, 0, 255).astype(np.uint8)[None]
    return out


def _worker(name, n, size):
    import warnings

    import torch

    import skanomaly

    torch.set_num_threads(1)
    X = _textures(n, size)
    detector = getattr(skanomaly, name)(image_size=size, random_state=0)
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    start, cpu = time.perf_counter(), time.process_time()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        detector.fit(X)
    wall, cpu = time.perf_counter() - start, time.process_time() - cpu
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    state = {
        "PatchCore": lambda d: d.memory_bank_.nbytes,
        "PaDiM": lambda d: d.cholesky_.nbytes + d.location_.nbytes,
    }[name](detector)
    print(
        json.dumps(
            {
                "detector": name,
                "n": n,
                "fit_s": wall,
                "cpu_s": cpu,
                "s_per_image": wall / n,
                "peak_added_mb": (peak - before) / 1024,
                "fitted_state_mb": state / 2**20,
            }
        )
    )


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[250, 500, 1000, 2000])
    parser.add_argument("--detectors", nargs="+", default=["PaDiM", "PatchCore"])
    parser.add_argument("--image-size", type=int, default=256)
    parser.add_argument("--worker", nargs=2, metavar=("DETECTOR", "N"))
    args = parser.parse_args()
    if args.worker:
        _worker(args.worker[0], int(args.worker[1]), args.image_size)
        return
    print(
        "| detector | images | fit s (CPU s) | s / image | peak added MB "
        "| fitted state MB |"
    )
    print("|---|---|---|---|---|---|")
    for name in args.detectors:
        for n in args.sizes:
            command = [sys.executable, __file__, "--worker", name, str(n)]
            command += ["--image-size", str(args.image_size)]
            out = subprocess.run(command, capture_output=True, text=True, check=True)
            row = json.loads(out.stdout.strip().splitlines()[-1])
            print(
                f"| {name} | {n} | {row['fit_s']:.1f} ({row['cpu_s']:.1f}) "
                f"| {row['s_per_image']:.3f} | {row['peak_added_mb']:.0f} "
                f"| {row['fitted_state_mb']:.0f} |",
                flush=True,
            )


if __name__ == "__main__":
    main()
