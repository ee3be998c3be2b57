"""Normalizing-flow blocks on feature maps (torch only), for FastFlow.

A 2-D flow maps a feature map ``x`` (batch, channels, height, width) to a
map ``z`` of the same shape, invertibly, with a log-determinant that splits
exactly into one term per grid position. Each :class:`FlowStep` is

1. :class:`ActNorm`: a learned per-channel scale and shift (identity at
   initialisation; the features come standardised);
2. :class:`ChannelPermutation`: a fixed random order of the channels, so
   that every channel is transformed by some coupling;
3. :class:`AffineCoupling`: the second half of the channels is scaled and
   shifted by a convolutional subnet of the first half (3 x 3 or 1 x 1
   kernels, FastFlow's alternation), the log-scales soft-clamped.

:class:`FastFlowModule` stacks them, standardises its input with fixed
training statistics and returns the negative log-likelihood of each
position, per channel (nats): its mean is the training loss and the map
itself the anomaly map.
"""

import math

import torch
from torch import nn

__all__ = [
    "ActNorm",
    "AffineCoupling",
    "ChannelPermutation",
    "FastFlowModule",
    "FlowNLL",
    "FlowStep",
    "LevelFlows",
    "LevelLikelihoodMap",
    "soft_clamp",
]

_HALF_LOG_2PI = 0.5 * math.log(2 * math.pi)


def soft_clamp(s, clamp):
    """``(2 clamp / pi) * atan(s / clamp)``: log-scales kept in (-clamp, clamp).

    The soft clamping of Ardizzone et al.'s invertible networks (FrEIA's
    GLOW coupling), used by DifferNet and CS-Flow: linear (slope 2 / pi)
    for small ``s``, so gradients flow, while ``exp`` of the result stays
    within ``exp(+-clamp)`` and cannot overflow float32.

    Parameters
    ----------
    s : torch.Tensor
    clamp : float
        Bound on the absolute log-scale (> 0).

    Returns
    -------
    torch.Tensor

    Examples
    --------
    >>> import torch
    >>> from skanomaly.nn.flows import soft_clamp
    >>> soft_clamp(torch.tensor([0.0, 1e6]), 2.0)
    tensor([0.0000, 2.0000])
    """
    return (2.0 * clamp / math.pi) * torch.atan(s / clamp)


class ActNorm(nn.Module):
    """Per-channel ``x * exp(log_scale) + shift`` (Glow's ActNorm, starts as identity).

    Parameters
    ----------
    channels : int
    """

    def __init__(self, channels):
        super().__init__()
        self.log_scale = nn.Parameter(torch.zeros(1, channels, 1, 1))
        self.shift = nn.Parameter(torch.zeros(1, channels, 1, 1))

    def forward(self, x):
        """``(y, log-det per position (batch, height, width))``."""
        y = x * torch.exp(self.log_scale) + self.shift
        logdet = self.log_scale.sum().expand(x.shape[0], *x.shape[2:])
        return y, logdet

    def inverse(self, y):
        return (y - self.shift) * torch.exp(-self.log_scale)


class ChannelPermutation(nn.Module):
    """A fixed random permutation of the channels (drawn from torch's generator).

    Parameters
    ----------
    channels : int
    """

    def __init__(self, channels):
        super().__init__()
        order = torch.randperm(channels)
        self.register_buffer("order", order)
        self.register_buffer("inverse_order", torch.argsort(order))

    def forward(self, x):
        return x.index_select(1, self.order)

    def inverse(self, y):
        return y.index_select(1, self.inverse_order)


class AffineCoupling(nn.Module):
    """Affine coupling on channel halves with a convolutional subnet.

    ``x = (x1, x2)`` split along channels; ``(s, t) = subnet(x1)``;
    ``y = (x1, x2 * exp(c(s)) + t)`` with ``c`` the soft clamp. The subnet is
    conv(k) - ReLU - conv(k) with ``hidden`` channels (FastFlow's); its last
    convolution starts at zero, so the block starts as the identity.

    Parameters
    ----------
    channels : int
        At least 2.
    hidden : int
        Channels of the subnet's hidden layer.
    kernel_size : {1, 3}
    clamp : float
        Bound on the absolute log-scale (see :func:`soft_clamp`).
    """

    def __init__(self, channels, hidden, kernel_size, clamp):
        super().__init__()
        self.split = channels // 2
        self.clamp = float(clamp)
        out = channels - self.split
        padding = kernel_size // 2
        last = nn.Conv2d(hidden, 2 * out, kernel_size, padding=padding)
        nn.init.zeros_(last.weight)
        nn.init.zeros_(last.bias)
        self.subnet = nn.Sequential(
            nn.Conv2d(self.split, hidden, kernel_size, padding=padding),
            nn.ReLU(),
            last,
        )

    def _scale_shift(self, x1):
        s, t = self.subnet(x1).chunk(2, dim=1)
        return soft_clamp(s, self.clamp), t

    def forward(self, x):
        """``(y, log-det per position (batch, height, width))``."""
        x1, x2 = x[:, : self.split], x[:, self.split :]
        s, t = self._scale_shift(x1)
        y2 = x2 * torch.exp(s) + t
        return torch.cat([x1, y2], dim=1), s.sum(dim=1)

    def inverse(self, y):
        y1, y2 = y[:, : self.split], y[:, self.split :]
        s, t = self._scale_shift(y1)
        return torch.cat([y1, (y2 - t) * torch.exp(-s)], dim=1)


class FlowStep(nn.Module):
    """ActNorm, a channel permutation, then an affine coupling.

    Parameters
    ----------
    channels, hidden, kernel_size, clamp
        See :class:`AffineCoupling`.
    """

    def __init__(self, channels, hidden, kernel_size, clamp):
        super().__init__()
        self.norm = ActNorm(channels)
        self.permutation = ChannelPermutation(channels)
        self.coupling = AffineCoupling(channels, hidden, kernel_size, clamp)

    def forward(self, x):
        """``(y, log-det per position (batch, height, width))``."""
        x, logdet = self.norm(x)
        y, coupling_logdet = self.coupling(self.permutation(x))
        return y, logdet + coupling_logdet

    def inverse(self, y):
        return self.norm.inverse(self.permutation.inverse(self.coupling.inverse(y)))


class FastFlowModule(nn.Module):
    """FastFlow's 2-D flow: feature maps to per-position negative log-likelihoods.

    The input is standardised per channel with the fixed buffers ``center``
    and ``scale`` (set from the training features before training), then
    goes through ``n_steps`` :class:`FlowStep`, whose subnets alternate 3 x 3
    and 1 x 1 kernels (all 3 x 3 with ``conv3x3_only``). With a standard
    normal base density, the log-likelihood of the whole map splits into one
    term per position ``(h, w)``::

        log p(x)[h, w] = sum_c (-z[c, h, w]**2 / 2 - log(2 pi) / 2)
                         + sum over steps of the log-det at (h, w)

    (each coupling's Jacobian is triangular, its log-det the sum of its
    log-scales, position by position; the standardisation's constant
    log-det is left out). ``forward`` returns ``-log p / channels``, per
    position.

    Parameters
    ----------
    channels : int
        Channels of the feature map (at least 2).
    n_steps : int
    hidden_ratio : float
        Hidden channels of each subnet, as a multiple of ``channels``.
    clamp : float
        Soft bound of each coupling's log-scales.
    conv3x3_only : bool
        Use 3 x 3 kernels in every step instead of alternating with 1 x 1.
    """

    def __init__(self, channels, n_steps, hidden_ratio, clamp, conv3x3_only):
        super().__init__()
        hidden = max(1, round(hidden_ratio * channels))
        self.channels = int(channels)
        self.register_buffer("center", torch.zeros(1, channels, 1, 1))
        self.register_buffer("scale", torch.ones(1, channels, 1, 1))
        self.steps = nn.ModuleList(
            FlowStep(
                channels,
                hidden,
                3 if conv3x3_only or i % 2 == 0 else 1,
                clamp,
            )
            for i in range(n_steps)
        )

    def set_standardisation(self, center, scale):
        """Copy the per-channel ``center`` and ``scale`` (arrays of ``channels``)."""
        with torch.no_grad():
            self.center.copy_(torch.as_tensor(center).view_as(self.center))
            self.scale.copy_(torch.as_tensor(scale).view_as(self.scale))

    def transform(self, x):
        """``(z, log-det per position (batch, height, width))`` of features ``x``."""
        z = (x - self.center) / self.scale
        logdet = torch.zeros(x.shape[0], *x.shape[2:], dtype=x.dtype, device=x.device)
        for step in self.steps:
            z, step_logdet = step(z)
            logdet = logdet + step_logdet
        return z, logdet

    def inverse(self, z):
        """Features ``x`` whose ``transform`` is ``z``."""
        for step in reversed(self.steps):
            z = step.inverse(z)
        return z * self.scale + self.center

    def forward(self, x):
        """Negative log-likelihood per position and channel (batch, height, width)."""
        z, logdet = self.transform(x)
        nll = 0.5 * (z * z).sum(dim=1) - logdet
        return nll / self.channels + _HALF_LOG_2PI


class LevelFlows(nn.Module):
    """One :class:`FastFlowModule` per backbone level, each on its own channels.

    FastFlow trains a separate flow for each level of the backbone. The
    levels arrive concatenated along the channels on the finest level's grid
    (:class:`~skanomaly.features.patches.PatchFeatures`), so each flow takes
    its slice of ``level_channels``. ``forward`` returns the negative
    log-likelihood per level, position and channel, shape (batch, levels,
    height, width): its mean is the training loss (each level weighs the
    same), :class:`LevelLikelihoodMap` turns it into the anomaly map.

    Parameters
    ----------
    level_channels : sequence of int
        Channels of each level, in the order of the concatenation (each at
        least 2).
    n_steps, hidden_ratio, clamp, conv3x3_only
        See :class:`FastFlowModule` (``hidden_ratio`` of each level's
        channels).
    """

    def __init__(self, level_channels, n_steps, hidden_ratio, clamp, conv3x3_only):
        super().__init__()
        self.level_channels = [int(c) for c in level_channels]
        self.flows = nn.ModuleList(
            FastFlowModule(c, n_steps, hidden_ratio, clamp, conv3x3_only)
            for c in self.level_channels
        )

    def set_standardisation(self, center, scale):
        """Per-channel ``center`` and ``scale`` of the concatenated levels."""
        start = 0
        for flow, count in zip(self.flows, self.level_channels, strict=True):
            stop = start + count
            flow.set_standardisation(center[start:stop], scale[start:stop])
            start = stop

    def forward(self, x):
        """Negative log-likelihoods (batch, levels, height, width)."""
        parts = x.split(self.level_channels, dim=1)
        return torch.stack(
            [flow(part) for flow, part in zip(self.flows, parts, strict=True)], dim=1
        )


class LevelLikelihoodMap(nn.Module):
    """Anomaly map of :class:`LevelFlows`: minus the levels' mean likelihood.

    ``-mean over levels of exp(-nll)``, with ``nll`` the negative
    log-likelihood per channel (the geometric mean of the channels'
    densities), as FastFlow's authors and anomalib combine their levels. A
    plain mean of the levels' ``nll`` lets the level with the widest range
    decide the map (measured: image AUROC 0.77 against 0.97 on MNIST
    mosaics, ``benchmarks/RESULTS_flows.md``); the likelihoods are bounded
    above by the best-fitting level and below by 0.
    """

    # exp(80) is far below float32's limit; a log-density per channel of 80
    # nats does not occur in a trained flow
    _MIN_NLL = -80.0

    def forward(self, level_nll):
        return -torch.exp(-level_nll.clamp_min(self._MIN_NLL)).mean(dim=1)


class FlowNLL(nn.Module):
    """The training loss: the mean of the per-position negative log-likelihoods.

    For :class:`~skanomaly.nets.SelfSupervisedNet`: ``loss(nll_map, X)``,
    where ``nll_map`` is :class:`FastFlowModule`'s or :class:`LevelFlows`'
    output (``X`` unused).
    """

    def forward(self, nll_map, X=None):
        return nll_map.mean()
