"""Estimators to and from the JSON document of a skanomaly file.

An estimator is stored as its class path, its constructor parameters
(``get_params(deep=False)``) and its fitted state: every attribute that is
not a parameter. Plain values and arrays go through the value codec; a skorch
net (``net_``) is stored as the weights of its modules and rebuilt by the
detector's own ``_make_net`` for its input shape; a plain torch module is
rebuilt by the estimator's ``_make_persistent_module(name)``; estimators
with ``_get_persistent_state``/``_set_persistent_state`` store what those
return instead of the attribute walk.
"""

import torch
from skorch import NeuralNet
from skorch.history import History

from ..nets import initialize_for_inference, net_modules
from .codec import CannotStore, Decoder, Encoder, FormatError
from .trust import nested_estimator_class, qualified_name

__all__ = ["EstimatorReader", "EstimatorWriter"]


def _describe(value):
    text = repr(value)
    if len(text) > 60:
        text = text[:57] + "..."
    return f"{text} (a {qualified_name(type(value))})"


class EstimatorWriter(Encoder):
    """Encodes a (fitted or unfitted) estimator, collecting its tensors."""

    def __init__(self):
        super().__init__(self.estimator)

    def estimator(self, estimator, where):
        """The encoding of ``estimator`` (nested ones included)."""
        cls = type(estimator)
        params = estimator.get_params(deep=False)
        encoded = {"class": qualified_name(cls), "params": {}}
        for key, value in params.items():
            try:
                encoded["params"][key] = self.encode(value, f"{where}/params/{key}")
            except CannotStore as exc:
                raise ValueError(
                    f"Cannot save {cls.__name__}: parameter {key!r} holds "
                    f"{_describe(value)}, which a skanomaly file cannot store (it "
                    "stores None, numbers, strings, paths, lists, tuples, dicts and "
                    f"arrays). Set {key} to a storable value before saving, or use "
                    "pickle/joblib (trusted files only)."
                ) from exc
        getter = getattr(estimator, "_get_persistent_state", None)
        if getter is not None:
            encoded["custom_state"] = self.encode(getter(), f"{where}/custom")
            return encoded
        encoded.update(state={}, nets={}, modules={})
        for attr, value in vars(estimator).items():
            if attr in params:
                continue
            here = f"{where}/state/{attr}"
            if isinstance(value, NeuralNet):
                encoded["nets"][attr] = self.net(estimator, value, here)
            elif isinstance(value, torch.nn.Module):
                if getattr(estimator, "_make_persistent_module", None) is None:
                    raise ValueError(
                        f"Cannot save {cls.__name__}: its fitted attribute {attr!r} "
                        f"is a torch module ({qualified_name(type(value))}) and "
                        f"{cls.__name__} has no _make_persistent_module(name) "
                        "method to rebuild it; add one, or use pickle/joblib "
                        "(trusted files only)."
                    )
                encoded["modules"][attr] = self.module(value, here)
            else:
                try:
                    encoded["state"][attr] = self.encode(value, here)
                except CannotStore as exc:
                    raise ValueError(
                        f"Cannot save {cls.__name__}: its fitted attribute {attr!r} "
                        f"holds {_describe(value)}, which a skanomaly file cannot "
                        "store. The detector can define _get_persistent_state() "
                        "and _set_persistent_state(state) to store it; "
                        "pickle/joblib also work (trusted files only)."
                    ) from exc
        return encoded

    def module(self, module, where):
        return {
            "tensors": {
                key: self.add_tensor(f"{where}/{key}", tensor)
                for key, tensor in module.state_dict().items()
            },
            "training": bool(module.training),
            "frozen": [n for n, p in module.named_parameters() if not p.requires_grad],
        }

    def net(self, owner, net, where):
        modules = {
            name: self.module(module, f"{where}/{name}")
            for name, module in net_modules(net).items()
        }
        try:
            history = self.encode(net.history.to_list(), f"{where}/history")
        except CannotStore:
            history = None
        return {
            "input_shape": list(_net_input_shape(owner, where)),
            "modules": modules,
            "history": history,
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


class EstimatorReader(Decoder):
    """Rebuilds estimators from their encoding and the file's tensors.

    Parameters
    ----------
    tensors : dict of str to torch.Tensor
    device : str, torch.device or None
        Overrides every ``device`` parameter (and where tensors go).
    check_estimator_device : callable
        ``check_estimator_device(estimator)``: refuses a device that is not
        available here.
    checked_device, string_dtype : callable
        See :class:`~skanomaly.persistence.codec.Decoder`.
    """

    def __init__(
        self, tensors, *, device, check_estimator_device, checked_device, string_dtype
    ):
        super().__init__(
            tensors,
            self._nested,
            device=device,
            checked_device=checked_device,
            string_dtype=string_dtype,
        )
        self.check_estimator_device = check_estimator_device

    def _nested(self, encoded):
        return self.estimator(nested_estimator_class(encoded["class"]), encoded)

    def estimator(self, cls, encoded):
        """An instance of ``cls`` with the parameters and state of ``encoded``."""
        params = {k: self.decode(v) for k, v in encoded["params"].items()}
        if self.device is not None and "device" in params:
            params["device"] = self.device
        try:
            estimator = cls(**params)
        except TypeError as exc:
            raise FormatError(
                f"its parameters do not fit {cls.__name__} here ({exc}); it was "
                "probably written by another version"
            ) from None
        self.check_estimator_device(estimator)
        if "custom_state" in encoded:
            estimator._set_persistent_state(self.decode(encoded["custom_state"]))
            return estimator
        for attr, value in encoded["state"].items():
            setattr(estimator, attr, self.decode(value))
        for attr, module_state in encoded["modules"].items():
            make = getattr(estimator, "_make_persistent_module", None)
            if make is None:
                raise FormatError(
                    f"{cls.__name__} has no _make_persistent_module to rebuild {attr}"
                )
            # a fresh module draws initial weights: keep the caller's stream
            with torch.random.fork_rng(devices=[]):
                module = make(attr)
            self.load_module(module, module_state, f"{cls.__name__}.{attr}")
            setattr(estimator, attr, module)
        for attr, net_state in encoded["nets"].items():
            net = self.net(estimator, net_state, f"{cls.__name__}.{attr}")
            setattr(estimator, attr, net)
        return estimator

    def load_module(self, module, encoded, where):
        state = {key: self.tensor(name) for key, name in encoded["tensors"].items()}
        try:
            module.load_state_dict(state, strict=True)
        except RuntimeError as exc:
            raise FormatError(
                f"the weights stored for {where} do not fit the "
                f"{type(module).__name__} this version builds: "
                f"{' '.join(str(exc).split())}"
            ) from None
        module.train(bool(encoded["training"]))
        frozen = set(encoded["frozen"])
        for name, parameter in module.named_parameters():
            parameter.requires_grad_(name not in frozen)

    def net(self, owner, encoded, where):
        net = owner._make_net(tuple(encoded["input_shape"]))
        # building a net draws its initial weights: keep the caller's stream
        with torch.random.fork_rng(devices=[]):
            initialize_for_inference(net)
        modules = net_modules(net)
        for name, module_state in encoded["modules"].items():
            if name not in modules:
                raise FormatError(f"{where} has no module {name!r} here")
            self.load_module(modules[name], module_state, f"{where}.{name}_")
        if encoded.get("history") is not None:
            net.history = History(self.decode(encoded["history"]))
        return net
