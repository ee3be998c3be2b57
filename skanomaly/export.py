"""Export fitted detectors to ONNX, with a model card that carries the threshold.

:func:`export_onnx` writes two files: ``model.onnx``, one graph from the raw
input to the anomaly score (and the anomaly map, for detectors that have
maps), and ``model.onnx.json``, the model card a consumer needs to apply the
same threshold: input shape and dtype, output meaning, ``offset_``, the
detector's name and parameters, the skanomaly version, and the calibration
(scheme, number of samples and their anomaly scores) from which a consumer
computes the conformal p-values of ``conformal_p_values``.

A detector is exportable when its tags declare ``onnx_export``
(:class:`~skanomaly.DetectorTags`): its scoring is one forward pass, and its
``_onnx_module()`` returns the torch module that computes it. The graph
takes images of the dtype of ``fit`` (``image_dtype_``) in the value range of
``fit`` (``image_value_range_``), and includes the input scaling the detector
applies (uint8 images read as value / 255, the training statistics); tabular
rows run in float64, as in ``score_samples``, images in float32.
"""

import datetime
import json
from pathlib import Path

import numpy as np
from sklearn.utils.validation import check_is_fitted

from .detectors.base import get_detector_tags
from .registry import registered_name

__all__ = ["export_onnx", "model_card_path"]

INPUT_NAME = "input"
SCORE_NAME = "anomaly_score"
MAP_NAME = "anomaly_map"
CARD_FORMAT = "skanomaly-onnx-model-card"
CARD_VERSION = 1
# the model card also travels inside the .onnx file, under this metadata key
CARD_METADATA_KEY = "skanomaly_model_card"

_INSTALL_HINT = "pip install 'skanomaly[onnx]'"


def model_card_path(path):
    """The model card written beside the ONNX file ``path``: ``<path>.json``.

    Parameters
    ----------
    path : str or path-like

    Returns
    -------
    card : pathlib.Path

    Examples
    --------
    >>> from skanomaly.export import model_card_path
    >>> model_card_path("models/digits.onnx").as_posix()
    'models/digits.onnx.json'
    """
    path = Path(path)
    return path.with_name(path.name + ".json")


def export_onnx(detector, path, *, force=False, calibration_scores=True):
    """Export a fitted detector to an ONNX file and a model card beside it.

    The graph takes the raw input, with a dynamic batch size: images of the
    training shape ``(batch, channels, height, width)`` and of the dtype the
    detector was fitted on (``image_dtype_``), read as ``score_samples``
    reads them (``uint8`` as value / 255, other dtypes as their values, in
    the range ``image_value_range_`` of ``fit``, which the card states), or
    float64 rows ``(batch, n_features)`` in the training column order. It
    returns ``anomaly_score`` of shape ``(batch,)``, ``-score_samples(X)``
    (higher = more anomalous), and, for images of detectors with anomaly maps,
    ``anomaly_map`` of shape ``(batch, height, width)``, as
    ``anomaly_map(X)``. A sample is an anomaly (``predict`` gives -1) when
    ``anomaly_score > -offset_``; the model card (``<path>.json``, also
    stored in the ONNX file's metadata) records that threshold, and the
    calibration it came from: ``card["calibration"]`` holds the scheme
    (``calibration_``), the number of calibration samples and their
    ``anomaly_scores`` (``-calibration_scores_``, sorted ascending), so that
    the conformal p-value of an output score ``s`` is
    ``(1 + #{anomaly_scores >= s}) / (n_samples + 1)``, as
    ``conformal_p_values`` gives it (with ``calibration_confidence``,
    ``card["calibration"]["confidence"]``, the Beta bound of
    :func:`skanomaly.conformal.rank_levels` at that rank). For a model
    without calibration scores (saved before them, or a plugin)
    ``card["calibration"]`` is None.

    Parameters
    ----------
    detector : fitted detector
        A detector whose tags declare ``onnx_export``.
    path : str or path-like
        The ONNX file to write (conventionally ``*.onnx``).
    force : bool, default=False
        Overwrite ``path`` and its model card if they exist.
    calibration_scores : bool, default=True
        Write the calibration scores into the card (at most 5,000 numbers);
        False leaves them out, keeping the scheme and their number.

    Returns
    -------
    card : dict
        The model card, as written to ``model_card_path(path)``.

    Raises
    ------
    sklearn.exceptions.NotFittedError
        If the detector is not fitted.
    ValueError
        If the detector cannot be exported (its scoring is not one forward
        pass, e.g. AnoGAN's per-sample latent search), or was fitted on
        images of a dtype that torch has no tensors of.
    FileExistsError
        If ``path`` or its model card exists and ``force`` is False.
    ImportError
        If onnx or onnxscript is not installed (``pip install
        'skanomaly[onnx]'``).

    Notes
    -----
    Nothing is written unless the export succeeds; both files are written
    through temporary files. Where ``score_samples`` replaces a non-finite
    score by the lowest float (with a warning), the graph returns it as it
    is. The graph does not check the input's value range as
    ``score_samples`` does: images of another range than the card's
    ``input.value_range`` give wrong scores.

    Examples
    --------
    >>> import tempfile
    >>> import numpy as np
    >>> import onnxruntime
    >>> from skanomaly import Mahalanobis, export_onnx
    >>> X = np.random.default_rng(0).normal(size=(100, 3))
    >>> detector = Mahalanobis().fit(X)
    >>> path = tempfile.mkdtemp() + "/gaussian.onnx"
    >>> card = export_onnx(detector, path)
    >>> card["input"]["dtype"], card["input"]["shape"]
    ('float64', ['batch', 3])
    >>> session = onnxruntime.InferenceSession(path)
    >>> (score,) = session.run(None, {"input": X[:4]})
    >>> np.allclose(score, -detector.score_samples(X[:4]))
    True
    >>> bool(np.all((score > card["threshold"]["anomaly_score"])
    ...              == (detector.predict(X[:4]) == -1)))
    True
    >>> calibration = card["calibration"]
    >>> cal = np.array(calibration["anomaly_scores"])
    >>> p = (1 + (cal >= score[:, None]).sum(axis=1)) / (calibration["n_samples"] + 1)
    >>> bool(np.allclose(p, detector.conformal_p_values(X[:4])))
    True
    """
    from .persistence.format import write_atomically

    check_is_fitted(detector, "offset_")
    # the threshold it writes belongs to the fitted score
    check_scoring = getattr(detector, "_check_scoring_setting", None)
    if check_scoring is not None:
        check_scoring()
    name = type(detector).__name__
    if not get_detector_tags(detector).onnx_export:
        raise ValueError(
            f"{name} cannot be exported to ONNX: its tags do not declare "
            "onnx_export. Export needs scoring that is one forward pass of a "
            "network; a per-sample search (such as AnoGAN's latent search) "
            "is not."
        )
    path = Path(path)
    card_path = model_card_path(path)
    _check_destination(path, card_path, force=force)
    example = _example_input(detector)
    module = _fitted_reading(detector._onnx_module().eval())
    model = _export_module(module, example, name)
    card = _model_card(detector, model, path, calibration_scores=calibration_scores)
    text = json.dumps(card, indent=2, allow_nan=False)
    entry = model.metadata_props.add()
    entry.key, entry.value = CARD_METADATA_KEY, text
    write_atomically(path, model.SerializeToString())
    write_atomically(card_path, (text + "\n").encode())
    return card


def _check_destination(path, card_path, *, force):
    if not path.parent.is_dir():
        raise FileNotFoundError(f"Output folder {str(path.parent)!r} does not exist.")
    for target in (path, card_path):
        if target.is_dir():
            raise IsADirectoryError(f"{str(target)!r} is a folder, not a file.")
        if target.exists() and not force:
            raise FileExistsError(
                f"{str(target)!r} exists; pass force=True (--force on the "
                "command line) to overwrite it."
            )


def _example_input(detector):
    """A batch of two zero samples of the graph's input type.

    Images come in the dtype of ``fit``: the graph reads them as
    ``score_samples`` does in the value range of ``fit``, where a uint8
    graph would read images fitted as 0-255 values as value / 255.
    """
    import torch

    shape = detector.image_shape_
    if shape is None:
        return torch.zeros((2, detector.n_features_in_), dtype=torch.float64)
    dtype = np.dtype(getattr(detector, "image_dtype_", None) or np.uint8)
    try:
        torch_dtype = torch.from_numpy(np.zeros(0, dtype=dtype)).dtype
    except TypeError:
        raise ValueError(
            f"{type(detector).__name__} was fitted on {dtype} images, which "
            "torch has no tensors of, so no graph can take them; fit on uint8 "
            "or float32 images to export."
        ) from None
    return torch.zeros((2, *shape), dtype=torch_dtype)


def _fitted_reading(module):
    """``module`` after the cast of ``score_samples``: the graph's whole reading.

    ``score_samples`` keeps uint8 and float32/float64 images and makes other
    dtypes (int64...) float32 (``check_array``) before the detector sees
    them; the detector's module expects them so.
    """
    import torch

    class FittedReading(torch.nn.Module):
        def __init__(self, module):
            super().__init__()
            self.module = module

        def forward(self, x):
            if x.dtype not in (torch.uint8, torch.float32, torch.float64):
                x = x.to(torch.float32)
            return self.module(x)

    return FittedReading(module).eval()


def _export_module(module, example, name):
    """The ONNX ModelProto of ``module`` with a dynamic batch dimension."""
    import torch

    try:
        import onnx  # noqa: F401
        import onnxscript  # noqa: F401
    except ImportError as exc:
        raise ImportError(
            f"ONNX export needs onnx and onnxscript ({exc.name} is missing): "
            f"{_INSTALL_HINT}."
        ) from None
    with torch.inference_mode():
        outputs = module(example)
    n_outputs = len(outputs) if isinstance(outputs, tuple) else 1
    translations = _float64_translations() if example.is_floating_point() else None
    try:
        program = torch.onnx.export(
            module,
            (example,),
            None,
            dynamo=True,
            input_names=[INPUT_NAME],
            output_names=[SCORE_NAME, MAP_NAME][:n_outputs],
            dynamic_shapes=({0: "batch"},),
            custom_translation_table=translations,
            verbose=False,
        )
    except Exception as exc:
        message = " ".join(str(exc).split())[:300]
        raise RuntimeError(
            f"ONNX export of {name} failed ({type(exc).__name__}: {message})."
        ) from exc
    return program.model_proto


def _float64_translations():
    """ONNX Runtime has no float64 LeakyRelu: the same values with Where."""
    import torch
    from onnxscript import opset18 as op

    def leaky_relu(x, negative_slope: float = 0.01):
        zero = op.CastLike(0.0, x)
        return op.Where(
            op.Greater(x, zero), x, op.Mul(x, op.CastLike(negative_slope, x))
        )

    return {torch.ops.aten.leaky_relu.default: leaky_relu}


def _value_info(value):
    """(numpy dtype name, shape with named dynamic dimensions) of a graph value."""
    from onnx.helper import tensor_dtype_to_np_dtype

    tensor = value.type.tensor_type
    dims = [d.dim_param or d.dim_value for d in tensor.shape.dim]
    return tensor_dtype_to_np_dtype(tensor.elem_type).name, dims


def _jsonable(value):
    if isinstance(value, (bool, int, float, str)) or value is None:
        return value
    if isinstance(value, (tuple, list)):
        return [_jsonable(item) for item in value]
    if isinstance(value, dict):
        return {str(key): _jsonable(item) for key, item in value.items()}
    if isinstance(value, np.generic):
        return value.item()
    return repr(value)


def _calibration_card(detector, *, with_scores):
    """The card's calibration entry; None without calibration scores."""
    scores = getattr(detector, "calibration_scores_", None)
    if scores is None:
        return None
    confidence = getattr(detector, "calibration_confidence", None)
    if confidence is None:
        p_value = (
            "the conformal p-value of being normal of an output anomaly_score s "
            "is (1 + number of anomaly_scores >= s) / (n_samples + 1), as "
            "conformal_p_values gives it"
        )
    else:
        p_value = (
            "with k = 1 + number of anomaly_scores >= s for an output "
            "anomaly_score s, the p-value of being normal is the "
            f"{confidence:g} quantile of Beta(k, n_samples + 1 - k) (1 when "
            "k = n_samples + 1), as conformal_p_values gives it"
        )
    entry = {
        "scheme": getattr(detector, "calibration_", None),
        "n_samples": len(scores),
        "confidence": confidence,
        "p_value": p_value
        + (
            ": small = unlike the calibration samples; with a float "
            "contamination c, a sample is an anomaly exactly when p <= c (unless "
            "the scheme is 'training', whose threshold is a percentile of the "
            "training scores)."
        ),
    }
    if with_scores:
        # anomaly scores, as the graph outputs them, sorted ascending
        entry["anomaly_scores"] = [float(-score) for score in scores[::-1]]
    return entry


def _model_card(detector, model, path, *, calibration_scores=True):
    from . import __version__

    cls = type(detector)
    (graph_input,) = model.graph.input
    input_dtype, input_shape = _value_info(graph_input)
    images = detector.image_shape_ is not None
    value_range = getattr(detector, "image_value_range_", None) if images else None
    if images:
        layout = _image_layout(input_dtype, value_range)
    else:
        layout = "float64 rows (batch, n_features), columns in the training order."
    meanings = {
        SCORE_NAME: "anomaly score, higher = more anomalous: -score_samples(X).",
        MAP_NAME: "per-pixel anomaly map, higher = more anomalous: anomaly_map(X).",
    }
    outputs = []
    for value in model.graph.output:
        dtype, shape = _value_info(value)
        outputs.append(
            {
                "name": value.name,
                "dtype": dtype,
                "shape": shape,
                "meaning": meanings[value.name],
            }
        )
    offset = float(detector.offset_)
    card = {
        "format": CARD_FORMAT,
        "format_version": CARD_VERSION,
        "skanomaly_version": __version__,
        "created": datetime.datetime.now(datetime.timezone.utc).isoformat(
            timespec="seconds"
        ),
        "onnx_file": path.name,
        "opset": max(entry.version for entry in model.opset_import if not entry.domain),
        "detector": {
            "name": registered_name(cls),
            "class": f"{cls.__module__}.{cls.__qualname__}",
            "params": _jsonable(detector.get_params(deep=False)),
        },
        "input": {
            "name": graph_input.name,
            "dtype": input_dtype,
            "shape": input_shape,
            "value_range": None if value_range is None else list(value_range),
            "layout": layout,
        },
        "outputs": outputs,
        "threshold": {
            "offset_": offset,
            "anomaly_score": -offset,
            "contamination": _jsonable(getattr(detector, "contamination", None)),
            "rule": (
                "a sample is an anomaly (predict = -1) when anomaly_score > "
                "threshold.anomaly_score, i.e. when decision_function = "
                "-anomaly_score - offset_ < 0; otherwise normal (+1)."
            ),
        },
        "score_orientation": (
            "anomaly_score = -score_samples(X): higher = more anomalous; "
            "score_samples = -anomaly_score (higher = more normal); "
            "decision_function = -anomaly_score - offset_."
        ),
        "calibration": _calibration_card(detector, with_scores=calibration_scores),
    }
    names = getattr(detector, "feature_names_in_", None)
    if names is not None and not images:
        card["input"]["feature_names"] = [str(name) for name in names]
    return card


def _image_layout(dtype, value_range):
    """What the card says of the graph's image input (dtype and value range)."""
    text = (
        f"{dtype} images, channels first (batch, channels, height, width), of the "
        "training size, as in fit: "
    )
    if dtype == "uint8":
        return text + "unscaled, read as value / 255 (as score_samples reads them)."
    if value_range is None:
        return text + (
            "read as their values, which lay outside [0, 255] in fit "
            "(standardised, or beyond 8 bits): scale them as the training images "
            "were; uint8 images have no reading here."
        )
    low, high = value_range
    fix = (
        "uint8 images divided by 255"
        if high == 1.0
        else f"uint8 images cast with astype('{dtype}'), not divided by 255"
    )
    return text + (
        f"read as their values, which must lie in [{low:g}, {high:g}] ({fix}); "
        "the graph does not check the range, and images of another range get "
        "wrong scores."
    )
