"""The value codec of a skanomaly file: one table of type rules.

JSON holds None, booleans, ints, finite floats, strings and lists as they
are. Every other storable value is a one-key-tagged JSON object, written
and read by one rule of :data:`RULES`: ``{"__tuple__": [...]}``,
``{"__ndarray__": "<tensor name>", "dtype": "float32"}`` and so on. Arrays
and tensors go to the file's tensor section under a name; the JSON holds the
name. Estimators (``"__estimator__"``) are handed to the caller's hooks
(:mod:`skanomaly.persistence.estimators`).

Decoding checks what it reads: a tensor that is missing, or whose dtype or
shape is not what the JSON says, and a tag no rule knows, are format errors
(:class:`FormatError`, a ``ValueError``). Memory that decoding allocates
beyond the file's own tensors (string arrays, rebuilt modules) is drawn from
a :class:`Budget` first, so a small file cannot make a large allocation.
"""

import math
import os
import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from sklearn.base import BaseEstimator

__all__ = [
    "RULES",
    "Budget",
    "CannotStore",
    "Decoder",
    "Encoder",
    "FormatError",
    "Refused",
]

# numpy kinds stored as raw tensors: bool, signed and unsigned ints, floats
_ARRAY_KINDS = "biuf"


class CannotStore(TypeError):
    """A value the format has no encoding for; its ``args[0]`` says where."""


class FormatError(ValueError):
    """The file's contents are not what a skanomaly file may hold."""


class Refused(ValueError):
    """A well-formed file asks for what this loader does not do here.

    A newer format, a detector that is not registered, a device this
    machine lacks, a backbone that cannot be built offline...
    """


class Budget:
    """The bytes a load may still allocate; refuses what goes beyond.

    Parameters
    ----------
    nbytes : int
        The whole budget, e.g. the file's size plus a margin.
    """

    def __init__(self, nbytes):
        self.left = int(nbytes)

    def spend(self, nbytes, what):
        """Take ``nbytes`` for ``what``; a FormatError if they are not left."""
        if nbytes > self.left:
            raise FormatError(
                f"{what} would take {nbytes:,} bytes, more than a file of this size "
                "can account for"
            )
        self.left -= nbytes


@dataclass(frozen=True)
class Rule:
    """How one kind of value is written and read.

    Attributes
    ----------
    tag : str
        The key of the JSON object that marks this encoding.
    types : tuple of type
        Python types this rule writes (tried in the order of :data:`RULES`).
    encode : callable
        ``encode(encoder, value, where) -> dict``, the whole tagged object.
    decode : callable
        ``decode(decoder, obj) -> value`` for the tagged object ``obj``.
    accepts : callable or None
        An extra test on a value of ``types``.
    """

    tag: str
    types: tuple
    encode: Callable[["Encoder", Any, str], dict]
    decode: Callable[["Decoder", dict], Any]
    accepts: Callable[[Any], bool] | None = None


# ------------------------------------------------------------------ the rules


def _encode_array(encoder, value, where):
    if value.dtype.kind in _ARRAY_KINDS and value.dtype.itemsize <= 8:
        native = np.ascontiguousarray(value, dtype=value.dtype.newbyteorder("="))
        name = encoder.add_tensor(where, torch.from_numpy(native))
        return {"__ndarray__": name, "dtype": native.dtype.name}
    if value.dtype.kind in "USO":
        return {
            "__ndarray_list__": encoder.encode(value.tolist(), where),
            "dtype": "object" if value.dtype.kind == "O" else value.dtype.str,
            "shape": list(value.shape),
        }
    raise CannotStore(where)


def _decode_array(decoder, obj):
    name = obj["__ndarray__"]
    array = decoder.tensor(name).numpy()
    if array.dtype != np.dtype(obj["dtype"]):
        raise FormatError(f"array {name!r} changed dtype")
    return array


def _decode_array_list(decoder, obj):
    flat = _flat(decoder.decode(obj["__ndarray_list__"]))
    shape = obj["shape"]
    if not isinstance(shape, list) or not all(
        isinstance(s, int) and not isinstance(s, bool) and s >= 0 for s in shape
    ):
        raise FormatError(f"an array has shape {_short(shape)}")
    if math.prod(shape) != len(flat):
        raise FormatError(f"an array of shape {shape} holds {len(flat)} values")
    dtype = np.dtype(
        object if obj["dtype"] == "object" else decoder.string_dtype(obj["dtype"])
    )
    decoder.budget.spend(len(flat) * dtype.itemsize, f"an array of dtype {dtype}")
    array = np.empty(len(flat), dtype=dtype)
    array[:] = flat
    return array.reshape(shape)


def _flat(nested):
    if isinstance(nested, list):
        return [item for sub in nested for item in _flat(sub)]
    return [nested]


def _encode_tensor(encoder, value, where):
    return {
        "__tensor__": encoder.add_tensor(where, value),
        "device": str(value.device),
        "requires_grad": bool(value.requires_grad),
    }


def _decode_tensor(decoder, obj):
    tensor = decoder.tensor(obj["__tensor__"])
    tensor = tensor.to(decoder.device or decoder.checked_device(obj["device"]))
    return tensor.requires_grad_(bool(obj["requires_grad"]))


def _encode_scalar(encoder, value, where):
    if value.dtype.kind not in _ARRAY_KINDS:
        raise CannotStore(where)
    return {
        "__scalar__": value.dtype.name,
        "value": encoder.encode(value.item(), where),
    }


def _decode_scalar(decoder, obj):
    dtype = np.dtype(obj["__scalar__"])
    if dtype.kind not in _ARRAY_KINDS:
        raise FormatError(f"a scalar of dtype {dtype} is not storable")
    return dtype.type(decoder.decode(obj["value"]))


def _encode_dict(encoder, value, where):
    if all(isinstance(k, str) and "/" not in k for k in value):
        return {
            "__dict__": {k: encoder.encode(v, f"{where}/{k}") for k, v in value.items()}
        }
    return {
        "__dict_items__": [
            [encoder.encode(k, f"{where}/{i}k"), encoder.encode(v, f"{where}/{i}v")]
            for i, (k, v) in enumerate(value.items())
        ]
    }


def _decode_dict(decoder, obj):
    return {k: decoder.decode(v) for k, v in obj["__dict__"].items()}


def _decode_dict_items(decoder, obj):
    return {decoder.decode(k): decoder.decode(v) for k, v in obj["__dict_items__"]}


def _encode_random_state(encoder, value, where):
    _, keys, pos, has_gauss, cached = value.get_state(legacy=True)
    return {
        "__random_state__": {
            "keys": _encode_array(encoder, keys, f"{where}/keys"),
            "pos": int(pos),
            "has_gauss": int(has_gauss),
            "cached_gaussian": encoder.encode(float(cached), where),
        }
    }


def _decode_random_state(decoder, obj):
    state = obj["__random_state__"]
    random_state = np.random.RandomState()
    random_state.set_state(
        (
            "MT19937",
            decoder.decode(state["keys"]),
            int(state["pos"]),
            int(state["has_gauss"]),
            float(decoder.decode(state["cached_gaussian"])),
        )
    )
    return random_state


# In writing order: the first rule whose types (and test) match writes the
# value. np.float64 is a float and is written as one, as it always was.
RULES = (
    Rule(
        "__float__",
        (float,),
        lambda e, v, w: {"__float__": repr(v)},
        lambda d, o: float(o["__float__"]),
        accepts=lambda v: not math.isfinite(v),
    ),
    Rule("__scalar__", (np.generic,), _encode_scalar, _decode_scalar),
    Rule(
        "__tuple__",
        (tuple,),
        lambda e, v, w: {
            "__tuple__": [e.encode(x, f"{w}/{i}") for i, x in enumerate(v)]
        },
        lambda d, o: tuple(d.decode(x) for x in o["__tuple__"]),
    ),
    Rule("__dict__", (dict,), _encode_dict, _decode_dict),
    Rule("__dict_items__", (), None, _decode_dict_items),
    Rule("__ndarray__", (np.ndarray,), _encode_array, _decode_array),
    Rule("__ndarray_list__", (), None, _decode_array_list),
    Rule("__tensor__", (torch.Tensor,), _encode_tensor, _decode_tensor),
    Rule(
        "__device__",
        (torch.device,),
        lambda e, v, w: {"__device__": str(v)},
        lambda d, o: torch.device(o["__device__"]),
    ),
    Rule(
        "__path__",
        (os.PathLike,),
        lambda e, v, w: {"__path__": os.fspath(v)},
        lambda d, o: Path(o["__path__"]),
    ),
    Rule(
        "__slice__",
        (slice,),
        lambda e, v, w: {
            "__slice__": [e.encode(x, w) for x in (v.start, v.stop, v.step)]
        },
        lambda d, o: slice(*(d.decode(x) for x in o["__slice__"])),
    ),
    Rule(
        "__random_state__",
        (np.random.RandomState,),
        _encode_random_state,
        _decode_random_state,
    ),
    Rule(
        "__estimator__",
        (BaseEstimator,),
        lambda e, v, w: {"__estimator__": e.encode_estimator(v, w)},
        lambda d, o: d.decode_estimator(o["__estimator__"]),
    ),
)
_BY_TAG = {rule.tag: rule for rule in RULES}


# --------------------------------------------------------------- the codecs


class Encoder:
    """Encodes values to JSON-able structures, collecting tensors by name.

    Parameters
    ----------
    encode_estimator : callable
        ``encode_estimator(estimator, where) -> dict``, for nested estimators.
    """

    def __init__(self, encode_estimator):
        self.tensors = {}
        self.encode_estimator = encode_estimator

    def add_tensor(self, name, tensor):
        """Store a copy of ``tensor`` (on the CPU) under ``name``; return the name."""
        tensor = tensor.detach().to("cpu", copy=True).contiguous()
        if tensor.dtype.is_complex:
            raise CannotStore(name)
        self.tensors[name] = tensor
        return name

    def encode(self, value, where):
        """The JSON-able encoding of ``value``; ``where`` names it in errors."""
        if value is None or isinstance(value, (bool, str)):
            return value
        if isinstance(value, int):
            return int(value)
        if isinstance(value, float) and math.isfinite(value):
            return value
        if isinstance(value, list):
            return [self.encode(v, f"{where}/{i}") for i, v in enumerate(value)]
        for rule in RULES:
            if rule.encode is None or not isinstance(value, rule.types):
                continue
            if rule.accepts is None or rule.accepts(value):
                return rule.encode(self, value, where)
        raise CannotStore(where)


class Decoder:
    """Decodes what :class:`Encoder` wrote.

    Parameters
    ----------
    tensors : dict of str to torch.Tensor
        The file's tensors.
    decode_estimator : callable
        ``decode_estimator(obj) -> estimator``, for nested estimators.
    device : str, torch.device or None
        Where tensors go; None: the device each was saved from.
    checked_device : callable
        ``checked_device(saved_device) -> device``, the device policy for a
        tensor's saved device.
    string_dtype : callable
        ``string_dtype(text) -> numpy dtype``, checks a string array's dtype.
    budget : Budget
        What decoding may allocate beyond the tensors.
    """

    def __init__(
        self,
        tensors,
        decode_estimator,
        *,
        device,
        checked_device,
        string_dtype,
        budget,
    ):
        self.tensors = tensors
        self.decode_estimator = decode_estimator
        self.device = device
        self.checked_device = checked_device
        self.string_dtype = string_dtype
        self.budget = budget
        self.used = set()

    def tensor(self, name):
        """The stored tensor ``name``; a FormatError if it is missing.

        The names asked for are kept in ``used``: a file's tensors that no
        value used are refused once it is decoded.
        """
        if not isinstance(name, str) or name not in self.tensors:
            raise FormatError(f"tensor {_short(name)} is missing")
        self.used.add(name)
        return self.tensors[name]

    def decode(self, obj):
        """The value that ``obj`` encodes."""
        if obj is None or isinstance(obj, (bool, int, float, str)):
            return obj
        if isinstance(obj, list):
            return [self.decode(v) for v in obj]
        if not isinstance(obj, dict) or not obj:
            raise FormatError(f"unexpected value {_short(obj)}")
        for key in obj:
            rule = _BY_TAG.get(key)
            if rule is not None:
                return rule.decode(self, obj)
        raise FormatError(f"unknown value tag {_short(sorted(obj)[0])}")


def _short(value, limit=60):
    """``repr(value)``, or its first ``limit - 3`` characters and ``...``."""
    text = repr(value) if not isinstance(value, str) or len(value) < limit else None
    if text is None:  # no repr of a long string: it may be megabytes
        text = repr(value[:limit])
    return text if len(text) <= limit else text[: limit - 3] + "..."


# A run of this many characters without a space is a quoted value, not words.
_LONG_RUN = re.compile(r"\S{100,}")
MAX_MESSAGE = 600


def short_message(text, limit=MAX_MESSAGE):
    """``text`` on one line, quoting at most a short prefix of any long value.

    Every error that ``load`` raises is built through this (the messages of
    scikit-learn's parameter validation, torch and the device checks quote
    the value in full): runs of 100 characters or more without a space are
    cut to their first 60, and what is still over ``limit`` characters
    keeps its beginning and its end.
    """
    text = " ".join(text.split())
    text = _LONG_RUN.sub(lambda match: match.group()[:60] + "...", text)
    if len(text) > limit:
        text = text[: limit - 125] + " ... " + text[-120:]
    return text
