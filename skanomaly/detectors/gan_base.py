"""Parameters and net construction shared by the GAN detectors."""

from numbers import Integral, Real

import torch

from .._compat import Interval
from ..nets import AdversarialNet
from .torch_base import BaseTorchDetector

__all__ = ["BaseGANDetector"]


class BaseGANDetector(BaseTorchDetector):
    """Base for GAN detectors, trained by :class:`~skanomaly.nets.AdversarialNet`.

    Subclasses declare their own ``__init__`` (every loss weight and size a
    parameter) and implement ``_make_net`` with :meth:`_adversarial_net`,
    plus ``_score_batch`` (and ``_reconstruct`` for anomaly maps). Both
    optimizers are Adam with ``betas=(beta1, 0.999)``; the discriminator
    learning rate is ``lr_d`` when given, else ``lr``.
    """

    _parameter_constraints: dict = {
        **BaseTorchDetector._parameter_constraints,
        "latent_dim": [Interval(Integral, 1, None, closed="left")],
        "base_channels": [Interval(Integral, 1, None, closed="left")],
        "hidden_sizes": [tuple, list],
        "beta1": [Interval(Real, 0, 1, closed="left")],
        "lr_d": [Interval(Real, 0, None, closed="neither"), None],
    }

    def __skanomaly_tags__(self):
        tags = super().__skanomaly_tags__()
        tags.test_params = {
            "latent_dim": 4,
            "base_channels": 4,
            "hidden_sizes": (8,),
            "max_epochs": 2,
            "batch_size": 32,
        }
        return tags

    def _adversarial_net(
        self,
        module,
        discriminator,
        criterion,
        input_shape,
        reinit_discriminator_below=None,
        callbacks=(),
        **kwargs,
    ):
        """An AdversarialNet with this detector's optimizers and training settings.

        ``kwargs`` are skorch-style prefixed arguments (``module__*``,
        ``discriminator__*``, ``criterion__*``); ``input_shape`` and the
        sizes are passed to the module and the discriminator. ``callbacks``
        are the detector's own skorch callbacks (after the user's).
        """
        betas = (self.beta1, 0.999)
        return AdversarialNet(
            module,
            discriminator,
            criterion=criterion,
            optimizer=torch.optim.Adam,
            optimizer__betas=betas,
            optimizer_d=torch.optim.Adam,
            optimizer_d__betas=betas,
            optimizer_d__lr=self.lr if self.lr_d is None else self.lr_d,
            reinit_discriminator_below=reinit_discriminator_below,
            module__input_shape=input_shape,
            discriminator__input_shape=input_shape,
            discriminator__base_channels=self.base_channels,
            discriminator__hidden_sizes=tuple(self.hidden_sizes),
            **kwargs,
            **self._net_kwargs(callbacks),
        )
