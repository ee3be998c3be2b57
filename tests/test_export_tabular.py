"""ONNX export of the exportable detectors fitted on tabular rows (float64).

The GANs are in test_export_gans.py, images in test_export_images.py, the
card, refusals and command line in test_export.py: split so that each file
stays well under a minute (one export takes seconds).
"""

import pytest
from _export import check_export, exportable, fitted

pytest.importorskip("onnxruntime")
pytest.importorskip("onnxscript")


@pytest.mark.parametrize(("name", "params"), exportable("tabular", gans=False))
def test_tabular_graph_equals_score_samples(name, params, tmp_path):
    detector, X = fitted(name, params, "tabular")
    card = check_export(detector, X, tmp_path / "model.onnx")
    # rows run in float64, as score_samples does
    assert card["outputs"][0]["dtype"] == "float64"
