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

Where the pretrained weights come from (packaged, hub, local file), how
they are checked and which names build offline is :mod:`skanomaly.weights`.
"""

from inspect import signature

import torch
import torch.nn.functional as F

from ..weights import create_model

__all__ = [
    "PatchGrid",
    "PooledFeatures",
    "create_backbone",
    "describe_levels",
    "level_maps",
    "pooled_levels",
    "preprocess_images",
]


def create_backbone(name, weights="imagenet"):
    """A frozen timm model without classifier, in evaluation mode.

    Parameters
    ----------
    name : str
        timm model name, e.g. ``'tf_efficientnet_lite0'`` or
        ``'resnet18.a1_in1k'``.
    weights : 'imagenet', None, str or os.PathLike, default='imagenet'
        Where the weights come from: ImageNet (packaged or from the hub),
        none (random initialisation) or a local state dict file; see
        :func:`skanomaly.weights.create_model`, which loads them.

    Returns
    -------
    model : torch.nn.Module
    """
    model = create_model(name, weights)
    if not hasattr(model, "forward_intermediates"):
        raise ValueError(
            f"timm backbone {name!r} has no forward_intermediates, so its levels "
            "cannot be read; choose a CNN such as efficientnet_b4 or resnet18."
        )
    model.eval()
    model.requires_grad_(False)
    return model


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
        return self.features(preprocess_images(x, **self.preprocessing))

    def features(self, x):
        """The part after preprocessing, of a preprocessed batch ``x``."""
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
        return self.features(preprocess_images(x, **self.preprocessing))

    def features(self, x):
        """The part after preprocessing, of a preprocessed batch ``x``."""
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
