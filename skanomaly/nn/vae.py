"""The variational autoencoder module, its Gaussian likelihoods and its loss."""

import math

import torch
from torch import nn

from .autoencoder import make_encoder_decoder

__all__ = ["VAELoss", "VAEModule", "gaussian_nll", "kl_to_standard_normal"]

_LOG_2PI = math.log(2 * math.pi)


def gaussian_nll(x, mean, logvar):
    """Negative log-likelihood of x under N(mean, exp(logvar)), summed per sample."""
    nll = 0.5 * (logvar + (x - mean) ** 2 * torch.exp(-logvar) + _LOG_2PI)
    return nll.flatten(1).sum(dim=1)


class VAEModule(nn.Module):
    """Gaussian encoder q(z|x) and Gaussian decoder p(x|z) with a variance per value.

    ``forward`` returns ``(x_mean, x_logvar, z_mean, z_logvar)`` with one
    reparameterised draw of z. Log-variances are clamped to
    ``[logvar_floor, 8]``: the floor keeps a value that never varies in
    training (an image's background, a constant column) from getting a
    near-zero variance, which would make any small error on it dominate
    the likelihood.
    """

    logvar_ceiling = 8.0

    def __init__(
        self,
        input_shape,
        latent_dim=8,
        hidden_sizes=(64, 32),
        base_channels=32,
        logvar_floor=-4.0,
    ):
        super().__init__()
        self.input_shape = tuple(input_shape)
        self.latent_dim = latent_dim
        self.logvar_bounds = (float(logvar_floor), self.logvar_ceiling)
        self.encoder, self.decoder = make_encoder_decoder(
            input_shape, 2 * latent_dim, latent_dim, hidden_sizes, base_channels, 2
        )
        self.is_image = len(self.input_shape) == 3

    def encode(self, x):
        z_mean, z_logvar = self.encoder(x).chunk(2, dim=1)
        return z_mean, z_logvar.clamp(*self.logvar_bounds)

    def decode(self, z):
        x_mean, x_logvar = self.decoder(z).chunk(2, dim=1)
        if self.is_image:
            x_mean = torch.tanh(x_mean)
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
