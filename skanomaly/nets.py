"""skorch nets that train every torch detector, and what else touches skorch's insides.

- :class:`SelfSupervisedNet` trains a module whose loss compares the output
  with the input itself (autoencoders): there is no target ``y``.
- :class:`AdversarialNet` carries the two-optimizer GAN training step that all
  GAN detectors share. A detector supplies the generator-side ``module``, a
  ``discriminator`` and a ``criterion`` implementing
  :class:`~skanomaly.nn.gan.AdversarialLoss`: ``discriminator_loss(output,
  X, discriminator)`` and ``generator_loss(output, X, discriminator)``,
  where ``output`` is whatever ``module(X)`` returns.

Both read their minibatches with :class:`TensorBatchIterator`, which slices
one tensor per batch instead of collating samples one by one.

:func:`net_modules`, :func:`evaluation` and :func:`initialize_for_inference`
are the only places in skanomaly that use skorch's private attributes (its
lists of modules and its initialisation steps); the rest goes through them.
"""

import math
import signal
import threading
from contextlib import contextmanager

import torch
from skorch import NeuralNet
from skorch.callbacks import Callback, PassthroughScoring
from skorch.dataset import Dataset, unpack_data
from skorch.utils import to_tensor

from ._validation import as_tensor
from .nn.gan import AdversarialLoss

__all__ = [
    "AdversarialNet",
    "SelfSupervisedNet",
    "TensorBatchIterator",
    "WeightAverage",
    "evaluation",
    "initialize_for_inference",
    "input_tensor",
    "net_modules",
    "torch_random_state",
]


def input_tensor(data):
    """Input data as a tensor: :func:`skanomaly._validation.as_tensor`.

    Shares memory with read-only arrays quietly (a DataFrame's under pandas'
    copy-on-write, memory maps: nothing here writes to its input) and copies
    only views with negative strides (``X[::-1]``), which torch refuses.
    """
    return as_tensor(data)


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
        self.data = input_tensor(data)
        self.batch_size = int(batch_size)
        self.shuffle = shuffle

    @staticmethod
    def samples_used(n_samples, batch_size, shuffle):
        """Samples an epoch goes through (a lone last one is skipped when shuffling)."""
        if shuffle and n_samples > 1 and n_samples % batch_size == 1:
            return n_samples - 1
        return n_samples

    def _n_used(self):
        return self.samples_used(len(self.data), self.batch_size, self.shuffle)

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


def net_modules(net):
    """Every initialised module and criterion of a skorch net, by name.

    Parameters
    ----------
    net : skorch.NeuralNet
        An initialised net.

    Returns
    -------
    modules : dict of str to torch.nn.Module
        ``{'module': net.module_, 'criterion': net.criterion_, ...}``, with
        the extra modules of custom nets (``AdversarialNet``'s
        ``discriminator``).
    """
    modules = {}
    for name in [*net._modules, *net._criteria]:
        module = getattr(net, f"{name}_", None)
        if isinstance(module, torch.nn.Module):
            modules[name] = module
    return modules


@contextmanager
def evaluation(net, dtype=None):
    """Put every module of ``net`` in evaluation mode; optionally run it in ``dtype``.

    The modules stay in evaluation mode after the block (``fit`` switches
    them back to training). With ``dtype`` (e.g. ``torch.float64``) their
    floating-point weights are converted inside the block and converted back
    after it; float32 to float64 and back is exact, so the trained weights
    are unchanged. Enter it outside ``torch.inference_mode``: weights
    converted inside inference mode could not be trained again.

    Parameters
    ----------
    net : skorch.NeuralNet
    dtype : torch.dtype or None, default=None
    """
    net._set_training(False)
    modules = list(net_modules(net).values())
    if dtype is None:
        yield net
        return
    before = [_floating_dtype(module) for module in modules]
    for module in modules:
        module.to(dtype)
    try:
        yield net
    finally:
        for module, original in zip(modules, before):
            if original is not None:
                module.to(original)


def _floating_dtype(module):
    for tensor in [*module.parameters(), *module.buffers()]:
        if tensor.is_floating_point():
            return tensor.dtype
    return None


# NeuralNet.initialize() without its optimizer step: scoring needs the
# modules only, and creating a torch optimizer imports torch._dynamo, which
# takes seconds.
_INFERENCE_INIT_STEPS = (
    "_initialize_virtual_params",
    "_initialize_callbacks",
    "_initialize_module",
    "_initialize_criterion",
    "_initialize_history",
)


def initialize_for_inference(net):
    """Initialise a skorch net's modules and criterion, but not its optimizers.

    For a net whose weights are about to be loaded (``skanomaly.load``): it
    can score and predict, and ``fit`` on its detector builds a new net.
    With a skorch that lacks these steps, the complete ``initialize()``.
    """
    if not all(callable(getattr(net, step, None)) for step in _INFERENCE_INIT_STEPS):
        net.initialize()
        return net
    for step in _INFERENCE_INIT_STEPS:
        getattr(net, step)()
    net.initialized_ = True
    return net


class WeightAverage(Callback):
    """Exponential moving average of a net's weights, used for evaluation.

    After every training batch the average of each parameter of every
    module of the net (for a GAN: the generator side and the discriminator)
    is updated; at the end of training the averages replace the weights.
    The decay at update ``t`` is
    ``min(decay, (1 + t) / (10 + t))`` (TensorFlow's ExponentialMovingAverage
    with ``num_updates``): a 0.999 average over a short run would otherwise
    be mostly the first, untrained weights, while long runs get the full
    ``decay``. Buffers (BatchNorm running statistics) are averages already
    and are kept.
    """

    def __init__(self, decay=0.999):
        self.decay = decay

    @staticmethod
    def _parameters(net):
        return [p for m in net_modules(net).values() for p in m.parameters()]

    def on_train_begin(self, net, **kwargs):
        self.n_updates_ = 0
        self.averages_ = [p.detach().clone() for p in self._parameters(net)]

    def on_batch_end(self, net, batch=None, training=None, **kwargs):
        if not training:
            return
        self.n_updates_ += 1
        decay = min(self.decay, (1 + self.n_updates_) / (10 + self.n_updates_))
        with torch.no_grad():
            for average, param in zip(self.averages_, self._parameters(net)):
                average.mul_(decay).add_(param, alpha=1.0 - decay)

    def on_train_end(self, net, **kwargs):
        if self.n_updates_:
            with torch.no_grad():
                for average, param in zip(self.averages_, self._parameters(net)):
                    param.copy_(average)
        del self.averages_


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


class _InterruptWatch:
    """Whether a SIGINT (Ctrl-C) arrived while it was installed."""

    def __init__(self):
        self.interrupted = False


@contextmanager
def _watching_interrupts():
    """Record a Ctrl-C, then handle it as before (KeyboardInterrupt).

    skorch's callbacks stop training by raising KeyboardInterrupt
    (``EarlyStopping``), so ``partial_fit`` swallows every one: a real
    Ctrl-C is told apart only by the signal. Signal handlers live in the
    main thread; elsewhere (worker threads) nothing is watched.
    """
    watch = _InterruptWatch()
    if threading.current_thread() is not threading.main_thread():
        yield watch
        return
    previous = signal.getsignal(signal.SIGINT)

    def record(signum, frame):
        watch.interrupted = True
        if callable(previous):
            return previous(signum, frame)
        if previous != signal.SIG_IGN:
            raise KeyboardInterrupt

    signal.signal(signal.SIGINT, record)
    try:
        yield watch
    finally:
        signal.signal(signal.SIGINT, previous)


class _InterruptibleNet(NeuralNet):
    """A net whose training Ctrl-C stops with a KeyboardInterrupt.

    skorch's ``partial_fit`` catches KeyboardInterrupt (its callbacks raise
    one to stop early) and returns the net half-trained, so a detector would
    calibrate and return it as if fitted (and the CLI save it). After a
    Ctrl-C the interrupt reaches the caller, and the detector's ``fit``
    restores its state before it; early stopping stays as it is.
    """

    def partial_fit(self, X, y=None, classes=None, **fit_params):
        with _watching_interrupts() as watch:
            super().partial_fit(X, y, classes, **fit_params)
        if watch.interrupted:
            raise KeyboardInterrupt
        return self


class SelfSupervisedNet(_InterruptibleNet):
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


class AdversarialNet(_InterruptibleNet):
    """A skorch net with a discriminator and one update of each side per batch.

    Parameters
    ----------
    module : nn.Module class or instance
        Generator side (for GANomaly: encoder, decoder and second encoder).
        ``module(X)`` may return any tensor, tuple or dict.
    discriminator : nn.Module class or instance
        Set its init parameters with ``discriminator__<name>``.
    criterion : AdversarialLoss class or instance
        A :class:`~skanomaly.nn.gan.AdversarialLoss`: methods
        ``discriminator_loss(output, X, discriminator)`` and
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

    def initialize_criterion(self):
        super().initialize_criterion()
        if not isinstance(self.criterion_, AdversarialLoss):
            raise TypeError(
                f"AdversarialNet needs a criterion derived from "
                f"skanomaly.nn.gan.AdversarialLoss; got "
                f"{type(self.criterion_).__name__}."
            )
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
