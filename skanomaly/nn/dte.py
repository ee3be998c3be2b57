"""Diffusion time estimation (Livernoche et al. 2024): schedule, network, losses.

The forward process adds Gaussian noise of variance ``sigma2[t] = 1 -
prod_{s <= t} (1 - betas[s])`` to a row (the authors' variance-only process,
no drift towards zero). A network learns the diffusion step ``t`` from the
noisy row; the anomaly score of a clean row is the step it is estimated to
be at (anomalies look like rows noised for longer).
"""

import math
import numbers

import numpy as np
import torch
from torch import nn

from .mlp import MLP
from .patchcore import nearest_neighbours

__all__ = [
    "DiffusionTimeLoss",
    "DTEModule",
    "NearestNeighbourTime",
    "diffusion_variances",
    "geometric_mean_mode",
    "neighbour_counts",
    "searched_time_from_variance",
    "time_from_variance",
    "tree_neighbours",
]


def diffusion_variances(n_steps, beta_start, beta_end):
    """``sigma2[t]`` of the linear beta schedule, float64, shape ``(n_steps,)``.

    Examples
    --------
    >>> from skanomaly.nn.dte import diffusion_variances
    >>> diffusion_variances(3, 0.1, 0.3).round(decimals=6).tolist()  # 1 - 0.9, 1 - 0.72
    [0.1, 0.28, 0.496]
    """
    betas = torch.linspace(beta_start, beta_end, n_steps, dtype=torch.float64)
    return 1.0 - torch.cumprod(1.0 - betas, dim=0)


def time_from_variance(variance, variances):
    """Continuous diffusion step of a noise variance: the schedule inverted.

    Piecewise linear between the steps (``variances[t] -> t``), linear
    beyond the last step (so that larger variances keep ranking higher),
    0 below the first. Written with clamps only, so that the ONNX graph
    runs the same operations.

    Examples
    --------
    >>> import torch
    >>> from skanomaly.nn.dte import time_from_variance
    >>> variances = torch.tensor([0.1, 0.2, 0.4], dtype=torch.float64)
    >>> v = torch.tensor([0.05, 0.15, 0.4, 0.6], dtype=torch.float64)
    >>> time_from_variance(v, variances).round(decimals=6).tolist()
    [0.0, 0.5, 2.0, 3.0]
    """
    v = variance[:, None]
    low, high = variances[:-1], variances[1:]
    fractions = ((v - low) / (high - low)).clamp(0.0, 1.0).sum(dim=1)
    beyond = (variance - variances[-1]).clamp(min=0.0) / (high[-1] - low[-1])
    return fractions + beyond


def searched_time_from_variance(variance, variances):
    """:func:`time_from_variance` by binary search, for many rows.

    The same piecewise-linear inverse (equal up to float rounding), in
    memory of the rows only: :func:`time_from_variance` holds a (rows x
    steps) matrix, which ONNX export needs and scoring a million rows does
    not.

    Examples
    --------
    >>> import torch
    >>> from skanomaly.nn.dte import searched_time_from_variance
    >>> variances = torch.tensor([0.1, 0.2, 0.4], dtype=torch.float64)
    >>> v = torch.tensor([0.05, 0.15, 0.4, 0.6], dtype=torch.float64)
    >>> searched_time_from_variance(v, variances).round(decimals=6).tolist()
    [0.0, 0.5, 2.0, 3.0]
    """
    last = len(variances) - 1
    low = (torch.searchsorted(variances, variance, right=True) - 1).clamp(0, last - 1)
    start, end = variances[low], variances[low + 1]
    fraction = ((variance - start) / (end - start)).clamp(0.0, 1.0)
    beyond = (variance - variances[-1]).clamp(min=0.0) / (variances[-1] - variances[-2])
    return low.to(variance.dtype) + fraction + beyond


class DTEModule(nn.Module):
    """MLP from a (noisy) row to the diffusion step it was noised for.

    ``forward(x)`` is the training path: it draws a step per row
    (uniformly) and Gaussian noise from torch's global generator, noises the
    rows and returns ``(output, t)`` for :class:`DiffusionTimeLoss`.
    ``estimated_time(x)`` is the scoring path: the estimated step of the
    clean rows, without randomness.

    Parameters
    ----------
    input_shape : tuple of int
        ``(n_features,)``, or an image shape, flattened.
    hidden_sizes : tuple of int
    variant : {'categorical', 'inverse_gamma'}
        'categorical': logits over ``n_bins`` equal bins of steps
        (cross-entropy on the bin of the drawn step); the estimate is the
        expected bin centre. 'inverse_gamma': one output ``sqrt(b)``, the
        scale of an inverse-gamma posterior of the noise variance with shape
        ``d / 2 - 1``; the estimate is the step of its mode ``b / (d / 2)``.
    n_steps, beta_start, beta_end : int, float, float
        The noise schedule (:func:`diffusion_variances`).
    n_bins : int
    dropout : float

    Examples
    --------
    >>> import torch
    >>> from skanomaly.nn.dte import DTEModule
    >>> module = DTEModule((4,), hidden_sizes=(8,), n_steps=10, n_bins=5)
    >>> logits, t = module(torch.zeros(3, 4))
    >>> logits.shape, t.shape, module.estimated_time(torch.zeros(3, 4)).shape
    (torch.Size([3, 5]), torch.Size([3]), torch.Size([3]))
    """

    def __init__(
        self,
        input_shape,
        hidden_sizes=(256, 512, 256),
        variant="categorical",
        n_steps=400,
        beta_start=1e-4,
        beta_end=0.01,
        n_bins=7,
        dropout=0.5,
    ):
        super().__init__()
        self.n_features = math.prod(input_shape)
        self.variant = variant
        self.n_steps = int(n_steps)
        self.n_bins = int(n_bins)
        outputs = self.n_bins if variant == "categorical" else 1
        self.mlp = MLP(self.n_features, tuple(hidden_sizes), outputs, dropout=dropout)
        variances = diffusion_variances(n_steps, beta_start, beta_end)
        # float32 like the weights; scoring converts buffers to float64 too
        self.register_buffer("variances", variances.float())

    def forward(self, x):
        x = x.flatten(1)
        t = torch.randint(0, self.n_steps, (x.shape[0],), device=x.device)
        std = self.variances[t].sqrt().to(x.dtype)[:, None]
        noisy = x + std * torch.randn_like(x)
        return self.mlp(noisy), t

    def estimated_time(self, x):
        """Estimated diffusion step of each clean row (the anomaly score)."""
        output = self.mlp(x.flatten(1))
        if self.variant == "categorical":
            # the bins' centres, in steps: the expectation is in step units
            centres = (
                torch.arange(self.n_bins, dtype=x.dtype, device=x.device) + 0.5
            ) * (self.n_steps / self.n_bins)
            return output.softmax(dim=1) @ centres
        mode = output[:, 0] ** 2 / (0.5 * self.n_features)
        return time_from_variance(mode, self.variances.to(x.dtype))


class DiffusionTimeLoss(nn.Module):
    """The training loss of :class:`DTEModule`'s ``(output, t)``, batch mean.

    'categorical': cross-entropy against the bin ``floor(t n_bins / T)``,
    taken of the softmax probabilities as if they were logits (the authors'
    code does so; it bounds the loss, and measured far better on ADBench).
    'inverse_gamma': the negative log-likelihood, up to terms free of ``b``,
    of the true variance ``sigma2[t]`` under an inverse gamma of shape
    ``d / 2 - 1`` and scale ``b``: ``-(d / 2 - 1) log b + b / sigma2[t]``.

    Examples
    --------
    >>> import torch
    >>> from skanomaly.nn.dte import DiffusionTimeLoss
    >>> loss = DiffusionTimeLoss(n_steps=10, n_bins=2)
    >>> logits = torch.tensor([[9.0, -9.0], [-9.0, 9.0]])  # bins 0 and 1
    >>> round(loss((logits, torch.tensor([4, 5])), None).item(), 4)  # log(1 + 1/e)
    0.3133
    """

    def __init__(
        self,
        variant="categorical",
        n_steps=400,
        beta_start=1e-4,
        beta_end=0.01,
        n_bins=7,
        n_features=1,
        eps=1e-5,
    ):
        super().__init__()
        self.variant = variant
        self.n_steps = int(n_steps)
        self.n_bins = int(n_bins)
        self.n_features = int(n_features)
        self.eps = eps
        variances = diffusion_variances(n_steps, beta_start, beta_end)
        self.register_buffer("variances", variances.float())

    def forward(self, output, X):
        prediction, t = output
        if self.variant == "categorical":
            target = torch.div(t * self.n_bins, self.n_steps, rounding_mode="floor")
            # on the probabilities, as the authors' code does (a softmax
            # twice): a bounded loss; on the logits, DTE-C ranked far
            # anomalies arbitrarily (RESULTS_tabular: breastw 0.72 -> 0.97)
            return nn.functional.cross_entropy(
                prediction.softmax(dim=1), target.clamp(max=self.n_bins - 1)
            )
        scale = prediction[:, 0] ** 2
        shape = 0.5 * self.n_features - 1.0
        variance = self.variances[t].to(scale.dtype)
        log_likelihood = shape * torch.log(scale + self.eps) - scale / variance
        return -log_likelihood.mean()


def neighbour_counts(n_neighbors):
    """The ``k`` of DTE-NP as a sorted tuple, checked.

    ``n_neighbors`` is a positive int or a non-empty tuple (or list) of
    distinct positive ints; bools are refused. Raises ValueError naming
    ``n_neighbors`` otherwise.

    Examples
    --------
    >>> from skanomaly.nn.dte import neighbour_counts
    >>> neighbour_counts(5), neighbour_counts((10, 1, 3))
    ((5,), (1, 3, 10))
    """

    def is_count(k):
        return isinstance(k, numbers.Integral) and not isinstance(k, bool) and k >= 1

    if isinstance(n_neighbors, (tuple, list)):
        counts = tuple(n_neighbors)
        if not counts:
            raise ValueError("n_neighbors is an empty tuple; give at least one k.")
    else:
        counts = (n_neighbors,)
    bad = [k for k in counts if not is_count(k)]
    if bad:
        raise ValueError(
            f"n_neighbors must be a positive int or a tuple of distinct positive "
            f"ints; got {n_neighbors!r:.80} ({bad[0]!r:.20} is not a positive int)."
        )
    counts = tuple(sorted(int(k) for k in counts))
    if len(set(counts)) < len(counts):
        raise ValueError(
            f"n_neighbors={n_neighbors!r:.80} repeats a k; give each k once."
        )
    return counts


def geometric_mean_mode(sq, counts, n_features):
    """The geometric mean over ``k`` in ``counts`` of the variance modes ``m_k / d``.

    ``sq``: each row's squared distances to its ``max(counts)`` nearest
    training rows, ascending. ``m_k``, the mean of the first ``k``, grows
    with ``k``, so a row with ``m_k = 0`` for some ``k`` has it for the
    smallest: its mode is 0 (a duplicate among its neighbours), set
    explicitly rather than through ``log 0``. One ``k``: the mode
    ``m_k / d`` itself, as DTE-NP computes it.

    Examples
    --------
    >>> import torch
    >>> from skanomaly.nn.dte import geometric_mean_mode
    >>> sq = torch.tensor([[1.0, 4.0], [0.0, 2.0]], dtype=torch.float64)
    >>> geometric_mean_mode(sq, (1, 2), 1).round(decimals=6).tolist()  # sqrt(1 * 2.5)
    [1.581139, 0.0]
    """
    if len(counts) == 1:
        return sq[:, : counts[0]].mean(dim=1) / n_features
    means = sq.cumsum(dim=1)
    modes = torch.stack([means[:, k - 1] / k / n_features for k in counts], dim=1)
    zero = modes[:, 0] <= 0.0
    logs = torch.where(zero[:, None], torch.ones_like(modes), modes).log()
    return torch.where(zero, torch.zeros_like(modes[:, 0]), logs.mean(dim=1).exp())


class NearestNeighbourTime(nn.Module):
    """DTE-NP: the diffusion step of each row from its k nearest training rows.

    With ``m`` the mean squared Euclidean distance of a row to its ``k``
    nearest training rows and ``d`` its number of features, the posterior of
    the noise variance is an inverse gamma of shape ``d / 2 - 1`` and scale
    ``m / 2``, whose mode is ``m / d``; the estimate is the step of that
    variance on the schedule (:func:`time_from_variance`). The authors take
    the step that maximises the density on the schedule's steps instead: the
    same step within one, but every row beyond the last step ties there
    (measured in ``benchmarks/RESULTS_tabular.md``).

    With several ``k`` (a tuple), the variance is the geometric mean of the
    modes ``m_k / d`` over them (:func:`geometric_mean_mode`), all read from
    one search of the largest ``k``.

    Parameters
    ----------
    train : Tensor of shape (n_train, d)
        The (scaled) training rows.
    variances : Tensor of shape (n_steps,)
    n_neighbors : int or tuple of int
        ``k``, or distinct ``k`` (:func:`neighbour_counts`), each at most
        ``n_train`` (``n_train - 1`` for leave-one-out scores).

    Examples
    --------
    >>> import torch
    >>> from skanomaly.nn.dte import NearestNeighbourTime
    >>> rows = torch.tensor([[0.0, 0.0], [1.0, 0.0]], dtype=torch.float64)
    >>> variances = torch.tensor([0.1, 0.2, 0.4], dtype=torch.float64)
    >>> module = NearestNeighbourTime(rows, variances, n_neighbors=1)
    >>> x = torch.tensor([[0.0, 0.0], [0.0, 0.6]], dtype=torch.float64)
    >>> module(x).round(decimals=6).tolist()  # modes 0 and 0.36 / 2
    [0.0, 0.8]
    >>> both = NearestNeighbourTime(rows, variances, n_neighbors=(1, 2))
    >>> both(x).round(decimals=6).tolist()  # 0; sqrt(0.18 * 0.43) = 0.278
    [0.0, 1.391043]
    """

    def __init__(self, train, variances, n_neighbors):
        super().__init__()
        self.register_buffer("rows", train)
        self.register_buffer("rows_sq", (train**2).sum(dim=1))
        self.register_buffer("variances", variances.to(train.dtype))
        self.counts = neighbour_counts(n_neighbors)
        if self.counts[-1] > len(train):
            raise ValueError(
                f"n_neighbors={n_neighbors!r} asks for {self.counts[-1]} neighbours "
                f"of {len(train)} training rows."
            )
        # the one search, of the largest k
        self.n_neighbors = self.counts[-1]

    def squared_distances(self, x, exclude=None):
        """Squared distances of each row to its ``n_neighbors`` nearest, ascending.

        The nearest rows are found on the whole (rows x training rows)
        matrix of ``|x|^2 + |r|^2 - 2 x.r``, then their distances are
        recomputed from the differences, so that a duplicate is at distance
        exactly 0 (the expansion leaves a rounding residue, which the log of
        a geometric mean would magnify): :meth:`squared_distances_of`, as
        the searched path does.

        ``exclude``: for each row, the index of a training row to leave out
        (the row itself, for leave-one-out scores); needs ``n_neighbors``
        below the number of training rows.
        """
        x = x.flatten(1)
        sq = (x**2).sum(dim=1, keepdim=True) + self.rows_sq - 2.0 * x @ self.rows.T
        if exclude is not None:
            sq[torch.arange(len(x)), exclude] = math.inf
        index = torch.topk(sq, self.n_neighbors, dim=1, largest=False).indices
        return self.squared_distances_of(x, index)

    def variance_mode(self, x, exclude=None):
        """The variance whose step is the estimate (:func:`geometric_mean_mode`)."""
        sq = self.squared_distances(x, exclude)
        return geometric_mean_mode(sq, self.counts, x.flatten(1).shape[1])

    def forward(self, x, exclude=None):
        return time_from_variance(self.variance_mode(x, exclude), self.variances)

    def searched_neighbours(self, x, exclude=None):
        """The ``n_neighbors`` nearest training rows of each row, by a tiled search.

        Found in float32 tiles with a running top ``k``
        (:func:`skanomaly.nn.patchcore.nearest_neighbours`: memory bounded,
        never the whole distance matrix); their squared distances, recomputed
        in float64 by :meth:`squared_distances_of`, equal
        :meth:`squared_distances` up to float64 rounding, except where
        float32 rounding swaps two nearly equidistant rows at the ``k``-th
        place (the mean then moves by about that rounding).

        Returns
        -------
        index : Tensor of shape (n, n_neighbors), int64
        """
        x = x.flatten(1)
        if not hasattr(self, "_bank32"):  # not a buffer: not exported to ONNX
            self._bank32 = self.rows.float()
            self._bank_norms32 = self._bank32.square().sum(dim=1)
        groups = {}
        if exclude is not None:  # a row's own index is its group: left out
            groups = dict(
                query_groups=exclude,
                bank_groups=torch.arange(len(self.rows), device=x.device),
            )
        _, index = nearest_neighbours(
            x.float(), self._bank32, self._bank_norms32, self.n_neighbors, **groups
        )
        return index

    def squared_distances_of(self, x, index):
        """Squared distances of each row to the training rows ``index`` names.

        ``index``: (rows, ``n_neighbors``) int64, each row's nearest training
        rows (found by any search). The distances are computed in float64
        from the differences, so that a duplicate is at distance exactly 0,
        and sorted where several ``k`` read them (one ``k``: its mean needs
        no order); rows found by two searches that agree up to ties give
        the same values.
        """
        x = x.flatten(1)
        nearest = self.rows[index]  # (n, k, d)
        sq = (nearest - x.to(self.rows.dtype)[:, None, :]).square().sum(2)
        if len(self.counts) > 1:
            sq = sq.sort(dim=1).values
        return sq

    def time_of_neighbours(self, x, index):
        """The step of each row of ``x`` given its nearest training rows
        ``index`` (:meth:`squared_distances_of`); memory of ``x`` only."""
        x = x.flatten(1)
        sq = self.squared_distances_of(x, index)
        mode = geometric_mean_mode(sq, self.counts, x.shape[1])
        return searched_time_from_variance(mode, self.variances)

    def searched_time(self, x, exclude=None):
        """:meth:`forward` by searches: :meth:`searched_neighbours`, then
        :meth:`time_of_neighbours`; memory of ``x`` only."""
        return self.time_of_neighbours(x, self.searched_neighbours(x, exclude))


def tree_neighbours(tree, x, k, exclude=None, workers=1):
    """The ``k`` nearest training rows of each row of ``x`` by a k-d tree.

    Exact in float64 (the tree measures from the differences); on ties at
    the ``k``-th place any of the tied rows may be named, which leaves the
    squared distances, hence DTE-NP's steps, unchanged.

    Parameters
    ----------
    tree : scipy.spatial.cKDTree
        Built on the (scaled, float64) training rows.
    x : ndarray of shape (n, d), float64
    k : int
        At most the number of training rows (less one with ``exclude``).
    exclude : ndarray of shape (n,), optional
        For each row, the index of a training row to leave out (the row
        itself, for leave-one-out scores): ``k + 1`` rows are searched and
        that one dropped. Where it is not among them, ``k + 1`` rows tie
        with it at distance 0 (the row is a training row, so at distance 0
        of itself), and the last of them is dropped: the same distances.
    workers : int, default=1
        Threads of the query (each row's search is independent of the
        others: the result does not depend on it).

    Returns
    -------
    index : ndarray of shape (n, k), int64

    Examples
    --------
    >>> import numpy as np
    >>> from scipy.spatial import cKDTree
    >>> from skanomaly.nn.dte import tree_neighbours
    >>> rows = np.array([[0.0], [1.0], [3.0]])
    >>> tree_neighbours(cKDTree(rows), rows, 1, exclude=np.arange(3)).tolist()
    [[1], [0], [1]]
    """
    n = len(x)
    wanted = k if exclude is None else k + 1
    _, index = tree.query(x, k=wanted, workers=workers)
    index = np.asarray(index, dtype=np.int64).reshape(n, wanted)
    # the tree names no row (index n) where the distance overflows to inf
    # (values near 1e154): any rows do, their float64 distances overflow as
    # well, and the score is the brute search's (the lowest, with a warning)
    missing = index >= tree.n
    if missing.any():
        index = np.where(missing, np.arange(wanted)[None, :], index)
    if exclude is None:
        return index
    own = index == np.asarray(exclude)[:, None]
    # the row's own column where found, else the last
    drop = np.where(own.any(axis=1), own.argmax(axis=1), k)
    keep = np.ones(index.shape, dtype=bool)
    keep[np.arange(n), drop] = False
    return index[keep].reshape(n, k)
