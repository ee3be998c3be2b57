"""AnoGAN (Schlegl et al. 2017): its DCGAN generator and the latent search.

AnoGAN trains a plain DCGAN (:class:`~skanomaly.nn.gan.DCGANLoss`) on normal
data and scores a query ``x`` by searching the latent code whose image
``G(z)`` best explains it: starting from ``z_0``, ``steps`` Adam steps on

    L(z) = (1 - disc_weight) * sum|x - G(z)| + disc_weight * sum|f(x) - f(G(z))|

where ``f`` is an intermediate discriminator layer. The anomaly score is
``L(z_steps)``.

:func:`latent_search` runs the search for a whole batch at once. The batch
loss is the *sum* of the per-sample losses, so the gradient with respect to
row ``i`` of the (B, latent_dim) code tensor is that of sample ``i``'s loss
alone; Adam's moments are kept per coordinate, so one Adam step on the
batch is B independent per-sample steps. Only floating-point rounding of
batched kernels differs from searching one sample at a time.
"""

import math

import torch
from torch import nn

from .dcgan import ConvDecoder, dcgan_init
from .mlp import MLP

__all__ = ["AnoGANGenerator", "anogan_loss", "best_starts", "latent_search"]


class AnoGANGenerator(nn.Module):
    """DCGAN generator ``G(z)`` for images, an MLP generator for tabular rows.

    Images: :class:`~skanomaly.nn.dcgan.ConvDecoder` (transposed conv +
    BatchNorm + ReLU, tanh output for data scaled to [-1, 1]) with DCGAN
    initialisation. Tabular: an MLP with ReLU and a linear output (the rows
    are standardised).

    ``forward(X)`` draws one ``z ~ N(0, I)`` per row of ``X`` from torch's
    global generator and returns ``G(z)``: what the adversarial training
    loop needs. ``generate(z)`` maps given codes.

    Parameters
    ----------
    input_shape : tuple
        ``(n_features,)`` or ``(channels, height, width)``.
    latent_dim : int, default=100
        Size of z.
    base_channels : int, default=64
        Channels of the last transposed convolution (ngf), doubled towards
        the code.
    hidden_sizes : tuple of int, default=(64, 32)
        Hidden widths of the tabular discriminator; the generator uses them
        in reverse order (from the code to the row).
    """

    def __init__(
        self, input_shape, latent_dim=100, base_channels=64, hidden_sizes=(64, 32)
    ):
        super().__init__()
        self.input_shape = tuple(input_shape)
        self.latent_dim = latent_dim
        if len(self.input_shape) == 1:
            self.net = MLP(latent_dim, tuple(hidden_sizes)[::-1], self.input_shape[0])
        else:
            self.net = ConvDecoder(self.input_shape, latent_dim, base_channels)
            self.net.apply(dcgan_init)

    def generate(self, z):
        """Images (or rows) for codes ``z`` of shape (N, latent_dim)."""
        return self.net(z)

    def forward(self, X):
        z = torch.randn(X.shape[0], self.latent_dim, device=X.device, dtype=X.dtype)
        return self.generate(z)


def anogan_loss(X, X_features, reconstruction, reconstruction_features, disc_weight):
    """Per-sample AnoGAN loss: ``(1 - w) * residual + w * discrimination``.

    Both terms are L1 norms summed over each sample's values (pixels,
    discriminator features); ``disc_weight`` (the paper's lambda) weights
    the discrimination term.

    Returns
    -------
    loss : tensor of shape (N,)
    """
    residual = (X - reconstruction).abs().flatten(1).sum(dim=1)
    discrimination = (X_features - reconstruction_features).abs().flatten(1).sum(dim=1)
    return (1.0 - disc_weight) * residual + disc_weight * discrimination


def best_starts(generate, features, X, candidates, *, disc_weight=0.1):
    """For every sample, the candidate code whose image fits it best.

    The candidates' images and discriminator features are computed once;
    each sample is then compared with all of them by :func:`anogan_loss`
    (broadcast, no Python loop over the samples). A sample's choice
    depends on that sample alone.

    Parameters
    ----------
    generate, features : callable
        As in :func:`latent_search`.
    X : tensor of shape (N, ...)
    candidates : tensor of shape (K, latent_dim)
    disc_weight : float, default=0.1

    Returns
    -------
    z : tensor of shape (N, latent_dim)
    """
    with torch.no_grad():
        images = generate(candidates)  # (K, ...)
        image_features = features(images)
        X_features = features(X)
        n, k = X.shape[0], candidates.shape[0]
        residual = torch.cdist(X.reshape(n, -1), images.reshape(k, -1), p=1)
        discrimination = torch.cdist(
            X_features.reshape(n, -1), image_features.reshape(k, -1), p=1
        )
        loss = (1.0 - disc_weight) * residual + disc_weight * discrimination
        return candidates[loss.argmin(dim=1)]


def latent_search(
    generate,
    features,
    X,
    z_init,
    *,
    steps=500,
    lr=1e-3,
    disc_weight=0.1,
    tol=None,
    patience=5,
):
    """AnoGAN's test-time search, for every sample of a batch at once.

    At most ``steps`` Adam steps (betas (0.9, 0.999)) on the (N, latent_dim)
    codes, minimising the sum over the batch of :func:`anogan_loss`; each
    sample's search is independent of the others (see the module
    docstring). Only the codes are optimised: gradients flow through
    ``generate`` and ``features`` to ``z`` and are accumulated nowhere else,
    so the networks' parameters stay untouched. The networks must be in
    evaluation mode (BatchNorm in training mode would mix the samples of a
    batch).

    With ``tol``, a sample's search stops once its loss improved by less
    than ``tol`` (relative) over the last ``patience`` steps; stopped
    samples leave the batch, so the remaining steps cost only what the
    searching samples need. Whether and when a sample stops depends on its
    own losses alone, so scores still do not depend on the batch.

    Works whatever the caller's autograd mode (also inside
    ``torch.inference_mode``).

    Parameters
    ----------
    generate : callable
        ``z -> G(z)``, e.g. ``AnoGANGenerator.generate``.
    features : callable
        ``x -> f(x)``, the discriminator's feature layer, e.g.
        ``Discriminator.features``.
    X : tensor of shape (N, ...)
        Query batch, scaled as in training.
    z_init : tensor of shape (N, latent_dim)
        Starting codes; not modified.
    steps : int, default=500
        Most Adam steps (the paper's Gamma); 0 scores ``z_init``.
    lr : float, default=1e-3
        Adam learning rate on z.
    disc_weight : float, default=0.1
        Weight of the discrimination term (the paper's lambda).
    tol : float or None, default=None
        Relative improvement over ``patience`` steps below which a sample's
        search stops; None searches every sample for ``steps`` steps.
    patience : int, default=5
        Steps over which the improvement is measured.

    Returns
    -------
    loss : tensor of shape (N,)
        :func:`anogan_loss` at the final codes: the anomaly score.
    z : tensor of shape (N, latent_dim)
        The final codes.
    reconstruction : tensor of shape X.shape
        ``G(z)`` at the final codes.
    n_steps : tensor of shape (N,)
        Steps each sample was searched for.
    """
    with torch.inference_mode(False), torch.enable_grad():
        # a plain copy: inference tensors cannot take part in autograd
        X = X.detach().clone()
        with torch.no_grad():
            X_features = features(X)
        z = z_init.detach().clone().requires_grad_(True)
        optimizer = torch.optim.Adam([z], lr=lr)
        n = X.shape[0]
        active = torch.arange(n, device=X.device)
        n_steps = torch.zeros(n, dtype=torch.long, device=X.device)
        # losses of the last patience + 1 steps of every sample
        recent = torch.full((patience + 1, n), math.inf, dtype=X.dtype, device=X.device)
        for step in range(steps):
            optimizer.zero_grad(set_to_none=True)
            codes = z[active]
            reconstruction = generate(codes)
            loss = anogan_loss(
                X[active],
                X_features[active],
                reconstruction,
                features(reconstruction),
                disc_weight,
            )
            if tol is not None:
                recent[step % (patience + 1), active] = loss.detach()
                if step >= patience:
                    before = recent[(step - patience) % (patience + 1), active]
                    still = (before - loss.detach()) > tol * before.abs()
                    if not bool(still.all()):
                        active, loss = active[still], loss[still]
                        if active.numel() == 0:
                            break
            # sum, not mean: each sample's gradient must not depend on N
            loss.sum().backward(inputs=[z])
            if active.numel() == n:
                optimizer.step()
            else:
                # Adam's momentum would still move stopped samples: keep them
                stopped = torch.ones(n, dtype=torch.bool, device=X.device)
                stopped[active] = False
                kept = z.detach()[stopped].clone()
                optimizer.step()
                with torch.no_grad():
                    z[stopped] = kept
            n_steps[active] += 1
        with torch.no_grad():
            reconstruction = generate(z)
            loss = anogan_loss(
                X, X_features, reconstruction, features(reconstruction), disc_weight
            )
    return loss, z.detach(), reconstruction, n_steps
