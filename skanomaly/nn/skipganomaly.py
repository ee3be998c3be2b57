"""Skip-GANomaly's U-Net generator, its discriminator and its losses.

Akcay, Atapour-Abarghouei and Breckon, "Skip-GANomaly: Skip Connected and
Adversarially Trained Encoder-Decoder Anomaly Detection", IJCNN 2019.

Image-size rule of the U-Net: like the pix2pix U-Net the authors use, it
halves the resolution with stride-2 4x4 convolutions while both sides are
even, down to 1x1 at most (:func:`unet_depth`). A power-of-two size ``s``
gets ``log2(s)`` levels (32x32: 32-16-8-4-2-1, the authors' depth 5); 28x28
goes 28-14-7 and keeps a 7x7 bottleneck. A U-Net needs at least two
halvings (one skip connection), so height and width must both be multiples
of 4; other sizes raise a ``ValueError`` (pad or resize the images first).
"""

import torch
from torch import nn

from .dcgan import dcgan_init, downsampling_plan
from .gan import AdversarialLoss, Discriminator, bce, frozen

__all__ = [
    "SkipGANomalyDiscriminator",
    "SkipGANomalyLoss",
    "UNetGenerator",
    "unet_depth",
]

# pix2pix: channels double at every level up to 8 x base_channels
_MAX_CHANNEL_DOUBLINGS = 3


def unet_depth(height, width):
    """Number of levels (stride-2 halvings) of the U-Net for an image size.

    Parameters
    ----------
    height, width : int

    Returns
    -------
    depth : int
        At least 2.

    Raises
    ------
    ValueError
        When the image cannot be halved twice (a side not a multiple of 4).
    """
    depth = len(downsampling_plan(height, width, min_size=1)) - 1
    if depth < 2:
        raise ValueError(
            f"The Skip-GANomaly U-Net needs images it can halve at least twice "
            f"(height and width both multiples of 4); got {height}x{width}. Pad "
            "or resize the images first (e.g. pad 28x28 MNIST digits to 32x32)."
        )
    return depth


class UNetGenerator(nn.Module):
    """U-Net encoder-decoder with skip connections, for images or rows.

    Images (pix2pix U-Net, BatchNorm, no dropout): level ``i`` halves the
    resolution into ``base_channels * 2**min(i, 3)`` channels with a 4x4
    stride-2 convolution (LeakyReLU(0.2) before it on every level but the
    first, BatchNorm after it on every level but the first and the
    innermost); the decoder mirrors it with ReLU + transposed convolution
    (+ BatchNorm) and, above the innermost level, takes the encoder's
    output of the same level concatenated to its input. The last layer is
    a tanh. Depth: see :func:`unet_depth`. DCGAN initialisation.

    Rows (an MLP "U-Net"): the same wiring with linear layers of widths
    ``hidden_sizes`` and a ``latent_dim`` bottleneck, without BatchNorm and
    without an output activation (features are standardised); each hidden
    layer's output is concatenated to the input of the mirrored decoder
    layer. ``hidden_sizes`` must not be empty.

    Parameters
    ----------
    input_shape : tuple
        ``(n_features,)`` or ``(channels, height, width)``.
    base_channels : int, default=64
        Channels of the first level (ngf).
    hidden_sizes : tuple of int, default=(64, 32)
        Hidden widths for rows.
    latent_dim : int, default=100
        Bottleneck width for rows (images use the channel plan).
    """

    def __init__(
        self, input_shape, base_channels=64, hidden_sizes=(64, 32), latent_dim=100
    ):
        super().__init__()
        self.input_shape = tuple(input_shape)
        if len(self.input_shape) == 1:
            if len(hidden_sizes) == 0:
                raise ValueError(
                    "The tabular Skip-GANomaly U-Net needs at least one hidden "
                    "layer (hidden_sizes) to have a skip connection."
                )
            widths = [*hidden_sizes, latent_dim]
            self._build(self.input_shape[0], widths, self._linear_layers)
        else:
            channels, height, width = self.input_shape
            depth = unet_depth(height, width)
            widths = [
                base_channels * 2 ** min(i, _MAX_CHANNEL_DOUBLINGS)
                for i in range(depth)
            ]
            self._build(channels, widths, self._conv_layers)
            self.apply(dcgan_init)

    def _build(self, n_in, widths, make_layers):
        self.down = nn.ModuleList()
        self.up = nn.ModuleList()
        depth = len(widths)
        for i, width in enumerate(widths):
            outer = n_in if i == 0 else widths[i - 1]
            innermost = i == depth - 1
            down, up = make_layers(outer, width, outermost=i == 0, innermost=innermost)
            self.down.append(down)
            self.up.append(up)

    @staticmethod
    def _conv_layers(outer, inner, outermost, innermost):
        down = [] if outermost else [nn.LeakyReLU(0.2)]
        down.append(nn.Conv2d(outer, inner, 4, 2, 1, bias=False))
        if not (outermost or innermost):
            down.append(nn.BatchNorm2d(inner))
        up_in = inner if innermost else 2 * inner
        up = [nn.ReLU()]
        if outermost:
            up += [nn.ConvTranspose2d(up_in, outer, 4, 2, 1), nn.Tanh()]
        else:
            up += [
                nn.ConvTranspose2d(up_in, outer, 4, 2, 1, bias=False),
                nn.BatchNorm2d(outer),
            ]
        return nn.Sequential(*down), nn.Sequential(*up)

    @staticmethod
    def _linear_layers(outer, inner, outermost, innermost):
        down = [] if outermost else [nn.LeakyReLU(0.2)]
        down.append(nn.Linear(outer, inner))
        up_in = inner if innermost else 2 * inner
        up = [nn.ReLU(), nn.Linear(up_in, outer)]
        return nn.Sequential(*down), nn.Sequential(*up)

    def forward(self, x):
        skips = []
        for down in self.down:
            x = down(x)
            skips.append(x)
        x = self.up[-1](skips[-1])
        for i in range(len(self.up) - 2, -1, -1):
            x = self.up[i](torch.cat([skips[i], x], dim=1))
        return x


class SkipGANomalyDiscriminator(nn.Module):
    """DCGAN encoder to a ``latent_dim`` feature map, plus a real/fake logit.

    As in the authors' code, the features f are the encoder's output, a
    ``latent_dim``-channel map (1x1 here, since the final convolution spans
    the last map; an MLP output for rows), and the classifier is a linear
    layer on f giving one logit (the authors' 3x3 convolution on the 1x1
    map followed by a sigmoid; we keep logits and use BCE-with-logits).

    Parameters
    ----------
    input_shape : tuple
    latent_dim : int, default=100
        Width of f (nz).
    base_channels : int, default=64
        ndf, for images.
    hidden_sizes : tuple of int, default=(64, 32)
        Hidden widths, for rows.
    """

    def __init__(
        self, input_shape, latent_dim=100, base_channels=64, hidden_sizes=(64, 32)
    ):
        super().__init__()
        self.encoder = Discriminator(
            input_shape, base_channels, hidden_sizes, out_features=latent_dim
        )
        self.classifier = nn.Linear(latent_dim, 1, bias=False)
        self.reinitialize()

    def reinitialize(self):
        """Fresh weights (the authors re-initialise D when its loss collapses)."""
        self.encoder.reinitialize()
        nn.init.normal_(self.classifier.weight, 0.0, 0.02)

    def features(self, x):
        """f(x), shape (N, latent_dim)."""
        return self.encoder(x)

    def classify(self, features):
        """Real/fake logits (N,) from features."""
        return self.classifier(features).squeeze(1)

    def forward(self, x):
        return self.classify(self.features(x))


class SkipGANomalyLoss(AdversarialLoss):
    """Skip-GANomaly's generator and discriminator losses.

    - generator: ``w_adv * BCE(D(x_hat), 1) + w_con * mean(|x - x_hat|)
      + w_lat * mean((f(x) - f(x_hat))**2)``;
    - discriminator: ``BCE(D(x), 1) + BCE(D(x_hat), 0)`` (on logits).

    The authors' code also adds the generator's latent term to the
    discriminator loss, which trains D to make real and reconstructed
    features alike, against its own objective; it is left out here.

    Parameters
    ----------
    w_adv, w_con, w_lat : float, default=1, 50, 1
        Weights of the adversarial, contextual (L1) and latent terms.
    """

    def __init__(self, w_adv=1.0, w_con=50.0, w_lat=1.0):
        super().__init__()
        self.w_adv = w_adv
        self.w_con = w_con
        self.w_lat = w_lat

    def discriminator_loss(self, output, X, discriminator):
        return bce(discriminator(X), 1.0) + bce(discriminator(output), 0.0)

    def generator_loss(self, output, X, discriminator):
        with torch.no_grad():
            features_real = discriminator.features(X)
        with frozen(discriminator):
            features_fake = discriminator.features(output)
            logit_fake = discriminator.classify(features_fake)
        adv = bce(logit_fake, 1.0)
        con = (X - output).abs().mean()
        lat = ((features_real - features_fake) ** 2).mean()
        return self.w_adv * adv + self.w_con * con + self.w_lat * lat
