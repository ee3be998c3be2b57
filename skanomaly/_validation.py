"""Input validation shared by every detector: tabular arrays and image batches."""

import warnings

import numpy as np
from sklearn.utils import check_array
from sklearn.utils.validation import validate_data

__all__ = ["validate_detector_input", "select_inliers", "is_image_input"]

_RANK_HELP = (
    "expected a 2-D tabular array (n_samples, n_features), grayscale images "
    "(n_samples, height, width) or images (n_samples, channels, height, width)"
)


def is_image_input(X):
    """Whether ``X`` would be read as a batch of images (rank 3 or 4)."""
    return getattr(X, "ndim", 2) in (3, 4)


def validate_detector_input(estimator, X, *, reset, min_samples=1, keep_uint8=False):
    """Check ``X`` and return it as a float32/float64 array.

    Tabular input goes through scikit-learn's ``validate_data`` so that
    ``n_features_in_`` and ``feature_names_in_`` behave as in any estimator.
    Images come back as (n_samples, channels, height, width); ``uint8`` images
    are scaled to [0, 1] (the torchvision convention), floats are kept. With
    ``keep_uint8=True`` uint8 images come back as they are (no float copy of
    the whole batch), for callers that scale them batch by batch.

    With ``reset=True`` the input kind and shape are recorded on the estimator
    (``n_features_in_`` and ``image_shape_``, ``None`` for tabular data); with
    ``reset=False`` ``X`` must match what was recorded.
    """
    ndim = getattr(X, "ndim", None)
    if ndim is None and not hasattr(X, "__array__") and not hasattr(X, "shape"):
        # lists and other sequences: let numpy tell the rank
        try:
            ndim = np.asarray(X).ndim
        except (TypeError, ValueError):  # ragged input
            ndim = None
    if ndim in (3, 4):
        return _validate_images(
            estimator, X, reset=reset, min_samples=min_samples, keep_uint8=keep_uint8
        )
    if ndim is not None and ndim > 4:
        raise ValueError(f"{_RANK_HELP}; got an array of rank {ndim}.")
    if not reset and getattr(estimator, "image_shape_", None) is not None:
        raise ValueError(
            f"{type(estimator).__name__} was fitted on images of shape "
            f"{estimator.image_shape_} (channels, height, width) but got a 2-D "
            "tabular array."
        )
    X = validate_data(
        estimator,
        X,
        reset=reset,
        dtype=[np.float32, np.float64],
        ensure_min_samples=min_samples,
    )
    if reset:
        estimator.image_shape_ = None
    return X


def _validate_images(estimator, X, *, reset, min_samples, keep_uint8):
    name = type(estimator).__name__
    is_uint8 = getattr(X, "dtype", None) == np.uint8
    X = check_array(
        X,
        allow_nd=True,
        dtype=None if is_uint8 and keep_uint8 else [np.float32, np.float64],
        ensure_min_samples=min_samples,
        input_name="X",
    )
    if is_uint8 and not keep_uint8:
        # check_array made a float32 copy: scale it in place
        np.divide(X, np.float32(255.0), out=X)
    if X.ndim == 3:
        X = X[:, None, :, :]
    channels = X.shape[1]
    if channels > 4 and X.shape[-1] in (1, 3, 4):
        raise ValueError(
            f"{name} expects channels-first images (n_samples, channels, height, "
            f"width); got shape {X.shape}, which looks channels-last. Use "
            "X.transpose(0, 3, 1, 2)."
        )
    image_shape = tuple(int(s) for s in X.shape[1:])
    if reset:
        estimator.image_shape_ = image_shape
        estimator.n_features_in_ = int(np.prod(image_shape))
        if hasattr(estimator, "feature_names_in_"):
            del estimator.feature_names_in_
    else:
        fitted = getattr(estimator, "image_shape_", None)
        if fitted is None:
            raise ValueError(
                f"{name} was fitted on 2-D tabular data with "
                f"{estimator.n_features_in_} features but got images of shape "
                f"{X.shape[1:]}."
            )
        if image_shape[0] != fitted[0]:
            raise ValueError(
                f"{name} was fitted on images with {fitted[0]} channel(s) but got "
                f"images with {image_shape[0]} (shape {image_shape}, channels "
                "first)."
            )
        if image_shape != fitted:
            raise ValueError(
                f"{name} was fitted on images of shape {fitted} (channels, height, "
                f"width) but got images of shape {image_shape}. Resize the images "
                "to the training size first."
            )
    return X


def select_inliers(X, y, *, estimator_name):
    """Keep the samples that ``y`` labels as inliers (+1) when it is given.

    Detectors assume clean training data, so with labels in scikit-learn's
    outlier convention (+1 inlier, -1 outlier) the -1 samples are left out.
    Labels in any other encoding are ignored with a warning: in particular
    ``{0, 1}`` is ambiguous (ADBench and MVTec use 1 = anomaly).
    """
    if y is None:
        return X
    y = np.asarray(y)
    if y.ndim != 1 or y.shape[0] != X.shape[0]:
        raise ValueError(
            f"y must be a 1-D array with one label per sample ({X.shape[0]}); "
            f"got shape {y.shape}."
        )
    try:
        labels = set(np.unique(y).tolist())
    except TypeError:
        labels = {None}
    if not labels or not labels <= {-1, 1}:
        warnings.warn(
            f"{estimator_name}.fit ignores y: it uses y only in the outlier "
            "convention (+1 inlier, -1 outlier) to leave outliers out of "
            f"training, and got labels {sorted(map(str, labels))[:5]}. For data "
            "labelled 1 = anomaly, convert with skanomaly.metrics."
            "to_outlier_labels.",
            UserWarning,
            stacklevel=3,
        )
        return X
    inliers = y == 1
    if not inliers.any():
        raise ValueError(
            f"{estimator_name}.fit got no inliers: every label in y is -1 "
            "(outlier). Detectors train on inliers (+1)."
        )
    return X[inliers]
