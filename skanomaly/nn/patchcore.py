"""PatchCore's memory bank: greedy coreset, nearest neighbours, re-weighting.

Torch only. Distances are Euclidean, computed as
``|q|^2 - 2 q.b + |b|^2`` with matrix products in chunks (no
``torch.cdist``, which does not export to ONNX).
"""

import numpy as np
import torch
from torch import nn

__all__ = [
    "BankScores",
    "FaissSearch",
    "bank_scores",
    "greedy_coreset",
    "import_faiss",
    "inverted_lists",
    "nearest_in_bank",
    "nearest_neighbours",
    "random_projection",
    "reweighted_scores",
]

# Tiles of the exact search: 1024 x 2048 float32 distances (8 MB). Shapes
# from 512 x 2048 to 4096 x 1024 ran within 10% of each other on one thread
# (bank 77,900 x 152); the old 64 MB blocks were about 1.5x slower.
_QUERY_BLOCK = 1024
_BANK_BLOCK = 2048


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


def nearest_neighbours(
    queries, bank, bank_norms2, k=1, *, query_groups=None, bank_groups=None
):
    """Euclidean distance and index of the ``k`` nearest bank rows of each query.

    Exact, in tiles of ``_QUERY_BLOCK`` queries by ``_BANK_BLOCK`` bank rows:
    each tile is one matrix product ``|b|^2 - 2 q.b`` and a reduction to its
    ``k`` smallest values, merged into a running top ``k`` of the query
    block. A tile is 8 MB (the blocks were 64 MB, written once and read
    twice), the (queries x bank) matrix is never held whole, and ``|q|^2``,
    which does not change which rows are nearest, is added to the ``k``
    survivors only (rounding is monotone: the same distances as adding it
    to every entry). The results equal those of
    :func:`nearest_in_bank`, the one-block form that export runs, up to the
    rounding of the matrix products.

    Parameters
    ----------
    queries : torch.Tensor of shape (n_queries, n_features)
    bank : torch.Tensor of shape (n_bank, n_features)
    bank_norms2 : torch.Tensor of shape (n_bank,)
        ``bank.square().sum(1)``, computed once.
    k : int, default=1
    query_groups, bank_groups : torch.Tensor of shape (n_queries,) and \
(n_bank,), optional
        Group labels (e.g. the training image a patch comes from): a query
        ignores the bank rows of its own group (leave-one-out scoring).

    Returns
    -------
    distances : torch.Tensor of shape (n_queries, k), float32
        Not squared, nearest first.
    indices : torch.Tensor of shape (n_queries, k), int64
    """
    n_queries, n_bank = queries.shape[0], bank.shape[0]
    k = min(k, n_bank)
    values = torch.empty((n_queries, k), dtype=queries.dtype, device=queries.device)
    indices = torch.empty((n_queries, k), dtype=torch.int64, device=queries.device)
    for start in range(0, n_queries, _QUERY_BLOCK):
        block = queries[start : start + _QUERY_BLOCK]
        groups = (
            None if query_groups is None else query_groups[start : start + len(block)]
        )
        best, where = None, None
        for first in range(0, n_bank, _BANK_BLOCK):
            rows = slice(first, first + _BANK_BLOCK)
            # bank[rows].T is a transposed view: the product reads it in place
            d2 = torch.addmm(bank_norms2[rows], block, bank[rows].T, alpha=-2.0)
            if groups is not None:
                d2.masked_fill_(
                    groups[:, None] == bank_groups[None, rows], float("inf")
                )
            if k == 1:
                value, index = d2.min(dim=1, keepdim=True)
            else:
                value, index = d2.topk(min(k, d2.shape[1]), dim=1, largest=False)
            index += first
            if best is None:
                best, where = value, index
            elif k == 1:
                # strict: on ties the earlier row wins, as in one block
                closer = value < best
                best = torch.where(closer, value, best)
                where = torch.where(closer, index, where)
            else:
                both = torch.cat([best, value], 1)
                best, order = both.topk(min(k, both.shape[1]), dim=1, largest=False)
                where = torch.cat([where, index], 1).gather(1, order)
        best += block.square().sum(dim=1, keepdim=True)
        values[start : start + len(block)] = best.clamp_(min=0.0).sqrt_()
        indices[start : start + len(block)] = where
    return values, indices


def import_faiss():
    """The ``faiss`` module, or an ImportError that says how to get it."""
    try:
        import faiss
    except ImportError as error:
        raise ImportError(
            "search='faiss' needs the faiss-cpu package: pip install "
            "'skanomaly[faiss]' (or faiss-cpu), or use search='exact'."
        ) from error
    return faiss


def inverted_lists(bank, n_lists, seed):
    """k-means cells of the bank for :class:`FaissSearch`.

    Parameters
    ----------
    bank : ndarray of shape (n_bank, n_features), float32
    n_lists : int
        Number of cells (``1 <= n_lists <= n_bank``).
    seed : int

    Returns
    -------
    centroids : ndarray of shape (n_lists, n_features), float32
    lists : ndarray of shape (n_bank,), int64
        The cell of each bank row (its nearest centroid).
    """
    faiss = import_faiss()
    bank = np.ascontiguousarray(bank, dtype=np.float32)
    kmeans = faiss.Kmeans(bank.shape[1], n_lists, niter=20, seed=seed)
    kmeans.train(bank)
    centroids = np.ascontiguousarray(kmeans.centroids, dtype=np.float32)
    _, lists = kmeans.index.search(bank, 1)
    return centroids, np.ascontiguousarray(lists[:, 0], dtype=np.int64)


class FaissSearch:
    """Approximate nearest neighbours of :func:`nearest_neighbours`, with faiss.

    An inverted-file index (``faiss.IndexIVFFlat``): the bank rows are
    grouped in the k-means cells of :func:`inverted_lists`, and a query is
    compared with the rows of its ``n_probes`` nearest cells only, exactly
    (no compression). Built from the stored cells, without k-means again.
    Called like :func:`nearest_neighbours` (the bank arguments are
    ignored: the index holds its own copy); with groups, each query
    image's own rows are excluded by a faiss ID selector, one search per
    group, and a query whose probed cells hold only its own group's rows
    falls back to the exact search.

    Parameters
    ----------
    bank : ndarray of shape (n_bank, n_features), float32
    centroids : ndarray of shape (n_lists, n_features), float32
    lists : ndarray of shape (n_bank,), int64
    n_probes : int
    """

    def __init__(self, bank, centroids, lists, n_probes):
        faiss = import_faiss()
        self._faiss = faiss
        self._bank = np.ascontiguousarray(bank, dtype=np.float32)
        self._centroids = np.ascontiguousarray(centroids, dtype=np.float32)
        self._lists = np.ascontiguousarray(lists, dtype=np.int64)
        n_features = self._bank.shape[1]
        self._quantizer = faiss.IndexFlatL2(n_features)
        self._quantizer.add(self._centroids)
        self.index = faiss.IndexIVFFlat(
            self._quantizer, n_features, len(self._centroids)
        )
        # the stored cells: add_core places each row without k-means again
        self.index.add_core(
            len(self._bank),
            faiss.swig_ptr(self._bank),
            None,
            faiss.swig_ptr(self._lists),
        )
        self.n_probes = min(int(n_probes), len(self._centroids))
        self.index.nprobe = self.n_probes

    def __call__(
        self, queries, bank, bank_norms2, k=1, *, query_groups=None, bank_groups=None
    ):
        device = queries.device
        flat = np.ascontiguousarray(queries.cpu().numpy(), dtype=np.float32)
        k = min(k, len(self._bank))
        if query_groups is None:
            d2, index = self.index.search(flat, k)
        else:
            d2 = np.empty((len(flat), k), np.float32)
            index = np.empty((len(flat), k), np.int64)
            query_groups = query_groups.cpu().numpy()
            bank_groups = bank_groups.cpu().numpy()
            for group in np.unique(query_groups):
                rows = np.flatnonzero(query_groups == group)
                own = np.flatnonzero(bank_groups == group).astype(np.int64)
                batch = self._faiss.IDSelectorBatch(own)
                params = self._faiss.SearchParametersIVF(
                    nprobe=self.n_probes, sel=self._faiss.IDSelectorNot(batch)
                )
                d2[rows], index[rows] = self.index.search(flat[rows], k, params=params)
        distances = torch.from_numpy(d2).clamp_(min=0.0).sqrt_().to(device)
        index = torch.from_numpy(index).to(device)
        missing = (index < 0).any(dim=1)
        if missing.any():
            # every probed row was excluded (or fewer than k rows probed)
            rows = torch.nonzero(missing)[:, 0]
            groups = {}
            if query_groups is not None:
                groups = dict(
                    query_groups=torch.from_numpy(query_groups).to(device)[rows],
                    bank_groups=torch.from_numpy(bank_groups).to(device),
                )
            distances[rows], index[rows] = nearest_neighbours(
                queries[rows], bank, bank_norms2, k, **groups
            )
        return distances, index


def nearest_in_bank(queries, bank, bank_norms2, k=1, *, groups=None):
    """:func:`nearest_neighbours` in one block.

    ``queries`` (n_queries, n_features) against the whole bank at once:
    memory ``n_queries x n_bank`` floats, no Python loop over the queries
    (the form an exported graph takes). ``groups``, a pair
    ``(query_groups, bank_groups)``, hides from each query the bank rows of
    its own group.
    """
    d2 = torch.addmm(bank_norms2, queries, bank.T, alpha=-2.0)
    d2.add_(queries.square().sum(dim=1, keepdim=True))
    if groups is not None:
        query_groups, bank_groups = groups
        d2.masked_fill_(query_groups[:, None] == bank_groups[None, :], float("inf"))
    if k == 1:
        value, index = d2.min(dim=1, keepdim=True)
    else:
        value, index = d2.topk(k, dim=1, largest=False)
    return value.clamp_(min=0.0).sqrt_(), index


def reweighted_scores(
    queries, distances, indices, bank, bank_norms2, n_neighbours, *, groups=None
):
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
    groups : pair of torch.Tensor of shape (n_images,) and (n_bank,), optional
        Each image's group and the bank rows' groups: the neighbours of
        ``m*`` are taken among the rows of other groups only.

    Returns
    -------
    scores : torch.Tensor of shape (n_images,)
    """
    best = distances.argmax(dim=1, keepdim=True)  # (n_images, 1)
    top = distances.gather(1, best)[:, 0]
    if n_neighbours == 1:
        return top
    n_features = queries.shape[-1]
    patch = queries.gather(1, best[:, :, None].expand(-1, -1, n_features))[:, 0]
    nearest = bank.index_select(0, indices.gather(1, best)[:, 0])  # m*
    n_neighbours = min(n_neighbours, bank.shape[0])
    _, neighbours = nearest_in_bank(
        nearest, bank, bank_norms2, k=n_neighbours, groups=groups
    )
    # m* itself is its own nearest bank row (distance 0), so it is included
    to_neighbours = (patch[:, None, :] - bank[neighbours]).norm(dim=2)
    # exp(s*) / sum_j exp(d_j) = 1 / sum_j exp(d_j - s*), with d_j >= s*
    excess = to_neighbours.double() - top[:, None].double()
    weight = 1.0 - 1.0 / torch.exp(excess).sum(dim=1)
    return (weight * top.double()).float()


def bank_scores(features, bank, bank_norms2, n_neighbours, *, search, groups=None):
    """PatchCore's scores of a batch: every patch's and every image's.

    Parameters
    ----------
    features : torch.Tensor of shape (batch, C, height, width)
    bank : torch.Tensor of shape (n_bank, C)
    bank_norms2 : torch.Tensor of shape (n_bank,)
    n_neighbours : int
        As in :func:`reweighted_scores`.
    search : callable
        :func:`nearest_neighbours` (in chunks) or :func:`nearest_in_bank`
        (one block, for export).
    groups : pair of torch.Tensor of shape (batch,) and (n_bank,), optional
        Leave-one-out scoring of training images: each image's label and
        the label of the image each bank row came from; an image is scored
        against the rows of the other images only (with
        :func:`nearest_neighbours` as ``search``).

    Returns
    -------
    grid : torch.Tensor of shape (batch, height, width)
        Distance of each patch to its nearest bank row.
    image : torch.Tensor of shape (batch,)
        Re-weighted largest patch score of each image (Eq. 7).
    """
    batch, channels, height, width = features.shape
    queries = features.flatten(2).transpose(1, 2)  # (batch, patches, C)
    flat = queries.reshape(-1, channels)
    if groups is None:
        distances, indices = search(flat, bank, bank_norms2)
    else:
        patch_groups = groups[0].repeat_interleave(height * width)
        distances, indices = search(
            flat, bank, bank_norms2, query_groups=patch_groups, bank_groups=groups[1]
        )
    distances = distances.reshape(batch, height * width)
    indices = indices.reshape(batch, height * width)
    image = reweighted_scores(
        queries, distances, indices, bank, bank_norms2, n_neighbours, groups=groups
    )
    return distances.reshape(batch, height, width), image


class BankScores(nn.Module):
    """:func:`bank_scores` against a fixed bank, in one block (for export).

    Parameters
    ----------
    bank : torch.Tensor of shape (n_bank, C)
    n_neighbours : int
    """

    def __init__(self, bank, n_neighbours):
        super().__init__()
        bank = torch.as_tensor(bank, dtype=torch.float32)
        self.register_buffer("bank", bank)
        self.register_buffer("bank_norms2", bank.square().sum(dim=1))
        self.n_neighbours = int(n_neighbours)

    def forward(self, features):
        """``(grid, image)`` scores of ``features`` (batch, C, height, width)."""
        return bank_scores(
            features,
            self.bank,
            self.bank_norms2,
            self.n_neighbours,
            search=nearest_in_bank,
        )
