"""The HTML report: its sections, its inputs, and how it renders in a browser."""

import base64
import os
import re
import shutil

import numpy as np
import pytest
from _browser import CHROMIUM, render
from _images import bar_images
from _value_range import AS, digit_pixels

import skanomaly
from skanomaly import metrics
from skanomaly.reporting import anomaly_mask
from skanomaly.testing import fast_detector

pytest.importorskip("matplotlib")

LABELLED = [
    "summary",
    "dataset",
    "model",
    "scores",
    "calibration",
    "curves",
    "confusion",
]
UNLABELLED = ["summary", "dataset", "model", "scores", "calibration", "examples"]


def _sections(page):
    return re.findall(r'<section id="([\w-]+)">', page)


def _images(page):
    """(mime, decoded bytes) of every inline image."""
    return [
        (mime, base64.b64decode(data))
        for mime, data in re.findall(r'src="data:([\w/+]+);base64,([^"]+)"', page)
    ]


@pytest.fixture(scope="module")
def bars():
    """An AutoEncoder on horizontal bars; a test set with vertical-bar anomalies."""
    detector = skanomaly.AutoEncoder(
        latent_dim=8, base_channels=8, max_epochs=4, batch_size=8, random_state=0
    ).fit(bar_images(128, seed=0))
    X = np.concatenate([bar_images(40, seed=1), bar_images(20, True, seed=2)])
    X = np.rint(X * 255).astype(np.uint8)
    y = np.r_[np.zeros(40, int), np.ones(20, int)]  # 1 = anomaly
    names = [f"{'bad' if label else 'good'}/{i:03d}.png" for i, label in enumerate(y)]
    return detector, X, y, names


def test_labelled_images_report(bars, tmp_path):
    detector, X, y, names = bars
    kinds = np.where(y == 1, "vertical", "")
    path = skanomaly.report(
        detector, X, tmp_path / "r.html", y=y, names=names, kinds=kinds, dataset="bars"
    )
    page = path.read_text()
    assert _sections(page) == [*LABELLED, "kinds", "examples"]
    assert "<title>AutoEncoder on bars</title>" in page
    assert "https://" not in page and "http://" not in page  # nothing to fetch
    images = _images(page)
    # score and p-value histograms and curves as SVG, 2 x 8 tiles as PNG
    assert [mime for mime, _ in images] == ["image/svg+xml"] * 3 + ["image/png"] * 16
    assert all(data.startswith(b"\x89PNG") for mime, data in images[3:])
    # the grid starts with the lowest score_samples, each named and scored
    scores = detector.score_samples(X)
    worst = np.argsort(scores, kind="stable")[:8]
    shown = re.findall(r'<span class="name" title="([^"]+)">', page)
    assert shown[:8] == [names[i] for i in worst]
    assert f"score {scores[worst[0]]:.5g}" in page
    # the normal group holds only normal samples, least normal first
    normal = [i for i in np.argsort(scores, kind="stable") if y[i] == 0][:8]
    assert shown[8:] == [names[i] for i in normal]
    # the confusion matrix at offset_
    predicted = scores < detector.offset_
    true_positives = int((predicted & (y == 1)).sum())
    confusion = page[page.index('id="confusion"') :]
    assert f"<td>{true_positives}</td>" in confusion[: confusion.index("</table>")]


def test_report_without_labels(bars, tmp_path):
    detector, X, _, names = bars
    page = skanomaly.report(detector, X, tmp_path / "r.html", names=names).read_text()
    assert _sections(page) == UNLABELLED
    assert "No labels" in page and "Most normal samples" in page


def test_precomputed_scores_are_used(bars, tmp_path):
    detector, X, y, _ = bars
    fake = np.linspace(-1.0, 1.0, len(X))
    page = skanomaly.report(detector, X, tmp_path / "r.html", scores=fake).read_text()
    assert f"score {fake[0]:.5g}" in page  # the lowest of the given scores


def test_detector_without_maps_gets_no_grid(tmp_path):
    rng = np.random.default_rng(0)
    images = rng.integers(100, 156, size=(30, 3, 16, 16), dtype=np.uint8)
    detector = fast_detector(skanomaly.DeepMahalanobis).fit(images)
    y = np.r_[np.ones(20), -np.ones(10)]  # the outlier convention
    page = skanomaly.report(detector, images, tmp_path / "r.html", y=y).read_text()
    assert _sections(page) == [*LABELLED, "examples"]
    assert "has no anomaly maps" in page and 'class="grid"' not in page
    assert [mime for mime, _ in _images(page)] == ["image/svg+xml"] * 3


def test_tabular_report_lists_rows(tmp_path):
    X = np.random.default_rng(0).normal(size=(50, 3))
    X[:5] += 6
    detector = skanomaly.Mahalanobis().fit(X[5:])
    page = skanomaly.report(
        detector, X, tmp_path / "r.html", y=np.r_[np.ones(5), np.zeros(45)]
    ).read_text()
    assert _sections(page) == [*LABELLED, "examples"]
    assert "Tabular data" in page and "tabular, 3 features" in page
    first_rows = re.findall(r"<tr><td><code>(\d+)</code>", page)[:5]
    assert sorted(first_rows) == ["0", "1", "2", "3", "4"]


def _rows_of(page, section):
    """(label, value) of the two-column table of a section, tags stripped."""
    body = page.split(f'id="{section}"')[1].split("</table>")[0]
    return {
        re.sub("<[^>]+>", "", label): re.sub("<[^>]+>", "", value)
        for label, value in re.findall(r"<tr><td>(.*?)</td><td>(.*?)</td></tr>", body)
    }


@pytest.fixture(scope="module")
def gaussian():
    """Mahalanobis at contamination 0.1; 300 fresh normals, 30 shifted rows."""
    rng = np.random.default_rng(0)
    detector = skanomaly.Mahalanobis(contamination=0.1).fit(rng.normal(size=(400, 4)))
    X = np.r_[rng.normal(size=(300, 4)), rng.normal(size=(30, 4)) + 3.0]
    y = np.r_[np.zeros(300, int), np.ones(30, int)]
    return detector, X, y


def test_the_false_alarm_rate_is_shown_next_to_the_level(gaussian, tmp_path):
    detector, X, y = gaussian
    page = skanomaly.report(detector, X, tmp_path / "r.html", y=y).read_text()
    false_alarms = int((detector.predict(X[y == 0]) == -1).sum())
    assert 0 < false_alarms < 300
    rows = _rows_of(page, "calibration")
    assert rows["false-alarm rate on the labelled normals"].startswith(
        f"{false_alarms / 300:.4f} ({false_alarms} of 300 normal samples predicted "
        "anomalous; at the requested level 0.1, 300 samples vary by a binomial "
        f"standard deviation of {np.sqrt(0.1 * 0.9 / 300):.4f})"
    )
    assert rows["false-alarm level requested"] == "0.1 (contamination=0.1)"
    n = len(detector.calibration_scores_)
    assert rows["calibration"] == (
        f"leave-one-out, {n} training samples, each scored by the model fitted "
        "without it"
    )
    # the level the conformal threshold gives: floor((n + 1) c) / (n + 1)
    k = int(np.floor((n + 1) * 0.1))
    assert rows["expected false-alarm rate on new normals"] == (
        f"{k / (n + 1):.4g} (offset_ is the calibration score of rank {k}: "
        f"{k} / ({n} + 1))"
    )
    summary = page.split('id="summary"')[1].split("</section>")[0]
    assert (
        f'<div class="value">{false_alarms / 300:.4f}</div><div class="label">'
        "false-alarm rate (requested 0.1)</div>"
    ) in summary


def test_p_values_are_those_of_the_detector(gaussian, tmp_path):
    detector, X, y = gaussian
    page = skanomaly.report(detector, X, tmp_path / "r.html", y=y).read_text()
    shown = re.findall(
        r"<tr><td><code>(\d+)</code></td><td>[^<]+</td><td>([^<]+)</td>", page
    )
    p_values = detector.conformal_p_values(X)
    assert len(shown) == 16
    assert all(value == f"{p_values[int(row)]:.4g}" for row, value in shown)


@pytest.mark.parametrize("n_calibration", [1, 7, 19, 20, 399, 5000])
def test_uniform_p_values_fill_every_bin_of_the_histogram_evenly(n_calibration):
    from skanomaly.reporting import _p_value_bins

    grid = np.arange(1, n_calibration + 2) / (n_calibration + 1)
    bins = _p_value_bins(n_calibration)
    assert len(bins) - 1 == min(20, n_calibration + 1)
    density, _ = np.histogram(grid, bins=bins, density=True)
    np.testing.assert_allclose(density, 1.0)


def test_auto_contamination_states_its_rule_and_its_rate(gaussian, tmp_path):
    _, X, y = gaussian
    detector = skanomaly.Mahalanobis().fit(X[y == 0])
    page = skanomaly.report(detector, X, tmp_path / "r.html", y=y).read_text()
    level = _rows_of(page, "calibration")["false-alarm level requested"]
    scores = detector.calibration_scores_
    assert detector.offset_ not in scores  # the rule falls between scores
    below = int((scores < detector.offset_).sum())
    assert 0 < below < len(scores)
    # 'auto' flags new normals as often as the calibration samples
    assert level.startswith(f"{below / len(scores):.4g} (contamination=")
    assert "median - 3 x 1.4826 x MAD of the calibration scores" in level


def test_training_calibration_promises_nothing_on_new_data(gaussian, tmp_path):
    _, X, y = gaussian
    detector = skanomaly.Mahalanobis(contamination=0.1, calibration="training")
    detector.fit(X[y == 0])
    page = skanomaly.report(detector, X, tmp_path / "r.html", y=y).read_text()
    rows = _rows_of(page, "calibration")
    assert rows["calibration"] == (
        "training, 300 training samples, scored by the model fitted on them"
    )
    assert rows["false-alarm level requested"].startswith(
        "0.1 (contamination=0.1); calibrated on the training samples"
    )
    assert "expected false-alarm rate on new normals" not in rows
    assert "there is no guarantee" in page


def test_a_model_without_calibration_is_reported_as_such(gaussian, tmp_path):
    detector, X, y = gaussian
    detector = skanomaly.Mahalanobis(contamination=0.1).fit(X[y == 0])
    del detector.calibration_scores_, detector.calibration_  # as a plugin might
    page = skanomaly.report(detector, X, tmp_path / "r.html", y=y).read_text()
    rows = _rows_of(page, "calibration")
    assert rows["calibration"].startswith("none: the model keeps no calibration")
    assert "expected false-alarm rate on new normals" not in rows
    assert rows["false-alarm rate on the labelled normals"].startswith(
        f"{(detector.predict(X[y == 0]) == -1).mean():.4f} "
    )
    assert (
        "there are no conformal p-values" in page
        and "p-value" not in page.split('id="examples"')[1]
    )
    assert [mime for mime, _ in _images(page)] == ["image/svg+xml"] * 2


def test_pixel_metrics_are_those_of_the_metrics_module(bars, tmp_path):
    detector, X, y, _ = bars
    masks = np.zeros((len(X), 16, 16), dtype=bool)
    masks[y == 1, :, 6:10] = True  # the vertical bars
    page = skanomaly.report(detector, X, tmp_path / "a.html", y=y, masks=masks)
    section = page.read_text().split('id="pixel-metrics"')[1].split("</section>")[0]
    maps = detector.anomaly_map(X)
    values = re.findall(r"<tr><td>([^<]+)</td><td>([\d.]+)</td></tr>", section)
    assert values == [
        ("pixel AUROC", f"{metrics.pixel_roc_auc_score(masks, maps):.4f}"),
        ("AUPRO (FPR up to 0.3)", f"{metrics.aupro_score(masks, maps):.4f}"),
    ]


def test_masks_of_another_size_are_refused(bars, tmp_path):
    detector, X, y, _ = bars
    with pytest.raises(
        ValueError, match=r"= \(60, 16, 16\), the size of the images; got \(60, 8, 8\)"
    ):
        skanomaly.report(
            detector, X, tmp_path / "a.html", y=y, masks=np.zeros((len(X), 8, 8))
        )
    assert not (tmp_path / "a.html").exists()


@pytest.mark.parametrize(
    ("y", "expected"),
    [
        ([0, 1, 1], [False, True, True]),
        ([1, -1, 1], [False, True, False]),
        ([True, False], [True, False]),
        ([0.0, 1.0], [False, True]),
    ],
)
def test_both_label_conventions(y, expected):
    assert anomaly_mask(y).tolist() == expected


@pytest.mark.parametrize(
    ("y", "message"),
    [
        ([1, 1, 1], "only the label 1"),
        ([0, 1, 2], r"labels \[0.0, 1.0, 2.0\]"),
        ([0, -1, 1], "expected 1 = anomaly / 0 = normal"),
        (["good", "bad"], "non-numbers"),
        # strings are not labels (skanomaly.labels, rule 1): the metrics never
        # read "1" as 1, so the report does not either
        (["0", "1"], "non-numbers"),
        (["1", "-1"], "non-numbers"),
        # booleans must hold both classes too
        ([True, True], "only the label 1"),
        ([0.0, np.nan], "missing values"),
    ],
)
def test_ambiguous_labels_are_refused(y, message):
    with pytest.raises(ValueError, match=message):
        anomaly_mask(y)


def test_bad_report_input(bars, tmp_path):
    detector, X, y, _ = bars
    with pytest.raises(ValueError, match="names has 3 entries but X has 60"):
        skanomaly.report(detector, X, tmp_path / "r.html", names=["a", "b", "c"])
    with pytest.raises(ValueError, match="y has 2 entries"):
        skanomaly.report(detector, X, tmp_path / "r.html", y=[0, 1])
    with pytest.raises(FileNotFoundError, match="does not exist"):
        skanomaly.report(detector, X, tmp_path / "no" / "r.html")
    with pytest.raises(ValueError, match="not fitted"):
        skanomaly.report(skanomaly.AutoEncoder(), X, tmp_path / "r.html")
    assert list(tmp_path.iterdir()) == []


@pytest.mark.skipif(
    CHROMIUM is None,
    reason="no Chromium to render the report in (Debian: apt-get install chromium)",
)
def test_report_renders_in_chromium(bars, tmp_path):
    detector, X, y, names = bars
    path = skanomaly.report(
        detector, X, tmp_path / "report.html", y=y, names=names, dataset="bars"
    )
    screenshot = tmp_path / "report.png"
    verdict = render(path, screenshot=screenshot)
    assert verdict["images"] == 19 and verdict["broken"] == []
    assert all(width > 0 for width in verdict["widths"])
    # every section is laid out (the page has no hidden parts)
    assert list(verdict["sections"]) == [*LABELLED, "examples"]
    assert all(height > 50 for height in verdict["sections"].values())
    assert screenshot.read_bytes().startswith(b"\x89PNG")
    keep = os.environ.get("SKANOMALY_SCREENSHOTS")  # to look at it by eye
    if keep:
        shutil.copy(screenshot, keep)


def test_evaluate_and_score_reports_from_the_command_line(bars, tmp_path, capsys):
    from PIL import Image

    from skanomaly.app.cli import main

    detector, X, y, _ = bars
    for i, (image, label) in enumerate(zip(X, y)):
        folder = tmp_path / "test" / ("scratch" if label else "good")
        folder.mkdir(parents=True, exist_ok=True)
        Image.fromarray(image[0]).save(folder / f"{i:03d}.png")
    model = tmp_path / "bars.ska"
    skanomaly.save(detector, model)
    report = tmp_path / "evaluate.html"
    assert main(["evaluate", str(model), str(tmp_path), "--report", str(report)]) == 0
    assert capsys.readouterr().out.splitlines()[-1] == f"Wrote the report {report}."
    page = report.read_text()
    assert _sections(page) == [*LABELLED, "kinds", "examples"]
    assert "<td>scratch</td><td>20</td>" in page
    assert str(tmp_path / "test" / "scratch") in page  # file names in the grid
    report = tmp_path / "score.html"
    out = tmp_path / "scores.csv"
    argv = ["score", model, tmp_path / "test", "--csv", out, "--report", report]
    assert main([str(a) for a in argv]) == 0
    assert _sections(report.read_text()) == UNLABELLED
    # the report may not replace the model, and its folder must exist
    for target, message in [
        (model, "would overwrite the model"),
        (tmp_path / "no/r.html", "does not exist"),
    ]:
        assert (
            main(["evaluate", str(model), str(tmp_path), "--report", str(target)]) == 1
        )
        assert message in capsys.readouterr().err
    assert skanomaly.load(model).offset_ == detector.offset_


_SCRIPT = "<script>alert(1)</script>"


def _hostile_detector_class():
    """An image detector without maps whose class, module, parameter names,
    parameter values and fitted shape carry HTML, as a plugin's might."""
    from skanomaly.detectors.base import BaseDetector

    def __init__(self, contamination="auto", label=_SCRIPT):
        BaseDetector.__init__(self, contamination=contamination)
        self.label = label

    def _fit(self, X):
        self.mean_ = X.mean(axis=0)

    def _score_samples(self, X):
        return -((X - self.mean_) ** 2).reshape(len(X), -1).sum(axis=1)

    def __skanomaly_tags__(self):
        tags = BaseDetector.__skanomaly_tags__(self)
        tags.images, tags.anomaly_maps = True, False
        return tags

    cls = type(
        _SCRIPT,
        (BaseDetector,),
        {
            "__init__": __init__,
            "_fit": _fit,
            "_score_samples": _score_samples,
            "__skanomaly_tags__": __skanomaly_tags__,
        },
    )
    cls.__module__ = f"evil{_SCRIPT}"
    cls.__qualname__ = f"Outer.{_SCRIPT}"
    return cls


def test_every_string_from_a_detector_is_escaped(tmp_path):
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, size=(24, 1, 8, 8), dtype=np.uint8)
    detector = _hostile_detector_class()().fit(images)
    y = np.r_[np.zeros(16, int), np.ones(8, int)]
    masks = np.zeros((24, 8, 8), bool)
    masks[16:, 2:4, 2:4] = True
    names = [f"{_SCRIPT}{i}.png" for i in range(24)]
    page = skanomaly.report(
        detector, images, tmp_path / "r.html", y=y, names=names, masks=masks
    ).read_text()
    assert "<script" not in page.lower()
    escaped = "&lt;script&gt;alert(1)&lt;/script&gt;"
    model = page.split('id="model"')[1].split("</section>")[0]
    assert f"{escaped} (<code>(not registered)</code>)" in model  # class name
    assert f"<code>evil{escaped}.Outer.{escaped}</code>" in model  # module, qualname
    assert f"&#x27;{escaped}&#x27;" in model  # a parameter's repr
    for section in ("pixel-metrics", "examples"):  # notes that name the class
        body = page.split(f'id="{section}"')[1].split("</section>")[0]
        assert f"{escaped} has no anomaly maps" in body
    assert f"<title>{escaped} report</title>" in page


# ------------------------------------- images read in the range of fit


@pytest.fixture(scope="module")
def float_0_255():
    """An AutoEncoder fitted on float32 0..255 digits; test digits as pixels."""
    train, test = digit_pixels()
    detector = fast_detector(skanomaly.AutoEncoder, random_state=0)
    return detector.fit(AS["float32_255"](train)), test


def test_the_report_reads_images_in_the_range_of_fit(float_0_255, tmp_path):
    # the same pixels as uint8 scored 0.39 off, every image an outlier
    detector, test = float_0_255
    lowest = detector.score_samples(AS["float32_255"](test)).min()
    with pytest.warns(UserWarning, match="converted to float32"):
        page = skanomaly.report(
            detector, AS["uint8"](test), tmp_path / "r.html"
        ).read_text()
    assert f"score {lowest:.5g}" in page
    assert _rows_of(page, "model")["input"] == "float32 images, read in [0, 255]"


@pytest.mark.parametrize("given_scores", [False, True])
def test_the_report_refuses_images_of_another_range(
    float_0_255, tmp_path, given_scores
):
    # also when the scores are given: the grid and the maps read X too
    detector, test = float_0_255
    scores = np.zeros(len(test)) if given_scores else None
    with pytest.raises(ValueError, match="multiply them by 255"):
        skanomaly.report(
            detector, AS["float32_unit"](test), tmp_path / "r.html", scores=scores
        )
    assert list(tmp_path.iterdir()) == []
