"""The timed body of the localisation benchmarks' worker processes.

``patch_localisation.py``, ``flows.py`` and ``textures.py`` run each method
in a fresh process (one torch thread, its own peak memory) that fits it,
scores the test images, computes their maps, and leaves an ``.npz`` of
scores and maps with a ``.json`` of timings beside it for the parent.
"""

import json
import resource
import time

import numpy as np


def load_arrays(path):
    """``(train, test)`` from the parent's ``.npz``."""
    with np.load(path) as data:
        return data["train"], data["test"]


def fit_score_maps(detector, train, test, resize_maps=None):
    """Fit, ``-score_samples`` and ``anomaly_map``, each timed.

    ``resize_maps``: a callable applied to the maps inside the map timing
    (for a method that sees the images at another size).
    """
    start = time.perf_counter()
    detector.fit(train)
    fit_seconds = time.perf_counter() - start
    start = time.perf_counter()
    scores = -detector.score_samples(test)
    score_seconds = time.perf_counter() - start
    start = time.perf_counter()
    maps = detector.anomaly_map(test)
    if resize_maps is not None:
        maps = resize_maps(maps)
    map_seconds = time.perf_counter() - start
    timing = {
        "fit_seconds": fit_seconds,
        "score_seconds": score_seconds,
        "map_seconds": map_seconds,
        "n_train": len(train),
        "n_test": len(test),
    }
    return scores, maps, timing


def write_result(out, scores, maps, timing):
    """The ``.npz`` and its ``.json`` (with the process's peak memory)."""
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    np.savez(out, scores=scores, maps=np.asarray(maps, np.float32))
    with open(out + ".json", "w") as f:
        json.dump({**timing, "peak_bytes": peak}, f)


def read_result(out):
    """What a worker left: ``(scores, maps, timing)``."""
    with np.load(out) as result:
        scores, maps = result["scores"], result["maps"]
    with open(out + ".json") as f:
        return scores, maps, json.load(f)
