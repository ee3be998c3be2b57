"""A density term on an encoder's codes, added to a reconstruction score.

Used by the AutoEncoder's and the VAE's ``latent_weight``. A model trained
on rich inliers can reconstruct a plainer input (a flat crop, a smooth
photo next to text) well, so its reconstruction error calls it normal; the
input's code may still lie where no training code lies. The score then
adds the squared Mahalanobis distance of the code to a Gaussian of the
training codes (Ledoit-Wolf covariance), both terms in units of their
spread on the training samples.
"""

import numpy as np
import torch

from ..gaussian import ledoit_wolf

__all__ = ["combined_score", "fit_latent_score", "robust_standardisation"]

# interquartile range of a standard normal: IQR / this is a robust SD
_IQR_OF_NORMAL = 1.3489795003921634


def robust_standardisation(values):
    """Median and robust spread (interquartile range / 1.349) of ``values``.

    The spread falls back to the standard deviation when half the values
    are equal, and to 1 when all are.

    Parameters
    ----------
    values : ndarray of shape (n_samples,)

    Returns
    -------
    center, scale : float

    Examples
    --------
    >>> import numpy as np
    >>> from skanomaly.nn.latent import robust_standardisation
    >>> center, scale = robust_standardisation(np.array([0.0, 1.0, 2.0, 3.0, 100.0]))
    >>> center, round(scale, 4)
    (2.0, 1.4826)
    """
    values = np.asarray(values, dtype=np.float64)
    center = float(np.median(values))
    low, high = np.percentile(values, [25, 75])
    scale = float(high - low) / _IQR_OF_NORMAL
    if not scale > 0:
        scale = float(values.std())
    if not scale > 0:
        scale = 1.0
    return center, scale


def fit_latent_score(scores, codes):
    """Statistics of the two terms from the training samples' scores and codes.

    Parameters
    ----------
    scores : ndarray of shape (n_samples,)
        The detector's own anomaly scores of its training samples.
    codes : ndarray of shape (n_samples, code_size)
        Their codes.

    Returns
    -------
    dict
        ``latent_mean`` (code_size,), ``latent_precision`` (code_size,
        code_size): the inverse Ledoit-Wolf covariance of the codes;
        ``score_center``, ``score_scale``, ``latent_center``,
        ``latent_scale``: the median and robust spread of the score and of
        the codes' squared Mahalanobis distances.

    Raises
    ------
    ValueError
        With fewer than 2 samples, or non-finite scores or codes.
    """
    scores = np.asarray(scores, dtype=np.float64)
    codes = np.asarray(codes, dtype=np.float64)
    if len(codes) < 2:
        raise ValueError(
            f"latent_weight needs at least 2 training samples to fit a Gaussian "
            f"to their codes; got {len(codes)}."
        )
    if not (np.all(np.isfinite(scores)) and np.all(np.isfinite(codes))):
        raise ValueError(
            "latent_weight: the training samples' scores or codes are not finite, "
            "so no Gaussian can be fitted to them (did training diverge?)."
        )
    mean = codes.mean(axis=0)
    covariance, _ = ledoit_wolf(codes)
    # Ledoit-Wolf shrinks towards mu I, so the covariance is singular only if
    # every code is the same; a ridge at 1e-12 of its scale then keeps it usable
    ridge = 1e-12 * max(float(np.trace(covariance)) / len(covariance), 1e-300)
    precision = np.linalg.inv(covariance + ridge * np.eye(len(covariance)))
    precision = (precision + precision.T) / 2
    centred = codes - mean
    distances = np.einsum("ij,jk,ik->i", centred, precision, centred)
    score_center, score_scale = robust_standardisation(scores)
    latent_center, latent_scale = robust_standardisation(distances)
    return dict(
        latent_mean=mean,
        latent_precision=precision,
        score_center=score_center,
        score_scale=score_scale,
        latent_center=latent_center,
        latent_scale=latent_scale,
    )


def combined_score(score, code, statistics, weight):
    """``standardised score + weight x standardised squared Mahalanobis distance``.

    Parameters
    ----------
    score : Tensor of shape (batch,)
        The detector's own anomaly score.
    code : Tensor of shape (batch, code_size)
    statistics : dict
        As :func:`fit_latent_score` returns it (arrays or floats).
    weight : float

    Returns
    -------
    Tensor of shape (batch,)
    """
    kwargs = dict(device=code.device, dtype=code.dtype)
    mean = torch.as_tensor(np.asarray(statistics["latent_mean"]), **kwargs)
    precision = torch.as_tensor(np.asarray(statistics["latent_precision"]), **kwargs)
    centred = code - mean
    distance = ((centred @ precision) * centred).sum(dim=1)
    score_term = (score - float(statistics["score_center"])) / float(
        statistics["score_scale"]
    )
    latent_term = (distance - float(statistics["latent_center"])) / float(
        statistics["latent_scale"]
    )
    return score_term + float(weight) * latent_term
