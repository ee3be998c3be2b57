"""ONNX export of every exportable detector fitted on tabular rows (float64).

Split from test_export.py and test_export_images.py so that each file stays
well under a minute: one export takes seconds.
"""

import pytest
from _export import check_export, exportable, fitted

pytest.importorskip("onnxruntime")
pytest.importorskip("onnxscript")


@pytest.mark.parametrize(("name", "params"), exportable("tabular"))
def test_tabular_graph_equals_score_samples(name, params, tmp_path):
    detector, X = fitted(name, params, "tabular")
    card = check_export(detector, X, tmp_path / "model.onnx")
    # rows run in float64, as score_samples does
    assert card["outputs"][0]["dtype"] == "float64"
