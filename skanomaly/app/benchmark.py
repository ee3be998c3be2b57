"""The main job: train every registered detector on a one-class benchmark, compare.

The embedded default needs no download: scikit-learn's digits in the
one-class protocol. For each of a few normal digits the detector trains on a
fixed half of that digit's samples and is tested on the other half plus every
sample of the nine other digits (the anomalies); the score is the AUROC of
the anomaly score (``-score_samples``), averaged over the normal digits. The
8x8 digits are given as images, ``(n, 1, 8, 8)``; a detector whose tags say
it takes no images (:class:`~skanomaly.DetectorTags`) gets the 64 pixels as
tabular features instead (said in the table). A detector on a pretrained
backbone (the ``pretrained_weights`` tag) with an ``image_size`` parameter
reads the digits at 64x64 instead of its default (224x224 for
EfficientNet-Lite0): 8x8 digits hold nothing that 224 px would show, and
at 64 px PatchCore, PaDiM and DeepMahalanobis score each digit's ~1,700
test images in seconds instead of one to two minutes, at the same AUROC
within 0.01 (``benchmarks/RESULTS_digits.md``). On ``data`` they read the
benchmark's ``image_size``. A ``benchmark_params`` entry in its tags
overrides both. A detector whose weights are not available here without a
download is skipped unless named.

With ``data`` the benchmark reads MVTec-style folders instead (a category
folder with ``train/good`` and ``test/<defect>``, or a folder of such
categories) and averages over the categories.

Each detector is built with :func:`skanomaly.make_detector` from its
constructor defaults, updated with the ``benchmark_params`` of its tags
(none of the built-ins has any), with
``random_state`` and ``verbose=0`` where it takes them, and with
``max_epochs`` only when ``epochs`` is given: by default the trained
detectors size their own training (``batch_size='auto'``,
``max_epochs='auto'``: enough optimizer steps on the digits' ~90 images a
class). A detector that fails is reported as failed, in its own row, with
its error, and the others still run: whatever its construction (with its
defaults), tags, fit or scoring raise, ``SystemExit`` included (a plugin
that calls ``sys.exit``); ``KeyboardInterrupt`` still interrupts the run.
"""

import math
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

__all__ = [
    "DEFAULT_EPOCHS",
    "DEFAULT_NORMAL_CLASSES",
    "DIGITS_INPUT_SIZE",
    "BenchmarkResult",
    "describe_benchmark",
    "format_results",
    "load_benchmark_datasets",
    "run_benchmark",
]

DEFAULT_NORMAL_CLASSES = (0, 1, 2)
DEFAULT_EPOCHS = None
# the image_size the pretrained detectors read the 8x8 digits at (see above)
DIGITS_INPUT_SIZE = 64

_PRETRAINED_NOTE = (
    "its pretrained weights are not available without a download; name it "
    "in --detectors (detectors=) to run it"
)
_ERROR_CHARS = 200

# what a detector (a plugin: any code) may raise without ending the run;
# KeyboardInterrupt (and GeneratorExit) still go through
_DETECTOR_FAILURES = (Exception, SystemExit)


@dataclass
class BenchmarkResult:
    """Outcome of one detector on the benchmark.

    Attributes
    ----------
    detector : str
        Registry name.
    status : {'ok', 'failed', 'skipped'}
    auroc : float
        Mean AUROC over the datasets (NaN unless ``status == 'ok'``).
    auroc_std : float
        Standard deviation of the AUROC over the datasets.
    fit_seconds, score_seconds : float
        Mean wall time of one ``fit`` and of one ``score_samples`` on a test
        set.
    aurocs : dict of str to float
        AUROC per dataset.
    note : str
        Why it failed or was skipped, or how the data was given to it.
    """

    detector: str
    status: str
    auroc: float = math.nan
    auroc_std: float = math.nan
    fit_seconds: float = math.nan
    score_seconds: float = math.nan
    aurocs: dict = field(default_factory=dict)
    note: str = ""


def _mvtec_categories(path):
    path = Path(path)
    if not path.is_dir():
        what = "is not a folder" if path.exists() else "does not exist"
        raise FileNotFoundError(f"Benchmark data folder {str(path)!r} {what}.")
    if (path / "train").is_dir():
        return [path]
    categories = sorted(p for p in path.iterdir() if (p / "train").is_dir())
    if not categories:
        raise ValueError(
            f"{str(path)!r} is not in the MVTec AD layout: expected "
            f"{str(path / 'train' / 'good')!r} and {str(path / 'test')!r}, or "
            "subfolders (categories) laid out that way."
        )
    return categories


def load_benchmark_datasets(
    data=None, *, normal_classes=DEFAULT_NORMAL_CLASSES, image_size=64, seed=0
):
    """The benchmark's datasets as ``(name, X_train, X_test, y_test)`` tuples.

    Parameters
    ----------
    data : str, path-like or None, default=None
        None for the embedded digits; else an MVTec-style category folder
        or a folder of categories.
    normal_classes : sequence of int, default=(0, 1, 2)
        Digits used as the normal class in turn (digits only).
    image_size : int or (height, width), default=64
        Size the images of ``data`` are resized to (``data`` only).
    seed : int, default=0
        Seed of the digits' train/test split.

    Returns
    -------
    datasets : list of tuple
        ``y_test`` is +1 for normal and -1 for anomalous samples.
    """
    from .datasets import color_mode_for, load_digits_novelty, load_mvtec_category

    if data is None:
        if not len(normal_classes):
            raise ValueError("normal_classes is empty.")
        return [
            (f"digit {c}", *load_digits_novelty(c, random_state=seed))
            for c in normal_classes
        ]
    datasets = []
    for category in _mvtec_categories(data):
        X_train, _, _ = load_mvtec_category(category, "train", image_size=image_size)
        X_test, y_test, _ = load_mvtec_category(
            category,
            "test",
            image_size=image_size,
            color_mode=color_mode_for(X_train.shape[1]),
        )
        if len(np.unique(y_test)) < 2:
            raise ValueError(
                f"The test set of {str(category)!r} needs both normal ('good') and "
                "defect images for an AUROC."
            )
        datasets.append((category.name, X_train, X_test, y_test))
    return datasets


def _make(name, epochs, seed, input_size):
    from .._compat import param_names
    from ..detectors.base import get_detector_tags
    from ..registry import get_detector, make_detector

    cls = get_detector(name)
    names = set(param_names(cls))
    tags = get_detector_tags(cls)
    params = {}
    if tags.pretrained_weights and "image_size" in names:
        params["image_size"] = input_size
    params.update(tags.benchmark_params)
    if epochs is not None and "max_epochs" in names:
        params["max_epochs"] = epochs
    if "random_state" in names:
        params["random_state"] = seed
    if "verbose" in names:
        params["verbose"] = 0
    return make_detector(name, **params)


def _error_text(exc):
    text = " ".join(f"{type(exc).__name__}: {exc}".split())
    if len(text) > _ERROR_CHARS:
        text = text[: _ERROR_CHARS - 3] + "..."
    return text


def _evaluate(detector, X_train, X_test, y_test):
    from sklearn.metrics import roc_auc_score

    from ..detectors.base import CalibrationWarning

    start = time.perf_counter()
    with warnings.catch_warnings():
        # the benchmark ranks (AUROC); the threshold its few calibration
        # samples set is not used, so their warning would only be noise
        warnings.simplefilter("ignore", CalibrationWarning)
        detector.fit(X_train)
    fit_seconds = time.perf_counter() - start
    start = time.perf_counter()
    scores = detector.score_samples(X_test)
    score_seconds = time.perf_counter() - start
    auroc = roc_auc_score(y_test == -1, -np.asarray(scores))
    return float(auroc), fit_seconds, score_seconds


def _flat(X):
    return X.reshape(len(X), -1)


def _weights_available(cls):
    """Whether a pretrained detector's default weights load without a download.

    Asked here, once per run, rather than in the detector's tags: tags are
    read at every validation, and this looks at the file system.
    """
    from ..weights import weights_available

    params = cls().get_params()
    if "backbone" not in params:
        return True
    return weights_available(params["backbone"], params.get("weights", "imagenet"))


def _construction_failed(name, exc):
    return BenchmarkResult(name, "failed", note=f"construction: {_error_text(exc)}")


def _run_one(name, datasets, *, epochs, seed, input_size, advance):
    from sklearn.base import clone

    from ..detectors.base import get_detector_tags

    try:
        template = _make(name, epochs, seed, input_size)
        tags = get_detector_tags(template)
    except _DETECTOR_FAILURES as exc:
        advance(len(datasets))
        return _construction_failed(name, exc)
    as_table = not tags.images and tags.tabular
    note = ""
    if as_table:
        note = f"{datasets[0][1][0].size} pixels as features (takes no images)"
    runs = {}
    for i, (data_name, X_train, X_test, y_test) in enumerate(datasets):
        if as_table:
            X_train, X_test = _flat(X_train), _flat(X_test)
        try:
            detector = clone(template)
            runs[data_name] = _evaluate(detector, X_train, X_test, y_test)
        except _DETECTOR_FAILURES as exc:
            advance(len(datasets) - i)
            return BenchmarkResult(
                name, "failed", note=f"{data_name}: {_error_text(exc)}"
            )
        advance(1)
    aurocs = {key: run[0] for key, run in runs.items()}
    values = np.array(list(aurocs.values()))
    return BenchmarkResult(
        name,
        "ok",
        auroc=float(values.mean()),
        auroc_std=float(values.std()),
        fit_seconds=float(np.mean([run[1] for run in runs.values()])),
        score_seconds=float(np.mean([run[2] for run in runs.values()])),
        aurocs=aurocs,
        note=note,
    )


def run_benchmark(
    detectors=None,
    *,
    epochs=DEFAULT_EPOCHS,
    data=None,
    normal_classes=DEFAULT_NORMAL_CLASSES,
    image_size=64,
    seed=0,
    threads=1,
    progress=True,
):
    """Train and test detectors on the benchmark; one result per detector.

    Parameters
    ----------
    detectors : list of str or None, default=None
        Registry names. None runs every registered detector, except those
        whose tags say they work on pretrained weights that are not
        available here without a download (reported as skipped; name them
        to run them).
    epochs : int or None, default=None
        ``max_epochs`` of the detectors that take it; None keeps their own
        (``'auto'`` for skanomaly's trained detectors).
    data : str, path-like or None, default=None
        None for the embedded digits, or MVTec-style folders (see
        :func:`load_benchmark_datasets`).
    normal_classes : sequence of int, default=(0, 1, 2)
        Normal digits of the embedded benchmark.
    image_size : int or (height, width), default=64
        Image size for ``data``, and the ``image_size`` of the pretrained
        detectors on it.
    seed : int, default=0
        ``random_state`` of the detectors and seed of the digits split.
    threads : int or None, default=1
        torch CPU threads during the run (restored after); None keeps
        torch's setting. The benchmark's models are tiny, so extra threads
        mostly add synchronisation, and on a busy machine they can make it
        several times slower.
    progress : bool, default=True
        Show a progress bar (tqdm, on stderr).

    Returns
    -------
    results : list of BenchmarkResult
        In the order of ``detectors``.

    Raises
    ------
    ValueError
        If a name in ``detectors`` is not a registered detector, or the data
        cannot be loaded.

    Examples
    --------
    >>> from skanomaly.app.benchmark import run_benchmark
    >>> (result,) = run_benchmark(["autoencoder"], epochs=1, normal_classes=[0],
    ...                           progress=False)
    >>> result.status, 0.0 <= result.auroc <= 1.0
    ('ok', True)
    """
    import torch
    from tqdm.auto import tqdm

    from ..detectors.base import get_detector_tags
    from ..registry import get_detector, list_detectors

    skipped = {}  # name to its result, not run
    if detectors is None:
        names = list_detectors()
        for name in names:
            try:  # the tags of a class construct it with its defaults
                tags = get_detector_tags(get_detector(name))
            except _DETECTOR_FAILURES as exc:
                skipped[name] = _construction_failed(name, exc)
                continue
            if tags.pretrained_weights and not _weights_available(get_detector(name)):
                skipped[name] = BenchmarkResult(name, "skipped", note=_PRETRAINED_NOTE)
    else:
        names = list(dict.fromkeys(detectors))
        for name in names:
            get_detector(name)  # unknown names fail before any training
    datasets = load_benchmark_datasets(
        data, normal_classes=normal_classes, image_size=image_size, seed=seed
    )
    to_run = [name for name in names if name not in skipped]
    results = {}
    threads_before = torch.get_num_threads()
    if threads is not None:
        torch.set_num_threads(threads)
    try:
        with tqdm(
            total=len(to_run) * len(datasets),
            desc="benchmark",
            unit="fit",
            disable=not progress,
            leave=False,
        ) as bar:
            for name in to_run:
                bar.set_postfix_str(name)
                results[name] = _run_one(
                    name,
                    datasets,
                    epochs=epochs,
                    seed=seed,
                    input_size=DIGITS_INPUT_SIZE if data is None else image_size,
                    advance=bar.update,
                )
    finally:
        torch.set_num_threads(threads_before)
    results.update(skipped)
    return [results[name] for name in names]


def _number(value, digits):
    return "-" if math.isnan(value) else f"{value:.{digits}f}"


def format_results(results):
    """The results as a plain-text table (detector, AUROC, std, fit s, score s, note).

    Parameters
    ----------
    results : list of BenchmarkResult

    Returns
    -------
    table : str

    Examples
    --------
    >>> from skanomaly.app.benchmark import BenchmarkResult, format_results
    >>> print(format_results([BenchmarkResult("vae", "ok", 0.95, 0.01, 1.5, 0.2),
    ...                       BenchmarkResult("gan", "failed", note="ValueError: x")]))
    detector   AUROC    std  fit s  score s  note
    vae        0.950  0.010   1.50     0.20
    gan       failed      -      -        -  ValueError: x
    """
    header = ("detector", "AUROC", "std", "fit s", "score s", "note")
    rows = []
    for result in results:
        auroc = _number(result.auroc, 3) if result.status == "ok" else result.status
        rows.append(
            (
                result.detector,
                auroc,
                _number(result.auroc_std, 3),
                _number(result.fit_seconds, 2),
                _number(result.score_seconds, 2),
                result.note,
            )
        )
    widths = [max(len(row[i]) for row in [header, *rows]) for i in range(5)]
    lines = []
    for row in [header, *rows]:
        cells = [row[0].ljust(widths[0])]
        cells += [cell.rjust(width) for cell, width in zip(row[1:5], widths[1:])]
        lines.append("  ".join([*cells, row[5]]).rstrip())
    return "\n".join(lines)


def describe_benchmark(
    data=None,
    *,
    normal_classes=DEFAULT_NORMAL_CLASSES,
    epochs=DEFAULT_EPOCHS,
    seed=0,
    image_size=64,
):
    """A two-line description of a benchmark run, printed above the table."""
    if data is None:
        classes = ", ".join(str(c) for c in normal_classes)
        where = (
            "scikit-learn digits (8x8), one-class: train on half of a digit, test on "
            f"the other half + all other digits; normal digits {classes}; "
            f"pretrained detectors at image_size {DIGITS_INPUT_SIZE}"
        )
    else:
        where = f"MVTec-style data {str(data)!r} at image size {image_size}"
    epochs_text = "detector defaults" if epochs is None else str(epochs)
    return (
        f"skanomaly benchmark: {where}; epochs {epochs_text}; seed {seed}.\n"
        "AUROC (anomalies positive) and its std over the datasets; fit s and "
        "score s: mean seconds per fit and per test-set scoring."
    )
