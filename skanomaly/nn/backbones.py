"""timm backbones as frozen multi-level feature extractors (torch only).

A backbone is a timm model built without its classifier (``num_classes=0``),
in evaluation mode with gradients off. Its *levels* are the feature maps
timm's ``forward_intermediates`` returns, plus the head when the model has
one beyond its last stage:

- EfficientNet (timm's ``extra_blocks``): ``stem``, every stage
  ``blocks.0`` ... ``blocks.6`` and ``head`` (the 1x1 head convolution): 9
  levels for B0 to B7, as in Rippel et al. MobileNetV3 gives the same
  without ``head`` (its head convolution comes after the pooling).
- ResNets: ``act1`` (the stem), ``layer1`` ... ``layer4``; the last stage is
  already the model's final feature map, so there is no separate head.
- Any other model with ``forward_intermediates`` (ConvNeXt, ViT, ...): the
  modules of its ``feature_info``, plus ``head`` (its pre-logits features)
  when they differ from the last stage.

Each level is reduced to one vector per image by global average pooling.
"""

import os
import pickle
import socket
from contextlib import contextmanager
from inspect import signature
from pathlib import Path
from urllib.parse import urlparse

import torch
import torch.nn.functional as F

__all__ = [
    "create_backbone",
    "describe_levels",
    "load_weights_file",
    "offline_architecture",
    "pooled_levels",
    "preprocess_images",
]

_PROXY_VARIABLES = ("HTTPS_PROXY", "https_proxy", "ALL_PROXY", "all_proxy")


def create_backbone(name, weights="imagenet"):
    """A frozen timm model without classifier, in evaluation mode.

    Parameters
    ----------
    name : str
        timm model name, e.g. ``'efficientnet_b4'`` or ``'resnet18.a1_in1k'``.
    weights : 'imagenet', None, str or os.PathLike, default='imagenet'
        ``'imagenet'``: timm's pretrained weights (from the Hugging Face hub
        cache, downloaded if missing and the hub is reachable); ``None``:
        random initialisation; a path: a local state dict (see
        :func:`load_weights_file`).

    Returns
    -------
    model : torch.nn.Module
    """
    if isinstance(weights, str) and weights == "imagenet":
        model = _create_pretrained(name)
    else:
        model = _create(name, pretrained=False)
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


def _create(name, pretrained):
    import timm

    try:
        return timm.create_model(name, pretrained=pretrained, num_classes=0)
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
        f"{reason}. Either pass weights=<path> to a local .safetensors or .pth "
        "state dict of this backbone (on a machine with internet: "
        "safetensors.torch.save_file(timm.create_model("
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
            return _create(name, pretrained=True)
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
        return _create(name, pretrained=True)
    except (OSError, RuntimeError) as exc:
        raise _missing_weights_error(name, f"the download failed ({exc})") from exc


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
    classifier = model.pretrained_cfg.get("classifier") or ()
    prefixes = tuple(
        f"{c}." for c in ((classifier,) if isinstance(classifier, str) else classifier)
    )
    if prefixes:
        state = {k: v for k, v in state.items() if not k.startswith(prefixes)}
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
