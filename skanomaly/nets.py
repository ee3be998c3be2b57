"""skorch nets that train every torch detector.

- :class:`SelfSupervisedNet` trains a module whose loss compares the output
  with the input itself (autoencoders): there is no target ``y``.
- :class:`AdversarialNet` carries the two-optimizer GAN training step that all
  GAN detectors share. A detector supplies the generator-side ``module``, a
  ``discriminator`` and a ``criterion`` with two methods,
  ``discriminator_loss(output, X, discriminator)`` and
  ``generator_loss(output, X, discriminator)``, where ``output`` is whatever
  ``module(X)`` returns.

Both read their minibatches with :class:`TensorBatchIterator`, which slices
one tensor per batch instead of collating samples one by one.
"""

import math
from contextlib import contextmanager

import torch
from skorch import NeuralNet
from skorch.callbacks import PassthroughScoring
from skorch.dataset import Dataset, unpack_data
from skorch.utils import to_tensor

__all__ = [
    "AdversarialNet",
    "SelfSupervisedNet",
    "TensorBatchIterator",
    "torch_random_state",
]


class TensorBatchIterator:
    """Minibatches of an in-memory array, one tensor slice per batch.

    Used as skorch's ``iterator_train``/``iterator_valid``: it takes the
    dataset and ``batch_size``/``shuffle`` like a ``DataLoader`` but indexes
    the whole array at once per batch, avoiding a Python call per sample.
    Shuffling draws from torch's global generator, so it follows
    ``torch.manual_seed``. When shuffling would leave a final batch of one
    sample (which BatchNorm cannot train on), that sample is skipped for the
    epoch; it is reshuffled into a full batch in the next one.

    Parameters
    ----------
    dataset : skorch Dataset, tensor or ndarray
    batch_size : int
    shuffle : bool, default=False
    """

    def __init__(self, dataset, batch_size, shuffle=False, **_ignored):
        data = dataset.X if isinstance(dataset, Dataset) else dataset
        self.data = torch.as_tensor(data)
        self.batch_size = int(batch_size)
        self.shuffle = shuffle

    def _n_used(self):
        n = len(self.data)
        if self.shuffle and n > 1 and n % self.batch_size == 1:
            return n - 1
        return n

    def __len__(self):
        return math.ceil(self._n_used() / self.batch_size)

    def __iter__(self):
        n = len(self.data)
        order = torch.randperm(n) if self.shuffle else None
        for start in range(0, self._n_used(), self.batch_size):
            stop = min(start + self.batch_size, self._n_used())
            if order is None:
                yield self.data[start:stop], None
            else:
                yield self.data[order[start:stop]], None


@contextmanager
def torch_random_state(seed, device="cpu"):
    """Seed torch's global generators inside the block, restoring them after.

    Training reads torch's global generators (initialisation, shuffling,
    noise); forking them keeps ``random_state`` deterministic without
    changing the caller's random stream.
    """
    device = torch.device(device)
    devices = []
    if device.type == "cuda":
        devices = [device.index if device.index is not None else 0]
    with torch.random.fork_rng(devices=devices):
        torch.manual_seed(seed)
        yield


def _check_finite(loss, name, net):
    if not torch.isfinite(loss):
        raise FloatingPointError(
            f"The {name} loss became {loss.item()} in epoch {len(net.history)}; "
            "training stopped. Lower the learning rate or scale the input."
        )


def _detached(output):
    if isinstance(output, torch.Tensor):
        return output.detach()
    if isinstance(output, dict):
        return {key: _detached(value) for key, value in output.items()}
    if isinstance(output, (tuple, list)):
        return type(output)(_detached(value) for value in output)
    return output


class SelfSupervisedNet(NeuralNet):
    """A skorch net whose criterion compares the module output with the input.

    ``criterion(y_pred, X)`` is called with the module's output and the input
    batch; ``y`` is not used. A non-finite loss stops training with an error
    naming the epoch.
    """

    def get_loss(self, y_pred, y_true, X=None, training=False):
        return self.criterion_(y_pred, to_tensor(X, device=self.device))

    def train_step_single(self, batch, **fit_params):
        step = super().train_step_single(batch, **fit_params)
        _check_finite(step["loss"], "training", self)
        return step


class AdversarialNet(NeuralNet):
    """A skorch net with a discriminator and one update of each side per batch.

    Parameters
    ----------
    module : nn.Module class or instance
        Generator side (for GANomaly: encoder, decoder and second encoder).
        ``module(X)`` may return any tensor, tuple or dict.
    discriminator : nn.Module class or instance
        Set its init parameters with ``discriminator__<name>``.
    criterion : nn.Module class or instance
        With methods ``discriminator_loss(output, X, discriminator)`` and
        ``generator_loss(output, X, discriminator)`` returning scalars. Loss
        weights are its init parameters (``criterion__w_con`` ...).
    optimizer_d : torch optimizer class, default=torch.optim.Adam
        Optimizer of the discriminator; ``optimizer_d__lr`` etc. set its
        parameters (the learning rate defaults to ``lr``).
    reinit_discriminator_below : float or None, default=None
        Re-initialise the discriminator when its loss falls below this
        value (GANomaly's authors use 1e-5), by its ``reinitialize()``
        method when it has one, else each layer's ``reset_parameters()``.
    **kwargs
        Everything :class:`skorch.NeuralNet` takes.

    Notes
    -----
    Per batch: the generator side runs once; the discriminator is updated on
    its detached output; then the generator side is updated against the
    updated discriminator (the DCGAN order). ``history`` records the
    generator loss as ``train_loss`` and the discriminator loss as
    ``train_loss_d``, per batch and per epoch.
    """

    def __init__(
        self,
        module,
        discriminator,
        *args,
        optimizer_d=torch.optim.Adam,
        reinit_discriminator_below=None,
        **kwargs,
    ):
        self.discriminator = discriminator
        self.optimizer_d = optimizer_d
        self.reinit_discriminator_below = reinit_discriminator_below
        super().__init__(module, *args, **kwargs)

    @property
    def _default_callbacks(self):
        return [
            *super()._default_callbacks[:2],
            (
                "train_loss_d",
                PassthroughScoring(name="train_loss_d", on_train=True),
            ),
            *super()._default_callbacks[2:],
        ]

    def initialize_module(self):
        super().initialize_module()
        params = self.get_params_for("discriminator")
        self.discriminator_ = self.initialized_instance(self.discriminator, params)
        return self

    def initialize_optimizer(self, triggered_directly=None):
        for attr, prefix, module in [
            ("optimizer_", "optimizer", self.module_),
            ("optimizer_d_", "optimizer_d", self.discriminator_),
        ]:
            args, kwargs = self.get_params_for_optimizer(
                prefix, module.named_parameters()
            )
            kwargs.setdefault("lr", self.lr)
            setattr(self, attr, getattr(self, prefix)(*args, **kwargs))
        return self

    def train_step(self, batch, **fit_params):
        self._set_training(True)
        Xi, _ = unpack_data(batch)
        Xi = to_tensor(Xi, device=self.device)
        output = self.infer(Xi, **fit_params)

        self.optimizer_d_.zero_grad(set_to_none=True)
        loss_d = self.criterion_.discriminator_loss(
            _detached(output), Xi, self.discriminator_
        )
        _check_finite(loss_d, "discriminator", self)
        loss_d.backward()
        self.optimizer_d_.step()

        self.optimizer_.zero_grad(set_to_none=True)
        loss_g = self.criterion_.generator_loss(output, Xi, self.discriminator_)
        _check_finite(loss_g, "generator", self)
        loss_g.backward()
        self.notify(
            "on_grad_computed",
            named_parameters=list(self.module_.named_parameters()),
            batch=batch,
            training=True,
        )
        self.optimizer_.step()

        loss_d_value = loss_d.item()
        self.history.record_batch("train_loss_d", loss_d_value)
        if (
            self.reinit_discriminator_below is not None
            and loss_d_value < self.reinit_discriminator_below
        ):
            self._reinitialize_discriminator()
        return {"loss": loss_g.detach(), "y_pred": _detached(output)}

    def _reinitialize_discriminator(self):
        reinitialize = getattr(self.discriminator_, "reinitialize", None)
        if reinitialize is not None:
            reinitialize()
            return
        for layer in self.discriminator_.modules():
            if hasattr(layer, "reset_parameters"):
                layer.reset_parameters()

    def validation_step(self, batch, **fit_params):
        self._set_training(False)
        Xi, _ = unpack_data(batch)
        Xi = to_tensor(Xi, device=self.device)
        with torch.no_grad():
            output = self.infer(Xi, **fit_params)
            loss = self.criterion_.generator_loss(output, Xi, self.discriminator_)
        return {"loss": loss, "y_pred": output}
