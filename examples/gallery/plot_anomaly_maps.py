"""
Anomaly maps next to the images
================================

Detectors that reconstruct their input have ``anomaly_map(X)``: the squared
difference between each image and its reconstruction, averaged over
channels, one value per pixel. Where ``score_samples`` says *whether* an
image is unusual, the map says *where*.

An :class:`~skanomaly.AutoEncoder`, a :class:`~skanomaly.VAE` and a
:class:`~skanomaly.SkipGANomaly` learn handwritten zeros (scikit-learn's
digits, upscaled to 16x16). The test images are held-out zeros, zeros with
a bright bar drawn across them, and other digits.
"""

# %%
# Images
# ------
# ``(n_samples, height, width)`` arrays are read as grayscale images. The
# digits' values run from 0 to 16; detectors map the training range to
# [-1, 1] themselves.
import matplotlib.pyplot as plt
import numpy as np
from sklearn.datasets import load_digits

from skanomaly import VAE, AutoEncoder, SkipGANomaly

X, digit = load_digits(return_X_y=True)
images = np.kron(X.reshape(-1, 8, 8), np.ones((2, 2)))  # 16x16
zeros = images[digit == 0]
train, held_out = zeros[:120], zeros[120:]

defects = held_out[:4].copy()
defects[:, 7:9, 2:14] = 16.0  # a bar through the middle of a zero
others = images[digit != 0][:4]
test = np.concatenate([held_out[4:8], defects, others])
labels = ["normal"] * 4 + ["bar"] * 4 + ["other digit"] * 4

# %%
# Three detectors
# ---------------
# Small settings so that each trains in seconds on a CPU. The printed numbers
# are the mean anomaly score (``-score_samples``) of each group of test
# images.
detectors = {
    "AutoEncoder": AutoEncoder(latent_dim=16, base_channels=16, max_epochs=60),
    "VAE": VAE(latent_dim=16, base_channels=16, max_epochs=60),
    "SkipGANomaly": SkipGANomaly(
        latent_dim=16, base_channels=8, lr=1e-3, max_epochs=40
    ),
}
maps = {}
for name, det in detectors.items():
    det.set_params(random_state=0).fit(train)
    maps[name] = det.anomaly_map(test)
    normal, bar, other = -det.score_samples(test).reshape(3, 4).mean(axis=1)
    print(f"{name}: normal {normal:.3g}, bar {bar:.3g}, other {other:.3g}")

# %%
# Inputs and maps
# ---------------
# One column per test image; the maps of each detector share one colour
# scale, so columns are comparable.
fig, axes = plt.subplots(1 + len(maps), len(test), figsize=(12, 4.4))
for col, (image, label) in enumerate(zip(test, labels)):
    axes[0, col].imshow(image, cmap="gray_r")
    axes[0, col].set_title(label, fontsize=8)
for row, (name, values) in enumerate(maps.items(), start=1):
    vmax = np.percentile(values, 99)
    for col in range(len(test)):
        axes[row, col].imshow(values[col], cmap="inferno", vmin=0, vmax=vmax)
    axes[row, 0].set_ylabel(name, fontsize=8)
for ax in axes.ravel():
    ax.set_xticks([])
    ax.set_yticks([])
fig.tight_layout()
plt.show()

# %%
# The bar lights up where it crosses the zero: the models learned to
# reproduce zeros and cannot reproduce the bar. Other digits differ from a
# zero along much of their stroke, and their maps show it. Maps come from
# detectors that reconstruct their input (AutoEncoder, VAE, AnoGAN, EGBAD,
# GANomaly, Skip-GANomaly). GANomaly scores in its latent space, so its
# reconstruction, and with it its map, is a by-product that can be blurry
# even when its scores rank well.
