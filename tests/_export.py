"""Shared by the ONNX export tests: which detectors export, and the check."""

import json

import numpy as np
import pytest

import skanomaly
from skanomaly.detectors.base import get_detector_tags
from skanomaly.detectors.gan_base import BaseGANDetector
from skanomaly.detectors.patch_base import BasePatchDetector
from skanomaly.export import model_card_path
from skanomaly.testing import fast_detector

# The comparison the issue asks for: ONNX Runtime's scores equal
# score_samples within 1e-5, relative to the scores' scale. (Measured: about
# 1e-7 for float32 image graphs, 1e-8 or less for float64 tabular graphs.)
RTOL = 1e-5


def exportable(kind, *, gans, patches=False):
    """(name, params) of every registered exportable detector taking ``kind``.

    The GAN detectors (``gans=True``), the patch detectors (``patches=True``)
    or the others: the test files split them so that each stays well under
    a minute.
    """
    cases = []
    for name in skanomaly.list_detectors():
        cls = skanomaly.get_detector(name)
        tags = get_detector_tags(cls)
        if issubclass(cls, BaseGANDetector) != gans:
            continue
        if issubclass(cls, BasePatchDetector) != patches:
            continue
        if tags.onnx_export and getattr(tags, kind):
            cases.append(pytest.param(name, {}, id=name))
    if kind == "images":
        # the complexity correction is part of the scoring graph
        for case in list(cases):
            name = case.values[0]
            params = skanomaly.get_detector(name)().get_params()
            if "complexity_correction" in params:
                cases.append(
                    pytest.param(
                        name, {"complexity_correction": "auto"}, id=f"{name}-complexity"
                    )
                )
    if "vae" in [case.values[0] for case in cases]:
        # the score methods 'auto' does not pick: the Monte-Carlo ones use
        # fixed noise
        methods = {"tabular": ["elbo"], "images": ["reconstruction_probability"]}
        for method in methods[kind]:
            cases.append(
                pytest.param("vae", {"score_method": method}, id=f"vae-{method}")
            )
    return cases


def data_for(name, kind, seed=0):
    rng = np.random.default_rng(seed)
    if kind == "tabular":
        return rng.normal(size=(60, 5)) * [1, 2, 3, 4, 5] + 10
    if get_detector_tags(skanomaly.get_detector(name)).pretrained_weights:
        # RGB, resized to the backbone's 32 px in the graph (and the patch
        # detectors' maps back to 20 px)
        return rng.integers(0, 256, size=(24, 3, 20, 20), dtype=np.uint8)
    return rng.integers(0, 256, size=(24, 1, 8, 8), dtype=np.uint8)


def fitted(name, params, kind):
    """A small fitted detector and test data of another draw."""
    cls = skanomaly.get_detector(name)
    if "random_state" in cls().get_params():
        params = {"random_state": 0, **params}
    detector = fast_detector(cls, **params).fit(data_for(name, kind))
    return detector, data_for(name, kind, seed=1)


def assert_close(actual, expected):
    expected = np.asarray(expected, dtype=np.float64)
    scale = float(np.abs(expected).max())
    np.testing.assert_allclose(actual, expected, rtol=RTOL, atol=RTOL * scale)


def check_export(detector, X, path):
    """Export, run in ONNX Runtime on X, compare with the detector; the card."""
    import onnxruntime

    card = skanomaly.export_onnx(detector, path)
    assert json.loads(model_card_path(path).read_text()) == card
    options = onnxruntime.SessionOptions()
    options.intra_op_num_threads = 1
    session = onnxruntime.InferenceSession(
        str(path), options, providers=["CPUExecutionProvider"]
    )
    (graph_input,) = session.get_inputs()
    assert graph_input.name == card["input"]["name"] == "input"
    # images in the dtype of fit (issue 22, item 1), rows in float64
    expected_dtype = detector.image_dtype_ if detector.image_shape_ else "float64"
    assert card["input"]["dtype"] == expected_dtype
    assert card["input"]["shape"] == ["batch", *np.shape(X)[1:]]

    outputs = session.run(None, {"input": X})
    names = [output["name"] for output in card["outputs"]]
    assert names == [output.name for output in session.get_outputs()]
    # the card tells the dtypes; rows run in float64, as score_samples does
    assert [o["dtype"] for o in card["outputs"]] == [o.dtype.name for o in outputs]
    if not detector.image_shape_:
        assert outputs[0].dtype == np.float64
    score_samples = detector.score_samples(X)
    assert outputs[0].shape == (len(X),)
    assert_close(outputs[0], -score_samples)
    # dynamic batch: one sample alone gives its score in the batch
    (single, *_) = session.run(None, {"input": X[3:4]})
    assert_close(single, -score_samples[3:4])
    # the card's threshold reproduces predict (away from exact ties)
    flagged = outputs[0] > card["threshold"]["anomaly_score"]
    assert card["threshold"]["offset_"] == detector.offset_
    np.testing.assert_array_equal(flagged, detector.predict(X) == -1)

    has_maps = bool(detector.image_shape_) and get_detector_tags(detector).anomaly_maps
    assert names == (
        ["anomaly_score", "anomaly_map"] if has_maps else ["anomaly_score"]
    )
    if has_maps:
        maps = detector.anomaly_map(X)
        assert outputs[1].shape == maps.shape
        assert_close(outputs[1], maps)
    return card


def check_case(name, params, kind, folder):
    """Fit a small ``name`` on ``kind`` data, export it to ``folder``, check it."""
    detector, X = fitted(name, params, kind)
    return check_export(detector, X, folder / "model.onnx")
