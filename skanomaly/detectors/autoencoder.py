"""AutoEncoder detector (Hinton & Salakhutdinov 2006)."""

from numbers import Integral, Real

import torch

from .._compat import Interval
from ..nets import SelfSupervisedNet
from ..nn.autoencoder import AutoEncoderModule, ReconstructionLoss, per_sample_mean
from .torch_base import COMPLEXITY_CONSTRAINT, BaseTorchDetector

__all__ = ["AutoEncoder"]


class AutoEncoder(BaseTorchDetector):
    """Reconstruction-error detector: an autoencoder trained on inliers.

    Tabular rows go through MLPs, images through a DCGAN-style convolutional
    encoder and decoder (any image size; see :mod:`skanomaly.nn.dcgan`).
    The anomaly score is the mean squared reconstruction error of a sample,
    so ``score_samples`` returns its negative.

    Parameters
    ----------
    latent_dim : int, default=8
        Size of the code.
    hidden_sizes : tuple of int, default=(64, 32)
        Hidden layer widths of the tabular encoder (the decoder mirrors
        them). Unused for images.
    batch_norm : bool, default=True
        Batch normalisation after every hidden layer of the tabular MLPs
        (as in PyOD's AutoEncoder). On ten ADBench tables (3 seeds) it
        raised the mean AUROC from 0.895 to 0.916. Unused for images (the
        conv stacks have it).
    dropout : float, default=0.0
        Dropout rate after every hidden layer of the tabular MLPs (off when
        scoring). Unused for images.
    base_channels : int, default=32
        Channels of the first convolution for images, doubled at every
        halving of the resolution. Unused for tabular data.
    lr : float, default=1e-3
        Adam learning rate.
    weight_decay : float, default=0.0
        Adam weight decay.
    batch_size : int or 'auto', default='auto'
        Training batch size. 'auto' is ``n_samples // 8`` clipped to [8, 64],
        so that small training sets get at least 8 optimizer steps an epoch.
        Scoring runs in batches of this size (256 with 'auto'), which
        bounds its memory.
    max_epochs : int or 'auto', default='auto'
        Training epochs. 'auto' is 30, raised on small training sets
        until training takes ``min_steps`` optimizer steps
        (60 samples: 63 epochs of 8 batches); an int is used as it is.
    min_steps : int, default=500
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
        Extra skorch callbacks (e.g. ``EarlyStopping`` on ``train_loss``).
    contamination, calibration, calibration_size, calibration_confidence
        See :class:`~skanomaly.detectors.base.BaseDetector` (
        calibration='auto' holds out 20% of the training samples).
    complexity_correction : 'auto', float or None, default=None
        Score ``log(error) - log(detail)`` (images only), for anomalies plainer
        than the normal images: 'auto' a 2-px blur, a float the blur in
        pixels. See :class:`~skanomaly.detectors.torch_base.BaseTorchDetector`.

    Attributes
    ----------
    net_ : skorch.NeuralNet
        The trained net; ``net_.history`` holds the training losses.
    offset_ : float
        Threshold on ``score_samples``.
    n_features_in_ : int
    feature_names_in_ : ndarray of str
        Only when fitted on a DataFrame with string column names.
    image_shape_ : tuple or None
    input_center_, input_scale_ : ndarray
        Input scaling fitted on the training data.
    complexity_sigma_, complexity_floor_ : float or None
        The fitted ``complexity_correction`` (None: none).

    Examples
    --------
    >>> from sklearn.datasets import load_digits
    >>> from skanomaly import AutoEncoder
    >>> X, y = load_digits(return_X_y=True)
    >>> det = AutoEncoder(max_epochs=5, random_state=0).fit(X[y == 0])
    >>> det.predict(X[:3]).tolist()
    [1, -1, -1]
    """

    _scoring_parameters = ("complexity_correction",)
    _parameter_constraints: dict = {
        **BaseTorchDetector._parameter_constraints,
        "complexity_correction": COMPLEXITY_CONSTRAINT,
        "latent_dim": [Interval(Integral, 1, None, closed="left")],
        "hidden_sizes": [tuple, list],
        "batch_norm": ["boolean"],
        "dropout": [Interval(Real, 0, 1, closed="left")],
        "base_channels": [Interval(Integral, 1, None, closed="left")],
        "weight_decay": [Interval(Real, 0, None, closed="left")],
    }

    _default_epochs = 30
    # the score sums squared errors (complexity_correction)
    _error_power = 2

    def __init__(
        self,
        *,
        latent_dim=8,
        hidden_sizes=(64, 32),
        batch_norm=True,
        dropout=0.0,
        base_channels=32,
        lr=1e-3,
        weight_decay=0.0,
        batch_size="auto",
        max_epochs="auto",
        min_steps=500,
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
        self.batch_norm = batch_norm
        self.dropout = dropout
        self.base_channels = base_channels
        self.lr = lr
        self.weight_decay = weight_decay
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
        tags.test_params = {"max_epochs": 2, "hidden_sizes": (8,), "base_channels": 4}
        return tags

    def _make_net(self, input_shape):
        return SelfSupervisedNet(
            AutoEncoderModule,
            module__input_shape=input_shape,
            module__latent_dim=self.latent_dim,
            module__hidden_sizes=tuple(self.hidden_sizes),
            module__base_channels=self.base_channels,
            module__batch_norm=self.batch_norm,
            module__dropout=self.dropout,
            criterion=ReconstructionLoss,
            optimizer=torch.optim.Adam,
            optimizer__weight_decay=self.weight_decay,
            **self._net_kwargs(),
        )

    def _reconstruct(self, net, X_batch):
        return net.module_(X_batch)

    def _score_batch(self, net, X_batch):
        return per_sample_mean((self._reconstruct(net, X_batch) - X_batch) ** 2)
