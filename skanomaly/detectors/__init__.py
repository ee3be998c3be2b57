"""The detectors, one module each, and the bases they share.

- :mod:`~skanomaly.detectors.base`: :class:`BaseDetector`, the contract every
  detector follows (built-in or plugin), and :class:`DetectorTags`, what a
  detector declares about itself.
- :mod:`~skanomaly.detectors.torch_base`: :class:`BaseTorchDetector`, input
  scaling, seeding, the skorch net and batched scoring for trained detectors.
- :mod:`~skanomaly.detectors.gan_base`: :class:`BaseGANDetector`, the
  adversarial net and the parameters every GAN detector shares.
- one module per detector: ``autoencoder``, ``vae``, ``anogan``, ``egbad``,
  ``ganomaly``, ``skipganomaly``, ``mahalanobis``, ``deep_mahalanobis``.

Detectors are found through the registry (:mod:`skanomaly.registry`); this
package imports none of them.
"""
