"""Leave-one-out Mahalanobis distances of a fitted Gaussian, in closed form.

The Gaussians here (:class:`~skanomaly.Mahalanobis`,
:class:`~skanomaly.DeepMahalanobis`, PaDiM's per-position Gaussians) estimate
their covariance as

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

import numpy as np

__all__ = ["leave_one_out_covariance", "leave_one_out_squared_distances"]


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
