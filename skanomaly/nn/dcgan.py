"""DCGAN-style convolutional encoder and decoder for any image size.

Image-size rule: the encoder halves the resolution with stride-2 4x4
convolutions while both sides are even and the halved map stays at least
``min_size`` (4) pixels wide, then a final convolution spanning the remaining
map yields the code. 32x32 goes 32-16-8-4 as in DCGAN; 28x28 goes 28-14-7
and ends with a 7x7 kernel; an odd size keeps its resolution until the final
convolution. The decoder mirrors the plan exactly, so the reconstruction has
the input's shape for every size, square or not.
"""

from torch import nn

__all__ = ["ConvDecoder", "ConvEncoder", "dcgan_init", "downsampling_plan"]


def downsampling_plan(height, width, min_size=4):
    """Spatial sizes after each stride-2 halving, input size first."""
    sizes = [(height, width)]
    h, w = height, width
    while h % 2 == 0 and w % 2 == 0 and h // 2 >= min_size and w // 2 >= min_size:
        h, w = h // 2, w // 2
        sizes.append((h, w))
    return sizes


def dcgan_init(module):
    """DCGAN initialisation: conv weights N(0, 0.02), BatchNorm N(1, 0.02)."""
    if isinstance(module, (nn.Conv2d, nn.ConvTranspose2d, nn.Linear)):
        nn.init.normal_(module.weight, 0.0, 0.02)
        if module.bias is not None:
            nn.init.zeros_(module.bias)
    elif isinstance(module, nn.BatchNorm2d):
        nn.init.normal_(module.weight, 1.0, 0.02)
        nn.init.zeros_(module.bias)


def _channels(base_channels, n_halvings):
    # one entry per feature map produced by the pyramid; at least one map
    return [base_channels * 2**i for i in range(max(n_halvings, 1))]


class ConvEncoder(nn.Module):
    """Image (N, C, H, W) -> code (N, out_features).

    Conv + BatchNorm + LeakyReLU(0.2) blocks (no BatchNorm on the first, as
    in DCGAN), then a convolution spanning the last map.

    Parameters
    ----------
    image_shape : tuple (channels, height, width)
    out_features : int
        Size of the code.
    base_channels : int, default=64
        Channels of the first block; doubled at every halving.
    batchnorm : bool, default=True
        BatchNorm in the blocks after the first.
    min_size : int, default=4
        Smallest map side the pyramid goes down to.

    Attributes
    ----------
    features : nn.Sequential
        Everything before the final convolution; ``features(x)`` is the
        feature map that feature-matching losses compare.
    """

    def __init__(
        self, image_shape, out_features, base_channels=64, batchnorm=True, min_size=4
    ):
        super().__init__()
        channels, height, width = image_shape
        plan = downsampling_plan(height, width, min_size)
        widths = _channels(base_channels, len(plan) - 1)
        layers = []
        if len(plan) == 1:
            layers += [
                nn.Conv2d(channels, widths[0], 3, 1, 1, bias=False),
                nn.LeakyReLU(0.2, inplace=True),
            ]
        c_in = channels
        for i, c_out in enumerate(widths[: len(plan) - 1]):
            layers.append(nn.Conv2d(c_in, c_out, 4, 2, 1, bias=False))
            if batchnorm and i > 0:
                layers.append(nn.BatchNorm2d(c_out))
            layers.append(nn.LeakyReLU(0.2, inplace=True))
            c_in = c_out
        self.features = nn.Sequential(*layers)
        self.final = nn.Conv2d(widths[-1], out_features, plan[-1], 1, 0, bias=False)
        self.feature_channels = widths[-1]
        self.feature_size = plan[-1]
        self.out_features = out_features

    def forward(self, x):
        return self.final(self.features(x)).flatten(1)


class ConvDecoder(nn.Module):
    """Code (N, in_features) -> image (N, C, H, W), mirroring :class:`ConvEncoder`.

    Transposed conv + BatchNorm + ReLU blocks, and ``output_activation`` on
    the image (tanh for data scaled to [-1, 1]).

    Parameters
    ----------
    image_shape : tuple (channels, height, width)
    in_features : int
        Size of the code.
    base_channels : int, default=64
    batchnorm : bool, default=True
    min_size : int, default=4
    output_activation : nn.Module or None, default=nn.Tanh()
    out_channels : int or None, default=None
        Channels of the output, when they differ from the image's (a
        decoder that also predicts a variance per pixel, say).
    """

    def __init__(
        self,
        image_shape,
        in_features,
        base_channels=64,
        batchnorm=True,
        min_size=4,
        output_activation="tanh",
        out_channels=None,
    ):
        super().__init__()
        channels, height, width = image_shape
        out_channels = channels if out_channels is None else out_channels
        plan = downsampling_plan(height, width, min_size)
        widths = _channels(base_channels, len(plan) - 1)[::-1]
        norm = nn.BatchNorm2d if batchnorm else lambda c: nn.Identity()
        layers = [
            nn.ConvTranspose2d(in_features, widths[0], plan[-1], 1, 0, bias=False),
            norm(widths[0]),
            nn.ReLU(inplace=True),
        ]
        for c_in, c_out in zip(widths[:-1], widths[1:]):
            layers += [
                nn.ConvTranspose2d(c_in, c_out, 4, 2, 1, bias=False),
                norm(c_out),
                nn.ReLU(inplace=True),
            ]
        if len(plan) == 1:
            layers.append(nn.Conv2d(widths[-1], out_channels, 3, 1, 1, bias=False))
        else:
            layers.append(
                nn.ConvTranspose2d(widths[-1], out_channels, 4, 2, 1, bias=False)
            )
        if output_activation == "tanh":
            layers.append(nn.Tanh())
        elif output_activation is not None:
            layers.append(output_activation)
        self.net = nn.Sequential(*layers)
        self.in_features = in_features

    def forward(self, z):
        return self.net(z.reshape(z.shape[0], -1, 1, 1))
