"""Shared by every torch detector: scaling, seeding, training budget, scoring."""

import copy
import math
import warnings
from abc import abstractmethod
from numbers import Integral, Real

import numpy as np
import torch
from sklearn.exceptions import ConvergenceWarning
from sklearn.utils import check_random_state
from sklearn.utils.validation import check_is_fitted
from skorch.callbacks import Callback, EarlyStopping, ProgressBar
from skorch.dataset import Dataset
from skorch.helper import predefined_split

from .._compat import Interval, ListOf, StrOptions
from .._validation import check_device
from ..nets import (
    TensorBatchIterator,
    evaluation,
    input_tensor,
    net_modules,
    torch_random_state,
)
from ..nn.complexity import complexity_corrected, detail_energy
from .base import BaseDetector

__all__ = ["BaseTorchDetector", "TooFewStepsWarning", "training_plan"]

# the values of complexity_correction, for the detectors that have it
COMPLEXITY_CONSTRAINT = [
    StrOptions({"auto"}),
    Interval(Real, 0, None, closed="neither"),
    None,
]

# batch_size='auto': at least this many optimizer steps per epoch on small
# training sets, in batches of at least _AUTO_MIN_BATCH samples (the largest
# is each detector's _auto_max_batch)
_AUTO_STEPS_PER_EPOCH = 8
_AUTO_MIN_BATCH = 8
# Scoring batches when batch_size='auto' (memory stays bounded by it).
_AUTO_SCORING_BATCH = 256
# Fewer optimizer steps than this leave every trained detector here far from
# its quality (GANomaly's latent score ranks anomalies as normal below ~75).
_TOO_FEW_STEPS = 100
# score_scaling='standardized': each element's residual variance is shrunk
# this far towards the mean variance, so that elements that never vary in
# training (an image's empty border) cannot dominate a score. EGBAD on six
# MNIST/digit tasks: 0 -> mean AUROC 0.882, 0.1 -> 0.892, 0.3 -> 0.894,
# 0.5 -> 0.895; GANomaly within 0.001 at every value
# (benchmarks/RESULTS_defaults.md, "Residuals in units of their spread").
_RESIDUAL_SHRINKAGE = 0.3
# training samples whose residuals are computed at a time (bounded memory)
_RESIDUAL_CHUNK = 1024
# complexity_correction='auto' on images: the blur (in pixels) whose residual
# measures an image's detail. On 20 tuning tasks of 32 px images (digits,
# MNIST, faces, photo crops) sigma 1 / 2 gave the AutoEncoder a mean AUROC of
# 0.839 / 0.848 against 0.764 uncorrected; per-image variance instead, 0.840.
# Not a default: it lost on held-out tasks whose anomalies have more detail
# than the normal images (benchmarks/RESULTS_defaults.md, "fifth pass").
_COMPLEXITY_SIGMA = 2.0
# the energy floor: this fraction of the training images' median energy
_COMPLEXITY_FLOOR = 1e-3


class TooFewStepsWarning(UserWarning):
    """A detector was trained for too few optimizer steps to be reliable."""


def training_plan(
    n_samples, batch_size, max_epochs, min_steps, default_epochs, max_batch=64
):
    """Batch size, epochs and optimizer steps a torch detector trains with.

    Parameters
    ----------
    n_samples : int
        Training samples (after any validation split).
    batch_size : int or 'auto'
        'auto': ``clip(n_samples // 8, 8, max_batch)`` (at most
        ``n_samples``), so that small training sets get at least 8 steps an
        epoch.
    max_epochs : int or 'auto'
        'auto': ``default_epochs``, raised until training takes at least
        ``min_steps`` optimizer steps; an int is taken as it is.
    min_steps : int
    default_epochs : int
    max_batch : int, default=64
        Largest batch of ``batch_size='auto'``.

    Returns
    -------
    batch_size, epochs, steps : int
        ``steps`` counts the planned optimizer steps (without early stopping).

    Examples
    --------
    >>> from skanomaly.detectors.torch_base import training_plan
    >>> training_plan(60, "auto", "auto", min_steps=500, default_epochs=30)
    (8, 63, 504)
    >>> training_plan(50_000, "auto", "auto", min_steps=500, default_epochs=30)
    (64, 30, 23460)
    >>> training_plan(60, 64, 15, min_steps=500, default_epochs=30)
    (64, 15, 15)
    >>> training_plan(500, "auto", "auto", 200, 15, max_batch=32)
    (32, 15, 240)
    """
    if batch_size == "auto":
        per_epoch = n_samples // _AUTO_STEPS_PER_EPOCH
        batch_size = min(n_samples, max(_AUTO_MIN_BATCH, min(max_batch, per_epoch)))
    batch_size = max(1, int(batch_size))
    used = TensorBatchIterator.samples_used(n_samples, batch_size, shuffle=True)
    steps_per_epoch = math.ceil(used / batch_size)
    if max_epochs == "auto":
        epochs = max(default_epochs, math.ceil(min_steps / max(steps_per_epoch, 1)))
    else:
        epochs = int(max_epochs)
    return batch_size, epochs, epochs * steps_per_epoch


def _is_callback(item):
    """A skorch callback as skorch takes it: instance, class or (name, callback)."""
    if isinstance(item, tuple) and len(item) == 2 and isinstance(item[0], str):
        item = item[1]
    return isinstance(item, Callback) or (
        isinstance(item, type) and issubclass(item, Callback)
    )


# A training loss that ends more than this many times above its first batch's
# has diverged: a reconstruction loss ends below its first batch's, a GAN's
# generator loss may grow while its discriminator learns.
_DIVERGED_FACTOR = {False: 2.0, True: 10.0}  # by "has a discriminator"
# Epochs after which a reconstruction loss that has not decreased is a failure
# (a VAE's loss can rise for a few epochs while its KL term grows).
_MIN_EPOCHS_TO_DECREASE = 10


def _check_batch_norm_batches(detector, net):
    """Refuse batches of one sample for a net with 1-D batch normalisation.

    BatchNorm1d has no statistics of one row; torch fails at the first step
    with a message about "values per channel". A function, not a method:
    FastFlow borrows ``_train``.
    """
    if detector.batch_size_ > 1:
        return
    modules = [net.module_, getattr(net, "discriminator_", None)]
    if any(
        isinstance(layer, torch.nn.BatchNorm1d)
        for module in modules
        if module is not None
        for layer in module.modules()
    ):
        raise ValueError(
            f"{type(detector).__name__} trains batch normalisation on rows, which "
            "needs batches of at least 2 samples; got batch_size=1. Use a "
            "larger batch_size, or batch_norm=False where the detector has it."
        )


def _warn_if_diverged(detector, history):
    """Warn when training diverged although every loss stayed finite.

    Two signs, read from the net's history: the last epoch's loss far above
    the first batch's (what the untrained network gives), and, for nets
    without a discriminator, after ten epochs or more, not below the first
    batch's and the first epoch's (a GAN's generator loss need not
    decrease). Non-finite losses stop training with an error before this
    (``nets._check_finite``). None of the default fits of
    ``benchmarks/RESULTS_defaults.md`` warned; ``lr=1e3`` does
    (``tests/test_autoencoders.py``; ``benchmarks/divergence_digits.py``
    sweeps the learning rates).
    """
    try:
        first = float(history[0, "batches", 0, "train_loss"])
        first_epoch = float(history[0, "train_loss"])
        final = float(history[-1, "train_loss"])
        adversarial = "train_loss_d" in history[-1]
    except (KeyError, IndexError, TypeError):  # custom callbacks, no batches
        return
    loss = "generator loss" if adversarial else "training loss"
    params = detector.get_params(deep=False)
    rates = ", ".join(f"{k}={params[k]!r}" for k in ("lr", "lr_d") if k in params)
    if final > first + (_DIVERGED_FACTOR[adversarial] - 1) * abs(first):
        what = (
            f"diverged: its {loss} ended at {final:.3g}, far above the {first:.3g} "
            "of its first batch"
        )
        fix = f"Lower the learning rate ({rates}) or rescale the input"
    elif (
        not adversarial
        and len(history) >= _MIN_EPOCHS_TO_DECREASE
        and final >= max(first, first_epoch)
    ):
        start = max(first, first_epoch)
        what = (
            f"failed: its {loss} did not decrease in {len(history)} epochs "
            f"({start:.3g} at the start, {final:.3g} in the last epoch)"
        )
        fix = f"Try another learning rate ({rates}), usually a lower one"
    else:
        return
    warnings.warn(
        f"{type(detector).__name__} training {what}, so its scores are unlikely "
        f"to mean anything. {fix}.",
        ConvergenceWarning,
        stacklevel=4,
    )


def _check_finite_statistics(detector, X):
    """Refuse training data whose scaling statistics overflow float32."""
    bad = ~(np.isfinite(detector.input_center_) & np.isfinite(detector.input_scale_))
    if not bad.any():
        return
    if X.ndim == 2:
        column = int(np.flatnonzero(bad.reshape(-1))[0])
        what = f"column {column} (largest |value| {np.abs(X[:, column]).max():.3g})"
    else:
        what = f"the images (largest |value| {np.abs(X).max():.3g})"
    raise ValueError(
        f"{type(detector).__name__} cannot scale {what}: its mean or standard "
        "deviation is beyond float32's range (about 3.4e38). Rescale the data "
        "first (e.g. divide by a power of ten)."
    )


class BaseTorchDetector(BaseDetector):
    """Base for detectors trained with skorch (composition, not inheritance).

    The detector builds its skorch net in ``fit`` from its own parameters
    (``_make_net``) and keeps it as ``net_``; scoring runs the fitted module
    in evaluation mode over batches (``_score_batch``). Inputs are scaled
    with statistics of the training set: tabular features are standardised
    per column, images are mapped from their training range to [-1, 1]
    (the range of a tanh decoder).

    Subclasses implement ``_make_net(input_shape)`` and
    ``_score_batch(net, X_batch)`` (an anomaly score, higher = more
    anomalous, for a batch already on the net's device), and
    ``_reconstruct(net, X_batch)`` when they have anomaly maps.

    Scoring is then one forward pass from the raw input, so these detectors
    export to ONNX (``onnx_export`` tag): the exported graph runs the
    scaling, ``_score_batch`` and, for images with maps, the pixel error of
    ``anomaly_map``. A detector whose ``_score_batch`` is not a fixed
    forward pass (a per-sample search) sets the tag to False.

    Training budget (:func:`training_plan`): ``batch_size='auto'`` and
    ``max_epochs='auto'`` give small training sets enough optimizer steps
    (``min_steps``) while large ones train as before; the fitted
    ``batch_size_`` and ``n_epochs_`` say what was used, and
    ``net_.history`` records each epoch's batches. A fit of fewer than 100
    steps warns (:class:`TooFewStepsWarning`). ``early_stopping=True``
    holds out ``validation_fraction`` of the training inliers and stops
    when their loss has not improved for ``n_iter_no_change`` epochs,
    keeping the best epoch's weights.

    ``complexity_correction`` (the reconstruction detectors, ``_error_power``
    set): any model reconstructs a plain image (a blank or smooth patch, a
    blurred part) well, so a raw error ranks anomalies plainer than the
    normal images as the most normal. Serra et al. ("Input complexity and
    out-of-distribution detection with likelihood-based generative
    models", ICLR 2020) compare a model's score with a generic model's; here
    the score becomes ``log(error) - (p / 2) log(detail + floor)``, where
    ``detail`` is the mean squared difference between the scaled image and
    its Gaussian blur, ``p`` the power of the errors the score sums (2 or
    1), and ``complexity_floor_`` 1e-3 of the training images' median
    detail (1e-12 if they are constant). 'auto' is a 2-px blur on images,
    nothing on tabular data and on the VAE's likelihood scores; a float is
    the blur in pixels, at most the images' larger side. It hurts where the
    anomalies have more detail than the normal images, so it is off by
    default (measurements: the user guide, "Plain anomalies: the
    complexity correction"). Set it before ``fit``: the fitted blur
    (``complexity_sigma_``), the floor and the threshold belong together,
    so switching it on or to another blur afterwards raises when scoring;
    switched off, ``score_samples`` gives the raw error and the threshold
    is refused until a refit (``scoring_params_``), as for every parameter
    the score reads. Anomaly maps are never corrected.

    Tabular rows are scored in float64 (the weights are converted for the
    scoring and back, exactly), so that a row's score does not depend on
    how many rows are scored with it: float32 matrix products round
    differently for different batch shapes. Images are scored in float32,
    where the convolutions are what costs.
    """

    _parameter_constraints: dict = {
        **BaseDetector._parameter_constraints,
        "lr": [Interval(Real, 0, None, closed="neither")],
        "batch_size": [
            Interval(Integral, 1, None, closed="left"),
            StrOptions({"auto"}),
        ],
        "max_epochs": [
            Interval(Integral, 1, None, closed="left"),
            StrOptions({"auto"}),
        ],
        "min_steps": [Interval(Integral, 0, None, closed="left")],
        "early_stopping": ["boolean"],
        "validation_fraction": [Interval(Real, 0, 1, closed="neither")],
        "n_iter_no_change": [Interval(Integral, 1, None, closed="left")],
        "device": [str, torch.device],
        "random_state": ["random_state"],
        "verbose": ["verbose"],
        "callbacks": [
            ListOf(
                _is_callback,
                "a list of skorch callbacks (Callback instances or classes, or "
                "(name, callback) pairs)",
            ),
            None,
        ],
    }

    # The power of the errors a detector's score sums (2: squared, 1:
    # absolute), for complexity_correction; None: the detector has no such
    # parameter (its score is not a reconstruction error).
    _error_power = None

    # epochs of max_epochs='auto' on large training sets (the authors' count)
    _default_epochs = 30
    # largest batch of batch_size='auto'
    _auto_max_batch = 64

    @abstractmethod
    def _make_net(self, input_shape):
        """Return an uninitialised skorch net for inputs of ``input_shape``."""

    @abstractmethod
    def _score_batch(self, net, X_batch):
        """Anomaly scores (higher = more anomalous) of one batch tensor."""

    def __skanomaly_tags__(self):
        tags = super().__skanomaly_tags__()
        # uint8 images are scaled batch by batch (bounded memory)
        tags.keeps_uint8 = True
        tags.anomaly_maps = (
            type(self)._reconstruct is not BaseTorchDetector._reconstruct
        )
        tags.onnx_export = True
        # the size the image benchmarks train these networks at: small
        # enough for a CPU, large enough for a part's defects to show
        tags.input_size = (64, 64)
        return tags

    def _net_kwargs(self, callbacks=()):
        """skorch arguments every detector passes through unchanged.

        ``callbacks`` are the detector's own, run after the user's. The
        training budget (batch size, epochs, a validation split) is set by
        ``_fit`` on the net it builds.
        """
        all_callbacks = [*(self.callbacks or []), *callbacks]
        if self.verbose:
            all_callbacks.insert(0, ("progress_bar", ProgressBar()))
        return dict(
            lr=self.lr,
            device=self.device,
            train_split=None,
            verbose=int(self.verbose),
            callbacks=all_callbacks,
            iterator_train=TensorBatchIterator,
            iterator_train__shuffle=True,
            iterator_valid=TensorBatchIterator,
        )

    def _scoring_batch_size(self):
        size = self.batch_size
        if isinstance(size, str) and size == "auto":
            return _AUTO_SCORING_BATCH
        if isinstance(size, Integral) and not isinstance(size, bool) and size >= 1:
            return int(size)
        # fit validates it, but set_params after fit does not
        raise ValueError(
            f"{type(self).__name__} scores in batches of batch_size, which is "
            f"{size!r}: set it to a positive int or 'auto'."
        )

    def _fit(self, X):
        check_device(self.device)
        self._fit_scaling(X)
        X = self._scale_input(X)
        self._fit_complexity(X)
        self._train(lambda: self._make_net(tuple(X.shape[1:])), X)

    def _complexity_sigma(self):
        """The blur ``complexity_correction`` asks for now, or None.

        None also where the correction does not apply: tabular data with
        'auto', a score that is not an error (the VAE's likelihoods).
        """
        setting = getattr(self, "complexity_correction", None)
        if setting is None or self._error_power_in_use() is None:
            return None
        if setting == "auto":
            return None if self.image_shape_ is None else _COMPLEXITY_SIGMA
        return float(setting)

    def _error_power_in_use(self):
        """``_error_power``, or None where the score in use is no error."""
        return self._error_power

    def _fit_complexity(self, X):
        """``complexity_sigma_`` and ``complexity_floor_`` from the scaled
        training images ``X``.

        Explicit ``complexity_correction`` values that cannot apply (tabular
        data, a score that is not an error, a blur wider than the images)
        raise here, before training.
        """
        self.__dict__.pop("complexity_floor_", None)
        self.__dict__.pop("complexity_sigma_", None)
        setting = getattr(self, "complexity_correction", None)
        if self._error_power is None:  # a detector without the parameter
            return
        name = type(self).__name__
        if isinstance(setting, bool):  # a Real to the validation, not a blur
            raise ValueError(
                f"{name}: complexity_correction must be 'auto', a blur in pixels "
                f"(a float > 0) or None; got {setting!r}."
            )
        if setting not in (None, "auto"):
            if self.image_shape_ is None:
                raise ValueError(
                    f"{name}(complexity_correction={setting!r}) needs images "
                    "(n_samples, [channels,] height, width); for tabular data "
                    "use complexity_correction='auto' or None."
                )
            if self._error_power_in_use() is None:
                raise ValueError(
                    f"{name}(complexity_correction={setting!r}) corrects a "
                    "reconstruction error; the score in use is not one. Use "
                    "complexity_correction='auto' or None."
                )
            largest = max(self.image_shape_[-2:])
            if setting > largest:
                # the blur's padding grows with it: bounded memory
                raise ValueError(
                    f"{name}(complexity_correction={setting!r}): a blur of "
                    f"{setting} pixels is wider than the {self.image_shape_[-2]}x"
                    f"{self.image_shape_[-1]} images; use at most {largest}, "
                    "'auto' (2 pixels) or None."
                )
        sigma = self._complexity_sigma()
        self.complexity_sigma_ = sigma
        if sigma is None:
            return
        chunks = (
            torch.as_tensor(X[start : start + _RESIDUAL_CHUNK])
            for start in range(0, len(X), _RESIDUAL_CHUNK)
        )
        energy = np.concatenate(
            [detail_energy(chunk, sigma).double().numpy() for chunk in chunks]
        )
        typical = float(np.median(energy))
        # constant training images: any positive floor keeps scores finite
        self.complexity_floor_ = _COMPLEXITY_FLOOR * typical if typical > 0 else 1e-12

    def _fit_scaling(self, X):
        """``input_center_`` and ``input_scale_``: columns standardised, images
        mapped from their value range to [-1, 1]."""
        with np.errstate(over="ignore", invalid="ignore"):
            if X.ndim == 2:
                center = X.mean(axis=0, dtype=np.float64)
                scale = X.std(axis=0, dtype=np.float64)
            else:
                low, high = float(X.min()), float(X.max())
                if X.dtype == np.uint8:
                    low, high = low / 255.0, high / 255.0
                center = np.float64(high / 2 + low / 2)
                scale = np.float64(high / 2 - low / 2)
            scale = np.where(scale > 1e-12, scale, 1.0)
            self.input_center_ = np.asarray(center, dtype=np.float32)
            self.input_scale_ = np.asarray(scale, dtype=np.float32)
        _check_finite_statistics(self, X)

    def _train(self, make_net, X, *, prepare=None):
        """Train a net on prepared ``X``: the one training procedure.

        The seed (``random_seed_``), the held-out validation split, the plan
        of batches and epochs from the step budget (``batch_size_``,
        ``n_epochs_``), early stopping on the held-out loss, and the
        too-few-steps and divergence warnings; sets ``net_``. ``make_net()``
        builds the unfitted net; ``prepare(net)``, if given, runs on the
        initialised net before training, under the seed (FastFlow, which is
        not a subclass, borrows this method).
        """
        self.random_seed_ = int(
            check_random_state(self.random_state).randint(np.iinfo(np.int32).max)
        )
        X_train, X_valid = self._validation_split(X)
        self.batch_size_, self.n_epochs_, planned = training_plan(
            len(X_train),
            self.batch_size,
            self.max_epochs,
            self.min_steps,
            self._default_epochs,
            self._auto_max_batch,
        )
        net = make_net()
        net.set_params(batch_size=self.batch_size_, max_epochs=self.n_epochs_)
        if X_valid is not None:
            net.set_params(
                train_split=predefined_split(Dataset(X_valid, None)),
                callbacks=[
                    *net.callbacks,
                    (
                        "early_stopping",
                        EarlyStopping(
                            monitor="valid_loss",
                            patience=self.n_iter_no_change,
                            load_best=True,
                        ),
                    ),
                ],
            )
        with torch_random_state(self.random_seed_, self.device):
            net.initialize()
            _check_batch_norm_batches(self, net)
            if prepare is not None:
                prepare(net)
            net.partial_fit(X_train, None)
        self.net_ = net
        self._warn_if_too_few_steps(planned)
        _warn_if_diverged(self, net.history)

    def _validation_split(self, X):
        """``(X_train, X_valid)``; ``X_valid`` is None without early stopping."""
        if not self.early_stopping:
            return X, None
        n_valid = max(1, int(round(self.validation_fraction * len(X))))
        if len(X) - n_valid < 2:
            raise ValueError(
                f"early_stopping needs at least 2 training samples besides the "
                f"validation_fraction={self.validation_fraction}; got {len(X)} "
                "samples in all."
            )
        order = np.random.default_rng(self.random_seed_).permutation(len(X))
        return X[np.sort(order[n_valid:])], X[np.sort(order[:n_valid])]

    def _warn_if_too_few_steps(self, planned):
        # early stopping may end sooner than planned: that was asked for
        if planned >= _TOO_FEW_STEPS:
            return
        warnings.warn(
            f"{type(self).__name__} trained for only {planned} optimizer steps "
            f"({self.n_epochs_} epochs of batches of {self.batch_size_}); its "
            f"scores are unreliable below about {_TOO_FEW_STEPS} steps. Leave "
            "max_epochs='auto' (it trains for min_steps steps), raise "
            "max_epochs, or lower batch_size.",
            TooFewStepsWarning,
            stacklevel=4,
        )

    def _scale_input(self, X):
        """The whole validated array ``X`` as the network sees it (float32)."""
        return self._scale_batch(input_tensor(X)).numpy()

    def _scale_batch(self, X_batch, dtype=torch.float32):
        """A batch tensor as the network sees it, on the batch's device.

        uint8 images are read as value / 255; then the training statistics
        map the input to the network's range (see ``_fit``).
        """
        if X_batch.dtype == torch.uint8:
            X_batch = X_batch.to(torch.float32) / 255.0
        center = torch.as_tensor(self.input_center_, device=X_batch.device)
        scale = torch.as_tensor(self.input_scale_, device=X_batch.device)
        return ((X_batch - center) / scale).to(dtype)

    def _score_samples(self, X):
        return -self._run_batched(self._anomaly_score_batch, X)

    def _anomaly_score_batch(self, net, X_batch):
        """``_score_batch``, corrected by the input's detail if asked.

        See ``complexity_correction``: the log of the error minus the log
        of the image's detail energy, in the error's units. Switched off
        after ``fit`` (None, or a VAE score that is no error), the raw
        error (whose threshold ``predict`` refuses); switched on or to
        another blur, an error: there is no fitted floor for it.
        """
        score = self._score_batch(net, X_batch)
        sigma = self._complexity_sigma()
        if sigma is None:
            return score
        fitted = getattr(self, "complexity_sigma_", None)
        floor = getattr(self, "complexity_floor_", None)
        if fitted != sigma or floor is None:
            fitted_with = "no correction" if fitted is None else f"a {fitted} px blur"
            raise ValueError(
                f"{type(self).__name__} was fitted with {fitted_with}; "
                f"complexity_correction={self.complexity_correction!r} was set "
                "after fit. Refit it: the threshold offset_ is calibrated for "
                "the fitted score."
            )
        energy = detail_energy(X_batch.to(score.dtype), sigma)
        return complexity_corrected(
            score, energy, power=self._error_power_in_use(), floor=floor
        )

    def _run_batched(self, fn, X):
        """Apply ``fn(net, X_batch)`` to scaled batches of X in evaluation mode.

        ``X`` is validated but unscaled (uint8 images stay uint8): each batch
        is scaled on the net's device, so memory grows with ``batch_size``,
        not with ``len(X)``. The results are concatenated on the host.
        ``fn`` runs under ``torch.inference_mode``; code that needs
        gradients (a latent search) re-enables them itself.
        """
        net = self.net_
        dtype = torch.float64 if X.ndim == 2 else torch.float32
        outputs = []
        batch_size = self._scoring_batch_size()
        with evaluation(net, dtype=dtype), torch.inference_mode():
            for X_batch, _ in TensorBatchIterator(X, batch_size=batch_size):
                X_batch = self._scale_batch(X_batch.to(net.device), dtype)
                outputs.append(fn(net, X_batch).double().cpu().numpy())
        return np.concatenate(outputs)

    def _fit_residual_scaling(self, X):
        """``residual_center_`` and ``residual_scale_`` from the training samples.

        For detectors with ``score_scaling``: ``_score_residual(net, X_batch)``
        is the per-sample vector their score is built from (a latent error,
        a pixel residual). Its per-element mean on the training samples
        ``X`` (validated, unscaled) is the centre; the scale is its
        per-element standard deviation, the variances shrunk by
        ``_RESIDUAL_SHRINKAGE`` towards their mean and divided by that mean,
        so that a scaled residual keeps the typical size of the raw one
        (EGBAD adds a discriminator term to it). Elements that never vary
        get the scale ``sqrt(_RESIDUAL_SHRINKAGE)``, not zero.
        """
        total = squares = 0.0
        for start in range(0, len(X), _RESIDUAL_CHUNK):
            residual = self._run_batched(
                self._score_residual, X[start : start + _RESIDUAL_CHUNK]
            )
            total = total + residual.sum(axis=0)
            squares = squares + (residual**2).sum(axis=0)
        center = total / len(X)
        variance = np.maximum(squares / len(X) - center**2, 0.0)
        mean_variance = variance.mean()
        if mean_variance > 0 and np.isfinite(mean_variance):
            shrunk = (1 - _RESIDUAL_SHRINKAGE) * variance
            scale = np.sqrt(shrunk / mean_variance + _RESIDUAL_SHRINKAGE)
        else:  # a constant residual: nothing to weigh
            scale = np.ones_like(variance)
        self.residual_center_ = center.astype(np.float32)
        self.residual_scale_ = scale.astype(np.float32)

    def _score_scaling_in_use(self):
        """``score_scaling`` with 'auto' resolved for the fitted input kind."""
        if self.score_scaling != "auto":
            return self.score_scaling
        return "none" if self.image_shape_ is None else "standardized"

    def _scoring_setting(self):
        setting = super()._scoring_setting()
        if "score_scaling" in setting:
            setting["score_scaling"] = self._score_scaling_in_use()
        if "complexity_correction" in setting:  # the blur in use, or None
            setting["complexity_correction"] = self._complexity_sigma()
        return setting

    def _scaled_residual(self, residual):
        """``residual`` in units of its training spread, per ``score_scaling``.

        Unchanged with ``score_scaling='none'`` ('auto': 'standardized' for
        images, 'none' for tabular data) and for files saved before the
        scaling existed (no ``residual_scale_``).
        """
        scale = getattr(self, "residual_scale_", None)
        if self._score_scaling_in_use() == "none" or scale is None:
            return residual
        kwargs = dict(device=residual.device, dtype=residual.dtype)
        center = torch.as_tensor(self.residual_center_, **kwargs)
        return (residual - center) / torch.as_tensor(scale, **kwargs)

    def _reconstruct(self, net, X_batch):
        """Reconstruction of a scaled batch; detectors that make one override it."""
        raise NotImplementedError(
            f"{type(self).__name__} does not reconstruct its input, so it has no "
            "anomaly_map."
        )

    def anomaly_map(self, X):
        """Per-pixel anomaly map: squared reconstruction error, mean over channels.

        Parameters
        ----------
        X : array-like of shape (n_samples, height, width) or \
(n_samples, channels, height, width)
            Images of the training shape.

        Returns
        -------
        maps : ndarray of shape (n_samples, height, width)
            Larger values mark pixels the model reconstructs badly (in the
            scaled [-1, 1] image range).
        """
        check_is_fitted(self, "offset_")
        if self.image_shape_ is None:
            raise ValueError(
                f"{type(self).__name__}.anomaly_map needs a detector fitted on "
                "images; this one was fitted on tabular data."
            )
        X = self._validate_input(X, reset=False)
        return self._run_batched(self._pixel_error, X)

    def _pixel_error(self, net, X_batch):
        """The anomaly map of a scaled image batch (see ``anomaly_map``)."""
        return ((self._reconstruct(net, X_batch) - X_batch) ** 2).mean(dim=1)

    def _onnx_module(self):
        """Raw batch -> anomaly score (and map), for :func:`skanomaly.export_onnx`."""
        images = self.image_shape_ is not None
        with_maps = images and self.__skanomaly_tags__().anomaly_maps
        return _ScoringModule(self, with_maps=with_maps)

    def __sklearn_tags__(self):
        tags = super().__sklearn_tags__()
        tags.non_deterministic = False
        return tags


class _ScoringModule(torch.nn.Module):
    """A fitted detector's scoring as one module, on the CPU.

    Takes a raw batch, as ``score_samples`` gets it after validation
    (uint8 images (N, C, H, W), or float64 rows), and returns the anomaly
    score ``_score_batch`` gives (``-score_samples``), with the anomaly map
    when ``with_maps``. Tabular rows run in float64 as in ``score_samples``.
    The net's modules are copies in evaluation mode, so exporting leaves
    the detector as it was.
    """

    def __init__(self, detector, *, with_maps):
        super().__init__()
        self.dtype = torch.float32 if detector.image_shape_ else torch.float64
        # stands in for the skorch net: _score_batch reads net.module_ ...
        self.net = torch.nn.Module()
        for name, module in net_modules(detector.net_).items():
            module = copy.deepcopy(module).to(device="cpu", dtype=self.dtype)
            setattr(self.net, f"{name}_", module.eval())
        self.detector = detector
        self.with_maps = with_maps

    def forward(self, x):
        x = self.detector._scale_batch(x, self.dtype)
        score = self.detector._anomaly_score_batch(self.net, x)
        if not self.with_maps:
            return score
        return score, self.detector._pixel_error(self.net, x)
