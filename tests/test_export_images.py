"""ONNX export of the exportable detectors fitted on images (uint8 input).

The GANs are in test_export_gans.py, tables in test_export_tabular.py (split
so that each file stays well under a minute: one export takes seconds).
"""

import pytest
from _export import check_case, exportable

pytest.importorskip("onnxruntime")
pytest.importorskip("onnxscript")


@pytest.mark.parametrize(("name", "params"), exportable("images", gans=False))
def test_image_graph_equals_score_samples_and_anomaly_map(name, params, tmp_path):
    check_case(name, params, "images", tmp_path)
