"""Fully connected stacks for tabular data."""

from torch import nn

__all__ = ["MLP"]


class MLP(nn.Sequential):
    """Linear layers with an activation between them.

    Parameters
    ----------
    in_features : int
        Input width.
    hidden_sizes : sequence of int
        Widths of the hidden layers, in order.
    out_features : int
        Output width.
    activation : type of nn.Module, default=nn.ReLU
        Activation after every hidden layer.
    negative_slope : float or None, default=None
        If given, use LeakyReLU with this slope instead of ``activation``
        (the GAN discriminators' choice).
    output_activation : nn.Module or None, default=None
        Applied to the output (e.g. ``nn.Tanh()``), none by default.
    batch_norm : bool, default=False
        Batch normalisation after every hidden linear layer.
    dropout : float, default=0.0
        Dropout rate after every hidden activation.
    """

    def __init__(
        self,
        in_features,
        hidden_sizes,
        out_features,
        activation=nn.ReLU,
        negative_slope=None,
        output_activation=None,
        batch_norm=False,
        dropout=0.0,
    ):
        layers = []
        width = in_features
        for size in hidden_sizes:
            layers.append(nn.Linear(width, size))
            if batch_norm:
                layers.append(nn.BatchNorm1d(size))
            layers.append(
                nn.LeakyReLU(negative_slope)
                if negative_slope is not None
                else activation()
            )
            if dropout:
                layers.append(nn.Dropout(dropout))
            width = size
        layers.append(nn.Linear(width, out_features))
        if output_activation is not None:
            layers.append(output_activation)
        super().__init__(*layers)
        self.in_features = in_features
        self.out_features = out_features

    @property
    def features(self):
        """The stack without its last linear layer (a feature extractor)."""
        return nn.Sequential(*list(self)[: self._last_linear_index()])

    def _last_linear_index(self):
        return max(i for i, m in enumerate(self) if isinstance(m, nn.Linear))
