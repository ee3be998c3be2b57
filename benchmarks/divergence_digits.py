"""When the torch detectors warn that training diverged, on scikit-learn's digits.

Every registered torch detector is fitted on digits in the one-class protocol
(train on half of one digit's samples, test on the other half and every other
digit; as images (n, 1, 8, 8) uint8 and as 64-column tables) with:

- ``default``: its constructor defaults;
- ``test``: its tags' ``test_params`` (what the test suite runs);
- ``bench``: the settings of ``skanomaly benchmark`` (its tags'
  ``benchmark_params``, 20 epochs, batches of 11: 8 steps per epoch);
- ``lr=...``: the benchmark settings at a learning rate far too high.

For each fit it records whether ``fit`` warned (a ``ConvergenceWarning``
from ``BaseTorchDetector``: training diverged or did not decrease), raised
(a non-finite loss), the AUROC, and the last epoch's loss over the first
batch's. AnoGAN's latent search is cut to 20 steps: scoring only, training
is unchanged. A false alarm is a warning on a ``default``, ``test`` or
``bench`` run.

Usage::

    OMP_NUM_THREADS=1 python -m benchmarks.divergence_digits > RESULTS.md
    python -m benchmarks.divergence_digits --settings default,lr1000 --normal 0
"""

import argparse
import time
import warnings

import numpy as np
import torch
from sklearn.datasets import load_digits
from sklearn.exceptions import ConvergenceWarning
from sklearn.metrics import roc_auc_score

import skanomaly
from skanomaly.detectors.base import get_detector_tags
from skanomaly.detectors.torch_base import BaseTorchDetector

SETTINGS = "default,test,bench,lr1000,lr10,lr1,lr0.1"


def _params(cls, setting):
    tags = get_detector_tags(cls)
    params = {"random_state": 0}
    if setting == "test":
        params.update(tags.test_params)
    elif setting != "default":
        params.update(tags.benchmark_params, max_epochs=20, batch_size=11)
        if setting.startswith("lr"):
            params["lr"] = float(setting[2:])
    if "search_steps" in cls._get_param_names():
        params["search_steps"] = 20
    return params


def _run(cls, params, X_train, X_test, y_test):
    start = time.perf_counter()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", ConvergenceWarning)
        try:
            detector = cls(**params).fit(X_train)
        except FloatingPointError:
            return "error (non-finite loss)", float("nan"), float("nan"), 0.0
    warned = any(issubclass(w.category, ConvergenceWarning) for w in caught)
    auroc = roc_auc_score(y_test, -detector.score_samples(X_test))
    history = detector.net_.history
    first = float(history[0, "batches", 0, "train_loss"])
    ratio = float(history[-1, "train_loss"]) / first if first else float("inf")
    return ("warned" if warned else "-"), auroc, ratio, time.perf_counter() - start


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--settings", default=SETTINGS)
    parser.add_argument("--normal", default="0,1", help="normal digits")
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    X, digit = load_digits(return_X_y=True)
    names = [
        name
        for name in skanomaly.list_detectors()
        if issubclass(skanomaly.get_detector(name), BaseTorchDetector)
    ]
    print("| detector | data | normal | setting | fit | AUROC | last/first loss |")
    print("|---|---|---|---|---|---|---|")
    false_alarms = 0
    for normal in map(int, args.normal.split(",")):
        train = (digit == normal) & (np.arange(len(X)) % 2 == 0)
        y_test = (digit[~train] != normal).astype(int)
        for kind in ("images", "table"):
            if kind == "images":
                data = (X.reshape(-1, 1, 8, 8) * 16).astype(np.uint8)
            else:
                data = X
            for name in names:
                cls = skanomaly.get_detector(name)
                for setting in args.settings.split(","):
                    outcome, auroc, ratio, seconds = _run(
                        cls, _params(cls, setting), data[train], data[~train], y_test
                    )
                    normal_run = not setting.startswith("lr")
                    false_alarms += normal_run and outcome == "warned"
                    print(
                        f"| {name} | {kind} | {normal} | {setting} | {outcome} | "
                        f"{auroc:.3f} | {ratio:.3g} |",
                        flush=True,
                    )
    print(f"\nFalse alarms (warnings on default, test or bench runs): {false_alarms}")


if __name__ == "__main__":
    main()
