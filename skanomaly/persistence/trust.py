"""Which classes a skanomaly file may name, found without importing what it says.

A file names its detector by registry name and class path, and each nested
estimator by class path. None of these paths is ever imported: the detector
comes from the registry (the entry points installed packages declare), and
a nested estimator must be a registered detector or one of the classes of
:data:`NESTED_ESTIMATORS`, imported from this table, not from the file.
``save`` asks the same questions (:func:`check_nested_estimator`), so that
it refuses to write what ``load`` would refuse to read.
"""

import functools
import importlib

from .codec import FormatError, Refused, _short

__all__ = [
    "NESTED_ESTIMATORS",
    "check_nested_estimator",
    "detector_class",
    "nested_estimator_class",
    "qualified_name",
]

# Estimators that a detector's fitted state may hold, beyond the registered
# detectors, as "module:attribute" to import them from: skanomaly's feature
# stages, and scikit-learn transformers whose fitted state is plain arrays.
NESTED_ESTIMATORS = (
    "skanomaly.features.pooled:TimmFeatures",
    "skanomaly.features.patches:PatchFeatures",
    "sklearn.preprocessing:StandardScaler",
    "sklearn.preprocessing:MinMaxScaler",
    "sklearn.preprocessing:MaxAbsScaler",
    "sklearn.preprocessing:RobustScaler",
    "sklearn.decomposition:PCA",
)


def qualified_name(cls):
    """``module.QualName`` of a class, as a file stores it."""
    return f"{cls.__module__}.{cls.__qualname__}"


def detector_class(name, class_path):
    """The registered detector ``name``, which must be the class the file names.

    Raises
    ------
    Refused
        If ``name`` is not registered here or is registered to another class.
    """
    from ..registry import detector_entry_points, get_detector

    if name not in detector_entry_points():
        known = ", ".join(detector_entry_points()) or "none"
        raise Refused(
            f"it holds a {_short(name)} detector, which is not registered here (known "
            f"detectors: {known}); install the package that provides it"
        )
    cls = get_detector(name)
    if qualified_name(cls) != class_path:
        raise Refused(
            f"it holds a {name!r} detector of class {_short(class_path)}, but "
            f"{name!r} is {qualified_name(cls)!r} here; refusing to load it into "
            "another class"
        )
    return cls


@functools.cache
def _allowed_nested_classes():
    classes = {}
    for target in NESTED_ESTIMATORS:
        module, _, attr = target.partition(":")
        cls = getattr(importlib.import_module(module), attr)
        classes[qualified_name(cls)] = cls
    return classes


def _registered_class(path):
    """The registered detector whose class path is ``path``, or None.

    Only detectors whose entry point names a class of that name are imported
    to compare (under their own or a re-exported path): a file cannot make
    every plugin load.
    """
    from ..registry import detector_entry_points, get_detector

    def class_name(target):
        return target.replace(":", ".").rpartition(".")[2].strip()

    for name, entry_point in detector_entry_points().items():
        if class_name(entry_point.value) != class_name(path):
            continue
        try:
            cls = get_detector(name)
        except ValueError:  # a broken plugin
            continue
        if qualified_name(cls) == path:
            return cls
    return None


def nested_estimator_class(class_path):
    """The class of a nested estimator, from the allow-list only."""
    if not isinstance(class_path, str):
        raise FormatError("a nested estimator has no class path")
    cls = _allowed_nested_classes().get(class_path) or _registered_class(class_path)
    if cls is None:
        raise FormatError(
            f"it holds a nested estimator of class {class_path[:100]!r}, which is "
            "neither a registered detector nor an estimator the format allows"
        )
    return cls


def check_nested_estimator(estimator, where):
    """Refuse to save a nested estimator that loading would refuse.

    Raises
    ------
    ValueError
        If the class of ``estimator`` is neither a registered detector nor
        one of :data:`NESTED_ESTIMATORS`.
    """
    path = qualified_name(type(estimator))
    try:
        allowed = nested_estimator_class(path) is type(estimator)
    except FormatError:
        allowed = False
    if not allowed:
        raise ValueError(
            f"Cannot save: {where} holds a {path}, which a skanomaly file cannot "
            "hold (loading only rebuilds registered detectors and "
            f"{', '.join(t.replace(':', '.') for t in NESTED_ESTIMATORS)}). Keep "
            "its fitted arrays instead (with _get_persistent_state), or use "
            "pickle/joblib (trusted files only)."
        )
