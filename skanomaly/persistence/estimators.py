"""Estimators to and from the JSON document of a skanomaly file.

An estimator is stored as its class path, its constructor parameters
(``get_params(deep=False)``) and its fitted state: every attribute that is
not a parameter. Plain values and arrays go through the value codec; a skorch
net (``net_``) is stored as the weights of its modules and rebuilt by the
detector's own ``_make_net`` for its input shape; a plain torch module is
rebuilt by the estimator's ``_make_persistent_module(name)``; estimators
with ``_get_persistent_state``/``_set_persistent_state`` store what those
return instead of the attribute walk.

Reading builds nothing from the file's sizes before checking them: a net or
module is first built on torch's meta device (shapes without memory), with
the number of parameters, buffers and submodules it may register bounded by
the number of tensors the file stores for it; its state dict must then fit
the stored weights exactly, and its bytes are drawn from the load's
:class:`~skanomaly.persistence.codec.Budget`. Only then is it built for real.

The fitted values that the rest of skanomaly acts on without checking them
again are checked beyond their type (:func:`check_fitted_values`): the
threshold ``offset_`` is a finite number, ``calibration_`` a known scheme,
and ``calibration_scores_`` a sorted, finite 1-D float64 array of at most
:data:`~skanomaly.conformal.MAX_CALIBRATION_SCORES` values, its size read
from the stored tensor's shape before the array is decoded.
"""

import math
import numbers
import threading
import warnings
from contextlib import contextmanager
from itertools import chain

import numpy as np
import torch
from skorch import NeuralNet
from skorch.history import History
from torch.nn.modules.module import (
    register_module_buffer_registration_hook,
    register_module_module_registration_hook,
    register_module_parameter_registration_hook,
)

from ..conformal import MAX_CALIBRATION_SCORES
from ..nets import initialize_for_inference, net_modules
from .codec import CannotStore, Decoder, Encoder, FormatError, Refused, _short
from .trust import check_nested_estimator, nested_estimator_class, qualified_name

# A probe build may register this many parameters, buffers and submodules per
# stored tensor (activations and pooling layers have none), plus a constant.
_REGISTRATIONS_PER_TENSOR = 8
_EXTRA_REGISTRATIONS = 1024

# The batches of a net's history that a file stores (~14 JSON elements
# each: 20,000 take about half of MAX_DOCUMENT_ELEMENTS).
MAX_STORED_BATCHES = 20_000

# The schemes a fitted detector's calibration_ names.
CALIBRATION_SCHEMES = ("split", "leave-one-out", "cross-fit", "training")

__all__ = [
    "CALIBRATION_SCHEMES",
    "MAX_STORED_BATCHES",
    "EstimatorReader",
    "EstimatorWriter",
    "check_fitted_values",
    "check_loadable_params",
]


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
        """The encoding of ``estimator`` (nested ones included).

        Refuses, with the reason, what loading would refuse: a nested
        estimator of a class the format does not allow, a threshold or
        calibration that is not what it claims (:func:`check_fitted_values`).
        """
        cls = type(estimator)
        if where != "detector":
            check_nested_estimator(estimator, where)
        try:
            check_loadable_params(estimator)
        except ValueError as exc:
            raise ValueError(f"Cannot save {cls.__name__}: {exc}") from None
        try:
            check_fitted_values(estimator)
        except FormatError as exc:
            raise ValueError(f"Cannot save {cls.__name__}: {exc}.") from None
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
            history = self.encode(_storable_history(net.history), f"{where}/history")
        except CannotStore:
            history = None
        return {
            "input_shape": list(_net_input_shape(owner, where)),
            "modules": modules,
            "history": history,
        }


def _storable_history(history):
    """``history.to_list()``, without its batches if they would not fit a file.

    A history records every batch (~14 JSON elements each), so a long
    training can hold more than a document may
    (:data:`~skanomaly.persistence.format.MAX_DOCUMENT_ELEMENTS`). Beyond
    :data:`MAX_STORED_BATCHES` batches, each epoch keeps its entries (its
    losses among them) and an empty ``batches`` list, with a warning:
    nothing in skanomaly reads the batches of a fitted net.
    """
    epochs = history.to_list()
    n_batches = sum(len(epoch.get("batches", ())) for epoch in epochs)
    if n_batches <= MAX_STORED_BATCHES:
        return epochs
    warnings.warn(
        f"The net's history records {n_batches:,} batches, more than the "
        f"{MAX_STORED_BATCHES:,} a skanomaly file stores: it is saved with each "
        "epoch's entries and without its batches.",
        UserWarning,
        stacklevel=5,
    )
    return [
        {**epoch, "batches": []} if "batches" in epoch else epoch for epoch in epochs
    ]


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


@contextmanager
def _bounded_registrations(limit, where):
    """Stop a module build in this thread once it registers over ``limit`` parts."""
    thread = threading.get_ident()
    count = 0

    def count_one(*args):
        nonlocal count
        if threading.get_ident() == thread:
            count += 1
            if count > limit:
                raise FormatError(
                    f"its parameters make {where} far larger than the weights it stores"
                )

    handles = [
        register(count_one)
        for register in (
            register_module_parameter_registration_hook,
            register_module_buffer_registration_hook,
            register_module_module_registration_hook,
        )
    ]
    try:
        yield
    finally:
        for handle in handles:
            handle.remove()


@contextmanager
def _refusals(where):
    """The ValueErrors of an estimator's own code (a hook) as Refused."""
    try:
        yield
    except (FormatError, Refused):
        raise
    except ValueError as exc:
        raise Refused(f"{where}: {' '.join(str(exc).split()).rstrip('.')}") from None


def _input_shape(value):
    if (
        not isinstance(value, list)
        or len(value) not in (1, 3)
        or not all(isinstance(s, int) and not isinstance(s, bool) for s in value)
        or min(value) < 1
    ):
        raise FormatError(f"a net has input shape {value!r:.60}")
    return tuple(value)


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
    budget : Budget
        What rebuilt modules and decoded values may allocate.
    """

    def __init__(
        self,
        tensors,
        *,
        device,
        check_estimator_device,
        checked_device,
        string_dtype,
        budget,
    ):
        super().__init__(
            tensors,
            self._nested,
            device=device,
            checked_device=checked_device,
            string_dtype=string_dtype,
            budget=budget,
        )
        self.check_estimator_device = check_estimator_device

    def _nested(self, encoded):
        return self.estimator(nested_estimator_class(encoded["class"]), encoded)

    def estimator(self, cls, encoded):
        """An instance of ``cls`` with the parameters and state of ``encoded``."""
        params = {k: self.decode(v) for k, v in encoded["params"].items()}
        # written before a parameter existed: the value that reproduces it
        for name, value in getattr(cls, "_legacy_parameters", {}).items():
            params.setdefault(name, value)
        if self.device is not None and "device" in params:
            params["device"] = self.device
        try:
            estimator = cls(**params)
        except TypeError as exc:
            raise FormatError(
                f"its parameters do not fit {cls.__name__} here ({exc}); it was "
                "probably written by another version"
            ) from None
        _check_params(estimator)
        with _refusals(f"its {cls.__name__}"):
            check_loadable_params(estimator)
        self.check_estimator_device(estimator)
        if "custom_state" in encoded:
            estimator._set_persistent_state(self.decode(encoded["custom_state"]))
            check_fitted_values(estimator)
            return estimator
        for attr, value in encoded["state"].items():
            _check_attribute(cls, attr, params)
            if attr == "calibration_scores_":
                self._check_calibration_encoding(value)
            setattr(estimator, attr, self.decode(value))
        for attr, module_state in encoded["modules"].items():
            _check_attribute(cls, attr, params)
            make = getattr(estimator, "_make_persistent_module", None)
            if make is None:
                raise FormatError(
                    f"{cls.__name__} has no _make_persistent_module to rebuild {attr}"
                )

            def build(meta, attr=attr, make=make):
                module = make(attr)
                return {attr: module}, module

            module = self.built(build, {attr: module_state}, cls.__name__)
            self.load_module(module, module_state, f"{cls.__name__}.{attr}")
            setattr(estimator, attr, module)
        for attr, net_state in encoded["nets"].items():
            _check_attribute(cls, attr, params)
            net = self.net(estimator, net_state, f"{cls.__name__}.{attr}")
            setattr(estimator, attr, net)
        check_fitted_values(estimator)
        return estimator

    def _check_calibration_encoding(self, value):
        """Before decoding: a stored 1-D float64 array of a bounded length."""
        if not (
            isinstance(value, dict)
            and set(value) == {"__ndarray__", "dtype"}
            and value["dtype"] == "float64"
        ):
            raise FormatError(
                "its calibration_scores_ is not stored as an array of float64"
            )
        shape = tuple(self.tensor(value["__ndarray__"]).shape)
        if len(shape) != 1 or not 1 <= shape[0] <= MAX_CALIBRATION_SCORES:
            raise FormatError(
                f"its calibration_scores_ has shape {shape!r:.40}; a detector keeps "
                f"a 1-D array of 1 to {MAX_CALIBRATION_SCORES:,} scores"
            )

    def built(self, build, stored, where):
        """What ``build(meta)`` makes, checked on the meta device first.

        ``build(meta)`` returns ``(modules, result)``: a dict of the modules
        it made, by name, and what to return. ``stored`` maps some of those
        names to their encoded state. The probe, ``build(True)`` on the meta
        device, allocates nothing and may register only so many parts; its
        state dicts must fit the stored tensors and its bytes the budget.
        Then ``build(False)`` makes the result for real.
        """
        n_stored = sum(len(state["tensors"]) for state in stored.values())
        limit = _REGISTRATIONS_PER_TENSOR * n_stored + _EXTRA_REGISTRATIONS
        # building draws initial weights: keep the caller's random stream
        with torch.random.fork_rng(devices=[]), _refusals(where):
            try:
                with torch.device("meta"), _bounded_registrations(limit, where):
                    probe, _ = build(True)
            except (RuntimeError, OverflowError) as exc:  # sizes torch refuses
                reason = " ".join(str(exc).split())[:160]
                raise FormatError(
                    f"its parameters make {where} impossible to build ({reason})"
                ) from None
            for name, state in stored.items():
                if name not in probe:
                    raise FormatError(f"{where} has no module {name!r} here")
                self.load_module(probe[name], state, f"{where}.{name}", meta=True)
            self.budget.spend(
                sum(
                    tensor.numel() * tensor.element_size()
                    for module in probe.values()
                    for tensor in chain(module.parameters(), module.buffers())
                ),
                f"the modules of {where}",
            )
            return build(False)[1]

    def load_module(self, module, encoded, where, *, meta=False):
        """Load the stored state ``encoded`` into ``module`` (strictly).

        With ``meta``, only the shapes are loaded (into a module on the meta
        device).
        """
        state = {key: self.tensor(name) for key, name in encoded["tensors"].items()}
        if meta:
            state = {k: torch.empty_like(t, device="meta") for k, t in state.items()}
        try:
            with warnings.catch_warnings():
                # BatchNorm fills a missing counter with a CPU tensor (then
                # the strict check refuses the state anyway)
                warnings.filterwarnings("ignore", "for .*: copying from a non-meta")
                module.load_state_dict(state, strict=True)
        except RuntimeError as exc:
            raise FormatError(
                f"the weights stored for {where} do not fit the "
                f"{type(module).__name__} this version builds: "
                f"{' '.join(str(exc).split())[:300]}"
            ) from None
        module.train(bool(encoded["training"]))
        frozen = set(encoded["frozen"])
        for name, parameter in module.named_parameters():
            parameter.requires_grad_(name not in frozen)

    def net(self, owner, encoded, where):
        input_shape = _input_shape(encoded["input_shape"])
        stored = encoded["modules"]

        def build(meta):
            net = owner._make_net(input_shape)
            if meta:
                net.device = "meta"
            initialize_for_inference(net)
            return net_modules(net), net

        net = self.built(build, stored, where)
        modules = net_modules(net)
        for name, module_state in stored.items():
            self.load_module(modules[name], module_state, f"{where}.{name}")
        if encoded.get("history") is not None:
            net.history = History(self.decode(encoded["history"]))
        return net


def check_fitted_values(estimator):
    """The threshold and calibration of a loaded estimator are what they claim.

    ``offset_`` must be a finite number (a NaN threshold would flag nothing,
    an infinite one everything); ``calibration_`` one of
    :data:`CALIBRATION_SCHEMES`; ``calibration_scores_`` a 1-D float64
    array of 1 to :data:`~skanomaly.conformal.MAX_CALIBRATION_SCORES` finite
    values sorted ascending, as conformal p-values assume. Attributes an estimator does
    not have are not required (files saved before calibration, plugins).

    Raises
    ------
    FormatError
        Naming the attribute and what is wrong with it.
    """
    state = vars(estimator)
    if "offset_" in state:
        offset = state["offset_"]
        if (
            isinstance(offset, bool)
            or not isinstance(offset, numbers.Real)
            or not math.isfinite(offset)
        ):
            raise FormatError(
                f"its threshold offset_ is {_short(offset)}, not a finite number"
            )
    if "calibration_" in state:
        scheme = state["calibration_"]
        if not isinstance(scheme, str) or scheme not in CALIBRATION_SCHEMES:
            raise FormatError(
                f"its calibration_ is {_short(scheme)}, not one of "
                f"{', '.join(map(repr, CALIBRATION_SCHEMES))}"
            )
    if "calibration_scores_" in state:
        scores = state["calibration_scores_"]
        if (
            not isinstance(scores, np.ndarray)
            or scores.dtype != np.float64
            or scores.ndim != 1
            or not 1 <= len(scores) <= MAX_CALIBRATION_SCORES
        ):
            raise FormatError(
                "its calibration_scores_ is not a 1-D float64 array of 1 to "
                f"{MAX_CALIBRATION_SCORES:,} scores"
            )
        if not np.isfinite(scores).all():
            raise FormatError("its calibration_scores_ holds non-finite values")
        if np.any(scores[1:] < scores[:-1]):
            raise FormatError("its calibration_scores_ is not sorted ascending")
    _check_complexity_correction(state)
    if "scoring_params_" in state:
        _check_scoring_params(type(estimator), state["scoring_params_"])


def _check_scoring_params(cls, value):
    """``scoring_params_``: values of parameters the class's score reads.

    A subset of ``_scoring_parameters`` (a later version may score with
    more), each a plain value (None, a bool, a number or a string) or a
    short tuple or list of them (a plugin's sizes): it is only compared with
    the current parameters, never used.
    """
    names = set(getattr(cls, "_scoring_parameters", ()))
    if not (
        isinstance(value, dict)
        and all(isinstance(name, str) and name in names for name in value)
        and all(_plain_or_short_sequence(item) for item in value.values())
    ):
        expected = ", ".join(sorted(names)) or "none"
        raise FormatError(
            f"its scoring_params_ is {_short(value)}, not a dict of plain values "
            f"of {cls.__name__}'s scoring parameters ({expected})"
        )


def _plain(item):
    return item is None or isinstance(item, (bool, numbers.Real, str))


def _plain_or_short_sequence(item):
    if isinstance(item, (tuple, list)):
        return len(item) <= 64 and all(_plain(part) for part in item)
    return _plain(item)


def _positive_finite(value):
    return (
        not isinstance(value, bool)
        and isinstance(value, numbers.Real)
        and math.isfinite(value)
        and value > 0
    )


def _check_complexity_correction(state):
    """``complexity_sigma_`` and ``complexity_floor_`` of a reconstruction
    detector: a blur no wider than the images (its padding is allocated when
    scoring) and a positive finite floor, present together."""
    if "complexity_floor_" in state and not _positive_finite(
        state["complexity_floor_"]
    ):
        raise FormatError(
            f"its complexity_floor_ is {_short(state['complexity_floor_'])}, "
            "not a finite number > 0"
        )
    sigma = state.get("complexity_sigma_")
    if sigma is None:
        return
    shape = state.get("image_shape_")
    if not (
        isinstance(shape, tuple)
        and len(shape) >= 2
        and all(isinstance(side, int) and side > 0 for side in shape)
    ):
        raise FormatError("its complexity_sigma_ is set, but it has no image shape")
    if not _positive_finite(sigma) or sigma > max(shape[-2:]):
        raise FormatError(
            f"its complexity_sigma_ is {_short(sigma)}, not a blur of at most "
            f"{max(shape[-2:])} pixels"
        )
    if "complexity_floor_" not in state:
        raise FormatError("its complexity_sigma_ is set without complexity_floor_")


def check_loadable_params(estimator):
    """Parameters a loaded estimator may hold without touching the outside.

    An estimator class lists in ``_loadable_parameters`` the parameters a
    file must not be able to point elsewhere with, each with a function
    that raises ValueError for a value it refuses (a backbone named by a
    hub or a local path, which a later ``fit`` would download or read).
    ``load`` refuses such files, fitted or not, and ``save`` refuses to
    write them.
    """
    params = estimator.get_params(deep=False)
    for name, check in getattr(type(estimator), "_loadable_parameters", {}).items():
        if name in params:
            check(params[name])


def _check_params(estimator):
    """The constructor parameters pass the estimator's own constraints."""
    validate = getattr(estimator, "_validate_params", None)
    if validate is None or not getattr(estimator, "_parameter_constraints", None):
        return
    try:
        validate()
    except ValueError as exc:  # scikit-learn's InvalidParameterError
        raise FormatError(f"its parameters are invalid: {exc}".rstrip(".")) from None


def _check_attribute(cls, attr, params):
    """A fitted attribute name a file may set: not a parameter, method or dunder."""
    if (
        not isinstance(attr, str)
        or not attr.isidentifier()
        or attr.startswith("__")
        or attr in params
        or hasattr(cls, attr)
    ):
        raise FormatError(
            f"it sets {cls.__name__} attribute {attr!r:.60}, which no fitted state has"
        )
