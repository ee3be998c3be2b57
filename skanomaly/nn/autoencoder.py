"""Autoencoder and variational autoencoder modules and their losses."""

import math

import torch
from torch import nn

from .dcgan import ConvDecoder, ConvEncoder, dcgan_init
from .mlp import MLP

__all__ = [
    "AutoEncoderModule",
    "ReconstructionLoss",
    "VAELoss",
    "VAEModule",
    "gaussian_nll",
    "make_encoder_decoder",
]

_LOG_2PI = math.log(2 * math.pi)


def make_encoder_decoder(
    input_shape,
    code_size,
    latent_dim,
    hidden_sizes,
    base_channels,
    out_channels=None,
    batch_norm=False,
    dropout=0.0,
):
    """Encoder to ``code_size`` and decoder from ``latent_dim`` for tabular or images.

    ``input_shape`` is ``(n_features,)`` for tabular data (MLPs with
    ``hidden_sizes``) or ``(channels, height, width)`` for images (DCGAN conv
    stacks with ``base_channels``). ``out_channels`` widens the decoder
    output (e.g. to predict a variance per value); the image decoder then
    has no output activation. ``batch_norm`` and ``dropout`` regularise the
    tabular MLPs (see :class:`~skanomaly.nn.MLP`); the conv stacks have
    batch normalisation already.
    """
    if len(input_shape) == 1:
        n_features = input_shape[0]
        out = n_features if out_channels is None else n_features * out_channels
        regularised = dict(batch_norm=batch_norm, dropout=dropout)
        encoder = MLP(n_features, hidden_sizes, code_size, **regularised)
        decoder = MLP(latent_dim, tuple(hidden_sizes)[::-1], out, **regularised)
        return encoder, decoder
    encoder = ConvEncoder(input_shape, code_size, base_channels)
    decoder = ConvDecoder(
        input_shape,
        latent_dim,
        base_channels,
        output_activation="tanh" if out_channels is None else None,
        out_channels=None if out_channels is None else input_shape[0] * out_channels,
    )
    encoder.apply(dcgan_init)
    decoder.apply(dcgan_init)
    return encoder, decoder


class AutoEncoderModule(nn.Module):
    """x -> code of ``latent_dim`` -> reconstruction of x."""

    def __init__(
        self,
        input_shape,
        latent_dim=8,
        hidden_sizes=(64, 32),
        base_channels=32,
        batch_norm=False,
        dropout=0.0,
    ):
        super().__init__()
        self.encoder, self.decoder = make_encoder_decoder(
            input_shape,
            latent_dim,
            latent_dim,
            hidden_sizes,
            base_channels,
            batch_norm=batch_norm,
            dropout=dropout,
        )

    def forward(self, x):
        return self.decoder(self.encoder(x))


def per_sample_mean(values):
    """Mean over every axis but the first."""
    return values.flatten(1).mean(dim=1)


class ReconstructionLoss(nn.Module):
    """Mean squared error between the reconstruction and the input."""

    def forward(self, reconstruction, X):
        return per_sample_mean((reconstruction - X) ** 2).mean()


def gaussian_nll(x, mean, logvar):
    """Negative log-likelihood of x under N(mean, exp(logvar)), summed per sample."""
    nll = 0.5 * (logvar + (x - mean) ** 2 * torch.exp(-logvar) + _LOG_2PI)
    return nll.flatten(1).sum(dim=1)


class VAEModule(nn.Module):
    """Gaussian encoder q(z|x) and Gaussian decoder p(x|z) with a variance per value.

    ``forward`` returns ``(x_mean, x_logvar, z_mean, z_logvar)`` with one
    reparameterised draw of z.
    """

    # keeps exp(-logvar) finite early in training
    logvar_bounds = (-8.0, 8.0)

    def __init__(
        self, input_shape, latent_dim=8, hidden_sizes=(64, 32), base_channels=32
    ):
        super().__init__()
        self.input_shape = tuple(input_shape)
        self.latent_dim = latent_dim
        self.encoder, self.decoder = make_encoder_decoder(
            input_shape, 2 * latent_dim, latent_dim, hidden_sizes, base_channels, 2
        )
        self.is_image = len(self.input_shape) == 3

    def encode(self, x):
        z_mean, z_logvar = self.encoder(x).chunk(2, dim=1)
        return z_mean, z_logvar.clamp(*self.logvar_bounds)

    def decode(self, z):
        out = self.decoder(z)
        if self.is_image:
            x_mean, x_logvar = out.chunk(2, dim=1)
            x_mean = torch.tanh(x_mean)
        else:
            x_mean, x_logvar = out.chunk(2, dim=1)
        return x_mean, x_logvar.clamp(*self.logvar_bounds)

    def forward(self, x):
        z_mean, z_logvar = self.encode(x)
        z = z_mean + torch.exp(0.5 * z_logvar) * torch.randn_like(z_mean)
        x_mean, x_logvar = self.decode(z)
        return x_mean, x_logvar, z_mean, z_logvar


def kl_to_standard_normal(z_mean, z_logvar):
    """KL(N(z_mean, exp(z_logvar)) || N(0, I)) per sample."""
    return 0.5 * (z_mean**2 + torch.exp(z_logvar) - 1.0 - z_logvar).sum(dim=1)


class VAELoss(nn.Module):
    """Negative ELBO: Gaussian reconstruction NLL + ``beta`` x KL, batch mean."""

    def __init__(self, beta=1.0):
        super().__init__()
        self.beta = beta

    def forward(self, output, X):
        x_mean, x_logvar, z_mean, z_logvar = output
        nll = gaussian_nll(X, x_mean, x_logvar)
        kl = kl_to_standard_normal(z_mean, z_logvar)
        return (nll + self.beta * kl).mean()
