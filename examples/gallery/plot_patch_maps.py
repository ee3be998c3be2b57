"""
Where is the defect? PaDiM and PatchCore maps
=============================================

:class:`~skanomaly.PaDiM` and :class:`~skanomaly.PatchCore` score every
patch of a pretrained feature grid, so their ``anomaly_map`` says where an
image departs from the normal ones. Here they learn mosaics of
handwritten digits (scikit-learn's digits, 2 x 2 per image), and the test
mosaics carry synthetic defects with exact masks: a grey scratch or a
stain. The pixel metrics of :mod:`skanomaly.metrics` score the maps
against the masks.
"""

# %%
# Normal mosaics and defects
# --------------------------
import matplotlib.pyplot as plt
import numpy as np
from sklearn.datasets import load_digits

from skanomaly import PaDiM, PatchCore
from skanomaly.metrics import aupro_score, pixel_roc_auc_score

digits = load_digits().images / 16.0  # 8 x 8, values in [0, 1]
digits = np.kron(digits, np.ones((4, 4)))  # 32 x 32
rng = np.random.default_rng(0)


def mosaic(pool):
    cells = pool[rng.choice(len(pool), 4, replace=False)]
    return np.block([[cells[0], cells[1]], [cells[2], cells[3]]])  # 64 x 64


train = np.stack([mosaic(digits[:900]) for _ in range(80)])
test = np.stack([mosaic(digits[900:]) for _ in range(12)])
masks = np.zeros(test.shape, bool)
yy, xx = np.mgrid[:64, :64]
for i in range(4, 8):  # scratches: a 2 px grey line
    y0, slope = rng.uniform(10, 50), rng.uniform(-0.6, 0.6)
    masks[i] = (np.abs(yy - (y0 + slope * (xx - 32))) < 1.0) & (np.abs(xx - 32) < 20)
for i in range(8, 12):  # stains: an ellipse of dimmed, greyed pixels
    cy, cx = rng.uniform(14, 50, 2)
    masks[i] = ((yy - cy) / 7) ** 2 + ((xx - cx) / 10) ** 2 <= 1
test[4:8][masks[4:8]] = 0.6
test[8:12][masks[8:12]] = 0.4 * test[8:12][masks[8:12]] + 0.4
test = (test * 255).round().astype(np.uint8)
train = (train * 255).round().astype(np.uint8)

# %%
# Two detectors
# -------------
# Both use ``tf_efficientnet_lite0`` with its ImageNet weights, which come
# with skanomaly (no download); nothing is trained, ``fit`` only collects
# statistics of the training patches. The backbone sees the mosaics at
# 128 px.
detectors = {
    "PaDiM": PaDiM(image_size=128, random_state=0),
    "PatchCore": PatchCore(image_size=128, random_state=0),
}
maps = {}
for name, det in detectors.items():
    det.fit(train)
    maps[name] = det.anomaly_map(test)
    print(
        f"{name}: pixel AUROC {pixel_roc_auc_score(masks, maps[name]):.3f}, "
        f"AUPRO {aupro_score(masks, maps[name]):.3f}"
    )

# %%
# Maps over the images
# --------------------
# One column per test image (four normal, four scratches, four stains); the
# mask's outline is drawn in cyan. Each detector's maps share one colour
# scale, so columns are comparable.
fig, axes = plt.subplots(len(maps), len(test), figsize=(12, 2.4))
for row, (name, values) in enumerate(maps.items()):
    vmin, vmax = np.percentile(values, [1, 99.5])
    for col in range(len(test)):
        ax = axes[row, col]
        ax.imshow(test[col], cmap="gray")
        ax.imshow(values[col], cmap="inferno", alpha=0.55, vmin=vmin, vmax=vmax)
        if masks[col].any():
            ax.contour(masks[col], levels=[0.5], colors="cyan", linewidths=0.8)
        ax.set_xticks([])
        ax.set_yticks([])
    axes[row, 0].set_ylabel(name, fontsize=8)
fig.tight_layout()
plt.show()

# %%
# ``skanomaly score model.ska folder --maps maps/`` writes the same maps as
# 16-bit PNGs, one per image, and ``skanomaly evaluate`` reports the pixel
# AUROC and AUPRO of an MVTec-layout category with ground-truth masks.
