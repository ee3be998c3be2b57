"""The detectors, one module each, and the bases they share.

- :mod:`~skanomaly.detectors.base`: :class:`BaseDetector`, the contract every
  detector follows (built-in or plugin), and :class:`DetectorTags`, what a
  detector declares about itself.
- :mod:`~skanomaly.detectors.torch_base`: :class:`BaseTorchDetector`, input
  scaling, seeding, the skorch net and batched scoring for trained detectors.
- :mod:`~skanomaly.detectors.gan_base`: :class:`BaseGANDetector`, the
  adversarial net and the parameters every GAN detector shares.
- :mod:`~skanomaly.detectors.patch_base`: :class:`BasePatchDetector`, maps
  and scores from patch-feature grids.
- one module per detector. Which ones is not listed here: the entry points
  in ``pyproject.toml`` are the one list, read by the registry
  (:mod:`skanomaly.registry`; ``skanomaly.list_detectors()``, ``skanomaly
  list``).

This package imports none of the detectors.
"""
