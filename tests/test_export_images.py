"""ONNX export of every exportable detector fitted on images (uint8 input).

The tabular graphs, the refusals and the command line are in test_export.py
(split so that each file stays well under a minute: an export takes seconds).
"""

import pytest
from _export import check_export, exportable, fitted

pytest.importorskip("onnxruntime")
pytest.importorskip("onnxscript")


@pytest.mark.parametrize(("name", "params"), exportable("images"))
def test_image_graph_equals_score_samples_and_anomaly_map(name, params, tmp_path):
    detector, X = fitted(name, params, "images")
    check_export(detector, X, tmp_path / "model.onnx")
