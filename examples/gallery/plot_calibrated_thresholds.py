"""
Thresholds that hold on new data
================================

With ``contamination=0.05`` a detector should flag about 5% of *new* normal
samples. A threshold taken from the training scores cannot promise that:
the model scores what it was fitted on as more normal than anything new.
skanomaly calibrates the threshold on normal samples the model did not fit
(see :doc:`/user_guide/calibration`). Here an AutoEncoder on scikit-learn's
digits, one digit normal, with the threshold from its training scores
(``calibration='training'``, scikit-learn's rule) and calibrated (the
default, a held-out split), then the conformal p-values and a batch flagged
at a false discovery rate.
"""

# %%
# Data: one digit is normal
# -------------------------
import matplotlib.pyplot as plt
import numpy as np
from sklearn.datasets import load_digits

from skanomaly import AutoEncoder
from skanomaly.conformal import benjamini_hochberg

X, digit = load_digits(return_X_y=True)
rng = np.random.default_rng(0)
normal = rng.permutation(np.flatnonzero(digit == 3))
train, new_normal = normal[:120], normal[120:]
anomalies = rng.choice(np.flatnonzero(digit != 3), 20, replace=False)
print(f"train {len(train)} normal; new: {len(new_normal)} normal, 20 anomalies")

# %%
# False alarms on new normal samples
# ----------------------------------
# The same network and training budget; only where the threshold comes from
# differs: the training scores, five-fold cross-fitting (every training
# sample calibrates, at six fits' cost), or a held-out 20% (the default).
# With 63 new normals, one binomial standard deviation at 5% is 2.7 points.
level = 0.05
params = dict(contamination=level, hidden_sizes=(32, 8), random_state=0)
for calibration in ("training", 5, "auto"):
    det = AutoEncoder(calibration=calibration, **params).fit(X[train])
    false_alarms = np.mean(det.predict(X[new_normal]) == -1)
    print(
        f"calibration={calibration!r:11} ({det.calibration_}, "
        f"{len(det.calibration_scores_)} scores): {false_alarms:.0%} of new "
        f"normals flagged at contamination={level}"
    )

# %%
# Conformal p-values
# ------------------
# ``conformal_p_values`` ranks each score among the calibration scores (the
# default model's 24, so p-values are multiples of 1/25). For new normals
# they are close to uniform; anomalies get small ones, and ``predict`` is -1
# exactly where ``p <= contamination``.
p_normal = det.conformal_p_values(X[new_normal])
p_anomaly = det.conformal_p_values(X[anomalies])
assert np.array_equal(det.predict(X[new_normal]) == -1, p_normal <= level)

fig, ax = plt.subplots(figsize=(6, 3))
bins = np.linspace(0, 1, 11)
ax.hist(p_normal, bins=bins, alpha=0.7, label="new normals")
ax.hist(p_anomaly, bins=bins, alpha=0.7, label="anomalies")
ax.set_xlabel("conformal p-value")
ax.set_ylabel("samples")
ax.legend()
fig.tight_layout()

# %%
# A batch at a false discovery rate
# ---------------------------------
# ``predict`` bounds the fraction of *normal* samples flagged. When a batch
# is reviewed together, the fraction of *flags* that are false may matter
# more: Benjamini-Hochberg bounds its expectation. With ``n`` calibration
# scores no p-value is below ``1 / (n + 1)``, and the test needs some below
# ``alpha / len(batch)``: the more calibration samples, the lower the
# ``alpha`` it can work at.
batch_p = np.r_[p_normal, p_anomaly]
is_anomaly = np.r_[np.zeros(len(p_normal), bool), np.ones(len(p_anomaly), bool)]
for name, flagged in (
    (f"predict at {level}", batch_p <= level),
    ("Benjamini-Hochberg at 0.2", benjamini_hochberg(batch_p, alpha=0.2)),
):
    false = np.sum(flagged & ~is_anomaly)
    print(
        f"{name}: {flagged.sum()} flagged, {false} of them normal, "
        f"{np.sum(flagged & is_anomaly)} of 20 anomalies found"
    )
