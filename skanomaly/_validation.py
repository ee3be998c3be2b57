"""Input checks every estimator shares: tables, image batches, sizes, devices."""

import warnings
from numbers import Integral

import numpy as np
from scipy.sparse import issparse
from sklearn.utils import check_array
from sklearn.utils.validation import validate_data

from .labels import _fit_inliers

__all__ = [
    "as_tensor",
    "check_device",
    "image_value_range",
    "parse_image_size",
    "select_inliers",
    "validate_detector_input",
    "validate_images",
]

_RANK_HELP = (
    "expected a 2-D tabular array (n_samples, n_features), grayscale images "
    "(n_samples, height, width) or images (n_samples, channels, height, width)"
)


def _rank(X):
    """The rank of ``X`` without converting arrays; None for ragged input."""
    ndim = getattr(X, "ndim", None)
    if ndim is None and not hasattr(X, "__array__") and not hasattr(X, "shape"):
        # lists and other sequences: let numpy tell the rank
        try:
            ndim = np.asarray(X).ndim
        except (TypeError, ValueError):  # ragged input
            ndim = None
    return ndim


def validate_detector_input(
    estimator,
    X,
    *,
    reset,
    min_samples=1,
    keep_uint8=False,
    tabular=True,
    images=True,
    float_range=None,
):
    """Check ``X`` for a detector and return it as an array.

    Tabular input goes through scikit-learn's ``validate_data`` so that
    ``n_features_in_`` and ``feature_names_in_`` behave as in any estimator;
    it comes back as float32 or float64. Images come back as (n_samples,
    channels, height, width) (see :func:`validate_images`).

    With ``reset=True`` the input kind and shape are recorded on the estimator
    (``n_features_in_`` and ``image_shape_``, ``None`` for tabular data); with
    ``reset=False`` ``X`` must match what was recorded. ``tabular`` and
    ``images`` say which kinds the estimator takes (its declared tags); the
    other kind is refused with a message naming what it takes.
    ``float_range`` is passed to :func:`validate_images`.
    """
    name = type(estimator).__name__
    _refuse_sparse(X, name)
    ndim = _rank(X)
    if ndim is not None and ndim > 4:
        raise ValueError(f"{_RANK_HELP}; got an array of rank {ndim}.")
    if ndim in (3, 4):
        if not images:
            raise ValueError(
                f"{name} takes 2-D tabular data (n_samples, n_features); got an "
                f"array of rank {ndim} (images). Flatten the images, or turn them "
                "into features first (e.g. skanomaly.TimmFeatures)."
            )
        X = validate_images(
            X,
            name=name,
            min_samples=min_samples,
            keep_uint8=keep_uint8,
            float_range=float_range,
            estimator=estimator,
            reset=reset,
        )
        _record_or_match_image_shape(estimator, X, reset=reset)
        return _no_negative_strides(X)
    if not tabular:
        raise ValueError(
            f"{name} takes images (n_samples, height, width) or (n_samples, "
            f"channels, height, width); got a {ndim}-D array. Reshape rows of "
            "pixels to images first."
        )
    if not reset and getattr(estimator, "image_shape_", None) is not None:
        raise ValueError(
            f"{name} was fitted on images of shape {estimator.image_shape_} "
            "(channels, height, width) but got a 2-D tabular array."
        )
    # float32 stays float32; anything else (integers, lists, bools) becomes
    # float64, not float32, which would round integers above 2**24
    X = validate_data(
        estimator,
        X,
        reset=reset,
        dtype=[np.float64, np.float32],
        ensure_min_samples=min_samples,
    )
    if reset:
        estimator.image_shape_ = None
        estimator.image_dtype_ = None
        estimator.image_value_range_ = None
    return _no_negative_strides(X)


def _no_negative_strides(X):
    """``X``, copied (``np.ascontiguousarray``) only if it is a view with
    negative strides (``X[::-1]``, ``img[..., ::-1]`` as OpenCV's BGR->RGB
    code makes), which torch refuses: every detector and tensor gets arrays
    torch takes, and ordinary inputs are not copied."""
    if isinstance(X, np.ndarray) and any(step < 0 for step in X.strides):
        return np.ascontiguousarray(X)
    return X


def _refuse_sparse(X, name):
    if issparse(X):
        raise ValueError(
            f"{name} takes dense arrays; got a sparse {type(X).__name__} (sparse "
            "input is not supported). Convert it with X.toarray()."
        )


def _dtype_name(X):
    """The name of the dtype ``X`` comes in (``'uint8'``, ``'int64'``...)."""
    dtype = getattr(X, "dtype", None)
    if not isinstance(dtype, np.dtype):
        dtype = np.asarray(X).dtype
    return dtype.name


def validate_images(
    X,
    *,
    name,
    min_samples=1,
    keep_uint8=False,
    float_range=None,
    channels=None,
    estimator=None,
    reset=True,
):
    """Check a batch of images and return it as (n_samples, channels, height, width).

    ``uint8`` images are scaled to [0, 1] (the torchvision convention) in a
    float32 copy; with ``keep_uint8=True`` they come back as they are (no
    float copy of the whole batch), for callers that scale them batch by
    batch. Other dtypes come back as float32 or float64.

    With an ``estimator``, images are read in the value range of its
    ``fit``. With ``reset=True`` their dtype and that range are recorded as
    its ``image_dtype_`` and ``image_value_range_`` (see
    :func:`image_value_range`); otherwise images of any dtype are read in
    that range, converted where the reading is unambiguous and refused with
    the fix where it is not (see :class:`~skanomaly.BaseDetector`,
    ``image_value_range_``).

    Parameters
    ----------
    X : array-like of rank 3 or 4
    name : str
        The estimator's name, for the messages.
    min_samples : int, default=1
    keep_uint8 : bool, default=False
    float_range : (float, float) or None, default=None
        If given, float images must lie within it (a small tolerance aside):
        the check that catches 0-255 floats given to a model that reads
        floats as [0, 1].
    channels : collection of int or None, default=None
        Accepted channel counts (None: any).
    estimator : estimator or None, default=None
        Where ``image_dtype_`` and ``image_value_range_`` are recorded
        (``reset=True``) or read from (None: no rule of fit).
    reset : bool, default=True
        Whether this is ``fit``.
    """
    _refuse_sparse(X, name)
    if _rank(X) not in (3, 4):
        raise ValueError(
            f"{name} takes images (n_samples, height, width) or (n_samples, "
            f"channels, height, width); got an array of rank {_rank(X)}."
        )
    if not isinstance(getattr(X, "dtype", None), np.dtype):
        # lists, tensors: as an array, so that uint8 is read as value / 255
        # as the dtype recorded says
        X = np.asarray(X)
    X = _numeric_images(X, name)
    dtype_in = _dtype_name(X)
    fitted = None if reset else getattr(estimator, "image_dtype_", None)
    fitted_range = None
    if fitted is not None:
        fitted_range = getattr(estimator, "image_value_range_", None)
        if fitted_range is not None:  # a list, if set by hand
            fitted_range = tuple(float(v) for v in fitted_range)
        X = _in_fitted_range(
            X, np.dtype(dtype_in), np.dtype(fitted), fitted_range, name
        )
    elif float_range == UNIT_RANGE and X.dtype.kind in "iu" and X.dtype != np.uint8:
        # a reader of [0, 1] (the pretrained backbones): integer images are
        # 8-bit intensities, read as uint8 is (value / 255), as after a fit
        X = _as_uint8_intensities(X, dtype_in, name)
        dtype_in = "uint8"
    is_uint8 = getattr(X, "dtype", None) == np.uint8
    X = check_array(
        X,
        allow_nd=True,
        dtype=None if is_uint8 and keep_uint8 else [np.float32, np.float64],
        ensure_min_samples=min_samples,
        input_name="X",
    )
    if estimator is not None and reset:
        value_range = image_value_range(X, dtype_in)
    if is_uint8 and not keep_uint8:
        # check_array made a float32 copy: scale it in place
        np.divide(X, np.float32(255.0), out=X)
    if float_range is not None and not is_uint8 and X.size:
        _check_float_range(X, float_range, name)
    if fitted is not None and not is_uint8 and X.size:
        _check_fitted_range(X, dtype_in, fitted, fitted_range, name)
    if X.ndim == 3:
        X = X[:, None, :, :]
    if X.shape[1] > 4 and X.shape[-1] in (1, 3, 4):
        raise ValueError(
            f"{name} expects channels-first images (n_samples, channels, height, "
            f"width); got shape {X.shape}, which looks channels-last. Use "
            "X.transpose(0, 3, 1, 2)."
        )
    if channels is not None and X.shape[1] not in channels:
        accepted = " or ".join(str(c) for c in sorted(channels))
        raise ValueError(
            f"{name} takes images with {accepted} channels; got {X.shape[1]} "
            f"(shape {X.shape[1:]}, channels first). Drop an alpha channel first."
        )
    if estimator is not None and reset:
        estimator.image_dtype_ = dtype_in
        estimator.image_value_range_ = value_range
    return X


# The two value ranges images are read in: uint8 as value / 255 and floats
# in [0, 1] (torchvision), or 8-bit intensities as their values.
UNIT_RANGE = (0.0, 1.0)
BYTE_RANGE = (0.0, 255.0)
# Float images a little outside their range (interpolation overshoot) are
# fine: this fraction of the range's top.
_RANGE_TOLERANCE = 1e-2


def image_value_range(X, dtype):
    """The value range a batch of training images is read in, or None.

    ``(0.0, 1.0)`` for ``uint8`` images (read as value / 255) and for float
    images within [0, 1]; ``(0.0, 255.0)`` for other integer images with
    values in 0..255 and for float images within [0, 255] that exceed 1
    (read as their values); None for any other values (standardised
    floats, which have negative values, 16-bit counts), read as they are.
    Floats may exceed the range's top by 1% (interpolation overshoot) and
    go 0.01 below 0.

    Parameters
    ----------
    X : ndarray
        The images as :func:`check_array` returns them, before uint8 scaling
        (uint8 kept, other dtypes as float).
    dtype : str or numpy.dtype
        The dtype the images came in.

    Returns
    -------
    value_range : (float, float) or None

    Examples
    --------
    >>> import numpy as np
    >>> from skanomaly._validation import image_value_range
    >>> image_value_range(np.array([0.0, 0.5]), "float32")
    (0.0, 1.0)
    >>> image_value_range(np.array([0.0, 200.0]), "float32")
    (0.0, 255.0)
    >>> image_value_range(np.array([0.0, 200.0]), "uint8")
    (0.0, 1.0)
    >>> image_value_range(np.array([-1.5, 2.0]), "float64") is None
    True
    """
    dtype = np.dtype(dtype)
    if dtype == np.uint8:
        return UNIT_RANGE
    if not X.size:
        return UNIT_RANGE if dtype.kind not in "iu" else BYTE_RANGE
    low, high = float(X.min()), float(X.max())
    if dtype.kind in "iu":  # integers read as their values
        return BYTE_RANGE if low >= 0 and high <= 255 else None
    if low < -_RANGE_TOLERANCE:
        # negative values: standardised (ImageNet-normalised images lie in
        # [-2.1, 2.6]), read as they are rather than taken for 0-255
        return None
    for value_range in (UNIT_RANGE, BYTE_RANGE):
        if high <= value_range[1] * (1 + _RANGE_TOLERANCE):
            return value_range
    return None


def _range_text(value_range):
    """How images of ``value_range`` are read, for the messages."""
    if value_range is None:
        return "read as they are: values outside [0, 255]"
    low, high = value_range
    return f"read as values in [{low:g}, {high:g}]"


def _in_fitted_range(X, dtype, fitted, fitted_range, name):
    """Images of ``dtype`` converted to a dtype that reads them as in ``fit``.

    Integer images are 8-bit intensities (0 to 255) whatever their dtype,
    so they convert without doubt: to uint8 (read as value / 255) for a
    model fitted in [0, 1], and uint8 images to the dtype of ``fit`` (read
    as their values) for a model fitted in [0, 255]. Floats are checked
    after conversion (:func:`_check_fitted_range`); they cannot be
    converted, as the same floats can mean either range.
    """
    if dtype.kind not in "iu":
        return X
    is_uint8 = dtype == np.uint8
    if fitted_range is None:
        if is_uint8 and fitted != np.uint8:
            raise ValueError(
                f"{name} was fitted on {fitted} images ("
                f"{_range_text(None)}, standardised or beyond 8 bits), and got "
                "uint8 images, which have no reading in that range; pass "
                f"{fitted} images as in fit."
            )
        return X
    if fitted_range == UNIT_RANGE and not is_uint8:
        target, reading = np.dtype(np.uint8), "read as value / 255"
    elif fitted_range == BYTE_RANGE and is_uint8:
        target, reading = fitted, "read as their values"
    else:
        return X  # uint8 in [0, 1], or integers read as their values
    X = np.asarray(X)
    low, high = (int(X.min()), int(X.max())) if X.size else (0, 0)
    if low < 0 or high > 255:
        raise ValueError(
            f"{name} was fitted on {fitted} images ({_range_text(fitted_range)}) "
            f"and got {dtype} images with values in [{low}, {high}], outside the "
            f"uint8 range (0 to 255); pass {fitted} images as in fit."
        )
    warnings.warn(
        f"{name} was fitted on {fitted} images ({_range_text(fitted_range)}) and "
        f"got {dtype} images; they are converted to {target} and {reading}, as "
        f"in fit. Pass {fitted} images to silence this warning.",
        UserWarning,
        stacklevel=4,
    )
    return X.astype(target)


def _as_uint8_intensities(X, dtype, name):
    low, high = (int(X.min()), int(X.max())) if X.size else (0, 0)
    if low < 0 or high > 255:
        raise ValueError(
            f"{name} reads images in [0, 1] and got {dtype} images with values in "
            f"[{low}, {high}], outside the 8-bit range (0 to 255). Scale them to "
            "[0, 1] floats (16-bit: divide by 65535) or pass uint8 images."
        )
    return X.astype(np.uint8)


def _numeric_images(X, name):
    """``X`` with a numeric dtype: bool, integer or real float.

    Object arrays of numbers become float64; strings, complex numbers and
    other objects are refused here rather than deep in the value-range code.
    """
    kind = X.dtype.kind
    if kind in "biuf":
        return X
    if kind == "O":
        try:
            return X.astype(np.float64)
        except (TypeError, ValueError):
            pass
    raise ValueError(
        f"{name} takes images of numbers (uint8, other integers or floats); got "
        f"an array of dtype {X.dtype}. Convert the images to numbers first "
        "(np.asarray(images, dtype=np.float32), or uint8 pixels)."
    )


def _check_float_range(X, float_range, name):
    low, high = float(X.min()), float(X.max())
    lower, upper = float_range
    tolerance = _RANGE_TOLERANCE * upper
    if low < lower - tolerance or high > upper + tolerance:
        raise ValueError(
            f"{name} reads float images as values in [{lower:g}, {upper:g}] and got "
            f"values in [{low:.4g}, {high:.4g}]. Pass uint8 images (0 to 255) or "
            "divide by 255 first."
        )


def _check_fitted_range(X, dtype, fitted, fitted_range, name):
    """Refuse (non-uint8) images whose values contradict the range of fit."""
    if fitted_range is None:
        return  # read as they are, as in fit
    low, high = float(X.min()) + 0.0, float(X.max()) + 0.0  # no -0
    lower, upper = fitted_range
    tolerance = _RANGE_TOLERANCE * upper
    what = (
        f"{name} was fitted on {fitted} images ({_range_text(fitted_range)}) "
        f"and got {dtype} images with values in [{low:.4g}, {high:.4g}]"
    )
    if fitted_range == UNIT_RANGE and (low < -tolerance or high > 1 + tolerance):
        raise ValueError(
            f"{what}. Pass uint8 images (0 to 255) or divide by 255 first."
        )
    if fitted_range == BYTE_RANGE:
        if low < -tolerance or high > upper + tolerance:
            raise ValueError(f"{what}, outside that range; pass images as in fit.")
        if np.dtype(dtype).kind == "f" and 0 < high <= 1 + _RANGE_TOLERANCE:
            # 8-bit images divided by 255: every pixel would read as black
            raise ValueError(
                f"{what}, which look scaled to [0, 1]; multiply them by 255 "
                "(or pass uint8 images) to read them as in fit."
            )


def _record_or_match_image_shape(estimator, X, *, reset):
    name = type(estimator).__name__
    image_shape = tuple(int(s) for s in X.shape[1:])
    if reset:
        estimator.image_shape_ = image_shape
        estimator.n_features_in_ = int(np.prod(image_shape))
        if hasattr(estimator, "feature_names_in_"):
            del estimator.feature_names_in_
        return
    fitted = getattr(estimator, "image_shape_", None)
    if fitted is None:
        raise ValueError(
            f"{name} was fitted on 2-D tabular data with "
            f"{estimator.n_features_in_} features but got images of shape "
            f"{image_shape}."
        )
    if image_shape[0] != fitted[0]:
        raise ValueError(
            f"{name} was fitted on images with {fitted[0]} channel(s) but got "
            f"images with {image_shape[0]} (shape {image_shape}, channels first)."
        )
    if image_shape != fitted:
        raise ValueError(
            f"{name} was fitted on images of shape {fitted} (channels, height, "
            f"width) but got images of shape {image_shape}. Resize the images to "
            "the training size first."
        )


def parse_image_size(image_size, *, name="image_size"):
    """``image_size`` as a (height, width) pair of ints, or None.

    Accepts None, a positive int (a square) or a pair of positive ints.
    """
    if image_size is None:
        return None
    if isinstance(image_size, Integral) and not isinstance(image_size, bool):
        size = (image_size, image_size)
    elif isinstance(image_size, (tuple, list)) and len(image_size) == 2:
        size = tuple(image_size)
    else:
        size = ()
    if len(size) != 2 or not all(
        isinstance(s, Integral) and not isinstance(s, bool) and s > 0 for s in size
    ):
        raise ValueError(
            f"{name} must be a positive int or a (height, width) pair of positive "
            f"ints; got {image_size!r}."
        )
    return (int(size[0]), int(size[1]))


def as_tensor(data):
    """``data`` as a torch tensor, sharing its memory wherever torch can.

    The one place input arrays become tensors. torch refuses NumPy views with
    negative strides (``X[::-1]``, ``img[..., ::-1]`` as OpenCV's BGR->RGB
    code makes): those alone are copied (``np.ascontiguousarray``), so
    ordinary inputs are never copied. Read-only arrays (a DataFrame's under
    pandas' copy-on-write, memory maps) are shared quietly: torch warns that
    writing to them is undefined, and nothing here writes to its input.

    Parameters
    ----------
    data : ndarray or tensor

    Returns
    -------
    tensor : torch.Tensor

    Examples
    --------
    >>> import numpy as np
    >>> from skanomaly._validation import as_tensor
    >>> as_tensor(np.arange(3.0)[::-1]).tolist()
    [2.0, 1.0, 0.0]
    """
    import torch

    data = _no_negative_strides(data)
    with warnings.catch_warnings():
        warnings.filterwarnings(
            "ignore",
            message="The given NumPy array is not writable",
            category=UserWarning,
        )
        return torch.as_tensor(data)


def check_device(device, *, what=None, fix="use device='cpu'"):
    """``device`` as a ``torch.device``, refusing CUDA or MPS where there is none.

    Parameters
    ----------
    device : str or torch.device
    what : str or None, default=None
        How the device came to be asked for, opening the message (default:
        ``"device='cuda'"``).
    fix : str, default="use device='cpu'"
        The remedy, closing the message.
    """
    import torch

    try:
        device = torch.device(device)
    except (RuntimeError, TypeError):
        raise ValueError(
            f"device={device!r} is not a torch device (e.g. 'cpu', 'cuda', 'cuda:1')."
        ) from None
    what = what or f"device={str(device)!r}"
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"{what} but CUDA is not available on this machine; {fix}.")
    if device.type == "cuda" and (device.index or 0) >= torch.cuda.device_count():
        raise ValueError(
            f"{what} but this machine has {torch.cuda.device_count()} CUDA "
            f"device(s); {fix}."
        )
    if device.type == "mps" and not torch.backends.mps.is_available():
        raise ValueError(f"{what} but MPS is not available on this machine; {fix}.")
    return device


def select_inliers(X, y, *, estimator_name):
    """Keep the samples that ``y`` labels as inliers (+1) when it is given.

    Detectors assume clean training data, so with labels in scikit-learn's
    outlier convention (+1 inlier, -1 outlier) the -1 samples are left out.
    Labels in any other encoding are ignored with a warning: in particular
    ``{0, 1}`` and booleans are the 1 = anomaly convention (ADBench, MVTec),
    which fit does not read (the rule of :mod:`skanomaly.labels`).
    """
    if y is None:
        return X
    y = np.asarray(y)
    if y.ndim != 1 or y.shape[0] != X.shape[0]:
        raise ValueError(
            f"y must be a 1-D array with one label per sample ({X.shape[0]}); "
            f"got shape {y.shape}."
        )
    inliers = _fit_inliers(y, estimator_name=estimator_name, stacklevel=3)
    return X if inliers is None else X[inliers]
