"""GANomaly's generator (encoder-decoder-encoder) and its two losses.

Akcay, Atapour-Abarghouei and Breckon, "GANomaly: Semi-Supervised Anomaly
Detection via Adversarial Training", ACCV 2018.
"""

import torch
from torch import nn

from .dcgan import ConvDecoder, ConvEncoder, dcgan_init
from .gan import AdversarialLoss, bce, frozen
from .mlp import MLP

__all__ = ["GANomalyGenerator", "GANomalyLoss"]


class GANomalyGenerator(nn.Module):
    """Encoder G_E -> decoder G_D -> second encoder E, for images or rows.

    ``forward(x)`` returns ``(x_hat, z, z_hat)`` with ``z = G_E(x)``,
    ``x_hat = G_D(z)`` and ``z_hat = E(x_hat)``. The two encoders have the
    same layout and their own weights.

    Images use the DCGAN stacks of :mod:`skanomaly.nn.dcgan` (any image
    size; tanh output, so inputs are expected in [-1, 1]) with DCGAN
    initialisation. Rows use MLPs (ReLU, no output activation, for
    standardised features); the decoder mirrors ``hidden_sizes``.

    Parameters
    ----------
    input_shape : tuple
        ``(n_features,)`` or ``(channels, height, width)``.
    latent_dim : int, default=100
        Size of z (nz).
    base_channels : int, default=64
        Channels of the first convolution (ngf), doubled at every halving.
    hidden_sizes : tuple of int, default=(64, 32)
        Hidden widths of the tabular encoders.
    """

    def __init__(
        self, input_shape, latent_dim=100, base_channels=64, hidden_sizes=(64, 32)
    ):
        super().__init__()
        self.input_shape = tuple(input_shape)
        self.encoder = self._make_encoder(latent_dim, base_channels, hidden_sizes)
        if len(self.input_shape) == 1:
            self.decoder = MLP(
                latent_dim, tuple(hidden_sizes)[::-1], self.input_shape[0]
            )
        else:
            self.decoder = ConvDecoder(self.input_shape, latent_dim, base_channels)
            self.decoder.apply(dcgan_init)
        self.encoder_fake = self._make_encoder(latent_dim, base_channels, hidden_sizes)

    def _make_encoder(self, latent_dim, base_channels, hidden_sizes):
        if len(self.input_shape) == 1:
            return MLP(self.input_shape[0], hidden_sizes, latent_dim)
        encoder = ConvEncoder(self.input_shape, latent_dim, base_channels)
        encoder.apply(dcgan_init)
        return encoder

    def forward(self, x):
        z = self.encoder(x)
        x_hat = self.decoder(z)
        z_hat = self.encoder_fake(x_hat)
        return x_hat, z, z_hat


class GANomalyLoss(AdversarialLoss):
    """GANomaly's generator and discriminator losses.

    With ``f`` the discriminator's features (the block before its last
    layer) and ``D`` its real/fake logit:

    - generator: ``w_adv * mean((f(x) - f(x_hat))**2)
      + w_con * mean(|x - x_hat|) + w_enc * mean((z - z_hat)**2)``
      (feature matching, contextual L1, latent L2);
    - discriminator: ``0.5 * (BCE(D(x), 1) + BCE(D(x_hat), 0))`` on logits.

    Parameters
    ----------
    w_adv, w_con, w_enc : float, default=1, 50, 1
        Weights of the adversarial (feature-matching), contextual and
        encoder terms (the authors' defaults).
    """

    def __init__(self, w_adv=1.0, w_con=50.0, w_enc=1.0):
        super().__init__()
        self.w_adv = w_adv
        self.w_con = w_con
        self.w_enc = w_enc

    def discriminator_loss(self, output, X, discriminator):
        x_hat = output[0]
        return 0.5 * (bce(discriminator(X), 1.0) + bce(discriminator(x_hat), 0.0))

    def generator_loss(self, output, X, discriminator):
        x_hat, z, z_hat = output
        # f(x) does not depend on the generator: no graph needed for it
        with torch.no_grad():
            features_real = discriminator.features(X)
        with frozen(discriminator):
            features_fake = discriminator.features(x_hat)
        adv = ((features_real - features_fake) ** 2).mean()
        con = (X - x_hat).abs().mean()
        enc = ((z - z_hat) ** 2).mean()
        return self.w_adv * adv + self.w_con * con + self.w_enc * enc
