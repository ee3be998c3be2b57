"""ONNX export of the patch detectors (PaDiM, PatchCore): scores and maps.

The graph holds the backbone with its resizing, the patch grid, the
distances (PaDiM's Gaussians as inverse-factor products in float64,
PatchCore's nearest bank rows and Eq. 7 re-weighting), the upsampling and
Gaussian smoothing of the map, and its resizing to the input images. Apart
from test_export_images.py so that each file stays well under a minute.
"""

import pytest
from _export import check_case, exportable

pytest.importorskip("onnxruntime")
pytest.importorskip("onnxscript")


@pytest.mark.parametrize(
    ("name", "params"), exportable("images", gans=False, patches=True)
)
def test_patch_graph_equals_score_samples_and_anomaly_map(name, params, tmp_path):
    check_case(name, params, "images", tmp_path)
