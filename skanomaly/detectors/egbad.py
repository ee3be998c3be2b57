"""EGBAD: Efficient GAN-Based Anomaly Detection (Zenati et al. 2018)."""

from numbers import Integral, Real

from .._compat import Interval, StrOptions
from ..nets import WeightAverage
from ..nn.egbad import BiGANLoss, BiGANModule, JointDiscriminator, egbad_score
from .gan_base import BaseGANDetector
from .torch_base import COMPLEXITY_CONSTRAINT

__all__ = ["EGBAD"]

# The authors' latent sizes: MNIST (images) and KDD99 (tabular).
_AUTO_LATENT_DIM = {"images": 200, "tabular": 32}


class EGBAD(BaseGANDetector):
    """EGBAD: a BiGAN whose encoder makes GAN scoring a single forward pass.

    A generator ``G(z)``, an encoder ``E(x)`` and a discriminator on pairs
    ``D(x, z)`` are trained adversarially on inliers (Zenati et al. 2018,
    "Efficient GAN-Based Anomaly Detection"): D tells ``(x, E(x))`` (real)
    from ``(G(z), z)`` (fake), G and E try to fool it, all with sigmoid
    cross-entropy. The anomaly score is

        A(x) = (1 - disc_weight) * ||x - G(E(x))||_1 + disc_weight * L_D(x)

    with ``L_D`` the feature-matching distance
    ``||f_D(x, E(x)) - f_D(G(E(x)), E(x))||_1`` ('fm') or the cross-entropy
    of ``D(G(E(x)), E(x))`` against "real" ('ce'); ``score_samples``
    returns ``-A(x)``. By default, for images, the residual ``x - G(E(x))``
    enters the L1 norm in units of each pixel's spread on the training
    samples (``score_scaling``). Images go through DCGAN convolutional
    stacks (any size), tabular rows through MLPs (the paper evaluates
    KDD99).

    Defaults follow the authors' code (Adam with ``beta1=0.5``, latent size
    200 for images and 32 for tabular data, discriminator dropout, an
    exponential moving average (0.999) of the weights at evaluation) except
    the learning rate and the training budget: the authors' ``lr=1e-5``
    needs tens of thousands of optimizer steps, and the few hundred a small
    training set gives leave it untrained. With ``lr=2e-4`` the weight
    average ranks well after a few hundred steps (every rate tried goes
    through an early phase, 50-150 steps, where the discriminator wins and
    the ranking is inverted; 1e-3 learns faster but collapses later).
    Hence ``lr=2e-4`` and ``min_steps=400``. At that rate a discriminator
    as fast as the generator still won and inverted the ranking on some
    sets; a discriminator four times slower, ``lr_d=5e-5``, fixed the worst
    of them on digits and tables (the numbers:
    ``benchmarks/RESULTS_defaults.md``).
    ``lr=1e-5, lr_d=None, batch_size=100, max_epochs=100`` are the
    authors'.

    Parameters
    ----------
    latent_dim : int or 'auto', default='auto'
        Size of z; 'auto' is 200 for images and 32 for tabular data (the
        authors' MNIST and KDD99 settings).
    hidden_sizes : tuple of int, default=(64, 128)
        Hidden widths of the tabular generator, from the code to the row
        (the authors' KDD99 generator); the encoder uses them in reverse.
        The last entry is also the width of the discriminator's dense
        layers (for images too).
    base_channels : int, default=64
        First conv width of the image encoder and discriminator (last of
        the generator), doubled at every halving of the resolution.
    dropout : float, default=0.2
        Dropout rate in the discriminator (authors: 0.2 on KDD99, 0.5 on
        MNIST); off when scoring.
    disc_weight : float, default=0.1
        ``w`` in the score: the weight of the discriminator term (the
        paper's alpha = 0.9 is the weight of the reconstruction term).
    disc_loss : {'fm', 'ce'}, default='fm'
        Discriminator term of the score: feature matching or cross-entropy.
    score_scaling : {'auto', 'standardized', 'none'}, default='auto'
        'standardized': before its L1 norm, every element of the residual
        ``x - G(E(x))`` is centred and divided by its standard deviation
        over the training samples (fitted after training,
        ``residual_center_`` and ``residual_scale_``; the variances shrunk
        30 % towards their mean, and the scale normalised so that the
        average element keeps its size next to the discriminator term).
        'none': the authors' raw residual. 'auto': 'standardized' for
        images, 'none' for tabular data. On six MNIST and digit tasks
        'standardized' raised the mean AUROC from 0.801 to 0.894 (500 MNIST
        7s 0.688 -> 0.913, 50 MNIST 5s 0.485 -> 0.762), losing 0.002 on
        the 32x32 digits 3; on six ADBench tables (whose columns are
        standardised already) it moved both ways, mean 0.901 -> 0.898
        (mammography +0.037, satellite -0.053), hence 'none' there. On the
        held-out image tasks: 500 MNIST 3s 0.696 -> 0.855, faces 0.895 ->
        0.888 (``benchmarks/RESULTS_defaults.md``).
    ema_decay : float or None, default=0.999
        Decay of the moving average of the weights used for scoring; None
        scores with the final weights. The decay warms up as
        ``min(ema_decay, (1 + t) / (10 + t))`` over the updates ``t``, as
        TensorFlow's average with ``num_updates`` does, so that short runs
        are not scored with weights close to their initialisation.
    lr : float, default=2e-4
        Adam learning rate of the generator and encoder (one optimiser on
        both), and of the discriminator when ``lr_d`` is None.
    lr_d : float or None, default=5e-5
        Discriminator learning rate; None uses ``lr`` (the authors' one
        rate).
    beta1 : float, default=0.5
        Adam's first-moment decay, for every optimiser.
    batch_size : int or 'auto', default='auto'
        Training batch size. 'auto' is ``n_samples // 8`` clipped to [8, 64],
        so that small training sets get at least 8 optimizer steps an epoch.
        Scoring runs in batches of this size (256 with 'auto'), which
        bounds its memory.
    max_epochs : int or 'auto', default='auto'
        Training epochs. 'auto' is 30, raised on small training sets
        until training takes ``min_steps`` optimizer steps
        (60 samples: 50 epochs of 8 batches); an int is used as it is.
        The authors' settings are ``batch_size=100`` (MNIST; 50 on KDD99)
        with their ``lr=1e-5``, for tens of thousands of steps.
    min_steps : int, default=400
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
        Seeds initialisation, shuffling and the sampled codes; an int makes
        scores reproducible.
    verbose : int, default=0
        If > 0, print skorch's epoch log and a progress bar.
    callbacks : list of skorch callbacks or None, default=None
        Extra skorch callbacks.
    contamination, calibration, calibration_size, calibration_confidence
        See :class:`~skanomaly.detectors.base.BaseDetector` (
        calibration='auto' holds out 20% of the training samples).
    complexity_correction : 'auto', float or None, default=None
        Score ``log(error) - 0.5 log(detail)`` (images only), for anomalies plainer
        than the normal images: 'auto' a 2-px blur, a float the blur in
        pixels. See :class:`~skanomaly.detectors.torch_base.BaseTorchDetector`.

    Attributes
    ----------
    net_ : skanomaly.nets.AdversarialNet
        The trained net: ``net_.module_`` holds ``generator`` and
        ``encoder``, ``net_.discriminator_`` the joint critic;
        ``net_.history`` records ``train_loss`` (generator + encoder) and
        ``train_loss_d`` (discriminator).
    latent_dim_ : int
        The latent size used.
    offset_ : float
        Threshold on ``score_samples``.
    n_features_in_ : int
    feature_names_in_ : ndarray of str
        Only when fitted on a DataFrame with string column names.
    image_shape_ : tuple or None
    input_center_, input_scale_ : ndarray
        Input scaling fitted on the training data.
    residual_center_, residual_scale_ : ndarray of shape (n_features_in_,)
        Mean and (shrunk, normalised) standard deviation of each element of
        ``x - G(E(x))`` on the training samples, used by
        ``score_scaling='standardized'`` (computed for tabular data too).
    complexity_sigma_, complexity_floor_ : float or None
        The fitted ``complexity_correction`` (None: none).

    See Also
    --------
    AnoGAN : GAN detector that searches the latent code at test time.

    References
    ----------
    H. Zenati, C. S. Foo, B. Lecouat, G. Manek and V. R. Chandrasekhar,
    "Efficient GAN-Based Anomaly Detection", ICLR Workshop 2018.

    Examples
    --------
    >>> from sklearn.datasets import load_digits
    >>> from skanomaly import EGBAD
    >>> X, y = load_digits(return_X_y=True)
    >>> det = EGBAD(latent_dim=8, hidden_sizes=(32, 32), lr=1e-3, max_epochs=5,
    ...             random_state=0).fit(X[y == 0])
    >>> normal, other = det.score_samples(X[y == 0]), det.score_samples(X[y != 0])
    >>> bool(normal.mean() > other.mean())
    True
    >>> len(det.net_.history[:, "train_loss_d"])  # one discriminator loss per epoch
    5
    """

    _scoring_parameters = (
        "disc_weight",
        "disc_loss",
        "score_scaling",
        "complexity_correction",
    )
    _parameter_constraints: dict = {
        **BaseGANDetector._parameter_constraints,
        "complexity_correction": COMPLEXITY_CONSTRAINT,
        "latent_dim": [
            Interval(Integral, 1, None, closed="left"),
            StrOptions({"auto"}),
        ],
        "dropout": [Interval(Real, 0, 1, closed="left")],
        "disc_weight": [Interval(Real, 0, 1, closed="both")],
        "disc_loss": [StrOptions({"fm", "ce"})],
        "ema_decay": [Interval(Real, 0, 1, closed="neither"), None],
        "score_scaling": [StrOptions({"auto", "standardized", "none"})],
    }

    _default_epochs = 30
    # the score sums absolute errors (complexity_correction)
    _error_power = 1

    def __init__(
        self,
        *,
        latent_dim="auto",
        hidden_sizes=(64, 128),
        base_channels=64,
        dropout=0.2,
        disc_weight=0.1,
        disc_loss="fm",
        score_scaling="auto",
        ema_decay=0.999,
        lr=2e-4,
        lr_d=5e-5,
        beta1=0.5,
        batch_size="auto",
        max_epochs="auto",
        min_steps=400,
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
        self.hidden_sizes = hidden_sizes
        self.base_channels = base_channels
        self.dropout = dropout
        self.disc_weight = disc_weight
        self.disc_loss = disc_loss
        self.score_scaling = score_scaling
        self.ema_decay = ema_decay
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
        tags.test_params["lr"] = 1e-3
        return tags

    def _resolved_latent_dim(self, input_shape):
        """``latent_dim``, 'auto' resolved for rows (1-D shape) or images."""
        if self.latent_dim != "auto":
            return self.latent_dim
        return _AUTO_LATENT_DIM["tabular" if len(input_shape) == 1 else "images"]

    def _fit(self, X):
        self.latent_dim_ = self._resolved_latent_dim(X.shape[1:])
        super()._fit(X)
        self._fit_residual_scaling(X)

    def _make_net(self, input_shape):
        # from the parameters and the input shape only, not fitted state, so
        # that a loaded file rebuilds the same net
        latent_dim = self._resolved_latent_dim(input_shape)
        callbacks = []
        if self.ema_decay is not None:
            callbacks.append(("weight_average", WeightAverage(self.ema_decay)))
        return self._adversarial_net(
            BiGANModule,
            JointDiscriminator,
            BiGANLoss,
            input_shape,
            callbacks=callbacks,
            module__latent_dim=latent_dim,
            module__hidden_sizes=tuple(self.hidden_sizes),
            module__base_channels=self.base_channels,
            discriminator__latent_dim=latent_dim,
            discriminator__dropout=self.dropout,
        )

    def _reconstruct(self, net, X_batch):
        return net.module_.reconstruct(X_batch)

    def _score_residual(self, net, X_batch):
        return (X_batch - net.module_.reconstruct(X_batch)).flatten(1)

    def _score_batch(self, net, X_batch):
        encoded = net.module_.encoder(X_batch)
        reconstruction = net.module_.generator(encoded)
        return egbad_score(
            X_batch,
            encoded,
            reconstruction,
            net.discriminator_,
            self.disc_weight,
            self.disc_loss,
            scale_residual=self._scaled_residual,
        )
