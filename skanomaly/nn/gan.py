"""Discriminators shared by the GAN detectors."""

from torch import nn

from .dcgan import ConvEncoder, dcgan_init
from .mlp import MLP

__all__ = ["Discriminator"]


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
        return self.head(self.feature_extractor(x)).flatten(1).squeeze(1)
