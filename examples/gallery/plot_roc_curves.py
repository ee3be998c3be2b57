"""
ROC curves of several detectors on the same data
================================================

Every detector ranks samples by ``score_samples`` (higher = more normal),
so ROC curves need the anomaly score, its negative, with the anomalies as
the positive class. :class:`~sklearn.metrics.RocCurveDisplay` then draws
the curves of skanomaly's detectors and of scikit-learn's on one plot.

The data are scikit-learn's digits as 64 tabular features, one class
normal (the protocol of Deep SVDD and most later work: train on one digit,
test on held-out samples of it and on every other digit).
"""

# %%
# Data
# ----
import matplotlib.pyplot as plt
import numpy as np
from sklearn.datasets import load_digits
from sklearn.ensemble import IsolationForest
from sklearn.metrics import RocCurveDisplay
from sklearn.neighbors import LocalOutlierFactor
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

from skanomaly import VAE, AutoEncoder, GANomaly, Mahalanobis
from skanomaly.metrics import get_scorer

X, digit = load_digits(return_X_y=True)
normal_digit = 4
rng = np.random.default_rng(0)
normal = rng.permutation(np.flatnonzero(digit == normal_digit))
train = normal[: len(normal) // 2]
test = np.setdiff1d(np.arange(len(X)), train)
X_train, X_test = X[train], X[test]
is_anomaly = digit[test] != normal_digit  # positive class: the anomalies
print(
    f"train {len(train)} normal, test {np.sum(~is_anomaly)} normal + "
    f"{np.sum(is_anomaly)} anomalies"
)

# %%
# Detectors
# ---------
# Small settings so that all of them train in seconds. The torch detectors
# standardise their input themselves; the others get a ``StandardScaler``.
detectors = {
    "Mahalanobis": make_pipeline(StandardScaler(), Mahalanobis()),
    "AutoEncoder": AutoEncoder(max_epochs=40, random_state=0),
    "VAE": VAE(max_epochs=40, random_state=0),
    "GANomaly": GANomaly(
        latent_dim=16, hidden_sizes=(64, 32), max_epochs=40, random_state=0
    ),
    "IsolationForest": IsolationForest(random_state=0),
    "LocalOutlierFactor": make_pipeline(
        StandardScaler(), LocalOutlierFactor(n_neighbors=20, novelty=True)
    ),
}

# %%
# One plot
# --------
# ``-score_samples`` is the anomaly score; ``from_predictions`` takes it with
# the boolean "is anomaly" labels.
fig, ax = plt.subplots(figsize=(6, 6))
for name, det in detectors.items():
    det.fit(X_train)
    RocCurveDisplay.from_predictions(
        is_anomaly, -det.score_samples(X_test), name=name, ax=ax
    )
ax.plot([0, 1], [0, 1], linestyle=":", color="gray")
ax.set_title(f"Digit {normal_digit} normal, the other digits anomalies")
plt.show()

# %%
# With labels in scikit-learn's outlier convention (+1 inlier, -1 outlier)
# the same numbers come from the ``outlier_roc_auc`` scorer, which checks the
# labels it gets instead of silently inverting the curve:
y_test = np.where(is_anomaly, -1, 1)
scorer = get_scorer("outlier_roc_auc")
for name, det in detectors.items():
    print(f"{name:>18}: AUROC {scorer(det, X_test, y_test):.3f}")
