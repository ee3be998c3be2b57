"""GANomaly detector (Akcay, Atapour-Abarghouei and Breckon, ACCV 2018)."""

from numbers import Real

from .._compat import Interval, StrOptions
from ..nn.gan import Discriminator
from ..nn.ganomaly import GANomalyGenerator, GANomalyLoss
from .gan_base import BaseGANDetector
from .torch_base import COMPLEXITY_CONSTRAINT

__all__ = ["GANomaly"]


class GANomaly(BaseGANDetector):
    """GANomaly: an adversarially trained encoder-decoder-encoder.

    The generator encodes x to z with G_E, decodes z to x_hat with G_D and
    encodes x_hat again to z_hat with a second encoder E. It is trained on
    inliers with

    ``w_adv * mean((f(x) - f(x_hat))**2) + w_con * mean(|x - x_hat|)
    + w_enc * mean((z - z_hat)**2)``

    where f are the features of a discriminator (the block before its last
    layer) trained to tell x from x_hat with
    ``0.5 * (BCE(D(x), 1) + BCE(D(x_hat), 0))``. One discriminator and one
    generator update per batch (:class:`~skanomaly.nets.AdversarialNet`).
    The discriminator is re-initialised whenever its loss falls below
    ``reinit_discriminator_below``, as in the authors' code.

    The anomaly score is the latent error ``mean((z - z_hat)**2)`` over the
    latent dimensions, by default with each dimension of ``z - z_hat`` in
    units of its spread on the training samples (``score_scaling``);
    ``score_samples`` returns its negative. Unlike the
    authors' evaluation, scores are not min-max scaled over the test set
    (that changes no ranking and would make a sample's score depend on the
    others).

    Images (any size, see :mod:`skanomaly.nn.dcgan`: the DCGAN stacks halve
    the resolution while both sides are even and stay at least 4 pixels, so
    32x32 goes down to 4x4; other sizes keep a larger bottleneck and need no
    resizing) use DCGAN conv stacks with a tanh decoder; the input is mapped
    to [-1, 1] from the training range. Tabular rows are standardised and
    use MLPs of ``hidden_sizes`` for both encoders, the decoder (mirrored)
    and the discriminator.

    Parameters
    ----------
    latent_dim : int, default=100
        Size of the code z (nz).
    base_channels : int, default=64
        Channels of the first convolution of every conv stack (ngf = ndf),
        doubled at every halving. Unused for tabular data.
    hidden_sizes : tuple of int, default=(64, 32)
        Hidden widths of the tabular encoders and discriminator (the decoder
        mirrors them). Unused for images.
    w_adv : float, default=1.0
        Weight of the adversarial (discriminator feature-matching) loss.
    w_con : float, default=50.0
        Weight of the contextual (L1 reconstruction) loss.
    w_enc : float, default=1.0
        Weight of the encoder (latent L2) loss.
    reinit_discriminator_below : float or None, default=1e-5
        Re-initialise the discriminator when its loss on a batch falls below
        this value; ``None`` never does.
    score_scaling : {'standardized', 'none'}, default='standardized'
        'standardized': each latent dimension of ``z - z_hat`` is centred
        and divided by its standard deviation over the training samples
        (fitted after training, ``residual_center_`` and
        ``residual_scale_``; the variances shrunk 30 % towards their mean)
        before the mean square, a diagonal Gaussian model of the latent
        error of normal data. 'none': the authors' ``mean((z - z_hat)**2)``.
        On six MNIST and digit tasks it raised the mean AUROC from 0.912
        to 0.933 (50 MNIST 5s 0.817 -> 0.864, 8s 0.777 -> 0.853), losing
        0.001 on the 32x32 digits 3; on the held-out tasks 500 MNIST 3s
        0.764 -> 0.942, faces 0.945 -> 0.944; on six ADBench tables mean
        0.887 -> 0.893 (``benchmarks/RESULTS_defaults.md``).
    lr : float, default=2e-4
        Adam learning rate of the generator (and of the discriminator unless
        ``lr_d`` is given).
    lr_d : float or None, default=None
        Adam learning rate of the discriminator; ``None`` uses ``lr``.
    beta1 : float, default=0.5
        Adam's first-moment decay for both optimizers (betas=(beta1, 0.999)).
    batch_size : int or 'auto', default='auto'
        Training batch size. 'auto' is ``n_samples // 8`` clipped to [8, 32],
        so that small training sets get at least 8 optimizer steps an epoch
        (32, not 64, from 256 samples on: on MNIST 3s, batches of 32 ranked
        far better than batches of 62; ``benchmarks/RESULTS_defaults.md``).
        Scoring runs in batches of this size (256 with 'auto'), which
        bounds its memory.
    max_epochs : int or 'auto', default='auto'
        Training epochs. 'auto' is 15, raised on small training sets
        until training takes ``min_steps`` optimizer steps
        (60 samples: 25 epochs of 8 batches); an int is used as it is.
        The authors' settings are ``batch_size=64, max_epochs=15``.
    min_steps : int, default=200
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
        Seeds initialisation and shuffling; an int makes scores
        reproducible.
    verbose : int, default=0
        If > 0, print skorch's epoch log and a progress bar.
    callbacks : list of skorch callbacks or None, default=None
        Extra skorch callbacks.
    contamination, calibration, calibration_size, calibration_confidence
        See :class:`~skanomaly.detectors.base.BaseDetector` (
        calibration='auto' holds out 20% of the training samples).
    complexity_correction : 'auto', float or None, default=None
        Score ``log(error) - log(detail)`` (images only), for anomalies plainer
        than the normal images: 'auto' a 2-px blur, a float the blur in
        pixels. See :class:`~skanomaly.detectors.torch_base.BaseTorchDetector`.

    Attributes
    ----------
    net_ : skanomaly.nets.AdversarialNet
        The trained net: ``net_.module_`` is the generator,
        ``net_.discriminator_`` the discriminator; ``net_.history`` holds
        the generator loss (``train_loss``) and the discriminator loss
        (``train_loss_d``) per epoch and per batch.
    offset_ : float
        Threshold on ``score_samples``.
    n_features_in_ : int
        Number of features (channels x height x width for images).
    feature_names_in_ : ndarray of str
        Only when fitted on a DataFrame with string column names.
    image_shape_ : tuple or None
        ``(channels, height, width)`` of the training images, ``None`` for
        tabular data.
    input_center_, input_scale_ : ndarray
        Input scaling fitted on the training data.
    residual_center_, residual_scale_ : ndarray of shape (latent_dim,)
        Mean and (shrunk) standard deviation of ``z - z_hat`` on the
        training samples, used by ``score_scaling='standardized'``.
    complexity_sigma_, complexity_floor_ : float or None
        The fitted ``complexity_correction`` (None: none).

    See Also
    --------
    SkipGANomaly : U-Net generator with skip connections.

    References
    ----------
    S. Akcay, A. Atapour-Abarghouei and T. P. Breckon, "GANomaly:
    Semi-Supervised Anomaly Detection via Adversarial Training", ACCV 2018.

    Notes
    -----
    The latent score needs a trained encoder pair, and what counts is
    optimizer steps, not epochs: on 60 digit images (32x32) it ranks
    anomalies as *more* normal for about the first 50 steps, whatever the
    batch size, and well from 75-150 steps on. The authors' 15 epochs of 64
    are 15 steps on such a set, so the default budget trains it for
    ``min_steps=200`` steps, and a fit of fewer than 100 steps warns
    (``benchmarks/RESULTS_defaults.md``).

    Examples
    --------
    >>> from sklearn.datasets import load_digits
    >>> from sklearn.metrics import roc_auc_score
    >>> from skanomaly import GANomaly
    >>> X, y = load_digits(return_X_y=True)
    >>> images = X.reshape(-1, 8, 8)  # digit 0 is the anomaly
    >>> det = GANomaly(latent_dim=16, base_channels=8, max_epochs=3,
    ...                random_state=0).fit(images[y != 0])
    >>> det.score_samples(images[:4]).shape
    (4,)
    >>> det.anomaly_map(images[:2]).shape
    (2, 8, 8)
    >>> len(det.net_.history), "train_loss_d" in det.net_.history[-1]
    (3, True)
    """

    _scoring_parameters = ("score_scaling", "complexity_correction")
    _parameter_constraints: dict = {
        **BaseGANDetector._parameter_constraints,
        "complexity_correction": COMPLEXITY_CONSTRAINT,
        "w_adv": [Interval(Real, 0, None, closed="left")],
        "w_con": [Interval(Real, 0, None, closed="left")],
        "w_enc": [Interval(Real, 0, None, closed="left")],
        "reinit_discriminator_below": [Interval(Real, 0, None, closed="left"), None],
        "score_scaling": [StrOptions({"standardized", "none"})],
    }

    _default_epochs = 15
    # the score sums squared errors (complexity_correction)
    _error_power = 2
    _auto_max_batch = 32

    def __init__(
        self,
        *,
        latent_dim=100,
        base_channels=64,
        hidden_sizes=(64, 32),
        w_adv=1.0,
        w_con=50.0,
        w_enc=1.0,
        reinit_discriminator_below=1e-5,
        score_scaling="standardized",
        lr=2e-4,
        lr_d=None,
        beta1=0.5,
        batch_size="auto",
        max_epochs="auto",
        min_steps=200,
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
        self.w_adv = w_adv
        self.w_con = w_con
        self.w_enc = w_enc
        self.reinit_discriminator_below = reinit_discriminator_below
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

    def _make_net(self, input_shape):
        return self._adversarial_net(
            GANomalyGenerator,
            Discriminator,
            GANomalyLoss,
            input_shape,
            reinit_discriminator_below=self.reinit_discriminator_below,
            module__latent_dim=self.latent_dim,
            module__base_channels=self.base_channels,
            module__hidden_sizes=tuple(self.hidden_sizes),
            criterion__w_adv=self.w_adv,
            criterion__w_con=self.w_con,
            criterion__w_enc=self.w_enc,
        )

    def _reconstruct(self, net, X_batch):
        return net.module_(X_batch)[0]

    def _fit(self, X):
        super()._fit(X)
        self._fit_residual_scaling(X)

    def _score_residual(self, net, X_batch):
        _, z, z_hat = net.module_(X_batch)
        return z - z_hat

    def _score_batch(self, net, X_batch):
        residual = self._scaled_residual(self._score_residual(net, X_batch))
        return (residual**2).mean(dim=1)
