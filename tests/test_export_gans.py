"""ONNX export of the GAN detectors, fitted on tabular rows and on images.

The other detectors are in test_export_tabular.py and test_export_images.py.
"""

import pytest
from _export import check_case, exportable

pytest.importorskip("onnxruntime")
pytest.importorskip("onnxscript")


@pytest.mark.parametrize(("name", "params"), exportable("tabular", gans=True))
def test_tabular_graph_equals_score_samples(name, params, tmp_path):
    check_case(name, params, "tabular", tmp_path)


@pytest.mark.parametrize(("name", "params"), exportable("images", gans=True))
def test_image_graph_equals_score_samples_and_anomaly_map(name, params, tmp_path):
    check_case(name, params, "images", tmp_path)
