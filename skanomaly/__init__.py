"""skanomaly: generative and deep-feature anomaly detectors for scikit-learn.

Names are imported lazily, on first use, so that ``import skanomaly`` stays
cheap and a missing optional piece never breaks the others. The detector
classes (``skanomaly.AutoEncoder`` ...) come from the registry: the built-in
entry points skanomaly declares (in its ``pyproject.toml``, read from there
in a source checkout and from the installed metadata otherwise) are the one
list of them.
"""

import importlib

from .registry import (
    builtin_detector_classes,
    get_detector,
    list_detectors,
    make_detector,
    refresh_registry,
)

__version__ = "0.1.0.dev0"

# public names that are not detectors -> module that defines them
_LAZY = {
    "BaseDetector": "skanomaly.detectors.base",
    "DetectorTags": "skanomaly.detectors.base",
    "TimmFeatures": "skanomaly.features.pooled",
    "PatchFeatures": "skanomaly.features.patches",
    "export_onnx": "skanomaly.export",
    "report": "skanomaly.reporting",
    "save": "skanomaly.persistence",
    "load": "skanomaly.persistence",
}

__all__ = [
    "get_detector",
    "list_detectors",
    "make_detector",
    "refresh_registry",
    *_LAZY,
    *builtin_detector_classes(),
]


def __getattr__(name):
    module = _LAZY.get(name)
    if module is not None:
        value = getattr(importlib.import_module(module), name)
    elif name in builtin_detector_classes():
        value = get_detector(builtin_detector_classes()[name])
    else:
        raise AttributeError(f"module 'skanomaly' has no attribute {name!r}")
    globals()[name] = value
    return value


def __dir__():
    return sorted(set(globals()) | set(__all__))
