"""The autoencoder module and its loss; the encoder-decoder pair the VAE shares."""

from torch import nn

from .dcgan import ConvDecoder, ConvEncoder, dcgan_init
from .mlp import MLP

__all__ = [
    "AutoEncoderModule",
    "ReconstructionLoss",
    "make_encoder_decoder",
    "per_sample_mean",
]


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
