"""The ``weights`` argument: which source it names, and whether it loads here."""

import os
from pathlib import Path

from ._timm import create_timm_model
from .files import load_weights_file
from .hub import create_pretrained, in_hub_cache
from .packaged import (
    create_packaged_model,
    packaged_architecture,
    packaged_weights_path,
)

__all__ = [
    "create_model",
    "native_input_size",
    "offline_architecture",
    "weights_available",
]


def _is_imagenet(weights):
    return isinstance(weights, str) and weights == "imagenet"


def create_model(name, weights="imagenet"):
    """A timm model without classifier (``num_classes=0``), with these weights.

    The model is returned as timm builds it (in training mode, gradients on);
    :func:`skanomaly.nn.backbones.create_backbone` freezes it.

    Parameters
    ----------
    name : str
        timm model name, optionally with a pretrained tag
        (``'resnet18.a1_in1k'``).
    weights : 'imagenet', None, str or os.PathLike, default='imagenet'
        ``'imagenet'``: for a name of :func:`packaged_backbones`, the
        weights its pip package installed (no network, no cache); for any
        other name, timm's pretrained weights from the Hugging Face hub
        cache, downloaded if missing and the hub is reachable. ``None``:
        random initialisation. A path: a local state dict (see
        :func:`load_weights_file`).

    Returns
    -------
    model : torch.nn.Module

    Examples
    --------
    >>> from skanomaly.weights import create_model
    >>> create_model("tf_efficientnet_lite0").num_features
    1280
    """
    if _is_imagenet(weights):
        if packaged_architecture(name) is not None:
            return create_packaged_model(name, num_classes=0)
        return create_pretrained(name)
    model = create_timm_model(name, pretrained=False, num_classes=0)
    if weights is not None:
        load_weights_file(model, weights, name=name)
    return model


def weights_available(name, weights="imagenet"):
    """Whether :func:`create_model` can load these weights without a download.

    Parameters
    ----------
    name : str
        timm model name.
    weights : 'imagenet', None, str or os.PathLike, default='imagenet'
        As for :func:`create_model`.

    Returns
    -------
    available : bool
        True for ``weights=None``, for an existing file, for a packaged
        backbone whose package is installed, and for other names whose
        weights are in the Hugging Face (or torch hub) cache.

    Examples
    --------
    >>> from skanomaly.weights import weights_available
    >>> weights_available("tf_efficientnet_lite0")
    True
    >>> weights_available("resnet18", weights=None)
    True
    """
    if weights is None:
        return True
    if not isinstance(weights, (str, os.PathLike)):
        return False
    if not _is_imagenet(weights):
        return Path(weights).is_file()
    if packaged_architecture(name) is not None:
        try:
            packaged_weights_path(name)
        except OSError:
            return False
        return True
    return in_hub_cache(name)


def offline_architecture(name):
    """``name``, if timm builds it from the name alone (no file, no network).

    That is a timm architecture, optionally with a pretrained tag
    (``'resnet18.a1_in1k'``), built with ``pretrained=False``. Hub and local
    names (``'hf-hub:...'``, ``'local-dir:...'``), whose configuration timm
    would download or read, and anything path-like are refused.

    Raises
    ------
    ValueError
        If ``name`` is not such a name.
    """
    import timm

    if (
        not isinstance(name, str)
        or any(c in name for c in ":/\\")
        or not timm.is_model(name)
    ):
        raise ValueError(
            f"Backbone {name!r:.80} is not a timm architecture that builds offline "
            "(a timm model name such as 'resnet18'); hub and local models "
            "('hf-hub:...', 'local-dir:...') cannot be rebuilt from a model file."
        )
    return name


def native_input_size(name, image_size=None):
    """``(height, width)`` a feature stage on this backbone reads images at.

    ``image_size`` when given (an int or a pair), else the size the timm
    architecture's pretrained weights expect, from timm's pretrained
    configuration alone (no model is built, nothing is read or downloaded):
    its test-time input size where it has one, as the feature stages
    resolve it. None for an invalid ``image_size`` and for names timm has
    no configuration for (hub and local models).

    Examples
    --------
    >>> from skanomaly.weights import native_input_size
    >>> native_input_size("tf_efficientnet_lite0"), native_input_size("nope")
    ((224, 224), None)
    >>> native_input_size("tf_efficientnet_lite0", image_size=(64, 48))
    (64, 48)
    """
    import timm

    from .._validation import parse_image_size

    if image_size is not None:
        try:
            return parse_image_size(image_size)
        except (TypeError, ValueError):
            return None
    try:
        config = timm.get_pretrained_cfg(name)
    except (RuntimeError, ValueError, TypeError):
        return None
    if config is None:
        return None
    size = getattr(config, "test_input_size", None) or config.input_size
    return tuple(int(s) for s in size[1:])
