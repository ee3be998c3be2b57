"""PaDiM's per-position Gaussians: streaming moments and distances (torch only)."""

import torch

__all__ = ["PositionMoments", "position_distances"]


class PositionMoments:
    """Running sums of patch features, per grid position, in float64.

    Fed batch by batch, so that fitting holds one batch of features and the
    sums, never all the training features: per position ``p`` the count,
    ``sum y``, ``sum y y^T`` and (for Ledoit-Wolf) ``sum |y|^2 y`` and
    ``sum |y|^4``, with ``y = x - shift_p`` and ``shift_p`` the mean of the
    first batch (a shift that keeps the sums well conditioned).

    Parameters
    ----------
    n_positions, n_channels : int
    device : torch.device
    fourth_moments : bool
        Also accumulate what Ledoit-Wolf shrinkage needs.
    """

    def __init__(self, n_positions, n_channels, device, *, fourth_moments):
        shape = (n_positions, n_channels)
        options = dict(dtype=torch.float64, device=device)
        self.count = 0
        self.shift = None
        self.sum = torch.zeros(shape, **options)
        self.outer = torch.zeros((n_positions, n_channels, n_channels), **options)
        self.fourth_moments = fourth_moments
        if fourth_moments:
            self.sum_norm2_y = torch.zeros(shape, **options)
            self.sum_norm4 = torch.zeros(n_positions, **options)

    def update(self, features):
        """Add a batch of patch features (batch, channels, height, width)."""
        y = features.flatten(2).permute(2, 0, 1).double()  # (positions, batch, C)
        if self.shift is None:
            self.shift = y.mean(dim=1)
        y = y - self.shift[:, None, :]
        self.count += y.shape[1]
        self.sum += y.sum(dim=1)
        self.outer.baddbmm_(y.transpose(1, 2), y)
        if self.fourth_moments:
            norms2 = y.square().sum(dim=2)  # (positions, batch)
            self.sum_norm2_y += torch.einsum("pb,pbc->pc", norms2, y)
            self.sum_norm4 += norms2.square().sum(dim=1)

    def mean(self):
        """Mean feature of each position, (positions, channels)."""
        return self.shift + self.sum / self.count

    def covariance(self, positions, *, ddof):
        """Covariances of a slice of positions, (n, C, C), ``sum / (n - ddof)``."""
        a = self.sum[positions] / self.count  # mean - shift
        scatter = self.outer[positions] - self.count * a[:, :, None] * a[:, None, :]
        return scatter / (self.count - ddof)

    def sum_norms4(self, positions):
        """``sum_i |x_i - mean|^4`` of a slice of positions, from the sums."""
        a = self.sum[positions] / self.count
        n = self.count
        w = a.square().sum(dim=1)
        outer = self.outer[positions]
        a_outer_a = torch.einsum("pc,pcd,pd->p", a, outer, a)
        trace = outer.diagonal(dim1=1, dim2=2).sum(dim=1)
        return (
            self.sum_norm4[positions]
            + 4 * a_outer_a
            + n * w.square()
            - 4 * (a * self.sum_norm2_y[positions]).sum(dim=1)
            + 2 * w * trace
            - 4 * n * w.square()
        )


def position_distances(features, mean, cholesky):
    """Mahalanobis distance of each patch to its position's Gaussian.

    Parameters
    ----------
    features : torch.Tensor of shape (batch, C, height, width)
    mean : torch.Tensor of shape (positions, C)
    cholesky : torch.Tensor of shape (positions, C, C)
        Lower Cholesky factor of each position's covariance.

    Returns
    -------
    distances : torch.Tensor of shape (batch, height, width), not squared
    """
    batch, _, height, width = features.shape
    x = features.flatten(2).permute(2, 1, 0).to(cholesky.dtype)  # (P, C, batch)
    centred = x - mean.to(cholesky.dtype)[:, :, None]
    # L z = x - mu  =>  |z|^2 = (x - mu)^T Sigma^-1 (x - mu)
    z = torch.linalg.solve_triangular(cholesky, centred, upper=False)
    distances = z.square().sum(dim=1).sqrt()  # (P, batch)
    return distances.T.reshape(batch, height, width)
