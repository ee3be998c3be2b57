"""
Grid search over a loss weight in a pipeline
============================================

Detectors are scikit-learn estimators, so a preprocessing step, a detector
and a hyper-parameter search compose as usual. Two things are specific to
anomaly detection, and :mod:`skanomaly` provides both:

- the training folds must hold normal data only:
  :class:`~skanomaly.model_selection.NoveltySplit` removes the outliers from
  every training fold and keeps some in every test fold;
- the scorer must take the anomalies as the positive class and expect the
  labels it is given: ``outlier_roc_auc`` works on scikit-learn's +1 / -1
  labels.

Here a :class:`~skanomaly.VAE` learns the digit 8 from scikit-learn's digits
(the other digits are the anomalies), and the search picks the weight of
the KL term, ``beta``, and the size of the code.
"""

# %%
# Data: normal eights, anomalous other digits
# --------------------------------------------
# Labels follow scikit-learn's outlier convention: +1 inlier, -1 outlier.
# A test set is held out from the search.
import matplotlib.pyplot as plt
import numpy as np
from sklearn.datasets import load_digits
from sklearn.model_selection import GridSearchCV, train_test_split
from sklearn.pipeline import Pipeline
from sklearn.preprocessing import MinMaxScaler

from skanomaly import VAE
from skanomaly.metrics import get_scorer
from skanomaly.model_selection import NoveltySplit

X, digit = load_digits(return_X_y=True)
rng = np.random.default_rng(0)
keep = (digit == 8) | (rng.random(len(X)) < 0.1)  # all eights, 10% of the rest
X, digit = X[keep], digit[keep]
y = np.where(digit == 8, 1, -1)
X_search, X_test, y_search, y_test = train_test_split(
    X, y, test_size=0.3, stratify=y, random_state=0
)
print(f"search: {np.sum(y_search == 1)} inliers, {np.sum(y_search == -1)} outliers")

# %%
# The search
# ----------
# ``fit(X, y)`` leaves the samples labelled -1 out of training, and
# ``NoveltySplit`` does the same for every fold, so the detector never trains
# on an anomaly, including in the final refit on all of ``X_search``.
pipe = Pipeline(
    [
        ("scale", MinMaxScaler()),
        ("vae", VAE(hidden_sizes=(32,), max_epochs=15, random_state=0)),
    ]
)
search = GridSearchCV(
    pipe,
    param_grid={"vae__beta": [0.1, 1.0, 4.0], "vae__latent_dim": [2, 8]},
    cv=NoveltySplit(3),
    scoring=get_scorer("outlier_roc_auc"),
)
search.fit(X_search, y_search)
print("best:", search.best_params_, f"CV AUROC {search.best_score_:.3f}")

# %%
# The held-out test set, scored by the refitted best pipeline:
test_auroc = get_scorer("outlier_roc_auc")(search.best_estimator_, X_test, y_test)
print(f"test AUROC {test_auroc:.3f}")

# %%
# Cross-validated AUROC of every candidate
# ----------------------------------------
results = search.cv_results_
fig, ax = plt.subplots(figsize=(6, 3.5))
for latent_dim in [2, 8]:
    rows = np.flatnonzero(results["param_vae__latent_dim"] == latent_dim)
    ax.errorbar(
        np.asarray(results["param_vae__beta"][rows], dtype=float),
        results["mean_test_score"][rows],
        yerr=results["std_test_score"][rows],
        marker="o",
        capsize=3,
        label=f"latent_dim={latent_dim}",
    )
ax.set_xscale("log")
ax.set_xlabel("beta (weight of the KL term)")
ax.set_ylabel("CV AUROC (outlier_roc_auc)")
ax.legend()
fig.tight_layout()
plt.show()
