"""Feature stages: images to features of pretrained timm backbones.

- :mod:`~skanomaly.features.pooled`: :class:`TimmFeatures`, one globally
  average-pooled vector per backbone level (the features of
  :class:`~skanomaly.DeepMahalanobis`).
- :mod:`~skanomaly.features.patches`: :class:`PatchFeatures`, one vector per
  position of a grid (the features of :class:`~skanomaly.PaDiM` and
  :class:`~skanomaly.PatchCore`).
"""
