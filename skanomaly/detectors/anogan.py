"""AnoGAN (Schlegl et al., IPMI 2017)."""

from numbers import Integral, Real

import numpy as np
import torch

from .._compat import Interval, StrOptions
from ..nn.anogan import AnoGANGenerator, best_starts, latent_search
from ..nn.gan import DCGANLoss, Discriminator
from .gan_base import BaseGANDetector
from .torch_base import COMPLEXITY_CONSTRAINT

__all__ = ["AnoGAN"]


class AnoGAN(BaseGANDetector):
    """AnoGAN: a DCGAN on inliers, scored by searching each query's latent code.

    A DCGAN (generator ``G``, discriminator ``D``, standard
    cross-entropy losses) is trained on inliers; there is no encoder. To
    score a query ``x``, ``search_steps`` Adam steps (the paper's Gamma)
    look for the code ``z`` minimising

        L(z) = (1 - disc_weight) * sum|x - G(z)| + disc_weight * sum|f(x) - f(G(z))|

    with ``f`` the discriminator's last hidden layer (feature matching);
    the anomaly score is ``L`` at the final code and ``score_samples``
    returns its negative. The search runs for a whole batch of queries at
    once: one Adam step on the (batch, latent_dim) codes is that many
    independent per-sample steps (see
    :func:`~skanomaly.nn.anogan.latent_search`). The networks are
    frozen during the search.

    Every search starts from the best of ``search_starts`` fixed codes
    (``latent_init_``, one draw of N(0, I) made at ``fit`` from
    ``random_state``, and further draws from the same seed): the one whose
    image has the lowest loss for the query. A query's score depends
    neither on the other queries nor on batching.

    Scoring costs up to ``search_steps`` forward and backward passes
    through G and D per query, also in ``fit``, which scores the training
    set to set ``offset_``. By default each query stops once its loss has
    converged (``search_tol``, ``search_patience``). On digits, MNIST and
    tabular one-class tasks the best of 64 starts with that stopping rule
    took a few tens of steps per query and ranked at least as well as 500
    steps from one random code, several times faster (the numbers:
    ``benchmarks/RESULTS_defaults.md`` and ``RESULTS_anogan_search.md``).
    ``search_starts=1, search_tol=None`` is the paper's procedure (Gamma =
    500 steps from one random code).

    Images go through DCGAN convolutional stacks (any size), tabular rows
    through MLPs.

    Parameters
    ----------
    latent_dim : int, default=100
        Size of z (DCGAN's nz).
    base_channels : int, default=64
        Conv width of the discriminator's first layer and the generator's
        last (ndf = ngf), doubled at every halving of the resolution.
    hidden_sizes : tuple of int, default=(64, 32)
        Hidden widths of the tabular discriminator; the generator uses
        them in reverse.
    disc_weight : float, default=0.1
        The paper's lambda: the weight of the discrimination
        (feature-matching) term, ``1 - disc_weight`` weighting the residual.
    search_steps : int, default=500
        Most Adam steps of the latent search per query (the paper's Gamma);
        0 scores the initial code.
    search_lr : float, default=1e-3
        Adam learning rate of the latent search.
    search_tol : float or None, default=1e-2
        A query's search stops once its loss improved by less than this
        fraction over the last ``search_patience`` steps; its code and
        score are those of that step, and it leaves the batch (the others
        go on). None searches every query for ``search_steps`` steps, the
        paper's procedure.
    search_patience : int, default=10
        Steps over which ``search_tol`` measures the improvement.
    search_starts : int, default=64
        Candidate starting codes: ``latent_init_`` and ``search_starts - 1``
        more fixed draws of N(0, I); each query's search starts from the
        one whose image has the lowest AnoGAN loss for it (one batched
        comparison, :func:`~skanomaly.nn.anogan.best_starts`). 1 starts
        every search from ``latent_init_``, as the paper does from one
        random code.
    score_scaling : {'none', 'standardized'}, default='none'
        'none': the paper's score, the loss above at the final code.
        'standardized': the residual ``x - G(z)`` at the final code enters
        the score's L1 norm in units of each pixel's (or column's) spread on
        the training samples, centred on its training mean (the rule of
        GANomaly and EGBAD: ``residual_center_`` and ``residual_scale_``,
        the variances shrunk 30 % towards their mean); the search itself
        is unchanged. Fitting it costs one more latent search per training
        sample (at most 1,000, a fixed random subset), so it is fitted only
        when ``fit`` runs with 'standardized' (set afterwards, the score
        stays the paper's). On the scikit-image faces against smooth
        non-face crops (60 training faces) AnoGAN's search fits the
        non-faces better than the faces (AUROC 0.455); standardised, 0.480,
        and with ``search_steps=0, disc_weight=0`` 0.869 (0.806 raw). It
        gained 0.019 on crops of a photo (0.666 -> 0.685) but lost 0.054
        and 0.072 on 50 MNIST 5s and 8s, and on five held-out tasks it
        lost 0.014 on the mean, so it is not the default
        (``benchmarks/RESULTS_defaults.md``, "AnoGAN on faces").
    lr : float, default=2e-4
        Adam learning rate of the generator, and of the discriminator
        unless ``lr_d`` is given (DCGAN's setting).
    lr_d : float or None, default=None
        Discriminator learning rate; None uses ``lr``.
    beta1 : float, default=0.5
        Adam's first-moment decay in training (DCGAN's setting).
    batch_size : int or 'auto', default='auto'
        Training batch size. 'auto' is ``n_samples // 8`` clipped to [8, 64],
        so that small training sets get at least 8 optimizer steps an epoch.
        Scoring runs in batches of this size (256 with 'auto'), and as
        many queries are searched together,
        which bounds its memory.
    max_epochs : int or 'auto', default='auto'
        Training epochs. 'auto' is 15, raised on small training sets
        until training takes ``min_steps`` optimizer steps
        (60 samples: 38 epochs of 8 batches); an int is used as it is.
        DCGAN's settings are ``batch_size=64`` and AnoGAN's authors'
        epochs are not given; ``max_epochs=15`` is the GANomaly count.
    min_steps : int, default=300
        Optimizer steps that ``max_epochs='auto'`` trains for at least.
    early_stopping : bool, default=False
        Hold out ``validation_fraction`` of the training inliers and stop
        when their loss has not improved for ``n_iter_no_change`` epochs,
        keeping the best epoch's weights (skorch's ``EarlyStopping``).
    validation_fraction : float, default=0.1
        Share of the training inliers held out with ``early_stopping``.
    n_iter_no_change : int, default=10
        Patience of ``early_stopping``, in epochs.
    device : str or torch.device, default='cpu'
        Where to train and score, e.g. 'cuda'.
    random_state : int, RandomState instance or None, default=None
        Seeds initialisation, shuffling, the sampled codes and
        ``latent_init_``; an int makes scores reproducible.
    verbose : int, default=0
        If > 0, print skorch's epoch log and a progress bar.
    callbacks : list of skorch callbacks or None, default=None
        Extra skorch callbacks.
    contamination, calibration, calibration_size, calibration_confidence
        See :class:`~skanomaly.detectors.base.BaseDetector`
        (calibration='auto' holds out 20% of the training samples). Every
        score is a full latent search, so at most 1,000 calibration samples
        are scored (a fixed random subset).
    complexity_correction : 'auto', float or None, default=None
        Score ``log(error) - 0.5 log(detail)`` (images only), for anomalies plainer
        than the normal images: 'auto' a 2-px blur, a float the blur in
        pixels. See :class:`~skanomaly.detectors.torch_base.BaseTorchDetector`.

    Attributes
    ----------
    net_ : skanomaly.nets.AdversarialNet
        The trained DCGAN: ``net_.module_`` the generator,
        ``net_.discriminator_`` the discriminator; ``net_.history`` records
        ``train_loss`` (generator) and ``train_loss_d`` (discriminator).
    latent_init_ : ndarray of shape (latent_dim,)
        The code every latent search starts from.
    offset_ : float
        Threshold on ``score_samples``.
    n_features_in_ : int
    feature_names_in_ : ndarray of str
        Only when fitted on a DataFrame with string column names.
    image_shape_ : tuple or None
    input_center_, input_scale_ : ndarray
        Input scaling fitted on the training data.
    residual_center_, residual_scale_ : ndarray of shape (n_values,)
        Mean and (shrunk) standard deviation of the final residual
        ``x - G(z)`` on the training samples, one value per column or per
        pixel and channel; only fitted with ``score_scaling='standardized'``.
    complexity_sigma_, complexity_floor_ : float or None
        The fitted ``complexity_correction`` (None: none).

    See Also
    --------
    EGBAD : BiGAN detector whose encoder replaces the search.

    Notes
    -----
    ``anomaly_map`` returns the squared error between the image and
    ``G(z)`` at the end of the search (averaged over channels).

    References
    ----------
    T. Schlegl, P. Seeböck, S. M. Waldstein, U. Schmidt-Erfurth and
    G. Langs, "Unsupervised Anomaly Detection with Generative Adversarial
    Networks to Guide Marker Discovery", IPMI 2017.

    Examples
    --------
    >>> from sklearn.datasets import load_digits
    >>> from skanomaly import AnoGAN
    >>> X, y = load_digits(return_X_y=True)
    >>> det = AnoGAN(latent_dim=8, hidden_sizes=(32, 32), max_epochs=5,
    ...              search_steps=20, search_lr=0.05, random_state=0)
    >>> det = det.fit(X[y == 0])
    >>> normal = det.score_samples(X[y == 0][:50])
    >>> other = det.score_samples(X[y != 0][:50])
    >>> bool(normal.mean() > other.mean())
    True
    """

    _scoring_parameters = (
        "disc_weight",
        "search_steps",
        "search_lr",
        "search_tol",
        "search_patience",
        "search_starts",
        "score_scaling",
        "complexity_correction",
    )
    _parameter_constraints: dict = {
        **BaseGANDetector._parameter_constraints,
        "complexity_correction": COMPLEXITY_CONSTRAINT,
        "disc_weight": [Interval(Real, 0, 1, closed="both")],
        "search_steps": [Interval(Integral, 0, None, closed="left")],
        "search_lr": [Interval(Real, 0, None, closed="neither")],
        "search_tol": [Interval(Real, 0, None, closed="left"), None],
        "search_patience": [Interval(Integral, 1, None, closed="left")],
        "search_starts": [Interval(Integral, 1, None, closed="left")],
        "score_scaling": [StrOptions({"none", "standardized"})],
    }

    _default_epochs = 15
    # the score sums absolute errors (complexity_correction)
    _error_power = 1

    def __init__(
        self,
        *,
        latent_dim=100,
        base_channels=64,
        hidden_sizes=(64, 32),
        disc_weight=0.1,
        search_steps=500,
        search_lr=1e-3,
        search_tol=1e-2,
        search_patience=10,
        search_starts=64,
        score_scaling="none",
        lr=2e-4,
        lr_d=None,
        beta1=0.5,
        batch_size="auto",
        max_epochs="auto",
        min_steps=300,
        early_stopping=False,
        validation_fraction=0.1,
        n_iter_no_change=10,
        device="cpu",
        random_state=None,
        verbose=0,
        callbacks=None,
        contamination="auto",
        calibration="auto",
        calibration_size=0.2,
        calibration_confidence=None,
        complexity_correction=None,
    ):
        super().__init__(
            contamination=contamination,
            calibration=calibration,
            calibration_size=calibration_size,
            calibration_confidence=calibration_confidence,
        )
        self.latent_dim = latent_dim
        self.base_channels = base_channels
        self.hidden_sizes = hidden_sizes
        self.disc_weight = disc_weight
        self.search_steps = search_steps
        self.search_lr = search_lr
        self.search_tol = search_tol
        self.search_patience = search_patience
        self.search_starts = search_starts
        self.score_scaling = score_scaling
        self.lr = lr
        self.lr_d = lr_d
        self.beta1 = beta1
        self.batch_size = batch_size
        self.max_epochs = max_epochs
        self.min_steps = min_steps
        self.early_stopping = early_stopping
        self.validation_fraction = validation_fraction
        self.n_iter_no_change = n_iter_no_change
        self.device = device
        self.random_state = random_state
        self.verbose = verbose
        self.callbacks = callbacks
        self.complexity_correction = complexity_correction

    def __skanomaly_tags__(self):
        tags = super().__skanomaly_tags__()
        tags.test_params.update(search_steps=3, search_lr=0.05)
        # The threshold needs training scores, each a full latent search:
        # take them on at most 1,000 training images.
        tags.max_offset_samples = 1000
        # a score is a gradient search per sample, not one forward pass
        tags.onnx_export = False
        return tags

    def _fit(self, X):
        super()._fit(X)
        # before the training scores that set offset_, which need it
        rng = np.random.default_rng(self.random_seed_)
        self.latent_init_ = rng.standard_normal(self.latent_dim).astype(np.float32)
        # one more latent search per training sample: only when asked, on at
        # most as many samples as the threshold is set from
        self.__dict__.pop("residual_center_", None)
        self.__dict__.pop("residual_scale_", None)
        if self.score_scaling == "standardized":
            limit = self.__skanomaly_tags__().max_offset_samples
            if len(X) > limit:
                rng = np.random.default_rng([self.random_seed_, 2])
                X = X[np.sort(rng.choice(len(X), limit, replace=False))]
            self._fit_residual_scaling(X)

    def _make_net(self, input_shape):
        return self._adversarial_net(
            AnoGANGenerator,
            Discriminator,
            DCGANLoss,
            input_shape,
            module__latent_dim=self.latent_dim,
            module__base_channels=self.base_channels,
            module__hidden_sizes=tuple(self.hidden_sizes),
        )

    def _start_codes(self):
        """``latent_init_`` and ``search_starts - 1`` more draws of N(0, I)."""
        extra = np.random.default_rng([self.random_seed_, 1]).standard_normal(
            (self.search_starts - 1, self.latent_dim)
        )
        return np.vstack([self.latent_init_[None], extra.astype(np.float32)])

    def _search(self, net, X_batch):
        like = dict(device=X_batch.device, dtype=X_batch.dtype)
        if self.search_starts == 1:
            z_init = torch.as_tensor(self.latent_init_, **like)
            z_init = z_init.expand(X_batch.shape[0], -1)
        else:
            z_init = best_starts(
                net.module_.generate,
                net.discriminator_.features,
                X_batch,
                torch.as_tensor(self._start_codes(), **like),
                disc_weight=self.disc_weight,
            )
        return latent_search(
            net.module_.generate,
            net.discriminator_.features,
            X_batch,
            z_init,
            steps=self.search_steps,
            lr=self.search_lr,
            disc_weight=self.disc_weight,
            tol=self.search_tol,
            patience=self.search_patience,
        )

    def _score_residual(self, net, X_batch):
        return (X_batch - self._search(net, X_batch)[2]).flatten(1)

    def _score_batch(self, net, X_batch):
        loss, _, reconstruction, _ = self._search(net, X_batch)
        if self.score_scaling == "none" or not hasattr(self, "residual_scale_"):
            return loss
        residual = self._scaled_residual((X_batch - reconstruction).flatten(1))
        features = net.discriminator_.features
        with torch.no_grad():
            discrimination = (features(X_batch) - features(reconstruction)).abs()
        return (1.0 - self.disc_weight) * residual.abs().sum(dim=1) + (
            self.disc_weight * discrimination.flatten(1).sum(dim=1)
        )

    def _reconstruct(self, net, X_batch):
        return self._search(net, X_batch)[2]
