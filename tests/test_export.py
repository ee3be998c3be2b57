"""ONNX export: the model card, refusals, ``skanomaly export``.

The graphs of every exportable detector are checked against score_samples
in test_export_tabular.py and test_export_images.py.
"""

import json

import numpy as np
import pytest
from sklearn.exceptions import NotFittedError

import skanomaly
from skanomaly.app.cli import main
from skanomaly.detectors.base import get_detector_tags
from skanomaly.export import model_card_path
from skanomaly.testing import fast_detector

pytest.importorskip("onnxruntime")
pytest.importorskip("onnxscript")


def test_every_registered_detector_exports_or_refuses():
    expected = {"autoencoder", "vae", "ganomaly", "skipganomaly", "egbad"}
    expected |= {"mahalanobis", "deep_mahalanobis", "padim", "patchcore"}
    declared = {
        name
        for name in skanomaly.list_detectors()
        if get_detector_tags(skanomaly.get_detector(name)).onnx_export
    }
    assert expected <= declared
    assert "anogan" not in declared


def test_card_describes_input_outputs_and_threshold(tmp_path):
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


def test_card_holds_the_calibration_a_deployment_needs_for_p_values(tmp_path):
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


def _fit_command(tmp_path, n_rows):
    """``skanomaly fit mahalanobis`` on ``n_rows`` normal rows; the model file."""
    np.save(tmp_path / "train.npy", np.random.default_rng(0).normal(size=(n_rows, 3)))
    model = tmp_path / "m.ska"
    assert (
        main(["fit", "mahalanobis", str(tmp_path / "train.npy"), "-o", str(model)]) == 0
    )
    return model


def test_calibration_scores_can_be_left_out_of_the_card(tmp_path, capsys):
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


def test_a_model_without_calibration_has_none_on_its_card(tmp_path):
    detector = skanomaly.Mahalanobis().fit(
        np.random.default_rng(0).normal(size=(30, 2))
    )
    del detector.calibration_scores_, detector.calibration_  # as a plugin might
    card = skanomaly.export_onnx(detector, tmp_path / "m.onnx")
    assert card["calibration"] is None
    assert card["threshold"]["offset_"] == detector.offset_


def test_anogan_refuses_and_writes_nothing(tmp_path):
    detector = fast_detector(skanomaly.get_detector("anogan"), random_state=0)
    detector.fit(np.random.default_rng(0).normal(size=(40, 4)))
    path = tmp_path / "anogan.onnx"
    with pytest.raises(ValueError, match="AnoGAN cannot be exported to ONNX"):
        skanomaly.export_onnx(detector, path)
    assert list(tmp_path.iterdir()) == []


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


def test_export_command(tmp_path, capsys):
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
