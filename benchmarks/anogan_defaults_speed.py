"""AnoGAN scoring at its defaults, before and after the search changes.

One AnoGAN is fitted at its constructor defaults on 60 images of one digit
(scikit-learn's digits upsampled to 32x32, the set of issue 15); the same
fitted networks then score the test images (40 of that digit, 100 of the
others) two ways:

- **before**: the search of the earlier defaults: 500 Adam steps from the
  one code ``latent_init_`` for every query (``search_starts=1,
  search_tol=None``), in scoring batches of 64 (the old ``batch_size``);
- **after**: the current defaults (the best of 64 starting codes, stopping
  at 1 % improvement over 10 steps, scoring batches of 256).

Scoring seconds, images/s, the mean number of steps per query and AUROC
are printed as JSON lines. Run with one thread and nothing else running::

    OMP_NUM_THREADS=1 python benchmarks/anogan_defaults_speed.py --digits 0 3
"""

import argparse
import json
import time

import numpy as np
import torch
import torch.nn.functional as F
from sklearn.datasets import load_digits
from sklearn.metrics import roc_auc_score

import skanomaly
from skanomaly.detectors import anogan as anogan_module

BEFORE = {"search_starts": 1, "search_tol": None, "batch_size": 64}


def digit_split(digit, seed=0):
    """60 training images of ``digit``; 40 of it and 100 others to test."""
    X, y = load_digits(return_X_y=True)
    images = torch.as_tensor(X / 16.0, dtype=torch.float32).reshape(-1, 1, 8, 8)
    images = F.interpolate(images, size=(32, 32), mode="bilinear").numpy()
    rng = np.random.default_rng(seed)
    normal = rng.permutation(np.flatnonzero(y == digit))
    others = rng.permutation(np.flatnonzero(y != digit))[:100]
    test = np.r_[normal[60:100], others]
    return images[normal[:60]], images[test], np.r_[np.zeros(40), np.ones(100)]


def _counting_steps():
    """Wrap the search so that the steps each query took are recorded."""
    steps = []
    search = anogan_module.latent_search

    def counted(*args, **kwargs):
        result = search(*args, **kwargs)
        steps.append(result[3].double().sum().item())
        return result

    anogan_module.latent_search = counted
    return steps


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--digits", type=int, nargs="+", default=[0, 3])
    args = parser.parse_args()
    torch.set_num_threads(1)
    steps = _counting_steps()
    for digit in args.digits:
        X_train, X_test, y_test = digit_split(digit)
        detector = skanomaly.AnoGAN(random_state=0)
        start = time.perf_counter()
        detector.fit(X_train)
        fit_s = time.perf_counter() - start
        after = detector.get_params()
        for label, params in [("before", BEFORE), ("after", after)]:
            detector.set_params(**params)
            steps.clear()
            start = time.perf_counter()
            scores = detector.score_samples(X_test)
            seconds = time.perf_counter() - start
            row = {
                "digit": digit,
                "search": label,
                "fit_s": round(fit_s, 1),
                "score_s": round(seconds, 2),
                "images_per_s": round(len(X_test) / seconds, 2),
                "steps_per_query": round(sum(steps) / len(X_test), 1),
                "auroc": round(float(roc_auc_score(y_test, -scores)), 4),
            }
            print(json.dumps(row), flush=True)


if __name__ == "__main__":
    main()
