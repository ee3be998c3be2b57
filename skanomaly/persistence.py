"""Save and load detectors as single files that load without running code.

A skanomaly model file (extension ``.ska`` by convention) is one
`safetensors <https://huggingface.co/docs/safetensors>`_ file:

- its string metadata holds one entry, ``"skanomaly"``, a JSON document with
  the format name and version, the detector's registry name and class, its
  constructor parameters (``get_params(deep=False)``) and its fitted state,
  plus a SHA-256 checksum of that document and the tensor data (it finds
  damaged and hand-edited files; it is not a signature);
- its tensors hold every array and weight: numpy arrays of the fitted state,
  torch tensors, and the ``state_dict`` of each module of a skorch net
  (generator, discriminator, criterion).

Loading parses JSON and raw tensor bytes only: no pickle, no ``torch.load``,
no code named by the file. The detector class is taken from the registry by
the name stored in the file (a file for a detector that is not registered
here is refused) and must be the class the file names. Nested estimators
(fitted sub-estimators such as ``DeepMahalanobis.features_``) are rebuilt
only from classes of skanomaly, scikit-learn or a registered detector's
package.

The fitted state is every attribute of the detector that is not a
constructor parameter. Plain values (numbers, strings, tuples, lists, dicts
with string keys, None) go to JSON; arrays and tensors to safetensors; a
skorch net (``net_``) is rebuilt with the detector's own ``_make_net`` for
its input shape and gets its modules' weights back; a nested estimator is
stored the same way, recursively. Two hooks cover other state:

- ``_make_persistent_module(name)``: for a fitted attribute holding a plain
  ``torch.nn.Module``, return a freshly built module of the same
  architecture; its ``state_dict`` is then loaded into it.
- ``_get_persistent_state()`` / ``_set_persistent_state(state)``: replace
  the attribute walk altogether; the first returns a dict of storable values
  (``state_dict()`` values are fine), the second receives it, decoded, on load.

Optimizer states are not stored and a loaded skorch net has no optimizers
(a loaded detector scores and predicts exactly as the saved one; ``fit``
builds a new net as always). Parameters that the
format cannot store, such as a list of skorch callback objects, make
``save`` fail with a message naming them.

Pickle and joblib keep working as for any scikit-learn estimator, but
unpickling runs code named by the file: use them for trusted files only.
"""

import hashlib
import importlib
import json
import math
import os
import struct
import tempfile
from pathlib import Path

import numpy as np

__all__ = ["FORMAT_VERSION", "load", "save"]

FORMAT_NAME = "skanomaly"
# 2: the checksum also covers the detector document (1: tensors only).
FORMAT_VERSION = 2
_METADATA_KEY = "skanomaly"
_MAX_HEADER_BYTES = 100_000_000
_ARRAY_KINDS = "biuf"


class _CannotStore(TypeError):
    """A value the format has no encoding for; ``where`` names it."""


def _qualified(cls):
    return f"{cls.__module__}.{cls.__qualname__}"


def _describe(value):
    text = repr(value)
    if len(text) > 60:
        text = text[:57] + "..."
    return f"{text} (a {_qualified(type(value))})"


# --------------------------------------------------------------------- writing


class _Writer:
    """Encodes values to JSON-able structures, collecting tensors by name."""

    def __init__(self):
        self.tensors = {}

    def _add_tensor(self, name, tensor):

        tensor = tensor.detach().to("cpu", copy=True).contiguous()
        if tensor.dtype.is_complex:
            raise _CannotStore(name)
        self.tensors[name] = tensor
        return name

    def array(self, value, where):
        import torch

        if value.dtype.kind in _ARRAY_KINDS and value.dtype.itemsize <= 8:
            native = np.ascontiguousarray(value, dtype=value.dtype.newbyteorder("="))
            name = self._add_tensor(where, torch.from_numpy(native))
            return {"__ndarray__": name, "dtype": native.dtype.name}
        if value.dtype.kind in "USO":
            return {
                "__ndarray_list__": self.value(value.tolist(), where),
                "dtype": "object" if value.dtype.kind == "O" else value.dtype.str,
                "shape": list(value.shape),
            }
        raise _CannotStore(where)

    def value(self, value, where):
        """JSON-able encoding of ``value``; nets and modules are not handled here."""
        import torch
        from sklearn.base import BaseEstimator

        if value is None or isinstance(value, (bool, str)):
            return value
        if isinstance(value, int):
            return int(value)
        if isinstance(value, float):
            return value if math.isfinite(value) else {"__float__": repr(value)}
        if isinstance(value, np.generic):
            if value.dtype.kind not in _ARRAY_KINDS:
                raise _CannotStore(where)
            return {
                "__scalar__": value.dtype.name,
                "value": self.value(value.item(), where),
            }
        if isinstance(value, tuple):
            return {
                "__tuple__": [
                    self.value(v, f"{where}/{i}") for i, v in enumerate(value)
                ]
            }
        if isinstance(value, list):
            return [self.value(v, f"{where}/{i}") for i, v in enumerate(value)]
        if isinstance(value, dict):
            if all(isinstance(k, str) and "/" not in k for k in value):
                return {
                    "__dict__": {
                        k: self.value(v, f"{where}/{k}") for k, v in value.items()
                    }
                }
            return {
                "__dict_items__": [
                    [self.value(k, f"{where}/{i}k"), self.value(v, f"{where}/{i}v")]
                    for i, (k, v) in enumerate(value.items())
                ]
            }
        if isinstance(value, np.ndarray):
            return self.array(value, where)
        if isinstance(value, torch.Tensor):
            return {
                "__tensor__": self._add_tensor(where, value),
                "device": str(value.device),
                "requires_grad": bool(value.requires_grad),
            }
        if isinstance(value, torch.device):
            return {"__device__": str(value)}
        if isinstance(value, os.PathLike):
            return {"__path__": os.fspath(value)}
        if isinstance(value, slice):
            return {
                "__slice__": [
                    self.value(v, where) for v in (value.start, value.stop, value.step)
                ]
            }
        if isinstance(value, np.random.RandomState):
            kind, keys, pos, has_gauss, cached = value.get_state(legacy=True)
            return {
                "__random_state__": {
                    "keys": self.array(keys, f"{where}/keys"),
                    "pos": int(pos),
                    "has_gauss": int(has_gauss),
                    "cached_gaussian": self.value(float(cached), where),
                }
            }
        if isinstance(value, BaseEstimator):
            return {"__estimator__": self.estimator(value, where)}
        raise _CannotStore(where)

    def module(self, module, where):
        return {
            "tensors": self.state_dict(module, where),
            "training": bool(module.training),
            "frozen": [n for n, p in module.named_parameters() if not p.requires_grad],
        }

    def state_dict(self, module, where):
        return {
            key: self._add_tensor(f"{where}/{key}", tensor)
            for key, tensor in module.state_dict().items()
        }

    def net(self, owner, net, where):
        modules = {}
        for name in [*net._modules, *net._criteria]:
            module = getattr(net, f"{name}_", None)
            if module is not None:
                modules[name] = self.module(module, f"{where}/{name}")
        try:
            history = self.value(net.history.to_list(), f"{where}/history")
        except _CannotStore:
            history = None
        return {
            "input_shape": list(_net_input_shape(owner, where)),
            "modules": modules,
            "history": history,
        }

    def estimator(self, estimator, where):
        cls = type(estimator)
        params = estimator.get_params(deep=False)
        encoded_params = {}
        for key, value in params.items():
            try:
                encoded_params[key] = self.value(value, f"{where}/params/{key}")
            except _CannotStore as exc:
                raise ValueError(
                    f"Cannot save {cls.__name__}: parameter {key!r} holds "
                    f"{_describe(value)}, which a skanomaly file cannot store (it "
                    "stores None, numbers, strings, paths, lists, tuples, dicts and "
                    f"arrays). Set {key} to a storable value before saving, or use "
                    "pickle/joblib (trusted files only)."
                ) from exc
        getter = getattr(estimator, "_get_persistent_state", None)
        if getter is not None:
            state = getter()
            return {
                "class": _qualified(cls),
                "params": encoded_params,
                "custom_state": self.value(state, f"{where}/custom"),
            }
        import torch
        from skorch import NeuralNet

        state, nets, modules = {}, {}, {}
        for attr, value in vars(estimator).items():
            if attr in params:
                continue
            here = f"{where}/state/{attr}"
            if isinstance(value, NeuralNet):
                nets[attr] = self.net(estimator, value, here)
                continue
            if isinstance(value, torch.nn.Module):
                if getattr(estimator, "_make_persistent_module", None) is None:
                    raise ValueError(
                        f"Cannot save {cls.__name__}: its fitted attribute {attr!r} "
                        f"is a torch module ({_qualified(type(value))}) and "
                        f"{cls.__name__} has no _make_persistent_module(name) "
                        "method to rebuild it; add one, or use pickle/joblib "
                        "(trusted files only)."
                    )
                modules[attr] = self.module(value, here)
                continue
            try:
                state[attr] = self.value(value, here)
            except _CannotStore as exc:
                raise ValueError(
                    f"Cannot save {cls.__name__}: its fitted attribute {attr!r} "
                    f"holds {_describe(value)}, which a skanomaly file cannot "
                    "store. The detector can define _get_persistent_state() and "
                    "_set_persistent_state(state) to store it; pickle/joblib "
                    "also work (trusted files only)."
                ) from exc
        return {
            "class": _qualified(cls),
            "params": encoded_params,
            "state": state,
            "nets": nets,
            "modules": modules,
        }


def _net_input_shape(owner, where):
    image_shape = getattr(owner, "image_shape_", None)
    if image_shape is not None:
        return tuple(int(s) for s in image_shape)
    n_features = getattr(owner, "n_features_in_", None)
    if n_features is None or not hasattr(owner, "_make_net"):
        raise ValueError(
            f"Cannot save {type(owner).__name__}: its skorch net ({where}) can only "
            "be rebuilt by a detector with _make_net(input_shape) and the "
            "image_shape_ or n_features_in_ it was fitted with."
        )
    return (int(n_features),)


def _checksum(tensors, document=None):
    """SHA-256 of the tensors and, from format 2 on, of the detector document."""
    import torch

    digest = hashlib.sha256()
    if document is not None:
        canonical = json.dumps(document, sort_keys=True, allow_nan=False)
        digest.update(canonical.encode())
    for name in sorted(tensors):
        tensor = tensors[name]
        digest.update(name.encode())
        digest.update(str(tensor.dtype).encode())
        digest.update(str(tuple(tensor.shape)).encode())
        digest.update(tensor.reshape(-1).view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


def _registered_name(cls):
    from .registry import detector_entry_points, get_detector

    entry_points = detector_entry_points()
    for name, entry_point in entry_points.items():
        if entry_point.value.replace(" ", "") == f"{cls.__module__}:{cls.__qualname__}":
            return name
    for name in entry_points:  # re-exported under another module path
        try:
            if get_detector(name) is cls:
                return name
        except ValueError:
            continue
    raise ValueError(
        f"Cannot save {cls.__name__}: it is not a registered skanomaly detector "
        "(its file must name a detector that load() can find in the registry). "
        "Register it under the 'skanomaly.detectors' entry-point group, or use "
        "pickle/joblib (trusted files only)."
    )


def save(detector, path):
    """Save a detector to a single safetensors file (no pickle inside).

    Parameters
    ----------
    detector : estimator
        A registered skanomaly detector, fitted or not.
    path : str or path-like
        Destination, conventionally ending in ``.ska``; written atomically
        (a partly written file never replaces an existing one).

    Raises
    ------
    ValueError
        If the detector is not registered, or a parameter or fitted
        attribute cannot be stored (the message names it).

    See Also
    --------
    load : Read the file back.

    Examples
    --------
    >>> import tempfile
    >>> import numpy as np
    >>> from sklearn.datasets import load_digits
    >>> import skanomaly
    >>> X, y = load_digits(return_X_y=True)
    >>> det = skanomaly.VAE(max_epochs=2, random_state=0).fit(X[y == 0])
    >>> path = tempfile.mkdtemp() + "/digits.ska"
    >>> skanomaly.save(det, path)
    >>> loaded = skanomaly.load(path)
    >>> loaded
    VAE(max_epochs=2, random_state=0)
    >>> bool(np.array_equal(loaded.score_samples(X), det.score_samples(X)))
    True
    """
    from safetensors.torch import save as save_bytes

    from . import __version__

    name = _registered_name(type(detector))
    writer = _Writer()
    encoded = writer.estimator(detector, "detector")
    header = {
        "format": FORMAT_NAME,
        "format_version": FORMAT_VERSION,
        "skanomaly_version": __version__,
        "name": name,
        "detector": encoded,
        "checksum": _checksum(writer.tensors, {"name": name, "detector": encoded}),
    }
    metadata = {_METADATA_KEY: json.dumps(header, allow_nan=False)}
    data = save_bytes(writer.tensors, metadata=metadata)
    path = Path(path)
    handle, tmp = tempfile.mkstemp(dir=path.parent or ".", prefix=f".{path.name}.")
    try:
        with os.fdopen(handle, "wb") as file:
            file.write(data)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.remove(tmp)
        raise


# --------------------------------------------------------------------- reading


class _FormatError(ValueError):
    pass


def _allowed_packages():
    from .registry import detector_entry_points

    packages = {"skanomaly", "sklearn"}
    for entry_point in detector_entry_points().values():
        packages.add(entry_point.value.split(":")[0].split(".")[0].strip())
    return packages


def _nested_class(path):
    """The estimator class at ``module.QualName``, only from trusted packages."""
    from sklearn.base import BaseEstimator

    module_name, _, qualname = path.rpartition(".")
    if module_name.split(".")[0] not in _allowed_packages():
        raise _FormatError(
            f"it holds a nested estimator of class {path!r}, outside skanomaly, "
            "scikit-learn and the registered detectors' packages; refusing to "
            "import it"
        )
    # the class may be nested in another (Outer.Inner): find the module part
    parts = path.split(".")
    for split in range(len(parts) - 1, 0, -1):
        try:
            obj = importlib.import_module(".".join(parts[:split]))
        except ImportError:
            continue
        try:
            for attr in parts[split:]:
                obj = getattr(obj, attr)
        except AttributeError:
            break
        if isinstance(obj, type) and issubclass(obj, BaseEstimator):
            return obj
        break
    raise _FormatError(f"its nested estimator class {path!r} cannot be found here")


class _Reader:
    """Decodes what :class:`_Writer` encoded."""

    def __init__(self, tensors, device):
        self.tensors = tensors
        self.device = device

    def tensor(self, name):
        try:
            return self.tensors[name]
        except KeyError:
            raise _FormatError(f"tensor {name!r} is missing") from None

    def value(self, value):
        import torch

        if value is None or isinstance(value, (bool, int, float, str)):
            return value
        if isinstance(value, list):
            return [self.value(v) for v in value]
        if not isinstance(value, dict) or len(value) == 0:
            raise _FormatError(f"unexpected value {value!r}")
        if "__tuple__" in value:
            return tuple(self.value(v) for v in value["__tuple__"])
        if "__dict__" in value:
            return {k: self.value(v) for k, v in value["__dict__"].items()}
        if "__dict_items__" in value:
            return {self.value(k): self.value(v) for k, v in value["__dict_items__"]}
        if "__float__" in value:
            return float(value["__float__"])
        if "__scalar__" in value:
            return np.dtype(value["__scalar__"]).type(self.value(value["value"]))
        if "__ndarray__" in value:
            array = self.tensor(value["__ndarray__"]).numpy()
            if array.dtype != np.dtype(value["dtype"]):
                raise _FormatError(f"array {value['__ndarray__']!r} changed dtype")
            return array
        if "__ndarray_list__" in value:
            dtype = object if value["dtype"] == "object" else np.dtype(value["dtype"])
            array = np.empty(len(_flat(value["__ndarray_list__"])), dtype=dtype)
            array[:] = _flat(self.value(value["__ndarray_list__"]))
            return array.reshape(value["shape"])
        if "__tensor__" in value:
            tensor = self.tensor(value["__tensor__"]).to(self.device or value["device"])
            return tensor.requires_grad_(bool(value["requires_grad"]))
        if "__device__" in value:
            return torch.device(value["__device__"])
        if "__path__" in value:
            return Path(value["__path__"])
        if "__slice__" in value:
            return slice(*(self.value(v) for v in value["__slice__"]))
        if "__random_state__" in value:
            state = value["__random_state__"]
            random_state = np.random.RandomState()
            random_state.set_state(
                (
                    "MT19937",
                    self.value(state["keys"]),
                    int(state["pos"]),
                    int(state["has_gauss"]),
                    float(self.value(state["cached_gaussian"])),
                )
            )
            return random_state
        if "__estimator__" in value:
            encoded = value["__estimator__"]
            return self.estimator(_nested_class(encoded["class"]), encoded)
        raise _FormatError(f"unknown value tag {sorted(value)[0]!r}")

    def load_module(self, module, encoded, where):
        state = {key: self.tensor(name) for key, name in encoded["tensors"].items()}
        try:
            module.load_state_dict(state, strict=True)
        except RuntimeError as exc:
            raise _FormatError(
                f"the weights stored for {where} do not fit the "
                f"{type(module).__name__} this version builds: "
                f"{' '.join(str(exc).split())}"
            ) from None
        module.train(bool(encoded["training"]))
        frozen = set(encoded["frozen"])
        for name, parameter in module.named_parameters():
            parameter.requires_grad_(name not in frozen)

    def net(self, owner, encoded, where):
        import torch
        from skorch.history import History

        net = owner._make_net(tuple(encoded["input_shape"]))
        # building a net draws its initial weights: keep the caller's stream
        with torch.random.fork_rng(devices=[]):
            _initialize_without_optimizers(net)
        for name, module_state in encoded["modules"].items():
            module = getattr(net, f"{name}_", None)
            if module is None:
                raise _FormatError(f"{where} has no module {name!r} here")
            self.load_module(module, module_state, f"{where}.{name}_")
        if encoded.get("history") is not None:
            net.history = History(self.value(encoded["history"]))
        return net

    def estimator(self, cls, encoded):
        params = {k: self.value(v) for k, v in encoded["params"].items()}
        if self.device is not None and "device" in params:
            params["device"] = self.device
        try:
            estimator = cls(**params)
        except TypeError as exc:
            raise _FormatError(
                f"its parameters do not fit {cls.__name__} here ({exc}); it was "
                "probably written by another version"
            ) from None
        _check_device_available(estimator, requested=self.device is not None)
        if "custom_state" in encoded:
            estimator._set_persistent_state(self.value(encoded["custom_state"]))
            return estimator
        for attr, value in encoded["state"].items():
            setattr(estimator, attr, self.value(value))
        for attr, module_state in encoded["modules"].items():
            make = getattr(estimator, "_make_persistent_module", None)
            if make is None:
                raise _FormatError(
                    f"{cls.__name__} has no _make_persistent_module to rebuild {attr}"
                )
            import torch

            # a fresh module draws initial weights: keep the caller's stream
            with torch.random.fork_rng(devices=[]):
                module = make(attr)
            self.load_module(module, module_state, f"{cls.__name__}.{attr}")
            setattr(estimator, attr, module)
        for attr, net_state in encoded["nets"].items():
            net = self.net(estimator, net_state, f"{cls.__name__}.{attr}")
            setattr(estimator, attr, net)
        return estimator


# NeuralNet.initialize() without its optimizer step: scoring needs the
# modules only, and creating a torch optimizer imports torch._dynamo, which
# takes seconds. The net was validated when it was fitted.
_INIT_STEPS = (
    "_initialize_virtual_params",
    "_initialize_callbacks",
    "_initialize_module",
    "_initialize_criterion",
    "_initialize_history",
)


def _initialize_without_optimizers(net):
    if not all(callable(getattr(net, step, None)) for step in _INIT_STEPS):
        net.initialize()  # another skorch: the complete initialisation
        return
    for step in _INIT_STEPS:
        getattr(net, step)()
    net.initialized_ = True


def _flat(nested):
    if isinstance(nested, list):
        return [item for sub in nested for item in _flat(sub)]
    return [nested]


def _check_device_available(estimator, requested):
    import torch

    device = getattr(estimator, "device", None)
    if device is None:
        return
    try:
        device = torch.device(device)
    except (RuntimeError, TypeError):
        return
    if device.type != "cuda" or torch.cuda.is_available():
        return
    if requested:
        raise ValueError(
            f"device={str(device)!r} was requested but CUDA is not available "
            "here; use device='cpu' (--device cpu), or leave it out to use the "
            "device the file was saved with."
        )
    raise ValueError(
        f"The {type(estimator).__name__} in this file was saved with "
        f"device={str(device)!r} but CUDA is not available here; load it with "
        "skanomaly.load(path, device='cpu')."
    )


def _read_header(path):
    """The JSON header of a skanomaly file; precise errors for foreign files."""
    size = path.stat().st_size
    with path.open("rb") as file:
        prefix = file.read(8)
        if len(prefix) < 8:
            raise _FormatError("it is too short to be a safetensors file")
        (n,) = struct.unpack("<Q", prefix)
        if n > min(size - 8, _MAX_HEADER_BYTES):
            raise _FormatError("it is not in the safetensors format")
        raw = file.read(n)
    try:
        header = json.loads(raw)
    except (UnicodeDecodeError, json.JSONDecodeError):
        raise _FormatError("its safetensors header is not valid JSON") from None
    if not isinstance(header, dict):
        raise _FormatError("its safetensors header is not a JSON object")
    metadata = header.get("__metadata__") or {}
    if _METADATA_KEY not in metadata:
        raise _FormatError(
            "it is a safetensors file without a skanomaly header (not written by "
            "skanomaly.save)"
        )
    try:
        document = json.loads(metadata[_METADATA_KEY])
    except (TypeError, json.JSONDecodeError):
        raise _FormatError("its skanomaly header is not valid JSON") from None
    if not isinstance(document, dict) or document.get("format") != FORMAT_NAME:
        raise _FormatError("its header does not describe a skanomaly model")
    version = document.get("format_version")
    if not isinstance(version, int) or isinstance(version, bool):
        raise _FormatError(f"its format version {version!r} is not an integer")
    if version > FORMAT_VERSION:
        raise ValueError(
            f"{str(path)!r} was written in skanomaly file format version {version}, "
            f"newer than the version {FORMAT_VERSION} this skanomaly reads; "
            "upgrade skanomaly."
        )
    if version < 1:
        raise _FormatError(f"its format version {version} is unknown")
    return document


def load(path, *, device=None):
    """Load a detector saved by :func:`save`, executing no code from the file.

    Parameters
    ----------
    path : str or path-like
    device : str, torch.device or None, default=None
        Override the ``device`` parameter of the detector (and of its
        nested estimators), e.g. 'cpu' for a model saved on a GPU.

    Returns
    -------
    detector : estimator
        Scores exactly as the saved detector did.

    Raises
    ------
    FileNotFoundError
        If there is no such file.
    ValueError
        If the file is not a skanomaly model (a foreign or corrupted file),
        was written by a newer format version, or holds a detector that is
        not registered here; the message says which.

    Examples
    --------
    >>> import tempfile
    >>> import skanomaly
    >>> path = tempfile.mkdtemp() + "/unfitted.ska"
    >>> skanomaly.save(skanomaly.AutoEncoder(latent_dim=4), path)
    >>> skanomaly.load(path)
    AutoEncoder(latent_dim=4)
    """
    from safetensors import SafetensorError
    from safetensors.torch import load as load_bytes

    from .registry import detector_entry_points, get_detector

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"No skanomaly model file {str(path)!r}.")
    try:
        document = _read_header(path)
        try:
            tensors = load_bytes(path.read_bytes())
        except (SafetensorError, ValueError, RuntimeError) as exc:
            raise _FormatError(f"its tensor data is damaged ({exc})") from None
        covered = None
        if document["format_version"] >= 2:
            covered = {
                "name": document.get("name"),
                "detector": document.get("detector"),
            }
        try:
            expected = _checksum(tensors, covered)
        except (TypeError, ValueError):  # a document JSON cannot hold
            expected = None
        if document.get("checksum") != expected:
            raise _FormatError(
                "its contents do not match its checksum (the file is damaged or "
                "was edited)"
            )
        name = document.get("name")
        encoded = document.get("detector")
        if not isinstance(name, str) or not isinstance(encoded, dict):
            raise _FormatError("its header names no detector")
        if name not in detector_entry_points():
            known = ", ".join(detector_entry_points()) or "none"
            raise ValueError(
                f"{str(path)!r} holds a {name!r} detector, which is not registered "
                f"here (known detectors: {known}); install the package that "
                "provides it."
            )
        cls = get_detector(name)
        if _qualified(cls) != encoded.get("class"):
            raise ValueError(
                f"{str(path)!r} holds a {name!r} detector of class "
                f"{encoded.get('class')!r}, but {name!r} is {_qualified(cls)!r} "
                "here; refusing to load it into another class."
            )
        return _Reader(tensors, device).estimator(cls, encoded)
    except _FormatError as exc:
        raise ValueError(
            f"{str(path)!r} is not a valid skanomaly model file: {exc}."
        ) from None
    except (KeyError, TypeError, AttributeError) as exc:
        raise ValueError(
            f"{str(path)!r} is not a valid skanomaly model file: its header is "
            f"malformed ({type(exc).__name__}: {exc})."
        ) from None
