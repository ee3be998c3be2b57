"""Gaussians of the detectors: estimation, shrinkage, regularisation, distances.

Shared by :class:`~skanomaly.Mahalanobis`, :class:`~skanomaly.DeepMahalanobis`
and PaDiM's per-position Gaussians, so that they estimate, regularise and
measure the same way.

Leave-one-out distances in closed form
--------------------------------------
The covariance estimates here have the form

    Sigma = (1 - alpha) W / (n - ddof) + b I,

with ``W`` the scatter matrix of the ``n`` training samples around their mean,
``alpha`` a shrinkage and ``b I`` what shrinkage and regularisation add to
the diagonal. Scoring a training sample against the Gaussian of the *other*
``n - 1`` samples, with ``alpha`` and ``b`` held fixed, needs no refit:
removing sample ``i`` moves the mean by ``r_i / (n - 1)`` (``r_i = x_i -
mean``) and downdates the scatter matrix by ``n / (n - 1) r_i r_i^T``, so

    Sigma_(-i) = A - c r_i r_i^T,
    A = (1 - alpha) W / (n - 1 - ddof) + b I,
    c = (1 - alpha) n / ((n - 1) (n - 1 - ddof)),

and by Sherman-Morrison the leave-one-out squared distance is

    D_i^2 = (n / (n - 1))^2 q_i / (1 - c q_i),   q_i = r_i^T A^-1 r_i.

One factorisation of ``A`` serves every sample. These scores are what a new
sample's distance is to the fitted Gaussian, up to one sample's worth of
estimation, which makes them calibration scores (:mod:`skanomaly.conformal`)
without holding data out.
"""

import warnings

import numpy as np

__all__ = [
    "COVARIANCE_ESTIMATORS",
    "group_distances",
    "leave_one_out_covariance",
    "leave_one_out_group_distances",
    "leave_one_out_squared_distances",
    "ledoit_wolf",
    "ledoit_wolf_shrink",
    "regularised_cholesky",
]

# Rows per block when measuring distances: bounds the float64 temporaries to
# ~32 MiB.
_DISTANCE_BLOCK_BYTES = 32 * 2**20


def ledoit_wolf(X):
    """Ledoit-Wolf shrunk covariance and shrinkage, as sklearn's ``ledoit_wolf``.

    The same estimate with one Gram matrix instead of three: the term that
    sklearn gets from ``(X**2).T @ (X**2)`` is the sum of the rows' squared
    norms squared, O(n_samples * n_features).

    Parameters
    ----------
    X : ndarray of shape (n_samples, n_features)

    Returns
    -------
    covariance : ndarray of shape (n_features, n_features)
    shrinkage : float

    Examples
    --------
    >>> import numpy as np
    >>> from sklearn.covariance import ledoit_wolf as sklearn_ledoit_wolf
    >>> from skanomaly.gaussian import ledoit_wolf
    >>> X = np.random.default_rng(0).normal(size=(20, 5))
    >>> ours, theirs = ledoit_wolf(X), sklearn_ledoit_wolf(X)
    >>> bool(np.allclose(ours[0], theirs[0])), bool(np.isclose(ours[1], theirs[1]))
    (True, True)
    """
    n_samples = X.shape[0]
    X = X - X.mean(axis=0)
    covariance = X.T @ X / n_samples
    row_norms2 = np.einsum("ij,ij->i", X, X)
    covariance, shrinkage = ledoit_wolf_shrink(
        covariance, np.sum(row_norms2**2), n_samples
    )
    return covariance, float(shrinkage)


def ledoit_wolf_shrink(covariance, sum_norms4, n_samples):
    """Shrink maximum-likelihood covariances the Ledoit-Wolf way, in place.

    Works on a stack of covariances (..., p, p) at once, from their
    sufficient statistics only: ``covariance`` (normalised by
    ``n_samples``) and ``sum_norms4`` (...,), the sum over samples of
    ``|x_i - mean|^4``.

    Returns
    -------
    covariance : ndarray of shape (..., p, p)
        The shrunk covariances (the input array).
    shrinkage : ndarray of shape (...)
    """
    n_features = covariance.shape[-1]
    if n_features == 1:
        return covariance, np.zeros(covariance.shape[:-2])
    trace = np.trace(covariance, axis1=-2, axis2=-1)
    mu = trace / n_features
    frobenius2 = np.sum(covariance**2, axis=(-2, -1))
    beta = (sum_norms4 / n_samples - frobenius2) / (n_features * n_samples)
    delta = (frobenius2 - 2 * mu * trace + n_features * mu**2) / n_features
    beta = np.minimum(beta, delta)
    shrinkage = np.divide(beta, delta, out=np.zeros_like(beta), where=beta != 0)
    covariance *= (1.0 - shrinkage)[..., None, None]
    diagonal = np.einsum("...ii->...i", covariance)
    diagonal += (shrinkage * mu)[..., None]
    return covariance, shrinkage


def _oas(X):
    from sklearn.covariance import oas

    return oas(X)


def _empirical(X):
    from sklearn.covariance import empirical_covariance

    return empirical_covariance(X), 0.0


# name -> X -> (maximum-likelihood covariance shrunk towards mu I, shrinkage)
COVARIANCE_ESTIMATORS = {
    "ledoit_wolf": ledoit_wolf,
    "oas": _oas,
    "empirical": _empirical,
}


def regularised_cholesky(covariance, what="The covariance"):
    """Lower Cholesky factor(s), adding the smallest ridge that makes them exist.

    A covariance that is singular (fewer samples than features, constant
    features) gets ``scale * 10**k`` on its diagonal, for the smallest
    ``k >= -12`` that works (``scale`` the mean of its diagonal), with a
    warning naming it. Works on a stack (..., p, p): only the matrices that
    need a ridge get one.

    Parameters
    ----------
    covariance : ndarray of shape (..., p, p)
    what : str, default="The covariance"
        What the warning calls the matrix.

    Returns
    -------
    factor : ndarray of shape (..., p, p)

    Raises
    ------
    FloatingPointError
        When no ridge up to ``scale`` helps (non-finite values).

    Examples
    --------
    >>> import numpy as np, warnings
    >>> from skanomaly.gaussian import regularised_cholesky
    >>> with warnings.catch_warnings(record=True) as caught:
    ...     warnings.simplefilter("always")
    ...     factor = regularised_cholesky(np.ones((2, 2)))
    >>> "singular" in str(caught[0].message), bool(np.all(np.isfinite(factor)))
    (True, True)
    """
    covariance = np.asarray(covariance, dtype=np.float64)
    stack = covariance.reshape(-1, *covariance.shape[-2:])
    try:
        return np.linalg.cholesky(covariance)
    except np.linalg.LinAlgError:
        pass
    factors = np.empty_like(stack)
    identity = np.eye(stack.shape[-1])
    ridged = []
    for i, matrix in enumerate(stack):
        try:
            factors[i] = np.linalg.cholesky(matrix)
            continue
        except np.linalg.LinAlgError:
            pass
        scale = float(np.mean(np.diag(matrix)))
        scale = scale if scale > 0 else 1.0
        for exponent in range(-12, 1):
            ridge = scale * 10.0**exponent
            try:
                factors[i] = np.linalg.cholesky(matrix + ridge * identity)
            except np.linalg.LinAlgError:
                continue
            ridged.append(ridge)
            break
        else:
            raise FloatingPointError(f"{what} is not finite.")
    where = "" if len(stack) == 1 else f" ({len(ridged)} of {len(stack)})"
    warnings.warn(
        f"{what}{where} is singular (fewer samples than features, or constant "
        f"features); added a ridge of up to {max(ridged):.3g} to its diagonal. "
        "Shrinkage (covariance='ledoit_wolf') or regularisation avoids this.",
        UserWarning,
        stacklevel=3,
    )
    return factors.reshape(covariance.shape)


def group_distances(X, location, groups, factors, device="cpu"):
    """Distance of each row to the Gaussian of each group of columns.

    In blocks of rows (bounded memory), with
    :class:`~skanomaly.nn.mahalanobis.GroupDistances`, the module the
    exported graphs run too, on ``device``.

    Parameters
    ----------
    X : ndarray or torch.Tensor of shape (n_samples, n_features)
    location : ndarray of shape (n_features,)
    groups : sequence of ndarray of int
    factors : sequence of ndarray
        Lower Cholesky factor of each group's covariance.
    device : str or torch.device, default="cpu"

    Returns
    -------
    distances : ndarray of shape (n_samples, n_groups), float64
    """
    import torch

    from .nn.mahalanobis import GroupDistances

    module = GroupDistances(location, groups, factors).to(device)
    X = torch.as_tensor(X)
    rows = max(1, _DISTANCE_BLOCK_BYTES // (8 * max(1, X.shape[1])))
    out = np.empty((X.shape[0], len(groups)))
    with torch.inference_mode():
        for start in range(0, X.shape[0], rows):
            block = X[start : start + rows].to(device)
            out[start : start + rows] = module(block).cpu().numpy()
    return out


def leave_one_out_group_distances(
    X_train, n_samples, location, groups, covariances, shrinkages, factors
):
    """:func:`group_distances` of training rows to the Gaussians of the others.

    For Gaussians estimated by :data:`COVARIANCE_ESTIMATORS` (maximum
    likelihood, shrunk towards ``mu I``, ``mu`` the mean variance) and
    factored by :func:`regularised_cholesky`: the shrinkage, its target and
    any ridge stay as fitted.

    Parameters
    ----------
    X_train : ndarray of shape (n_rows, n_features)
        Rows of the ``n_samples`` the Gaussians were fitted on.
    n_samples : int
    location, groups, factors
        As in :func:`group_distances`.
    covariances : sequence of ndarray
        Each group's estimate before any ridge.
    shrinkages : sequence of float

    Returns
    -------
    distances : ndarray of shape (n_rows, n_groups)
    """
    loo_factors, c = [], []
    for covariance, shrinkage, factor in zip(
        covariances, shrinkages, factors, strict=True
    ):
        used = factor @ factor.T  # with any ridge added
        # shrinkage keeps the trace: mu = trace / p is the target's scale
        mu = np.trace(covariance) / covariance.shape[0]
        ridge = used[0, 0] - covariance[0, 0]
        A, c_g = leave_one_out_covariance(
            used,
            n_samples,
            ddof=0,
            shrinkage=shrinkage,
            diagonal=shrinkage * mu + ridge,
        )
        loo_factors.append(regularised_cholesky(A))
        c.append(c_g)
    q = group_distances(X_train, location, groups, loo_factors) ** 2
    return np.sqrt(leave_one_out_squared_distances(q, n_samples, np.array(c)))


def leave_one_out_covariance(covariance, n_samples, *, ddof, shrinkage, diagonal):
    """``(A, c)`` of the leave-one-out covariances ``Sigma_(-i) = A - c r r^T``.

    Parameters
    ----------
    covariance : ndarray of shape (..., p, p)
        The fitted covariance(s) ``(1 - alpha) W / (n - ddof) + b I``, as
        used for scoring (shrinkage and any ridge included).
    n_samples : int
        Training samples ``n`` (at least ``2 + ddof``).
    ddof : {0, 1}
        0 for maximum-likelihood scatter (``W / n``), 1 for unbiased.
    shrinkage : float or ndarray of shape (...)
        ``alpha``.
    diagonal : float or ndarray of shape (...)
        ``b``, what shrinkage and regularisation add to the diagonal.

    Returns
    -------
    A : ndarray of shape (..., p, p)
    c : ndarray of shape (...)

    Examples
    --------
    Without shrinkage, ``A - c r r^T`` is the covariance of the other rows:

    >>> import numpy as np
    >>> from skanomaly.gaussian import leave_one_out_covariance
    >>> X = np.random.default_rng(0).normal(size=(30, 3))
    >>> A, c = leave_one_out_covariance(
    ...     np.cov(X.T), 30, ddof=1, shrinkage=0.0, diagonal=0.0)
    >>> r = X[0] - X.mean(axis=0)
    >>> bool(np.allclose(A - c * np.outer(r, r), np.cov(X[1:].T)))
    True
    """
    n = int(n_samples)
    if n < 2 + ddof:
        raise ValueError(
            f"Leave-one-out needs at least {2 + ddof} training samples; got {n}."
        )
    covariance = np.asarray(covariance, dtype=np.float64)
    shrinkage = np.asarray(shrinkage, dtype=np.float64)
    diagonal = np.asarray(diagonal, dtype=np.float64)
    growth = (n - ddof) / (n - 1.0 - ddof)  # W / (n - 1 - ddof) over W / (n - ddof)
    A = growth * covariance
    np.einsum("...ii->...i", A)[...] -= ((growth - 1.0) * diagonal)[..., None]
    c = (1.0 - shrinkage) * n / ((n - 1.0) * (n - 1.0 - ddof))
    return A, c


def leave_one_out_squared_distances(q, n_samples, c):
    """Leave-one-out squared distances ``(n / (n - 1))^2 q / (1 - c q)``.

    Parameters
    ----------
    q : ndarray
        ``r_i^T A^-1 r_i`` of each training sample (from
        :func:`leave_one_out_covariance`'s ``A``).
    n_samples : int
    c : float or ndarray broadcasting with ``q``

    Returns
    -------
    squared_distances : ndarray, the shape of ``q``

    Examples
    --------
    >>> import numpy as np
    >>> from skanomaly.gaussian import (
    ...     leave_one_out_covariance, leave_one_out_squared_distances)
    >>> X = np.random.default_rng(0).normal(size=(30, 3))
    >>> A, c = leave_one_out_covariance(
    ...     np.cov(X.T), 30, ddof=1, shrinkage=0.0, diagonal=0.0)
    >>> r = X[0] - X.mean(axis=0)
    >>> loo = leave_one_out_squared_distances(r @ np.linalg.solve(A, r), 30, c)
    >>> rest = X[1:]
    >>> d = X[0] - rest.mean(axis=0)
    >>> bool(np.isclose(loo, d @ np.linalg.solve(np.cov(rest.T), d)))
    True
    """
    n = float(n_samples)
    q = np.asarray(q, dtype=np.float64)
    # 1 - c q > 0 whenever Sigma_(-i) is positive definite; the floor guards
    # rounding for a sample that alone spans a direction
    remaining = np.maximum(1.0 - c * q, 1e-12)
    return (n / (n - 1.0)) ** 2 * q / remaining
