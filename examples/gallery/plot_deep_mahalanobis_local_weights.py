"""
DeepMahalanobis with a local weights file
=========================================

:class:`~skanomaly.DeepMahalanobis` fits one Gaussian per level of a frozen
pretrained network and scores images by their Mahalanobis distances; it
trains nothing. Its default backbone's ImageNet weights come with skanomaly
(see :ref:`sphx_glr_auto_examples_plot_deep_mahalanobis_packaged_weights.py`);
other timm backbones read theirs from the Hugging Face cache or a network.
Offline, or with weights of your own (fine-tuned, or from a model zoo you
trust), pass a local file: ``weights="path/to/model.safetensors"``. A
``.safetensors`` file holds tensors only, so loading it cannot run code.

This example writes such a file from a randomly initialised timm ResNet-18,
so that it runs anywhere without a download, then fits the detector from
it. Random convolutional features are enough for these simple digits;
natural and industrial images need real pretrained weights, which go in
the same kind of file.
"""

# %%
# A weights file
# --------------
# Any state dict of the same architecture works; timm's ``num_classes=0``
# leaves out the classifier, which the detector does not use.
import tempfile
from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np
import timm
import torch
from safetensors.torch import save_file
from sklearn.datasets import load_digits
from sklearn.metrics import roc_auc_score

from skanomaly import DeepMahalanobis

torch.manual_seed(0)
backbone = timm.create_model("resnet18", pretrained=False, num_classes=0)
weights_dir = tempfile.TemporaryDirectory()
weights_path = Path(weights_dir.name) / "resnet18.safetensors"
save_file(backbone.state_dict(), str(weights_path))
print(f"{weights_path.name}: {weights_path.stat().st_size / 2**20:.1f} MiB")

# %%
# Fit on normal images
# --------------------
# Digits as ``(n, height, width)`` grayscale images: they are repeated to
# three channels, resized to ``image_size`` and normalised with the
# backbone's ImageNet statistics. A small ``image_size`` keeps this fast on
# a CPU (the default is the backbone's own resolution, 224 for ResNet-18).
X, digit = load_digits(return_X_y=True)
images = X.reshape(-1, 8, 8) / 16.0
normal = np.flatnonzero(digit == 0)
train, test = normal[:100], np.r_[normal[100:], np.flatnonzero(digit != 0)[:300]]

det = DeepMahalanobis(backbone="resnet18", weights=weights_path, image_size=32)
det.fit(images[train])
print("levels:", det.levels_)

# %%
# Scores per level
# ----------------
# ``score_samples`` is minus the sum of the level distances;
# ``level_distances`` gives each level's share. Which levels separate best
# depends on the data and the weights: here, with random weights, the last
# level is much weaker than the others and pulls the total down a little
# (``levels=`` keeps only some).
is_anomaly = digit[test] != 0
distances = det.level_distances(images[test])
for level, column in zip(det.levels_, distances.T):
    print(f"{level:>7}: AUROC {roc_auc_score(is_anomaly, column):.3f}")
total = roc_auc_score(is_anomaly, -det.score_samples(images[test]))
print(f"  total: AUROC {total:.3f}")

fig, ax = plt.subplots(figsize=(6, 3.5))
scores = -det.score_samples(images[test])
bins = np.linspace(scores.min(), scores.max(), 30)
ax.hist(scores[~is_anomaly], bins=bins, alpha=0.7, label="held-out zeros")
ax.hist(scores[is_anomaly], bins=bins, alpha=0.7, label="other digits")
ax.axvline(-det.offset_, color="k", linestyle="--", label="threshold (offset_)")
ax.set_xlabel("anomaly score: sum of Mahalanobis distances")
ax.legend()
fig.tight_layout()
plt.show()

# %%
# The threshold ``offset_`` comes from the training images' own scores, and
# images are closer to a Gaussian fitted on them than new normal images
# are, so with a hundred training images the default threshold flags many
# held-out zeros. The ranking (AUROC) does not depend on it; for ``predict``,
# raise ``contamination`` or pick a threshold on held-out normal images.
#
# The same file works for :class:`~skanomaly.TimmFeatures`, the feature stage
# alone, in front of any scikit-learn estimator. ``.pth`` files saved with
# ``torch.save(model.state_dict(), path)`` are accepted too; they are read
# with ``torch.load(weights_only=True)``, which refuses pickled code.
weights_dir.cleanup()
