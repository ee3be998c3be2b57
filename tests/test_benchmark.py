import math

import numpy as np
import pytest
from PIL import Image

from skanomaly import registry
from skanomaly.app import benchmark
from skanomaly.app.benchmark import (
    BenchmarkResult,
    format_results,
    load_benchmark_datasets,
    run_benchmark,
)
from skanomaly.detectors.base import BaseDetector


class _Boom(BaseDetector):
    def _fit(self, X):
        raise RuntimeError("boom in fit")

    def _score_samples(self, X):  # pragma: no cover - never fitted
        return np.zeros(len(X))


class _TabularOnly(BaseDetector):
    """Distance to the training mean; declares that it takes no images."""

    def __skanomaly_tags__(self):
        tags = super().__skanomaly_tags__()
        tags.images = False
        return tags

    def _fit(self, X):
        self.mean_ = X.mean(axis=0)

    def _score_samples(self, X):
        return -((X - self.mean_) ** 2).sum(axis=1)


class _MeanImage(BaseDetector):
    """Distance to the mean training image (any input)."""

    def __init__(self, max_epochs=1, random_state=None, contamination="auto"):
        super().__init__(contamination=contamination)
        self.max_epochs = max_epochs
        self.random_state = random_state

    def _fit(self, X):
        self.mean_ = X.mean(axis=0)

    def _score_samples(self, X):
        return -((X - self.mean_) ** 2).reshape(len(X), -1).sum(axis=1)


class _HasWeights(_MeanImage):
    """Works on pretrained weights that are here (installed or cached)."""

    def __skanomaly_tags__(self):
        tags = super().__skanomaly_tags__()
        tags.pretrained_weights = True
        return tags


class _NeedsWeights(_HasWeights):
    """Works on pretrained weights that are not here (a missing file)."""

    def __init__(self, backbone="resnet18", weights="/nonexistent/skanomaly.pth"):
        super().__init__()
        self.backbone = backbone
        self.weights = weights


_FAKES = {
    "boom": _Boom,
    "tabular_only": _TabularOnly,
    "mean_image": _MeanImage,
    "has_weights": _HasWeights,
    "needs_weights": _NeedsWeights,
}


@pytest.fixture
def fake_registry(monkeypatch):
    """Detectors defined here, found through the registry functions."""

    def get_detector(name):
        if name not in _FAKES:
            raise ValueError(f"Unknown detector {name!r}.")
        return _FAKES[name]

    def make_detector(name, **params):
        return get_detector(name)(**params)

    monkeypatch.setattr(registry, "get_detector", get_detector)
    monkeypatch.setattr(registry, "make_detector", make_detector)
    monkeypatch.setattr(
        registry,
        "list_detectors",
        lambda: ["boom", "has_weights", "mean_image", "needs_weights"],
    )


def test_digits_datasets_follow_the_one_class_protocol():
    datasets = load_benchmark_datasets(normal_classes=(0, 7), seed=1)
    assert [name for name, *_ in datasets] == ["digit 0", "digit 7"]
    for _, X_train, X_test, y_test in datasets:
        assert X_train.shape[1:] == (1, 8, 8) and X_test.shape[1:] == (1, 8, 8)
        # held-out normal samples + all samples of the nine other digits
        assert len(X_train) + len(X_test) == 1797
        assert 0 < (y_test == 1).sum() < 0.15 * len(y_test)
        assert set(np.unique(y_test)) == {-1, 1}


def test_make_passes_epochs_seed_and_silences():
    detector = benchmark._make("autoencoder", 3, 7, 64)
    assert detector.max_epochs == 3
    assert detector.random_state == 7
    assert detector.verbose == 0


def test_by_default_detectors_size_their_own_training():
    detector = benchmark._make("autoencoder", None, 7, 64)
    assert detector.max_epochs == "auto" and detector.batch_size == "auto"
    assert "image_size" not in detector.get_params()


def test_pretrained_detectors_read_the_benchmark_input_size():
    """Not the backbone's 224 px: 8x8 digits at 64 px (issue 24, the main job)."""
    for name in ("deep_mahalanobis", "padim", "patchcore"):
        assert benchmark._make(name, None, 0, 64).image_size == 64
        assert benchmark._make(name, None, 0, (32, 48)).image_size == (32, 48)
    assert "image_size 64" in benchmark.describe_benchmark()


def test_a_failing_detector_is_reported_and_others_still_run(fake_registry):
    results = run_benchmark(
        ["boom", "mean_image"], epochs=2, normal_classes=[0, 1], progress=False
    )
    boom, mean_image = results
    assert boom.status == "failed" and "RuntimeError: boom in fit" in boom.note
    assert math.isnan(boom.auroc)
    assert mean_image.status == "ok"
    assert set(mean_image.aurocs) == {"digit 0", "digit 1"}
    # the mean digit 0 is far from most other digits
    assert mean_image.aurocs["digit 0"] > 0.8
    assert mean_image.auroc == pytest.approx(np.mean(list(mean_image.aurocs.values())))
    assert mean_image.fit_seconds >= 0 and mean_image.score_seconds > 0


class _DivergesOnImages(_MeanImage):
    def _fit(self, X):
        if X.ndim != 2:
            raise ValueError("diverged")
        super()._fit(X)


_FAKES["diverges"] = _DivergesOnImages


def test_a_failure_on_images_is_a_failure_not_a_fallback(fake_registry):
    # it declares images, so a ValueError is its error, not a refusal
    (result,) = run_benchmark(["diverges"], normal_classes=[0], progress=False)
    assert result.status == "failed"
    assert result.note == "digit 0: ValueError: diverged"


def test_a_detector_declaring_no_images_gets_pixels_as_features(fake_registry):
    (result,) = run_benchmark(["tabular_only"], normal_classes=[0, 1], progress=False)
    assert result.status == "ok"
    assert result.note == "64 pixels as features (takes no images)"
    assert result.aurocs["digit 0"] > 0.8


def test_default_run_skips_only_detectors_whose_weights_are_missing(fake_registry):
    results = run_benchmark(normal_classes=[0], progress=False)
    by_name = {r.detector: r for r in results}
    assert list(by_name) == ["boom", "has_weights", "mean_image", "needs_weights"]
    assert by_name["needs_weights"].status == "skipped"
    assert "download" in by_name["needs_weights"].note
    assert by_name["has_weights"].status == "ok"
    assert by_name["mean_image"].status == "ok"
    # named, it runs
    (named,) = run_benchmark(["needs_weights"], normal_classes=[0], progress=False)
    assert named.status == "ok"


def test_unknown_detector_fails_before_training(fake_registry):
    with pytest.raises(ValueError, match="Unknown detector 'nope'"):
        run_benchmark(["mean_image", "nope"], progress=False)


def test_real_detector_on_digits_and_threads_restored():
    torch = pytest.importorskip("torch")
    before = torch.get_num_threads()
    (result,) = run_benchmark(
        ["autoencoder"], epochs=1, normal_classes=[0], threads=1, progress=False
    )
    assert torch.get_num_threads() == before
    assert result.status == "ok", result.note
    assert 0.0 <= result.auroc <= 1.0 and result.note == ""


def _mvtec_category(root, rng, size=(12, 16)):
    """A category: dark good images, defects with a bright square."""
    for sub in ["train/good", "test/good", "test/scratch"]:
        (root / sub).mkdir(parents=True)
    for i in range(6):
        pixels = rng.integers(0, 40, size, dtype=np.uint8)
        Image.fromarray(pixels).save(root / "train/good" / f"{i:03d}.png")
    for i in range(3):
        pixels = rng.integers(0, 40, size, dtype=np.uint8)
        Image.fromarray(pixels).save(root / "test/good" / f"{i:03d}.png")
        pixels[2:8, 2:8] = 255
        Image.fromarray(pixels).save(root / "test/scratch" / f"{i:03d}.png")


def test_mvtec_data_one_category_or_a_folder_of_them(tmp_path, fake_registry):
    rng = np.random.default_rng(0)
    _mvtec_category(tmp_path / "bottle", rng)
    _mvtec_category(tmp_path / "cable", rng)
    (single,) = run_benchmark(
        ["mean_image"], data=tmp_path / "bottle", image_size=8, progress=False
    )
    assert single.aurocs == {"bottle": 1.0}
    (both,) = run_benchmark(["mean_image"], data=tmp_path, progress=False)
    assert set(both.aurocs) == {"bottle", "cable"}
    datasets = load_benchmark_datasets(tmp_path / "cable", image_size=(4, 6))
    (name, X_train, X_test, y_test) = datasets[0]
    assert X_train.shape == (6, 1, 4, 6) and X_test.shape == (6, 1, 4, 6)
    assert y_test.tolist() == [1, 1, 1, -1, -1, -1]


def test_mvtec_data_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        load_benchmark_datasets(tmp_path / "missing")
    with pytest.raises(ValueError, match="MVTec AD layout"):
        load_benchmark_datasets(tmp_path)


def test_format_results_marks_failures_and_skips():
    table = format_results(
        [
            BenchmarkResult("vae", "ok", 0.91234, 0.02, 1.234, 0.056),
            BenchmarkResult("gan", "failed", note="RuntimeError: boom"),
            BenchmarkResult("deep", "skipped", note="needs weights"),
        ]
    )
    lines = table.splitlines()
    assert lines[0].split() == "detector AUROC std fit s score s note".split()
    assert lines[1].split() == ["vae", "0.912", "0.020", "1.23", "0.06"]
    assert lines[2].split()[:2] == ["gan", "failed"]
    assert lines[2].endswith("RuntimeError: boom")
    assert lines[3].split()[:2] == ["deep", "skipped"]


class _RaisesInInit(_MeanImage):
    def __init__(self, max_epochs=1, random_state=None, contamination="auto"):
        raise RuntimeError("cannot construct me")


class _NeedsAnArgument(_MeanImage):
    def __init__(self, required, contamination="auto"):  # no default
        super().__init__(contamination=contamination)
        self.required = required


class _ExitsInFit(_MeanImage):
    def _fit(self, X):
        import sys

        sys.exit(3)


class _InterruptedInFit(_MeanImage):
    def _fit(self, X):
        raise KeyboardInterrupt


_FAKES.update(
    raises_in_init=_RaisesInInit,
    needs_an_argument=_NeedsAnArgument,
    exits_in_fit=_ExitsInFit,
    interrupted=_InterruptedInFit,
)


@pytest.mark.parametrize("detectors", [None, "named"])
def test_one_bad_plugin_fails_by_name_and_the_others_run(
    fake_registry, monkeypatch, detectors
):
    bad = ["exits_in_fit", "needs_an_argument", "raises_in_init"]
    everything = sorted([*bad, "mean_image"])
    monkeypatch.setattr(registry, "list_detectors", lambda: everything)
    results = run_benchmark(
        None if detectors is None else everything,
        normal_classes=[0, 1],
        progress=False,
    )
    by_name = {r.detector: r for r in results}
    assert list(by_name) == everything
    assert by_name["mean_image"].status == "ok"
    assert set(by_name["mean_image"].aurocs) == {"digit 0", "digit 1"}
    for name in bad:
        assert by_name[name].status == "failed", name
        assert math.isnan(by_name[name].auroc)
    assert "RuntimeError: cannot construct me" in by_name["raises_in_init"].note
    assert "TypeError" in by_name["needs_an_argument"].note
    assert "required" in by_name["needs_an_argument"].note
    assert "SystemExit: 3" in by_name["exits_in_fit"].note
    # the table names each failure
    table = format_results(results).splitlines()
    for name in bad:
        (line,) = [line for line in table if line.split()[0] == name]
        assert line.split()[1] == "failed"


def test_a_keyboard_interrupt_in_a_detector_still_interrupts(fake_registry):
    with pytest.raises(KeyboardInterrupt):
        run_benchmark(["interrupted", "mean_image"], normal_classes=[0], progress=False)
