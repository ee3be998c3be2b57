"""Skip-GANomaly detector (Akcay, Atapour-Abarghouei and Breckon, IJCNN 2019)."""

from numbers import Real

from .._compat import Interval
from ..nn.skipganomaly import SkipGANomalyDiscriminator, SkipGANomalyLoss, UNetGenerator
from .gan_base import BaseGANDetector
from .torch_base import COMPLEXITY_CONSTRAINT

__all__ = ["SkipGANomaly"]


class SkipGANomaly(BaseGANDetector):
    """Skip-GANomaly: an adversarially trained U-Net with skip connections.

    The generator is a U-Net (pix2pix style, BatchNorm, no dropout) that
    reconstructs x as x_hat. The discriminator is a DCGAN encoder to a
    ``latent_dim``-channel feature map f, with a linear real/fake classifier
    on f. Training, on inliers, minimises for the generator

    ``w_adv * BCE(D(x_hat), 1) + w_con * mean(|x - x_hat|)
    + w_lat * mean((f(x) - f(x_hat))**2)``

    and for the discriminator ``BCE(D(x), 1) + BCE(D(x_hat), 0)``, one
    update of each per batch (:class:`~skanomaly.nets.AdversarialNet`); the
    discriminator is re-initialised when its loss falls below
    ``reinit_discriminator_below``, as in the authors' code. Deviations from
    the authors' code: no (uninitialised) noise is added to the generator
    input, and the latent term is not added to the discriminator loss.

    The anomaly score is ``score_lambda * mean((x - x_hat)**2)
    + (1 - score_lambda) * mean((f(x) - f(x_hat))**2)``; ``score_samples``
    returns its negative (no min-max scaling over the test set).

    Image sizes: the U-Net halves the resolution while both sides are even,
    down to 1x1 (32x32 has 5 levels, as in the authors' code; 28x28 has 2
    and a 7x7 bottleneck). It needs at least two halvings, so height and
    width must be multiples of 4; other sizes raise a ``ValueError`` in
    ``fit`` (pad or resize them in a preceding pipeline step). Tabular rows
    (standardised) use an MLP "U-Net": linear layers of ``hidden_sizes``
    down to a ``latent_dim`` bottleneck and back, each hidden layer's output
    concatenated to the input of its mirrored decoder layer, and an MLP
    discriminator.

    Parameters
    ----------
    latent_dim : int, default=100
        Channels of the discriminator's feature map f (nz); for rows also the
        U-Net bottleneck width.
    base_channels : int, default=64
        Channels of the first level of the U-Net (ngf) and of the
        discriminator (ndf); doubled per level (the U-Net up to 8x). Unused
        for tabular data.
    hidden_sizes : tuple of int, default=(64, 32)
        Hidden widths of the tabular U-Net and discriminator (at least one).
        Unused for images.
    w_adv : float, default=1.0
        Weight of the adversarial BCE term.
    w_con : float, default=50.0
        Weight of the contextual (L1 reconstruction) term (the paper's text
        gives 40, the authors' code 50).
    w_lat : float, default=1.0
        Weight of the latent (discriminator feature) term.
    score_lambda : float, default=0.9
        Weight λ of the reconstruction error in the anomaly score (the
        paper's 0.9). The feature term measured 10-19 times the size of the
        reconstruction term on 32x32 digits and faces, so at 0.9 it is half
        to two thirds of the score; 1.0 scores the reconstruction alone.
        Read at scoring time: ``set_params(score_lambda=...)`` on a fitted
        model rescores without refitting. On faces and MNIST 3s held out
        from tuning, no λ of the same fit came near a plain autoencoder
        (``benchmarks/RESULTS_skipganomaly.md``): the paper's score is not
        what fails there.
    reinit_discriminator_below : float or None, default=1e-5
        Re-initialise the discriminator when its loss on a batch falls below
        this value; ``None`` never does.
    lr : float, default=2e-4
        Adam learning rate of the generator (and of the discriminator unless
        ``lr_d`` is given).
    lr_d : float or None, default=None
        Adam learning rate of the discriminator; ``None`` uses ``lr``.
    beta1 : float, default=0.5
        Adam's first-moment decay for both optimizers.
    batch_size : int or 'auto', default='auto'
        Training batch size. 'auto' is ``n_samples // 8`` clipped to [8, 64],
        so that small training sets get at least 8 optimizer steps an epoch.
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
        The trained net: ``net_.module_`` is the U-Net,
        ``net_.discriminator_`` the discriminator; ``net_.history`` holds
        the generator (``train_loss``) and discriminator (``train_loss_d``)
        losses.
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
    complexity_sigma_, complexity_floor_ : float or None
        The fitted ``complexity_correction`` (None: none).

    See Also
    --------
    GANomaly : encoder-decoder-encoder generator, latent score.

    References
    ----------
    S. Akcay, A. Atapour-Abarghouei and T. P. Breckon, "Skip-GANomaly: Skip
    Connected and Adversarially Trained Encoder-Decoder Anomaly Detection",
    IJCNN 2019.

    Examples
    --------
    >>> from sklearn.datasets import load_digits
    >>> from skanomaly import SkipGANomaly
    >>> X, y = load_digits(return_X_y=True)
    >>> images = X.reshape(-1, 8, 8)  # digit 0 is the anomaly
    >>> det = SkipGANomaly(latent_dim=16, base_channels=8, max_epochs=3,
    ...                    random_state=0).fit(images[y != 0])
    >>> det.score_samples(images[:4]).shape
    (4,)
    >>> det.anomaly_map(images[:2]).shape
    (2, 8, 8)
    """

    _scoring_parameters = ("score_lambda", "complexity_correction")
    _parameter_constraints: dict = {
        **BaseGANDetector._parameter_constraints,
        "complexity_correction": COMPLEXITY_CONSTRAINT,
        "w_adv": [Interval(Real, 0, None, closed="left")],
        "w_con": [Interval(Real, 0, None, closed="left")],
        "w_lat": [Interval(Real, 0, None, closed="left")],
        "score_lambda": [Interval(Real, 0, 1, closed="both")],
        "reinit_discriminator_below": [Interval(Real, 0, None, closed="left"), None],
    }

    _default_epochs = 15
    # the score sums squared errors (complexity_correction)
    _error_power = 2

    def __init__(
        self,
        *,
        latent_dim=100,
        base_channels=64,
        hidden_sizes=(64, 32),
        w_adv=1.0,
        w_con=50.0,
        w_lat=1.0,
        score_lambda=0.9,
        reinit_discriminator_below=1e-5,
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
        self.w_lat = w_lat
        self.score_lambda = score_lambda
        self.reinit_discriminator_below = reinit_discriminator_below
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
            UNetGenerator,
            SkipGANomalyDiscriminator,
            SkipGANomalyLoss,
            input_shape,
            reinit_discriminator_below=self.reinit_discriminator_below,
            module__base_channels=self.base_channels,
            module__hidden_sizes=tuple(self.hidden_sizes),
            module__latent_dim=self.latent_dim,
            discriminator__latent_dim=self.latent_dim,
            criterion__w_adv=self.w_adv,
            criterion__w_con=self.w_con,
            criterion__w_lat=self.w_lat,
        )

    def _reconstruct(self, net, X_batch):
        return net.module_(X_batch)

    def _score_batch(self, net, X_batch):
        X_hat = net.module_(X_batch)
        features = net.discriminator_.features
        reconstruction = ((X_batch - X_hat) ** 2).flatten(1).mean(dim=1)
        latent = ((features(X_batch) - features(X_hat)) ** 2).mean(dim=1)
        lam = self.score_lambda
        return lam * reconstruction + (1 - lam) * latent
