"""skanomaly: generative and deep-feature anomaly detectors for scikit-learn.

Detectors are imported lazily, on first use of their name, so that
``import skanomaly`` stays cheap and a missing optional piece never breaks
the others.
"""

import importlib

from .registry import get_detector, list_detectors, make_detector, refresh_registry

__version__ = "0.1.0.dev0"

# public name -> module that defines it
_LAZY = {
    "BaseDetector": "skanomaly.base",
    "AutoEncoder": "skanomaly.autoencoder",
    "VAE": "skanomaly.vae",
    "AnoGAN": "skanomaly.anogan",
    "EGBAD": "skanomaly.egbad",
    "GANomaly": "skanomaly.ganomaly",
    "SkipGANomaly": "skanomaly.skipganomaly",
    "Mahalanobis": "skanomaly.mahalanobis",
    "DeepMahalanobis": "skanomaly.deep_mahalanobis",
    "TimmFeatures": "skanomaly.timm_features",
    "save": "skanomaly.persistence",
    "load": "skanomaly.persistence",
}

__all__ = [
    "get_detector",
    "list_detectors",
    "make_detector",
    "refresh_registry",
    *_LAZY,
]


def __getattr__(name):
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'skanomaly' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


def __dir__():
    return sorted(set(globals()) | set(__all__))
