"""What the GAN detectors share: the loss interface, a discriminator, the DCGAN losses.

:class:`AdversarialLoss` is the interface :class:`~skanomaly.nets.AdversarialNet`
trains with: one method for the discriminator's loss, one for the generator
side's. :class:`Discriminator` is the DCGAN critic with a feature layer;
:class:`DCGANLoss` the plain non-saturating GAN losses; :func:`frozen` builds a
graph through a network without its weight gradients.
"""

from abc import ABC, abstractmethod
from contextlib import contextmanager

import torch
import torch.nn.functional as F
from torch import nn

from .dcgan import ConvEncoder, dcgan_init
from .mlp import MLP

__all__ = ["AdversarialLoss", "DCGANLoss", "Discriminator", "bce", "frozen"]


class AdversarialLoss(nn.Module, ABC):
    """The two losses of an adversarial training step.

    ``output`` is whatever the generator-side module returned for the batch
    ``X``. :class:`~skanomaly.nets.AdversarialNet` calls
    ``discriminator_loss`` with the output detached, steps the
    discriminator, then calls ``generator_loss`` against the updated
    discriminator and steps the generator side. Loss weights are the
    subclass's ``__init__`` parameters (set through ``criterion__<name>``).
    """

    @abstractmethod
    def discriminator_loss(self, output, X, discriminator):
        """Scalar loss minimised by the discriminator."""

    @abstractmethod
    def generator_loss(self, output, X, discriminator):
        """Scalar loss minimised by the generator side."""


def bce(logits, target):
    """Binary cross-entropy of ``logits`` against a constant label ``target``."""
    return F.binary_cross_entropy_with_logits(logits, torch.full_like(logits, target))


@contextmanager
def frozen(module):
    """Build the graph through ``module`` without gradients for its weights.

    A generator's loss runs through the discriminator, but only the
    generator is stepped on it: the discriminator's weight gradients would
    be computed for nothing (its optimizer clears them before its own
    step). Gradients still flow through the module to its input.
    """
    params = [p for p in module.parameters() if p.requires_grad]
    for p in params:
        p.requires_grad_(False)
    try:
        yield module
    finally:
        for p in params:
            p.requires_grad_(True)


class DCGANLoss(AdversarialLoss):
    """The standard (non-saturating) DCGAN losses, on discriminator logits.

    Discriminator: ``BCE(D(x), 1) + BCE(D(G(z)), 0)``; generator:
    ``BCE(D(G(z)), 1)``. ``output`` is the generated batch ``G(z)``.
    """

    def discriminator_loss(self, output, X, discriminator):
        return bce(discriminator(X), 1.0) + bce(discriminator(output), 0.0)

    def generator_loss(self, output, X, discriminator):
        return bce(discriminator(output), 1.0)


class Discriminator(nn.Module):
    """Real/fake critic with a feature layer, for images or tabular rows.

    Images: the DCGAN encoder (conv + BatchNorm + LeakyReLU(0.2)) ending in
    one logit. Tabular: an MLP with LeakyReLU(0.2). ``features(x)`` is the
    last hidden representation, flattened to (N, k), which feature-matching
    losses compare; ``forward(x)`` returns logits of shape (N,) (use
    ``BCEWithLogitsLoss``, the numerically stable form of sigmoid + BCE).

    Parameters
    ----------
    input_shape : tuple
        ``(n_features,)`` or ``(channels, height, width)``.
    base_channels : int, default=64
        First conv width for images (ndf).
    hidden_sizes : tuple of int, default=(64, 32)
        Hidden widths for tabular input.
    out_features : int, default=1
        Width of the head (1 logit; Skip-GANomaly's feature head uses more).
    """

    def __init__(
        self, input_shape, base_channels=64, hidden_sizes=(64, 32), out_features=1
    ):
        super().__init__()
        self.input_shape = tuple(input_shape)
        if len(self.input_shape) == 1:
            mlp = MLP(
                self.input_shape[0], hidden_sizes, out_features, negative_slope=0.2
            )
            self.feature_extractor = mlp.features
            self.head = mlp[mlp._last_linear_index()]
        else:
            encoder = ConvEncoder(self.input_shape, out_features, base_channels)
            self.feature_extractor = encoder.features
            self.head = encoder.final
        self.reinitialize()

    def reinitialize(self):
        """Fresh weights (DCGAN init); GANomaly does this when D collapses."""
        for layer in self.modules():
            if layer is not self and hasattr(layer, "reset_parameters"):
                layer.reset_parameters()
        if len(self.input_shape) == 3:
            self.apply(dcgan_init)

    def features(self, x):
        return self.feature_extractor(x).flatten(1)

    def forward(self, x):
        out = self.head(self.feature_extractor(x)).flatten(1)
        # squeeze(1) only where it squeezes: ONNX's Squeeze refuses a wider axis
        return out[:, 0] if out.shape[1] == 1 else out
