"""ONNX export: the model card, refusals, ``skanomaly export``.

The graphs of every exportable detector are checked against score_samples
in test_export_tabular.py, test_export_images.py, test_export_gans.py and
test_export_patches.py. Only the tests that export need the ONNX extra
(``needs_onnx``); which detectors export, and the refusals, do not.
"""

import json

import numpy as np
import pytest
from _export import data_for, exportable
from sklearn.exceptions import NotFittedError

import skanomaly
from skanomaly.app.cli import main
from skanomaly.detectors.base import get_detector_tags
from skanomaly.export import model_card_path
from skanomaly.testing import fast_detector


@pytest.fixture
def needs_onnx():
    """Skip the test where the ONNX extra is not installed."""
    pytest.importorskip("onnxruntime")
    pytest.importorskip("onnxscript")


def _tags(name):
    return get_detector_tags(skanomaly.get_detector(name))


def _not_exportable():
    return [n for n in skanomaly.list_detectors() if not _tags(n).onnx_export]


def test_every_exportable_detector_has_its_graph_checked():
    # the registry and the tags decide, not a list here: each detector whose
    # tags declare onnx_export is in one of the graph tests' parametrisations
    # (the calls of test_export_tabular/images/gans/patches.py)
    declared = {n for n in skanomaly.list_detectors() if _tags(n).onnx_export}
    checked = [
        *exportable("tabular", gans=False),
        *exportable("images", gans=False),
        *exportable("tabular", gans=True),
        *exportable("images", gans=True),
        *exportable("images", gans=False, patches=True),
    ]
    assert declared and {case.values[0] for case in checked} == declared
    for name in declared:
        assert callable(getattr(skanomaly.get_detector(name), "_onnx_module", None))


@pytest.mark.parametrize("name", _not_exportable())
def test_every_other_detector_refuses_and_writes_nothing(name, tmp_path):
    cls = skanomaly.get_detector(name)
    kind = "tabular" if _tags(name).tabular else "images"
    detector = fast_detector(cls).fit(data_for(name, kind))
    with pytest.raises(ValueError, match=f"{cls.__name__} cannot be exported"):
        skanomaly.export_onnx(detector, tmp_path / "m.onnx")
    assert list(tmp_path.iterdir()) == []


def test_card_describes_input_outputs_and_threshold(tmp_path, needs_onnx):
    import onnx
    import pandas as pd

    rng = np.random.default_rng(0)
    frame = pd.DataFrame(rng.normal(size=(80, 3)), columns=["speed", "load", "temp"])
    detector = skanomaly.Mahalanobis(contamination=0.1).fit(frame)
    path = tmp_path / "gaussian.onnx"
    card = skanomaly.export_onnx(detector, path)
    assert card["format"] == "skanomaly-onnx-model-card"
    assert card["skanomaly_version"] == skanomaly.__version__
    assert card["detector"] == {
        "name": "mahalanobis",
        "class": "skanomaly.detectors.mahalanobis.Mahalanobis",
        "params": {
            "calibration": "auto",
            "calibration_confidence": None,
            "calibration_size": 0.2,
            "contamination": 0.1,
            "covariance": "ledoit_wolf",
            "groups": None,
        },
    }
    assert card["input"]["feature_names"] == ["speed", "load", "temp"]
    assert card["threshold"]["anomaly_score"] == -detector.offset_
    assert card["threshold"]["contamination"] == 0.1
    assert "higher = more anomalous" in card["score_orientation"]
    # the card also travels inside the model
    metadata = {p.key: p.value for p in onnx.load(path).metadata_props}
    assert json.loads(metadata["skanomaly_model_card"]) == card
    # force=True replaces both files
    detector.set_params(contamination=0.2).fit(frame)
    skanomaly.export_onnx(detector, path, force=True)
    threshold = json.loads(model_card_path(path).read_text())["threshold"]
    assert threshold["offset_"] == detector.offset_ != card["threshold"]["offset_"]


def test_card_holds_the_calibration_a_deployment_needs_for_p_values(
    tmp_path, needs_onnx
):
    import onnxruntime

    rng = np.random.default_rng(0)
    detector = skanomaly.Mahalanobis(contamination=0.05).fit(rng.normal(size=(300, 3)))
    X = np.r_[rng.normal(size=(200, 3)), rng.normal(size=(20, 3)) + 3.0]
    path = tmp_path / "gaussian.onnx"
    card = skanomaly.export_onnx(detector, path)
    calibration = card["calibration"]
    assert calibration["scheme"] == detector.calibration_ == "leave-one-out"
    assert calibration["n_samples"] == len(detector.calibration_scores_) == 300
    assert card["threshold"]["contamination"] == 0.05
    assert card["threshold"]["offset_"] == detector.offset_
    # the documented recipe, with the graph's output only
    (score,) = onnxruntime.InferenceSession(path).run(None, {"input": X})
    cal = np.array(calibration["anomaly_scores"])
    assert np.all(np.diff(cal) >= 0)
    p_values = (1 + (cal[None, :] >= score[:, None]).sum(axis=1)) / (len(cal) + 1)
    np.testing.assert_array_equal(p_values, detector.conformal_p_values(X))
    # and the threshold of the card flags where p <= contamination
    np.testing.assert_array_equal(
        score > card["threshold"]["anomaly_score"], p_values <= 0.05
    )
    assert 0 < (p_values <= 0.05).sum() < len(X)


def test_card_gives_the_recipe_of_confident_p_values(tmp_path, needs_onnx):
    import onnxruntime
    from scipy import stats

    rng = np.random.default_rng(0)
    detector = skanomaly.Mahalanobis(contamination=0.1, calibration_confidence=0.9)
    detector.fit(rng.normal(size=(200, 3)))
    X = np.r_[rng.normal(size=(100, 3)), rng.normal(size=(10, 3)) + 3.0]
    path = tmp_path / "gaussian.onnx"
    calibration = skanomaly.export_onnx(detector, path)["calibration"]
    assert calibration["confidence"] == 0.9
    (score,) = onnxruntime.InferenceSession(path).run(None, {"input": X})
    cal, n = np.array(calibration["anomaly_scores"]), calibration["n_samples"]
    k = 1 + (cal[None, :] >= score[:, None]).sum(axis=1)
    p_values = np.where(k > n, 1.0, stats.beta.ppf(0.9, k, n + 1 - k))
    np.testing.assert_allclose(p_values, detector.conformal_p_values(X), rtol=1e-12)
    assert skanomaly.export_onnx.__doc__.count("confidence")


def _fit_command(tmp_path, n_rows):
    """``skanomaly fit mahalanobis`` on ``n_rows`` normal rows; the model file."""
    np.save(tmp_path / "train.npy", np.random.default_rng(0).normal(size=(n_rows, 3)))
    model = tmp_path / "m.ska"
    assert (
        main(["fit", "mahalanobis", str(tmp_path / "train.npy"), "-o", str(model)]) == 0
    )
    return model


def test_calibration_scores_can_be_left_out_of_the_card(tmp_path, capsys, needs_onnx):
    model = _fit_command(tmp_path, 60)
    out = tmp_path / "m.onnx"
    assert main(["export", str(model), "-o", str(out), "--no-calibration-scores"]) == 0
    card = json.loads(model_card_path(out).read_text())
    assert card["calibration"]["n_samples"] == 60
    assert card["calibration"]["scheme"] == "leave-one-out"
    assert "anomaly_scores" not in card["calibration"]
    assert main(["export", str(model), "-o", str(out), "--force"]) == 0
    card = json.loads(model_card_path(out).read_text())
    assert len(card["calibration"]["anomaly_scores"]) == 60


def test_a_model_without_calibration_has_none_on_its_card(tmp_path, needs_onnx):
    detector = skanomaly.Mahalanobis().fit(
        np.random.default_rng(0).normal(size=(30, 2))
    )
    del detector.calibration_scores_, detector.calibration_  # as a plugin might
    card = skanomaly.export_onnx(detector, tmp_path / "m.onnx")
    assert card["calibration"] is None
    assert card["threshold"]["offset_"] == detector.offset_


def test_unfitted_detector_refuses(tmp_path):
    with pytest.raises(NotFittedError):
        skanomaly.export_onnx(skanomaly.AutoEncoder(), tmp_path / "m.onnx")
    assert list(tmp_path.iterdir()) == []


def test_existing_files_need_force(tmp_path):
    detector = skanomaly.Mahalanobis().fit(
        np.random.default_rng(0).normal(size=(30, 2))
    )
    path = tmp_path / "m.onnx"
    for existing in (path, model_card_path(path)):  # either one blocks
        existing.write_bytes(b"keep")
        with pytest.raises(FileExistsError, match="force=True"):
            skanomaly.export_onnx(detector, path)
        assert existing.read_bytes() == b"keep"
        assert [p.name for p in tmp_path.iterdir()] == [existing.name]
        existing.unlink()


def _one_line_error(argv, capsys):
    assert main([str(a) for a in argv]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("skanomaly: error: "), err
    return err[0]


def test_export_command(tmp_path, capsys, needs_onnx):
    model = _fit_command(tmp_path, 40)
    out = tmp_path / "m.onnx"
    capsys.readouterr()
    assert main(["export", str(model), "-o", str(out)]) == 0
    assert capsys.readouterr().out.strip() == (
        f"Exported Mahalanobis to {out} (input float64 (batch, 3); outputs "
        f"anomaly_score); model card {out}.json."
    )
    first = out.read_bytes()
    assert "exists" in _one_line_error(["export", model, "-o", out], capsys)
    assert out.read_bytes() == first
    assert main(["export", str(model), "-o", str(out), "--force"]) == 0

    anogan = fast_detector(skanomaly.get_detector("anogan"), random_state=0)
    rows = np.random.default_rng(1).normal(size=(40, 3))
    skanomaly.save(anogan.fit(rows), tmp_path / "anogan.ska")
    line = _one_line_error(
        ["export", tmp_path / "anogan.ska", "-o", tmp_path / "a.onnx"], capsys
    )
    assert "AnoGAN cannot be exported to ONNX" in line
    skanomaly.save(skanomaly.AutoEncoder(), tmp_path / "unfitted.ska")
    line = _one_line_error(
        ["export", tmp_path / "unfitted.ska", "-o", tmp_path / "u.onnx"], capsys
    )
    assert "not fitted" in line
    assert not any(p.name.startswith(("a.onnx", "u.onnx")) for p in tmp_path.iterdir())
