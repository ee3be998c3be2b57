"""ONNX export of the exportable detectors fitted on tabular rows (float64).

The GANs are in test_export_gans.py, images in test_export_images.py, the
card, refusals and command line in test_export.py: split so that each file
stays well under a minute (one export takes seconds).
"""

import pytest
from _export import check_case, exportable

pytest.importorskip("onnxruntime")
pytest.importorskip("onnxscript")


@pytest.mark.parametrize(("name", "params"), exportable("tabular", gans=False))
def test_tabular_graph_equals_score_samples(name, params, tmp_path):
    check_case(name, params, "tabular", tmp_path)
