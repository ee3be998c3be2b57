"""ONNX export of the exportable detectors fitted on images (in the dtype of fit).

The GANs are in test_export_gans.py, tables in test_export_tabular.py (split
so that each file stays well under a minute: one export takes seconds).
"""

import numpy as np
import pytest
from _export import check_case, check_export, exportable
from _value_range import AS, digit_pixels

import skanomaly
from skanomaly import AutoEncoder, PaDiM
from skanomaly.testing import fast_detector

pytest.importorskip("onnxruntime")
pytest.importorskip("onnxscript")


@pytest.mark.parametrize(("name", "params"), exportable("images", gans=False))
def test_image_graph_equals_score_samples_and_anomaly_map(name, params, tmp_path):
    check_case(name, params, "images", tmp_path)


# ------------------------------------- the dtype and value range of fit


@pytest.mark.parametrize("fit", list(AS))
def test_the_graph_takes_the_dtype_and_range_of_fit(fit, tmp_path):
    # int64 or float32 0..255 fits exported a uint8 graph that read value /
    # 255 where score_samples read values: scores 0.39 off on these digits
    train, test = digit_pixels()
    detector = fast_detector(AutoEncoder, random_state=0).fit(AS[fit](train))
    card = check_export(detector, AS[fit](test), tmp_path / "model.onnx")
    assert card["input"]["dtype"] == detector.image_dtype_ == AS[fit](test).dtype
    assert card["input"]["value_range"] == list(detector.image_value_range_)
    layout = card["input"]["layout"]
    if fit == "uint8":
        assert "read as value / 255" in layout
    elif fit == "float32_unit":
        assert "must lie in [0, 1] (uint8 images divided by 255)" in layout
    else:
        cast = f"astype('{detector.image_dtype_}'), not divided by 255"
        assert f"must lie in [0, 255] (uint8 images cast with {cast})" in layout


def test_a_patch_graph_takes_floats_of_fit(tmp_path):
    # the backbone's preprocessing reads floats as [0, 1], as score_samples
    train, test = digit_pixels()
    detector = fast_detector(PaDiM).fit(AS["float32_unit"](train))
    card = check_export(detector, AS["float32_unit"](test), tmp_path / "model.onnx")
    assert card["input"]["dtype"] == "float32"
    assert card["input"]["value_range"] == [0.0, 1.0]


@pytest.mark.skipif(
    np.dtype(np.longdouble) == np.float64, reason="long double is float64 here"
)
def test_images_torch_has_no_tensors_of_are_refused(tmp_path):
    train, _ = digit_pixels()
    detector = fast_detector(AutoEncoder).fit(train.astype(np.longdouble))
    name = np.dtype(np.longdouble).name
    with pytest.raises(ValueError, match=f"{name} images, which torch has no"):
        skanomaly.export_onnx(detector, tmp_path / "model.onnx")
    assert list(tmp_path.iterdir()) == []
