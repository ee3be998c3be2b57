"""EGBAD (Zenati et al. 2018): a BiGAN's generator, encoder, joint critic and losses.

A BiGAN learns a generator ``G(z)`` and an encoder ``E(x)`` together with a
discriminator on *pairs*: ``D(x, E(x))`` for data and ``D(G(z), z)`` for
samples. Following the authors' code, with sigmoid cross-entropy on logits:

- D labels ``(x, E(x))`` real and ``(G(z), z)`` fake;
- G wants ``D(G(z), z)`` real; E wants ``D(x, E(x))`` fake.

The anomaly score of ``x`` (:func:`egbad_score`) combines the
reconstruction error of ``G(E(x))`` with a discriminator term.
"""

import math

import torch
from torch import nn
from torch.nn import functional as F

from .dcgan import ConvDecoder, ConvEncoder, dcgan_init
from .gan import AdversarialLoss, bce
from .mlp import MLP

__all__ = ["BiGANLoss", "BiGANModule", "JointDiscriminator", "egbad_score"]


class BiGANModule(nn.Module):
    """Generator ``G: z -> x`` and encoder ``E: x -> z`` of a BiGAN.

    Images: a DCGAN :class:`~skanomaly.nn.dcgan.ConvDecoder` (tanh output)
    and :class:`~skanomaly.nn.dcgan.ConvEncoder`, DCGAN-initialised. Tabular:
    MLPs, ReLU in G with a linear output (the rows are standardised) and
    LeakyReLU(0.1) in E, as in the authors' KDD99 networks.

    ``forward(X)`` draws ``z ~ N(0, I)`` (one per row, from torch's global
    generator) and returns ``(E(X), z, G(z))``, what :class:`BiGANLoss`
    needs.

    Parameters
    ----------
    input_shape : tuple
        ``(n_features,)`` or ``(channels, height, width)``.
    latent_dim : int
        Size of z.
    hidden_sizes : tuple of int, default=(64, 128)
        Hidden widths of the tabular generator, from the code to the row;
        the encoder uses them in reverse.
    base_channels : int, default=64
        First conv width of the image encoder (last of the generator).
    """

    def __init__(
        self, input_shape, latent_dim, hidden_sizes=(64, 128), base_channels=64
    ):
        super().__init__()
        self.input_shape = tuple(input_shape)
        self.latent_dim = latent_dim
        if len(self.input_shape) == 1:
            n_features = self.input_shape[0]
            self.generator = MLP(latent_dim, tuple(hidden_sizes), n_features)
            self.encoder = MLP(
                n_features, tuple(hidden_sizes)[::-1], latent_dim, negative_slope=0.1
            )
        else:
            self.generator = ConvDecoder(self.input_shape, latent_dim, base_channels)
            self.encoder = ConvEncoder(self.input_shape, latent_dim, base_channels)
            self.generator.apply(dcgan_init)
            self.encoder.apply(dcgan_init)

    def reconstruct(self, X):
        """``G(E(X))``."""
        return self.generator(self.encoder(X))

    def forward(self, X):
        z = torch.randn(X.shape[0], self.latent_dim, device=X.device, dtype=X.dtype)
        return self.encoder(X), z, self.generator(z)


def _dense(in_features, out_features, dropout):
    return [
        nn.Linear(in_features, out_features),
        nn.LeakyReLU(0.1),
        nn.Dropout(dropout),
    ]


class JointDiscriminator(nn.Module):
    """BiGAN critic ``D(x, z)`` with a feature layer, for images or rows.

    An x branch (images: the DCGAN conv stack of
    :class:`~skanomaly.nn.dcgan.ConvEncoder`, flattened; rows: one dense
    layer), a z branch (one dense layer), and a joint dense layer on their
    concatenation whose output is the feature layer ``features(x, z)``
    (feature matching compares it); a linear head gives the logit. Dense
    layers use LeakyReLU(0.1) and dropout, as in the authors' networks.

    Parameters
    ----------
    input_shape : tuple
        ``(n_features,)`` or ``(channels, height, width)``.
    latent_dim : int
        Size of z.
    base_channels : int, default=64
        First conv width of the image branch.
    hidden_sizes : tuple of int, default=(64, 128)
        The last entry is the width of the dense layers.
    dropout : float, default=0.2
        Dropout rate after each dense layer (and the image branch).
    """

    def __init__(
        self,
        input_shape,
        latent_dim,
        base_channels=64,
        hidden_sizes=(64, 128),
        dropout=0.2,
    ):
        super().__init__()
        input_shape = tuple(input_shape)
        if len(hidden_sizes) == 0:
            raise ValueError(
                "EGBAD's critic needs at least one hidden size (hidden_sizes): "
                "its last entry is the width of the x, z and joint layers."
            )
        width = tuple(hidden_sizes)[-1]
        if len(input_shape) == 1:
            self.x_branch = nn.Sequential(*_dense(input_shape[0], width, dropout))
            x_width = width
        else:
            conv = ConvEncoder(input_shape, 1, base_channels)
            conv.apply(dcgan_init)
            self.x_branch = nn.Sequential(
                conv.features, nn.Flatten(), nn.Dropout(dropout)
            )
            x_width = conv.feature_channels * math.prod(conv.feature_size)
        self.z_branch = nn.Sequential(*_dense(latent_dim, width, dropout))
        self.joint = nn.Sequential(*_dense(x_width + width, width, dropout))
        self.head = nn.Linear(width, 1)

    def features(self, x, z):
        """The joint feature layer, shape (N, width)."""
        return self.joint(torch.cat([self.x_branch(x), self.z_branch(z)], dim=1))

    def forward(self, x, z):
        """Logits of shape (N,): high for (x, E(x)) pairs, low for (G(z), z)."""
        return self.head(self.features(x, z)).squeeze(1)


class BiGANLoss(AdversarialLoss):
    """BiGAN losses for :class:`~skanomaly.nets.AdversarialNet`.

    ``output`` is ``(E(X), z, G(z))``. The discriminator loss is
    ``BCE(D(x, E(x)), 1) + BCE(D(G(z), z), 0)``; the generator-side loss,
    minimised over G and E together, is ``BCE(D(G(z), z), 1) +
    BCE(D(x, E(x)), 0)``. Its first term depends on G only and its second
    on E only, so one optimiser on both equals the authors' two optimisers
    with the same settings.
    """

    def discriminator_loss(self, output, X, discriminator):
        encoded, z, generated = output
        return bce(discriminator(X, encoded), 1.0) + bce(
            discriminator(generated, z), 0.0
        )

    def generator_loss(self, output, X, discriminator):
        encoded, z, generated = output
        return bce(discriminator(generated, z), 1.0) + bce(
            discriminator(X, encoded), 0.0
        )


def egbad_score(
    X,
    encoded,
    reconstruction,
    discriminator,
    disc_weight,
    disc_loss,
    scale_residual=None,
):
    """EGBAD anomaly score ``(1 - w) * ||x - G(E(x))||_1 + w * L_D(x)``.

    Parameters
    ----------
    X : tensor of shape (N, ...)
    encoded : tensor of shape (N, latent_dim)
        ``E(X)``.
    reconstruction : tensor of shape X.shape
        ``G(E(X))``.
    discriminator : JointDiscriminator
    disc_weight : float
        ``w``, the weight of the discriminator term.
    disc_loss : {'fm', 'ce'}
        'fm': feature matching, ``||f(x, E(x)) - f(G(E(x)), E(x))||_1``;
        'ce': the cross-entropy of ``D(G(E(x)), E(x))`` against "real".
    scale_residual : callable or None, default=None
        Applied to the flattened residual ``x - G(E(x))``, shape (N, D),
        before its L1 norm (EGBAD's ``score_scaling``); None leaves it raw.

    Returns
    -------
    score : tensor of shape (N,)
        Higher = more anomalous.
    """
    residual = (X - reconstruction).flatten(1)
    if scale_residual is not None:
        residual = scale_residual(residual)
    residual = residual.abs().sum(dim=1)
    if disc_loss == "fm":
        dis = (
            (
                discriminator.features(X, encoded)
                - discriminator.features(reconstruction, encoded)
            )
            .abs()
            .sum(dim=1)
        )
    else:
        # BCE(logit, 1) = softplus(-logit), per sample
        dis = F.softplus(-discriminator(reconstruction, encoded))
    return (1.0 - disc_weight) * residual + disc_weight * dis
