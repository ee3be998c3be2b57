import json
import pickle
import struct
from importlib.metadata import EntryPoint
from pathlib import Path

import joblib
import numpy as np
import pytest
import torch
from _forge import rewrite
from safetensors.torch import load as load_tensors
from safetensors.torch import save as save_tensors
from sklearn.datasets import load_digits
from sklearn.preprocessing import StandardScaler
from skorch.callbacks import EarlyStopping

import skanomaly
from skanomaly import registry
from skanomaly.detectors.base import BaseDetector, get_detector_tags
from skanomaly.persistence import FORMAT_VERSION, load, save
from skanomaly.persistence.format import checksum as _checksum
from skanomaly.testing import fast_detector

X_DIGITS, Y_DIGITS = load_digits(return_X_y=True)
TABLE = X_DIGITS[Y_DIGITS == 0][:48]
IMAGES = (TABLE.reshape(-1, 1, 8, 8) * 16).astype(np.uint8)
TABLE_TEST = X_DIGITS[::18]
IMAGES_TEST = (TABLE_TEST.reshape(-1, 1, 8, 8) * 16).astype(np.uint8)


_fast = fast_detector


def _fit_any(detector):
    """Fit on the table (faster) when the detector takes it, else on images."""
    if get_detector_tags(detector).tabular:
        return detector.fit(TABLE), TABLE_TEST
    return detector.fit(IMAGES), IMAGES_TEST


def _assert_same_detector(original, loaded, X):
    assert type(loaded) is type(original)
    assert repr(loaded.get_params(deep=False)) == repr(original.get_params(deep=False))
    fitted = {k for k in vars(original) if k not in original.get_params(deep=False)}
    assert {k for k in vars(loaded) if k not in loaded.get_params()} == fitted
    np.testing.assert_array_equal(loaded.score_samples(X), original.score_samples(X))
    np.testing.assert_array_equal(loaded.predict(X), original.predict(X))
    assert loaded.offset_ == original.offset_
    if hasattr(original, "calibration_scores_"):  # p-values need the calibration
        assert loaded.calibration_ == original.calibration_
        assert loaded.calibration_scores_.dtype == np.float64
        np.testing.assert_array_equal(
            loaded.conformal_p_values(X), original.conformal_p_values(X)
        )


@pytest.fixture(scope="module")
def fitted_autoencoder():
    return _fast(skanomaly.AutoEncoder).fit(IMAGES)


@pytest.fixture
def saved_autoencoder(fitted_autoencoder, tmp_path):
    path = tmp_path / "ae.ska"
    save(fitted_autoencoder, path)
    return path


@pytest.mark.parametrize("name", registry.list_detectors())
def test_round_trip_every_registered_detector(name, tmp_path):
    detector, X = _fit_any(_fast(registry.get_detector(name)))
    save(detector, tmp_path / "model.ska")
    loaded = load(tmp_path / "model.ska")
    _assert_same_detector(detector, loaded, X)


@pytest.mark.parametrize("cls", [skanomaly.AutoEncoder, skanomaly.VAE])
@pytest.mark.parametrize("kind", ["images", "table"])
def test_round_trip_autoencoders(cls, kind, tmp_path):
    X, X_test = (IMAGES, IMAGES_TEST) if kind == "images" else (TABLE, TABLE_TEST)
    detector = _fast(cls, contamination=0.1).fit(X)
    save(detector, tmp_path / "model.ska")
    loaded = load(tmp_path / "model.ska")
    _assert_same_detector(detector, loaded, X_test)
    assert loaded.image_shape_ == detector.image_shape_
    assert len(loaded.net_.history) == len(detector.net_.history)
    for key, value in detector.net_.module_.state_dict().items():
        assert torch.equal(loaded.net_.module_.state_dict()[key], value)
    if cls is skanomaly.VAE:
        np.testing.assert_array_equal(loaded.score_noise_, detector.score_noise_)


@pytest.mark.parametrize("cls", [skanomaly.AutoEncoder, skanomaly.EGBAD])
def test_round_trip_with_the_complexity_correction(cls, tmp_path):
    detector = _fast(cls, complexity_correction=1.5).fit(IMAGES)
    save(detector, tmp_path / "model.ska")
    loaded = load(tmp_path / "model.ska")
    assert loaded.complexity_floor_ == detector.complexity_floor_
    _assert_same_detector(detector, loaded, IMAGES_TEST)


def test_unfitted_detector_and_plain_values_round_trip(tmp_path):
    random_state = np.random.RandomState(3)
    random_state.standard_normal(5)
    detector = skanomaly.VAE(
        hidden_sizes=(16, 8),
        random_state=random_state,
        device=torch.device("cpu"),
        callbacks=[],
    )
    save(detector, tmp_path / "unfitted.ska")
    loaded = load(tmp_path / "unfitted.ska")
    assert loaded.hidden_sizes == (16, 8) and loaded.callbacks == []
    assert loaded.device == torch.device("cpu")
    # the RandomState continues where the saved one was
    assert loaded.random_state.standard_normal() == random_state.standard_normal()
    assert not hasattr(loaded, "offset_")


def test_calibration_round_trips_with_its_p_values(fitted_autoencoder, tmp_path):
    save(fitted_autoencoder, tmp_path / "ae.ska")
    loaded = load(tmp_path / "ae.ska")
    assert loaded.calibration_ == fitted_autoencoder.calibration_
    np.testing.assert_array_equal(
        loaded.calibration_scores_, fitted_autoencoder.calibration_scores_
    )
    p_values = loaded.conformal_p_values(IMAGES_TEST)
    np.testing.assert_array_equal(
        p_values, fitted_autoencoder.conformal_p_values(IMAGES_TEST)
    )
    assert len(set(p_values.tolist())) > 1  # not a constant that hides a loss


def test_empty_fitted_arrays_round_trip(tmp_path):
    detector = skanomaly.Mahalanobis().fit(TABLE[:, :3])
    detector.nothing_ = np.zeros((0, 3))
    save(detector, tmp_path / "m.ska")
    assert load(tmp_path / "m.ska").nothing_.shape == (0, 3)


def test_a_custom_state_cannot_set_a_bad_threshold(hooked_registry, tmp_path):
    save(_CustomState().fit(TABLE), tmp_path / "c.ska")

    def edit(document):
        document["detector"]["custom_state"]["__dict__"]["offset_"] = {
            "__float__": "nan"
        }

    rewrite(tmp_path / "c.ska", edit)
    with pytest.raises(ValueError, match="offset_ is nan, not a finite number"):
        load(tmp_path / "c.ska")


def test_path_parameters_round_trip(tmp_path):

    detector = skanomaly.DeepMahalanobis(weights=Path("weights/backbone.safetensors"))
    save(detector, tmp_path / "unfitted.ska")
    assert load(tmp_path / "unfitted.ska").weights == detector.weights


def test_loading_keeps_the_callers_torch_random_stream(saved_autoencoder):
    torch.manual_seed(0)
    expected = torch.rand(3)
    torch.manual_seed(0)
    load(saved_autoencoder)
    torch.testing.assert_close(torch.rand(3), expected)


def test_the_file_is_safetensors_with_a_json_header(saved_autoencoder):
    raw = saved_autoencoder.read_bytes()
    (n,) = struct.unpack("<Q", raw[:8])
    header = json.loads(raw[8 : 8 + n])
    document = json.loads(header["__metadata__"]["skanomaly"])
    assert document["format"] == "skanomaly"
    assert document["format_version"] == FORMAT_VERSION
    assert document["name"] == "autoencoder"
    assert (
        document["detector"]["class"] == "skanomaly.detectors.autoencoder.AutoEncoder"
    )
    assert document["detector"]["params"]["max_epochs"] == 2
    # everything else is raw numeric tensors
    dtypes = {v["dtype"] for k, v in header.items() if k != "__metadata__"}
    assert dtypes <= {"F32", "F64", "I64", "I32", "BOOL", "U8"}


def test_loading_never_unpickles(saved_autoencoder, monkeypatch):
    def refuse(*args, **kwargs):
        raise AssertionError("pickle or torch.load was called")

    for module, name in [
        (pickle, "load"),
        (pickle, "loads"),
        (pickle, "Unpickler"),
        (torch, "load"),
        (joblib, "load"),
    ]:
        monkeypatch.setattr(module, name, refuse)
    loaded = load(saved_autoencoder)
    assert loaded.score_samples(IMAGES_TEST).shape == (len(IMAGES_TEST),)


def test_pickle_and_joblib_still_work(fitted_autoencoder, tmp_path):
    scores = fitted_autoencoder.score_samples(IMAGES_TEST)
    unpickled = pickle.loads(pickle.dumps(fitted_autoencoder))
    np.testing.assert_array_equal(unpickled.score_samples(IMAGES_TEST), scores)
    joblib.dump(fitted_autoencoder, tmp_path / "ae.joblib")
    np.testing.assert_array_equal(
        joblib.load(tmp_path / "ae.joblib").score_samples(IMAGES_TEST), scores
    )


def test_skanomaly_namespace_exports_save_and_load():
    assert skanomaly.save is save and skanomaly.load is load


# ------------------------------------------------------------------ bad files


def _set(key, value):
    def edit(document):
        document[key] = value

    return edit


@pytest.mark.parametrize(
    ("edit", "message"),
    [
        (_set("format_version", FORMAT_VERSION + 1), "newer than the version"),
        (_set("format_version", "1"), "format version '1' is not an integer"),
        (_set("format", "other"), "does not describe a skanomaly model"),
        (_set("name", "no_such_detector"), "'no_such_detector' detector, which is not"),
        (_set("name", "vae"), "refusing to load it into another class"),
        (
            lambda d: d["detector"]["params"].update(
                latent_dim={"__estimator__": {"class": "os.system", "params": {}}}
            ),
            "neither a registered detector nor an estimator the format allows",
        ),
        (
            lambda d: d["detector"]["params"].update(no_such_param=1),
            "parameters do not fit AutoEncoder",
        ),
        (lambda d: d["detector"].pop("modules"), "malformed"),
        # its arrays stay in the file, named by nothing
        (lambda d: d["detector"].pop("state"), "tensor.s. that its header never uses"),
    ],
)
def test_tampered_files_are_refused(saved_autoencoder, edit, message):
    rewrite(saved_autoencoder, edit)
    with pytest.raises(ValueError, match=message):
        load(saved_autoencoder)


@pytest.mark.parametrize(
    "edit",
    [
        _set("checksum", "0" * 64),
        lambda d: d["detector"]["state"].update(offset_="abc"),
        lambda d: d["detector"]["params"].update(latent_dim=5),
    ],
)
def test_edited_headers_are_detected(saved_autoencoder, edit):
    rewrite(saved_autoencoder, edit, keep_checksum=True)
    with pytest.raises(ValueError, match="damaged or was edited"):
        load(saved_autoencoder)


def test_format_1_files_are_refused(saved_autoencoder):
    # the development format whose checksum left the document out
    def as_format_1(document):
        document["format_version"] = 1
        document["checksum"] = _checksum(load_tensors(saved_autoencoder.read_bytes()))

    rewrite(saved_autoencoder, as_format_1, keep_checksum=True)
    with pytest.raises(ValueError, match="format version 1.*fit the detector again"):
        load(saved_autoencoder)


def test_corrupted_bytes_are_detected(saved_autoencoder):
    raw = bytearray(saved_autoencoder.read_bytes())
    raw[-5] ^= 0xFF  # inside the last tensor
    saved_autoencoder.write_bytes(bytes(raw))
    with pytest.raises(ValueError, match="damaged or was edited"):
        load(saved_autoencoder)


def test_truncated_file_is_refused(saved_autoencoder):
    raw = saved_autoencoder.read_bytes()
    saved_autoencoder.write_bytes(raw[: len(raw) // 2])
    with pytest.raises(ValueError, match="not a valid skanomaly model file"):
        load(saved_autoencoder)


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (b"", "too short"),
        (pickle.dumps({"a": 1}), "not in the safetensors format"),
        (b"\x10\x00\x00\x00\x00\x00\x00\x00not json at all!", "not valid JSON"),
        (save_tensors({"w": torch.zeros(2)}), "without a skanomaly header"),
    ],
)
def test_foreign_files_are_refused(tmp_path, content, message):
    path = tmp_path / "foreign.ska"
    path.write_bytes(content)
    with pytest.raises(ValueError, match=message):
        load(path)


def test_missing_file(tmp_path):
    with pytest.raises(FileNotFoundError, match="No skanomaly model file"):
        load(tmp_path / "missing.ska")


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without CUDA")
def test_cuda_model_without_cuda_asks_for_device_override(saved_autoencoder):
    rewrite(
        saved_autoencoder,
        lambda d: d["detector"]["params"].update(device="cuda"),
    )
    with pytest.raises(ValueError, match="load\\(path, device='cpu'\\)"):
        load(saved_autoencoder)
    loaded = load(saved_autoencoder, device="cpu")
    assert loaded.device == "cpu"
    with pytest.raises(ValueError, match="device='cuda' was requested"):
        load(saved_autoencoder, device="cuda")
    assert np.isfinite(loaded.score_samples(IMAGES_TEST)).all()


# ------------------------------------------------------------------ saving errors


def test_unstorable_parameter_is_named(tmp_path):
    detector = skanomaly.AutoEncoder(callbacks=[EarlyStopping()])
    path = tmp_path / "model.ska"
    path.write_bytes(b"previous content")
    with pytest.raises(ValueError, match="parameter 'callbacks' holds"):
        save(detector, path)
    assert path.read_bytes() == b"previous content"
    assert [p.name for p in tmp_path.iterdir()] == ["model.ska"]


def test_unregistered_detector_is_refused(tmp_path):
    class Subclass(skanomaly.AutoEncoder):
        pass

    with pytest.raises(ValueError, match="not a registered skanomaly detector"):
        save(Subclass(), tmp_path / "model.ska")


# ------------------------------------------------------------------ hooks


class _Projection(BaseDetector):
    """A frozen random projection (a plain torch module) after a scaler."""

    def _fit(self, X):
        self.scaler_ = StandardScaler().fit(X)
        self.projection_ = self._make_persistent_module("projection_")
        self.projection_.requires_grad_(False)
        self.projection_.eval()

    def _make_persistent_module(self, name):
        return torch.nn.Linear(self.n_features_in_, 3).double()

    def _score_samples(self, X):
        with torch.no_grad():
            Z = self.projection_(torch.as_tensor(self.scaler_.transform(X)))
        return -(Z**2).sum(dim=1).numpy()


class _NoModuleHook(_Projection):
    _make_persistent_module = None

    def _fit(self, X):
        self.scaler_ = StandardScaler().fit(X)
        self.projection_ = torch.nn.Linear(X.shape[1], 3).double()


class _CustomState(BaseDetector):
    """Keeps an unstorable object; stores its state through the hooks."""

    def _fit(self, X):
        self.center_ = X.mean(axis=0)
        self.lookup_ = {("pair", 1): "tuple keys", 2: np.float32(0.5)}
        self.unstorable_ = object()

    def _score_samples(self, X):
        return -((X - self.center_) ** 2).sum(axis=1)

    def _get_persistent_state(self):
        return {k: v for k, v in vars(self).items() if k.endswith("_")} | {
            "unstorable_": None
        }

    def _set_persistent_state(self, state):
        vars(self).update(state)
        self.unstorable_ = object()


_HOOKED = {"projection": _Projection, "custom": _CustomState, "nohook": _NoModuleHook}


@pytest.fixture
def hooked_registry(monkeypatch):
    entry_points = {
        name: EntryPoint(name, f"{cls.__module__}:{cls.__qualname__}", "g")
        for name, cls in _HOOKED.items()
    }
    monkeypatch.setattr(registry, "detector_entry_points", lambda: entry_points)
    monkeypatch.setattr(registry, "get_detector", _HOOKED.__getitem__)


def test_module_hook_and_nested_sklearn_estimator(hooked_registry, tmp_path):
    torch.manual_seed(0)
    detector = _Projection().fit(TABLE)
    save(detector, tmp_path / "p.ska")
    loaded = load(tmp_path / "p.ska")
    _assert_same_detector(detector, loaded, TABLE_TEST)
    assert isinstance(loaded.scaler_, StandardScaler)
    np.testing.assert_array_equal(loaded.scaler_.scale_, detector.scaler_.scale_)
    assert not loaded.projection_.training
    assert not any(p.requires_grad for p in loaded.projection_.parameters())


def test_module_without_hook_is_refused(hooked_registry, tmp_path):
    detector = _NoModuleHook().fit(TABLE)
    with pytest.raises(ValueError, match="'projection_' is a torch module"):
        save(detector, tmp_path / "p.ska")


def test_custom_state_hooks(hooked_registry, tmp_path):
    detector = _CustomState().fit(TABLE)
    save(detector, tmp_path / "c.ska")
    loaded = load(tmp_path / "c.ska")
    _assert_same_detector(detector, loaded, TABLE_TEST)
    assert loaded.lookup_ == detector.lookup_
    assert isinstance(loaded.lookup_[2], np.float32)
    assert isinstance(loaded.unstorable_, object)


class _NoHooks(_CustomState):
    _get_persistent_state = None


_HOOKED["nohooks"] = _NoHooks


def test_unstorable_fitted_attribute_names_the_hooks(hooked_registry, tmp_path):
    detector = _NoHooks().fit(TABLE)
    with pytest.raises(ValueError, match="'unstorable_' holds .*_get_persistent_state"):
        save(detector, tmp_path / "c.ska")


def test_save_refuses_what_load_would_refuse(tmp_path):
    # a nested estimator the loader would not rebuild: no file, the reason
    from sklearn.decomposition import TruncatedSVD

    detector = skanomaly.Mahalanobis().fit(TABLE)
    detector.svd_ = TruncatedSVD(2).fit(TABLE)
    path = tmp_path / "svd.ska"
    with pytest.raises(ValueError, match="svd_ holds a .*TruncatedSVD"):
        save(detector, path)
    assert not path.exists()
    # a threshold loading would refuse
    detector = skanomaly.Mahalanobis().fit(TABLE)
    detector.offset_ = float("nan")
    with pytest.raises(ValueError, match="offset_ is nan, not a finite number"):
        save(detector, path)
    assert not path.exists()
    # the allowed nested estimators still save and load
    detector = skanomaly.Mahalanobis().fit(TABLE)
    save(detector, path)
    np.testing.assert_array_equal(
        load(path).score_samples(TABLE), detector.score_samples(TABLE)
    )
