"""PatchCore's memory bank: greedy coreset, nearest neighbours, re-weighting.

Torch only. Distances are Euclidean, computed as
``|q|^2 - 2 q.b + |b|^2`` with matrix products in chunks (no
``torch.cdist``, which does not export to ONNX).
"""

import torch

__all__ = [
    "greedy_coreset",
    "nearest_neighbours",
    "random_projection",
    "reweighted_scores",
]

# Query rows per chunk: bounds the (queries x bank) distance block.
_DISTANCE_BLOCK_BYTES = 64 * 2**20


def random_projection(n_features, n_components, generator, device):
    """A dense Gaussian (Johnson-Lindenstrauss) projection, (n_features, n_components).

    Entries ~ N(0, 1 / n_components), so squared norms are preserved in
    expectation. Drawn on the CPU from ``generator`` (reproducible on any
    device), then moved to ``device``.
    """
    matrix = torch.randn(n_features, n_components, generator=generator)
    return (matrix / n_components**0.5).to(device)


def greedy_coreset(features, n_select, *, start):
    """Greedy farthest-point (k-center) selection of ``n_select`` rows.

    Starts from row ``start`` (part of the coreset); each further pick is the
    row farthest from the rows picked so far. Each step is one
    vector-matrix product with the features (squared distances
    ``|x|^2 - 2 x.c + |c|^2`` to the last pick) and an elementwise minimum:
    O(n_select x n_rows x n_features) work, no (n_rows x n_rows) matrix.
    The step reads all the features, so its speed depends on whether they
    fit in the CPU cache (see ``PatchCore``'s shards).

    Parameters
    ----------
    features : torch.Tensor of shape (n_rows, n_features)
        Usually a random projection of the patch features.
    n_select : int
        1 <= n_select <= n_rows.
    start : int
        Index of the first pick.

    Returns
    -------
    indices : torch.Tensor of shape (n_select,), int64
        The picks, in the order they were made.
    """
    n_rows = features.shape[0]
    # columns are rows: each step reads the whole array once, front to back,
    # as a (1 x d) @ (d x n) product (the fastest layout on CPUs)
    columns = features.float().T.contiguous()
    norms2 = columns.square().sum(dim=0)
    nearest = torch.full((n_rows,), float("inf"), device=features.device)
    distances = torch.empty((1, n_rows), device=features.device)
    picks = torch.empty(n_select, dtype=torch.int64, device=features.device)
    pick = torch.as_tensor(start, device=features.device)
    for step in range(n_select):
        picks[step] = pick
        if step == n_select - 1:
            break
        torch.mm(columns[:, pick].unsqueeze(0), columns, out=distances)
        squared = distances[0].mul_(-2.0).add_(norms2).add_(norms2[pick])
        torch.minimum(nearest, squared, out=nearest)
        pick = torch.argmax(nearest)
    return picks


def nearest_neighbours(queries, bank, bank_norms2, k=1):
    """Euclidean distance and index of the ``k`` nearest bank rows of each query.

    Parameters
    ----------
    queries : torch.Tensor of shape (n_queries, n_features)
    bank : torch.Tensor of shape (n_bank, n_features)
    bank_norms2 : torch.Tensor of shape (n_bank,)
        ``bank.square().sum(1)``, computed once.
    k : int, default=1

    Returns
    -------
    distances : torch.Tensor of shape (n_queries, k), float32
        Not squared, nearest first.
    indices : torch.Tensor of shape (n_queries, k), int64
    """
    rows = max(1, _DISTANCE_BLOCK_BYTES // (4 * max(1, bank.shape[0])))
    distances, indices = [], []
    for start in range(0, queries.shape[0], rows):
        q = queries[start : start + rows]
        d2 = torch.addmm(bank_norms2, q, bank.T, alpha=-2.0)
        d2.add_(q.square().sum(dim=1, keepdim=True))
        if k == 1:
            value, index = d2.min(dim=1, keepdim=True)
        else:
            value, index = d2.topk(k, dim=1, largest=False)
        distances.append(value.clamp_(min=0.0).sqrt_())
        indices.append(index)
    return torch.cat(distances), torch.cat(indices)


def reweighted_scores(queries, distances, indices, bank, bank_norms2, n_neighbours):
    """Image scores of PatchCore's Eq. 7 from each image's patches.

    For each image: the patch ``m_test`` with the largest nearest-neighbour
    distance ``s*``, its nearest bank row ``m*``, and the ``n_neighbours``
    bank rows nearest to ``m*`` (``m*`` first). The score is
    ``s* (1 - exp(s*) / sum_j exp(|m_test - m_j|))``, the sum over those
    rows: a patch whose nearest bank row lies in a sparse region of the
    bank is scored higher. ``n_neighbours = 1`` returns ``s*``.

    Parameters
    ----------
    queries : torch.Tensor of shape (n_images, n_patches, n_features)
    distances, indices : torch.Tensor of shape (n_images, n_patches)
        Nearest-neighbour distance and bank index of every patch.
    bank : torch.Tensor of shape (n_bank, n_features)
    bank_norms2 : torch.Tensor of shape (n_bank,)
    n_neighbours : int

    Returns
    -------
    scores : torch.Tensor of shape (n_images,)
    """
    best = distances.argmax(dim=1)
    rows = torch.arange(len(best), device=best.device)
    top = distances[rows, best]
    if n_neighbours == 1:
        return top
    patch = queries[rows, best]  # (n_images, n_features)
    nearest = bank[indices[rows, best]]  # m*
    n_neighbours = min(n_neighbours, bank.shape[0])
    _, neighbours = nearest_neighbours(nearest, bank, bank_norms2, k=n_neighbours)
    # m* itself is its own nearest bank row (distance 0), so it is included
    to_neighbours = (patch[:, None, :] - bank[neighbours]).norm(dim=2)
    # exp(s*) / sum_j exp(d_j) = 1 / sum_j exp(d_j - s*), with d_j >= s*
    weight = 1.0 - 1.0 / torch.exp(to_neighbours.double() - top[:, None].double()).sum(
        1
    )
    return (weight * top.double()).float()
