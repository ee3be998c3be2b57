"""How PatchCore's fit scales with the number of training images.

Each size runs in its own process (one torch thread) so that its peak
memory is its own: fit seconds (backbone, coreset selection), bank size
and peak RSS, for sharded selection (the default) and, up to
``--exact-up-to`` images, one greedy selection over all patches::

    python benchmarks/patchcore_scale.py --mnist /work/shared/data/mnist \\
        --sizes 100,300,1000
"""

import argparse
import json
import os
import resource
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))


def _worker(args):
    import timm  # noqa: F401  (imports are not fit time)
    import torch

    from benchmarks._data import mnist_defect_mosaics
    from skanomaly import PatchCore

    torch.set_num_threads(1)
    train, *_ = mnist_defect_mosaics(
        args.mnist, n_train=args.n, n_test_good=1, n_test_bad=0, seed=0
    )
    detector = PatchCore(
        weights=args.weights,
        image_size=256,
        shard_size=None if args.exact else 16384,
        random_state=0,
    )
    start = time.perf_counter()
    detector.fit(train)
    seconds = time.perf_counter() - start
    print(
        json.dumps(
            {
                "images": args.n,
                "selection": "one greedy selection" if args.exact else "shards",
                "fit_seconds": seconds,
                "patches": detector.n_training_patches_,
                "bank": len(detector.memory_bank_),
                "peak_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
            }
        )
    )


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--mnist", required=True)
    parser.add_argument("--weights", default="imagenet")
    parser.add_argument("--sizes", default="100,300,1000")
    parser.add_argument("--exact-up-to", type=int, default=100)
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--n", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--exact", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        return _worker(args)
    env = dict(os.environ, OMP_NUM_THREADS="1")
    rows = []
    for n in map(int, args.sizes.split(",")):
        for exact in (False, True):
            if exact and n > args.exact_up_to:
                continue
            command = [sys.executable, __file__, "--worker", "--n", str(n)]
            command += ["--mnist", args.mnist, "--weights", args.weights]
            command += ["--exact"] if exact else []
            out = subprocess.run(command, env=env, check=True, capture_output=True)
            rows.append(json.loads(out.stdout.decode().strip().splitlines()[-1]))
            print(json.dumps(rows[-1]), flush=True)
    print("| training images | selection | patches | bank | fit s | peak RSS MB |")
    print("|---|---|---|---|---|---|")
    for r in rows:
        print(
            f"| {r['images']:,} | {r['selection']} | {r['patches']:,} | {r['bank']:,} "
            f"| {r['fit_seconds']:.1f} | {r['peak_mb']:,.0f} |"
        )


if __name__ == "__main__":
    main()
