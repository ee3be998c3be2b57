"""runtime='onnxruntime': the backbone in ONNX Runtime, the features as torch's."""

import pickle

import numpy as np
import pytest

import skanomaly
from skanomaly import DeepMahalanobis, TimmFeatures

pytest.importorskip("onnxruntime")

FAST = {"backbone": "resnet18", "weights": None, "image_size": 32, "random_state": 0}


def _images(n=24, size=40, seed=0):
    return np.random.default_rng(seed).integers(0, 256, (n, 3, size, size), np.uint8)


def test_features_equal_torchs_within_1e_4():
    X = _images()
    torch_features = TimmFeatures(**FAST).fit(X).transform(X)
    stage = TimmFeatures(**FAST, runtime="onnxruntime").fit(X)
    ort_features = stage.transform(X)
    np.testing.assert_allclose(ort_features, torch_features, atol=1e-4, rtol=1e-4)
    # other sizes and float input go through the same (cached) graph
    floats = _images(5, 56, seed=1).astype(np.float32) / 255
    np.testing.assert_allclose(
        stage.transform(floats),
        TimmFeatures(**FAST).fit(X).transform(floats),
        atol=1e-4,
        rtol=1e-4,
    )


def test_detector_scores_equal_and_the_graph_is_never_saved(tmp_path):
    X, new = _images(), _images(8, seed=2)
    reference = DeepMahalanobis(**FAST).fit(X).score_samples(new)
    det = DeepMahalanobis(**FAST, runtime="onnxruntime").fit(X)
    scores = det.score_samples(new)
    np.testing.assert_allclose(scores, reference, rtol=1e-4)
    # only the choice travels: pickle and .ska rebuild the session on first use
    state = pickle.dumps(det)
    assert b"onnxruntime.capi" not in state
    np.testing.assert_array_equal(pickle.loads(state).score_samples(new), scores)
    skanomaly.save(det, tmp_path / "m.ska")
    loaded = skanomaly.load(tmp_path / "m.ska")
    assert loaded.runtime == "onnxruntime"
    np.testing.assert_array_equal(loaded.score_samples(new), scores)


def test_a_refit_drops_the_old_graph():
    X = _images()
    stage = TimmFeatures(**FAST, runtime="onnxruntime").fit(X)
    first = stage.transform(X)
    stage.set_params(random_state=1).fit(X)  # another random backbone
    np.testing.assert_allclose(
        stage.transform(X),
        TimmFeatures(**{**FAST, "random_state": 1}).fit(X).transform(X),
        atol=1e-4,
        rtol=1e-4,
    )
    assert np.abs(stage.transform(X) - first).max() > 1e-3


def test_runtime_is_validated_before_any_work():
    X = _images(4)
    with pytest.raises(ValueError, match="runtime"):
        TimmFeatures(**FAST, runtime="tensorrt").fit(X)
    det = DeepMahalanobis(**FAST, runtime="onnxruntime", device="meta")
    with pytest.raises(ValueError, match="runs on the CPU"):
        det.fit(X)
    assert not hasattr(det, "feature_extractor_")


@pytest.mark.parametrize("name", ["PaDiM", "PatchCore"])
def test_patch_detectors_scores_and_maps_equal_torchs(name):
    cls = getattr(skanomaly, name)
    params = {**FAST, "image_size": 64}
    X, new = _images(16, 64), _images(4, 64, seed=3)
    reference = cls(**params).fit(X)
    det = cls(**params, runtime="onnxruntime").fit(X)
    np.testing.assert_allclose(
        det.score_samples(new), reference.score_samples(new), rtol=1e-4, atol=1e-4
    )
    np.testing.assert_allclose(
        det.anomaly_map(new), reference.anomaly_map(new), rtol=1e-3, atol=1e-3
    )
