"""Mahalanobis distances to fitted Gaussians as torch modules.

One module per scoring rule, used by ``score_samples`` and by the exported
ONNX graph alike: :class:`GroupDistances` gives each group's distance,
:class:`MahalanobisDistance` their sum (the anomaly score).
"""

import numpy as np
import torch
from scipy import linalg
from torch import nn

__all__ = ["GroupDistances", "MahalanobisDistance"]


class GroupDistances(nn.Module):
    """Mahalanobis distance of rows to the Gaussian of each group of columns.

    Each group ``g`` has a mean ``mu_g`` and the lower Cholesky factor
    ``L_g`` of its covariance; the distance is ``|L_g^-1 (x_g - mu_g)|``.
    The module stores ``W_g = (L_g^-1)^T`` (computed once, in float64), so
    that the forward pass is a matrix product: a triangular solve has no
    ONNX operator, and the inverse factor is as accurate as the solve (the
    precision matrix ``Sigma^-1`` would not be, for ill-conditioned
    covariances). Everything runs in float64.

    Parameters
    ----------
    location : ndarray of shape (n_features,)
        Mean of every column.
    groups : sequence of ndarray of int
        Column indices of each group.
    factors : sequence of ndarray
        Lower Cholesky factor of each group's covariance.

    Examples
    --------
    >>> import numpy as np, torch
    >>> from skanomaly.nn.mahalanobis import GroupDistances
    >>> distances = GroupDistances(
    ...     np.zeros(3), [np.array([0, 1]), np.array([2])],
    ...     [np.diag([1.0, 2.0]), np.array([[0.5]])])
    >>> distances(torch.tensor([[3.0, 8.0, 1.0]])).tolist()
    [[5.0, 2.0]]
    """

    def __init__(self, location, groups, factors):
        super().__init__()
        self.columns = []
        for g, (columns, factor) in enumerate(zip(groups, factors, strict=True)):
            columns = np.asarray(columns, dtype=np.int64)
            inverse = linalg.solve_triangular(
                np.asarray(factor, dtype=np.float64),
                np.eye(len(columns)),
                lower=True,
                check_finite=False,
            )
            mean = np.asarray(location, dtype=np.float64)[columns]
            self.register_buffer(f"mean{g}", torch.as_tensor(mean))
            self.register_buffer(f"whitening{g}", torch.as_tensor(inverse.T.copy()))
            contiguous = columns.size and np.all(np.diff(columns) == 1)
            if contiguous:  # a slice, not a gather
                self.columns.append(slice(int(columns[0]), int(columns[-1]) + 1))
            else:
                self.register_buffer(f"index{g}", torch.as_tensor(columns))
                self.columns.append(None)

    def forward(self, x):
        """Distances (N, n_groups) of float rows ``x`` (N, n_features), float64."""
        x = x.to(torch.float64)
        out = []
        for g, columns in enumerate(self.columns):
            if columns is None:
                part = x.index_select(1, getattr(self, f"index{g}"))
            else:
                part = x[:, columns]
            z = (part - getattr(self, f"mean{g}")) @ getattr(self, f"whitening{g}")
            out.append(z.square().sum(dim=1).sqrt())
        return torch.stack(out, dim=1)


class MahalanobisDistance(GroupDistances):
    """The sum over groups of :class:`GroupDistances`: the anomaly score.

    Examples
    --------
    >>> import numpy as np, torch
    >>> from skanomaly.nn.mahalanobis import MahalanobisDistance
    >>> distance = MahalanobisDistance(
    ...     np.zeros(2), [np.array([0, 1])], [np.diag([1.0, 2.0])])
    >>> distance(torch.tensor([[3.0, 8.0]])).tolist()
    [5.0]
    """

    def forward(self, x):
        """Summed distances (N,) of float rows ``x`` (N, n_features), float64."""
        return super().forward(x).sum(dim=1)
