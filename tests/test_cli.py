import csv
import os
import re
import shutil
import subprocess
import sys
from importlib.metadata import entry_points
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

import skanomaly
from skanomaly.app.cli import main
from skanomaly.app.cli.options import _parse_value
from skanomaly.app.datasets import load_labelled_image_folder

REPO = Path(skanomaly.__file__).resolve().parents[1]


def run_cli(*args, cwd=None):
    """Run ``python -m skanomaly ARGS`` in a fresh interpreter."""
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(
        [str(REPO), *filter(None, [env.get("PYTHONPATH")])]
    )
    env["OMP_NUM_THREADS"] = "1"  # tiny models; spare the shared CPUs
    return subprocess.run(
        [sys.executable, "-m", "skanomaly", *map(str, args)],
        capture_output=True,
        text=True,
        cwd=cwd,
        env=env,
        timeout=300,
    )


def test_console_script_is_declared():
    (script,) = [
        ep for ep in entry_points(group="console_scripts") if ep.name == "skanomaly"
    ]
    assert script.value == "skanomaly.app.cli:main"
    assert script.load() is main


def test_list_through_the_entry_point():
    result = run_cli("list")
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert lines[0].split() == ["detector", "class", "package"]
    rows = {line.split()[0]: line.split()[1:] for line in lines[1:]}
    assert rows["autoencoder"] == [
        "skanomaly.detectors.autoencoder.AutoEncoder",
        "skanomaly",
    ]
    assert rows["vae"] == ["skanomaly.detectors.vae.VAE", "skanomaly"]
    assert set(rows) == set(skanomaly.list_detectors())


@pytest.mark.parametrize("command", ["list", "fit", "score", "evaluate", "benchmark"])
def test_help(command, capsys):
    assert main([command, "--help"]) == 0
    assert f"usage: skanomaly {command}" in capsys.readouterr().out


def test_benchmark_through_the_entry_point():
    result = run_cli(
        "benchmark",
        "--detectors",
        "mahalanobis",
        "--epochs",
        "1",
        "--normal-classes",
        "0",
        "--no-progress",
    )
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert lines[0].startswith("skanomaly benchmark: scikit-learn digits")
    header = lines.index(next(line for line in lines if line.startswith("detector")))
    assert lines[header].split()[:2] == ["detector", "AUROC"]
    row, total = lines[header + 1 :]
    name, auroc, *_ = row.split()
    assert name == "mahalanobis" and 0.9 <= float(auroc) <= 1.0
    assert re.fullmatch(r"total: \d+ s", total)


@pytest.mark.parametrize(
    ("argv", "status", "message"),
    [
        (["benchmark", "--detectors", "nope"], 1, "Unknown detector 'nope'"),
        (["benchmark", "--epochs", "0"], 2, "expected a positive integer"),
        (["benchmark", "--normal-classes", "12"], 1, "must be digits 0..9"),
        (["benchmark", "--data", "/no/such/folder"], 1, "does not exist"),
        (["frobnicate"], 2, "invalid choice"),
    ],
)
def test_bad_input_gives_a_one_line_error(argv, status, message, capsys):
    assert main(argv) == status
    err = capsys.readouterr().err
    assert message in err
    assert len(err.strip().splitlines()) == 1


# ------------------------------------------------------------- fit, score, evaluate


def _make_category(root, rng):
    """A tiny MVTec-style category: noisy grey RGB parts, defects with a white patch."""
    for sub in ["train/good", "test/good", "test/broken", "test/crack"]:
        (root / sub).mkdir(parents=True)

    def part():
        return rng.integers(60, 100, (20, 20, 3), dtype=np.uint8)

    for i in range(16):
        Image.fromarray(part()).save(root / "train/good" / f"{i:03d}.png")
    for i in range(5):
        Image.fromarray(part()).save(root / "test/good" / f"{i:03d}.png")
    for kind in ["broken", "crack"]:
        for i in range(3):
            pixels = part()
            pixels[4:12, 4:12] = 255
            Image.fromarray(pixels).save(root / "test" / kind / f"{i:03d}.jpg")
    return root


@pytest.fixture(scope="module")
def category(tmp_path_factory):
    return _make_category(
        tmp_path_factory.mktemp("data") / "bottle", np.random.default_rng(0)
    )


@pytest.fixture(scope="module")
def fitted(category, tmp_path_factory):
    """``skanomaly fit`` through the entry point; (completed process, model path)."""
    model = tmp_path_factory.mktemp("models") / "bottle.ska"
    result = run_cli(
        "fit",
        "autoencoder",
        category / "train/good",
        "-o",
        model,
        "--param",
        "max_epochs=2",
        "-p",
        "hidden_sizes=(8,)",
        "-p",
        "random_state=0",
        "--image-size",
        "16",
        "--verbose",
    )
    return result, model


def test_fit_through_the_entry_point(fitted):
    result, model = fitted
    assert result.returncode == 0, result.stderr
    assert "train_loss" in result.stdout  # the training log is shown
    assert result.stdout.splitlines()[-1] == (
        f"Fitted AutoEncoder on 16 samples of shape 3x16x16; saved to {model}."
    )
    detector = skanomaly.load(model)
    assert detector.max_epochs == 2 and detector.hidden_sizes == (8,)
    assert detector.random_state == 0 and detector.verbose == 0
    assert detector.image_shape_ == (3, 16, 16)


def _read_csv(text):
    """(path, score, label, p_value) rows of a calibrated model's CSV."""
    rows = list(csv.reader(text.splitlines()))
    assert rows[0] == ["path", "score", "label", "p_value"]
    return [(path, float(s), int(label), float(p)) for path, s, label, p in rows[1:]]


def test_score_through_the_entry_point(fitted, category, tmp_path):
    _, model = fitted
    out = tmp_path / "scores.csv"
    result = run_cli("score", model, category / "test", "--csv", out)
    assert result.returncode == 0, result.stderr
    rows = _read_csv(out.read_text())
    assert result.stdout.strip() == (
        f"Scored 11 samples, {sum(r[2] == -1 for r in rows)} predicted anomalous; "
        f"wrote {out}."
    )
    # one row per file; the label is the sign of the score
    expected = sorted(str(p) for p in (category / "test").rglob("*.*"))
    assert [r[0] for r in rows] == expected
    assert all((label == -1) == (score < 0) for _, score, label, _ in rows)
    # the same numbers as the detector gives on the resized images
    detector = skanomaly.load(model)
    X, y, _ = load_labelled_image_folder(category / "test", image_size=16)
    np.testing.assert_array_equal([r[1] for r in rows], detector.decision_function(X))
    np.testing.assert_array_equal([r[3] for r in rows], detector.conformal_p_values(X))
    defects = [score for path, score, _, _ in rows if "/good/" not in path]
    assert max(defects) < min(score for path, score, _, _ in rows if "/good/" in path)


def test_score_into_a_closed_pipe_is_not_an_error(fitted, category):
    # `skanomaly score model data | head -1`: the reader leaves early
    _, model = fitted
    env = dict(os.environ, OMP_NUM_THREADS="1")
    env["PYTHONPATH"] = os.pathsep.join([str(REPO), env.get("PYTHONPATH", "")])
    process = subprocess.Popen(
        [sys.executable, "-m", "skanomaly", "score", str(model), str(category)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env=env,
    )
    process.stdout.close()  # before the command writes its first row
    _, stderr = process.communicate(timeout=300)
    assert process.returncode == 0, stderr
    assert stderr == b""


def test_score_to_stdout(fitted, category, capsys):
    _, model = fitted
    assert main(["score", str(model), str(category / "test/good")]) == 0
    rows = _read_csv(capsys.readouterr().out)
    assert len(rows) == 5


def test_evaluate_through_the_entry_point(fitted, category):
    _, model = fitted
    result = run_cli("evaluate", model, category)  # a category root: its test/
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert lines[0] == (
        f"AutoEncoder on {category / 'test'}: 5 good, 6 anomalous images"
    )
    metrics = {line.split()[0]: float(line.split()[1]) for line in lines[1:4]}
    # white patches are far from anything the autoencoder saw
    assert metrics == {"AUROC": 1.0, "AP": 1.0, "F1": pytest.approx(metrics["F1"])}
    assert 0.0 <= metrics["F1"] <= 1.0
    assert lines[4].startswith("FAR    ") and "of 5 good images predicted" in lines[4]
    assert lines[5].startswith("  requested: ") and "contamination='auto'" in lines[5]
    assert lines[6].startswith("  calibration: split, ")
    assert [line.split()[3] for line in lines[7:]] == ["broken:", "crack:"]


# ------------------------------------------------------------- p-values and FDR


@pytest.fixture(scope="module")
def rows(tmp_path_factory):
    """A Mahalanobis model at contamination 0.1; 40 normal and 10 shifted rows."""
    folder = tmp_path_factory.mktemp("rows")
    rng = np.random.default_rng(0)
    np.save(folder / "train.npy", rng.normal(size=(200, 3)))
    X = np.r_[rng.normal(size=(40, 3)), rng.normal(size=(10, 3)) + 3.0]
    np.save(folder / "test.npy", X)
    model = folder / "m.ska"
    argv = ["fit", "mahalanobis", folder / "train.npy", "-o", model]
    assert main([*map(str, argv), "-p", "contamination=0.1"]) == 0
    return model, folder / "test.npy", X


def _benjamini_hochberg_by_hand(p_values, alpha):
    """Flag the k smallest p-values, k the largest with p_(k) <= k alpha / m."""
    m = len(p_values)
    order = sorted(range(m), key=lambda i: p_values[i])
    k = max(
        [
            rank
            for rank in range(1, m + 1)
            if p_values[order[rank - 1]] <= rank * alpha / m
        ],
        default=0,
    )
    return [i in order[:k] for i in range(m)]


def test_score_writes_p_values_and_the_fdr_decision(rows, tmp_path, capsys):
    model, data, X = rows
    out = tmp_path / "scores.csv"
    capsys.readouterr()
    assert (
        main(["score", str(model), str(data), "--csv", str(out), "--fdr", "0.2"]) == 0
    )
    table = list(csv.reader(out.read_text().splitlines()))
    assert table[0] == ["path", "score", "label", "p_value", "fdr_label"]
    labels = np.array([int(row[2]) for row in table[1:]])
    p_values = np.array([float(row[3]) for row in table[1:]])
    fdr_labels = np.array([int(row[4]) for row in table[1:]])
    detector = skanomaly.load(model)
    np.testing.assert_array_equal(p_values, detector.conformal_p_values(X))
    # with a float contamination, label is -1 exactly where p <= contamination
    np.testing.assert_array_equal(labels == -1, p_values <= 0.1)
    flagged = _benjamini_hochberg_by_hand(p_values.tolist(), 0.2)
    np.testing.assert_array_equal(fdr_labels == -1, flagged)
    assert 0 < sum(flagged) < len(X)  # the test decides something
    assert capsys.readouterr().out.strip() == (
        f"Scored 50 samples, {int((labels == -1).sum())} predicted anomalous, "
        f"{sum(flagged)} at FDR 0.2; wrote {out}."
    )


def test_evaluate_prints_the_false_alarm_rate_next_to_the_level(rows, tmp_path, capsys):
    pd = pytest.importorskip("pandas")
    model, _, X = rows
    anomalous = np.r_[np.zeros(40, int), np.ones(10, int)]
    frame = pd.DataFrame(X, columns=["x0", "x1", "x2"]).assign(label=anomalous)
    frame.to_csv(tmp_path / "test.csv", index=False)
    argv = ["evaluate", str(model), str(tmp_path / "test.csv"), "--label-column"]
    capsys.readouterr()
    assert main([*argv, "label"]) == 0
    lines = capsys.readouterr().out.splitlines()
    detector = skanomaly.load(model)
    false_alarms = int((detector.predict(X[:40]) == -1).sum())
    assert lines[4] == (
        f"FAR    {false_alarms / 40:.4f}  (false-alarm rate at the threshold: "
        f"{false_alarms} of 40 normal rows predicted anomalous)"
    )
    assert lines[5] == "  requested: 0.1 (contamination=0.1)"
    assert lines[6] == (
        "  calibration: leave-one-out, 200 training samples, each scored by the "
        "model fitted without it"
    )


@pytest.fixture(scope="module")
def uncalibrated(rows, tmp_path_factory):
    """The model as a file saved before calibration (or a plugin) holds it."""
    model, data, _ = rows
    detector = skanomaly.load(model)
    del detector.calibration_scores_, detector.calibration_
    path = tmp_path_factory.mktemp("old") / "old.ska"
    skanomaly.save(detector, path)
    return path, data


def test_a_model_without_calibration_scores_gets_no_p_values(uncalibrated, capsys):
    model, data = uncalibrated
    capsys.readouterr()
    assert main(["score", str(model), str(data)]) == 0
    captured = capsys.readouterr()
    assert captured.out.splitlines()[0] == "path,score,label"
    assert "keeps no calibration scores" in captured.err
    line = _one_line_error(["score", model, data, "--fdr", "0.1"], capsys)
    assert "--fdr needs conformal p-values" in line
    line = _one_line_error(["score", model, data, "--fdr", "1.5"], capsys, status=2)
    assert "expected a level in (0, 1), got 1.5" in line


def test_tabular_fit_and_score_from_npy(tmp_path, capsys):
    rng = np.random.default_rng(0)
    np.save(tmp_path / "train.npy", rng.normal(size=(50, 3)))
    np.save(tmp_path / "test.npy", np.array([[0.0, 0.0, 0.0], [9.0, 9.0, 9.0]]))
    model = tmp_path / "m.ska"
    assert (
        main(["fit", "mahalanobis", str(tmp_path / "train.npy"), "-o", str(model)]) == 0
    )
    capsys.readouterr()
    assert main(["score", str(model), str(tmp_path / "test.npy")]) == 0
    rows = _read_csv(capsys.readouterr().out)
    assert [(r[0], r[2]) for r in rows] == [
        (f"{tmp_path / 'test.npy'}[0]", 1),
        (f"{tmp_path / 'test.npy'}[1]", -1),
    ]


@pytest.mark.parametrize(
    ("text", "value"),
    [
        ("15", 15),
        ("1e-3", 1e-3),
        ("(64, 32)", (64, 32)),
        ("[8]", [8]),
        ("None", None),
        ("none", None),
        ("true", True),
        ("False", False),
        ("cpu", "cpu"),
        ("'auto'", "auto"),
        ("reconstruction_error", "reconstruction_error"),
    ],
)
def test_param_values_are_parsed(text, value):
    parsed = _parse_value(text)
    assert parsed == value and type(parsed) is type(value)


def _one_line_error(argv, capsys, status=1):
    assert main([str(a) for a in argv]) == status
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1, err
    return err[0]


def test_fit_errors(category, tmp_path, capsys):
    good = category / "train/good"
    out = tmp_path / "m.ska"
    for argv, message in [
        (["fit", "autoencoder", tmp_path / "nowhere", "-o", out], "does not exist"),
        (["fit", "nope", good, "-o", out], "Unknown detector 'nope'"),
        (["fit", "autoencoder", good, "-o", out, "-p", "foo=1"], "'foo'"),
        (
            ["fit", "autoencoder", good, "-o", out, "-p", "max_epochs=-1"],
            "'max_epochs' parameter of AutoEncoder must be an int",
        ),
        (["fit", "autoencoder", category / "test", "-o", out], "No image files"),
        (["fit", "autoencoder", good, "-o", tmp_path / "no/m.ska"], "Output folder"),
    ]:
        line = _one_line_error(argv, capsys)
        assert line.startswith("skanomaly: error: ") and message in line
    assert not out.exists()
    line = _one_line_error(["fit", "autoencoder", good, "-p", "x"], capsys, status=2)
    assert "expected NAME=VALUE" in line


def test_score_and_evaluate_errors(fitted, category, tmp_path, capsys):
    _, model = fitted
    damaged = tmp_path / "damaged.ska"
    damaged.write_bytes(model.read_bytes()[:-10])
    foreign = tmp_path / "foreign.ska"
    foreign.write_text("path,score,label\n")
    for argv, message in [
        (["score", model, tmp_path / "nowhere"], "does not exist"),
        (["score", damaged, category / "test"], "not a valid skanomaly model file"),
        (["score", foreign, category / "test"], "not a valid skanomaly model file"),
        (["evaluate", tmp_path / "none.ska", category], "No skanomaly model file"),
        (["evaluate", model, category / "train"], "needs both normal images"),
    ]:
        line = _one_line_error(argv, capsys)
        assert line.startswith("skanomaly: error: ") and message in line


def test_outputs_never_overwrite_inputs(fitted, category, tmp_path, capsys):
    _, fitted_model = fitted
    model = tmp_path / "m.ska"
    model.write_bytes(fitted_model.read_bytes())
    images = tmp_path / "images"
    images.mkdir()
    for path in (category / "test/good").iterdir():
        (images / path.name).write_bytes(path.read_bytes())
    image = sorted(images.iterdir())[0]
    rows = tmp_path / "rows.npy"
    np.save(rows, np.random.default_rng(0).normal(size=(20, 3)))
    inputs = {p: p.read_bytes() for p in [model, image, rows]}
    for argv in [
        # it overwrote the model
        ["score", model, images, "--csv", model],
        ["score", model, images, "--csv", image],
        ["fit", "mahalanobis", rows, "-o", rows],
    ]:
        line = _one_line_error(argv, capsys)
        assert "Refusing to write" in line and "would overwrite the" in line
    assert {p: p.read_bytes() for p in inputs} == inputs


def test_fit_to_a_folder_fails_first(category, tmp_path, capsys, monkeypatch):
    trained = []
    monkeypatch.setattr(skanomaly.AutoEncoder, "fit", lambda *a: trained.append(a))
    argv = ["fit", "autoencoder", category / "train/good", "-o", tmp_path]
    line = _one_line_error(argv, capsys)
    assert "is a folder" in line
    assert trained == []


def test_non_callbacks_are_one_line_errors(category, tmp_path, capsys):
    # was an AttributeError about set_params, after reading the images
    argv = ["fit", "autoencoder", category / "train/good", "-o", tmp_path / "m.ska"]
    line = _one_line_error([*argv, "-p", "callbacks=['x']"], capsys)
    assert "'callbacks' parameter of AutoEncoder must be a list of skorch" in line


# ------------------------------------------------------------- anomaly maps


@pytest.fixture(scope="module")
def masked(tmp_path_factory):
    """A category with ground-truth masks and a PaDiM fitted on it (in-process)."""
    root = _make_category(
        tmp_path_factory.mktemp("masked") / "tile", np.random.default_rng(1)
    )
    for kind in ["broken", "crack"]:
        (root / "ground_truth" / kind).mkdir(parents=True)
        for i in range(3):
            mask = np.zeros((20, 20), np.uint8)
            mask[4:12, 4:12] = 255
            Image.fromarray(mask).save(
                root / "ground_truth" / kind / f"{i:03d}_mask.png"
            )
    model = root.parent / "padim.ska"
    params = [
        "backbone='test_efficientnet'",
        "weights=None",
        "image_size=32",
        "strides=(4, 8)",
        "n_channels=16",
        "random_state=0",
    ]
    argv = ["fit", "padim", str(root / "train/good"), "-o", str(model), "--quiet"]
    for param in params:
        argv += ["-p", param]
    assert main(argv) == 0
    return root, model


def test_evaluate_reports_pixel_metrics_with_masks(masked, capsys):
    from skanomaly.app.datasets import load_mvtec_category
    from skanomaly.metrics import aupro_score, pixel_roc_auc_score

    root, model = masked
    capsys.readouterr()
    assert main(["evaluate", str(model), str(root)]) == 0
    lines = capsys.readouterr().out.splitlines()
    printed = {line.split()[0]: float(line.split()[-1]) for line in lines[-2:]}
    detector = skanomaly.load(model)
    X, _, _, masks = load_mvtec_category(root, image_size=20, return_masks=True)
    maps = detector.anomaly_map(X)
    assert printed == {
        "pixel": pytest.approx(pixel_roc_auc_score(masks, maps), abs=1e-4),
        "AUPRO@0.3": pytest.approx(aupro_score(masks, maps), abs=1e-4),
    }
    assert printed["pixel"] > 0.9  # the white squares are where the masks are


def test_evaluate_with_a_missing_mask_fails_before_printing(masked, tmp_path, capsys):
    # a script must not read results from a command that then fails
    root, model = masked
    copy = tmp_path / "tile"
    shutil.copytree(root, copy)
    (copy / "ground_truth" / "crack" / "001_mask.png").unlink()
    capsys.readouterr()
    assert main(["evaluate", str(model), str(copy)]) == 1
    captured = capsys.readouterr()
    assert captured.out == ""
    assert "001_mask.png" in captured.err


def test_evaluate_report_has_the_printed_pixel_metrics(masked, tmp_path, capsys):
    pytest.importorskip("matplotlib")
    root, model = masked
    page = tmp_path / "report.html"
    capsys.readouterr()
    assert main(["evaluate", str(model), str(root), "--report", str(page)]) == 0
    printed = [
        line.split()[-1]
        for line in capsys.readouterr().out.splitlines()
        if line.startswith(("pixel AUROC", "AUPRO"))
    ]
    section = page.read_text().split('id="pixel-metrics"')[1].split("</section>")[0]
    assert re.findall(r"<td>([\d.]+)</td></tr>", section) == printed
    assert len(printed) == 2


def test_score_writes_maps_named_after_the_images(masked, tmp_path, capsys):
    root, model = masked
    out = tmp_path / "maps"
    assert main(["score", str(model), str(root / "test"), "--maps", str(out)]) == 0
    written = sorted(p.relative_to(out).as_posix() for p in out.rglob("*.png"))
    inputs = sorted(
        p.relative_to(root / "test").with_suffix(".png").as_posix()
        for p in (root / "test").rglob("*.*")
    )
    assert written == inputs
    detector = skanomaly.load(model)
    X, _, files = load_labelled_image_folder(root / "test", image_size=20)
    maps = detector.anomaly_map(X)
    with Image.open(out / "crack" / "001.png") as png:
        levels = np.asarray(png)
        top = float(png.text["skanomaly_map_max"])
    assert levels.shape == (20, 20) and levels.dtype == np.uint16
    assert top == pytest.approx(float(maps.max()))
    index = files.index(str(root / "test" / "crack" / "001.jpg"))
    np.testing.assert_allclose(levels / 65535 * top, maps[index], atol=top / 65535)


def test_score_maps_refuse_to_overwrite_inputs(masked, tmp_path, capsys):
    root, model = masked
    folder = tmp_path / "pngs"
    folder.mkdir()
    Image.fromarray(np.zeros((20, 20, 3), np.uint8)).save(folder / "a.png")
    assert main(["score", str(model), str(folder), "--maps", str(folder)]) == 1
    assert "Refusing to write --maps" in capsys.readouterr().err
    with Image.open(folder / "a.png") as png:
        assert png.mode == "RGB"  # untouched
    tabular = tmp_path / "none.ska"
    skanomaly.save(
        skanomaly.Mahalanobis().fit(np.random.default_rng(0).normal(size=(20, 2))),
        tabular,
    )
    np.save(tmp_path / "rows.npy", np.zeros((3, 2)))
    assert (
        main(
            [
                "score",
                str(tabular),
                str(tmp_path / "rows.npy"),
                "--maps",
                str(tmp_path / "m"),
            ]
        )
        == 1
    )
    assert "--maps needs a model fitted on images" in capsys.readouterr().err
    # a detector without maps, fitted on images
    no_maps = tmp_path / "deep.ska"
    with_no_maps = skanomaly.DeepMahalanobis(
        "test_efficientnet", weights=None, image_size=32
    ).fit(np.random.default_rng(0).integers(0, 255, (12, 3, 20, 20), np.uint8))
    skanomaly.save(with_no_maps, no_maps)
    assert (
        main(["score", str(no_maps), str(folder), "--maps", str(tmp_path / "m")]) == 1
    )
    assert "has no anomaly maps; --maps needs" in capsys.readouterr().err


def test_score_maps_name_both_inputs_of_one_map_name(masked, tmp_path, capsys):
    root, model = masked
    folder = tmp_path / "pngs"
    folder.mkdir()
    Image.fromarray(np.zeros((20, 20, 3), np.uint8)).save(folder / "a.png")
    Image.fromarray(np.zeros((20, 20, 3), np.uint8)).save(folder / "a.jpg")
    status = main(["score", str(model), str(folder), "--maps", str(tmp_path / "m")])
    assert status == 1
    err = capsys.readouterr().err
    assert "for both" in err and "a.jpg" in err and "a.png" in err
    assert not (tmp_path / "m").exists()
    # a file beside an image that is no image (annotations) takes no map
    (folder / "a.jpg").unlink()
    (folder / "a.json").write_text("{}")
    status = main(["score", str(model), str(folder), "--maps", str(tmp_path / "m")])
    assert status == 0, capsys.readouterr().err
    assert sorted(p.name for p in (tmp_path / "m").iterdir()) == ["a.png"]


def _parts_of_different_sizes(folder):
    """Three grey 'parts' of three sizes, as real inspection folders hold."""
    folder.mkdir()
    rng = np.random.default_rng(0)
    for i, (height, width) in enumerate([(40, 52), (36, 36), (48, 40)]):
        pixels = rng.integers(90, 110, (height, width), dtype=np.uint8)
        Image.fromarray(pixels).save(folder / f"{i}.png")
    return folder


def test_fit_resizes_images_of_different_sizes_to_the_detectors_input_size(
    tmp_path, capsys
):
    good = _parts_of_different_sizes(tmp_path / "good")
    params = ["-p", "max_epochs=1", "-p", "calibration=training", "--quiet"]
    out = tmp_path / "m.ska"
    assert main(["fit", "autoencoder", str(good), "-o", str(out), *params]) == 0
    err = capsys.readouterr().err
    assert "resized to 64x64" in err and "AutoEncoder" in err and "--image-size" in err
    assert skanomaly.load(out).image_shape_ == (1, 64, 64)
    # --image-size overrides, without a note
    out = tmp_path / "small.ska"
    argv = ["fit", "autoencoder", str(good), "-o", str(out), "--image-size", "32x24"]
    assert main([*argv, *params]) == 0
    assert "resized" not in capsys.readouterr().err
    assert skanomaly.load(out).image_shape_ == (1, 32, 24)


def test_fit_without_an_input_size_names_the_flag(tmp_path, capsys):
    good = _parts_of_different_sizes(tmp_path / "good")
    out = tmp_path / "m.ska"
    line = _one_line_error(["fit", "mahalanobis", str(good), "-o", str(out)], capsys)
    assert "differ in size" in line and "--image-size SIZE" in line
    assert "pass image_size" not in line
    assert not out.exists()


def test_input_size_is_declared_by_the_detector():
    from skanomaly.detectors.base import get_detector_tags

    assert get_detector_tags(skanomaly.PatchCore()).input_size == (224, 224)
    assert get_detector_tags(skanomaly.PaDiM(image_size=96)).input_size == (96, 96)
    lite2 = skanomaly.DeepMahalanobis(backbone="tf_efficientnet_lite2")
    assert get_detector_tags(lite2).input_size == (260, 260)
    assert get_detector_tags(skanomaly.GANomaly()).input_size == (64, 64)
    assert get_detector_tags(skanomaly.Mahalanobis()).input_size is None


@pytest.mark.parametrize(
    ("size", "message"),
    [
        ("100000", "larger than 16384 pixels a side"),
        ("64x20000", "larger than 16384 pixels a side"),
        ("0", "expected a size like 64 or 64x48"),
    ],
)
def test_an_image_size_is_checked_before_anything_is_read(
    tmp_path, capsys, size, message
):
    # --image-size 100000 once asked numpy for 931 GiB
    status = main(
        ["fit", "autoencoder", str(tmp_path), "-o", "m.ska", "--image-size", size]
    )
    assert status == 2
    err = capsys.readouterr().err
    assert "--image-size" in err and message in err


def test_an_object_npy_names_the_file(tmp_path, capsys):
    path = tmp_path / "rows.npy"
    np.save(path, np.array([{"a": 1}, None], dtype=object), allow_pickle=True)
    status = main(["fit", "mahalanobis", str(path), "-o", str(tmp_path / "m.ska")])
    assert status == 1
    err = capsys.readouterr().err
    assert "rows.npy" in err and "allow_pickle=False" in err


def test_a_size_the_detector_cannot_take_names_the_image_size_flag(tmp_path, capsys):
    folder = tmp_path / "good"
    folder.mkdir()
    for i in range(6):
        Image.fromarray(np.full((10, 10), 40 * i, np.uint8)).save(folder / f"{i}.png")
    argv = ["fit", "skipganomaly", str(folder), "-o", str(tmp_path / "m.ska")]
    assert main(argv) == 1
    err = capsys.readouterr().err
    assert "multiples of 4" in err and "--image-size SIZE resizes" in err
