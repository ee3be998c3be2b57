"""
Grid-searching GANomaly's loss weights
======================================

GANomaly trains its generator on a weighted sum of three losses: adversarial
(``w_adv``), contextual reconstruction (``w_con``) and latent encoding
(``w_enc``). Which weights work depends on the data, so we pick them like any
other hyper-parameter, by cross-validation, with scikit-learn's
:class:`~sklearn.model_selection.GridSearchCV`.

Two things differ from a classifier's search:

* a detector is trained on normal data only, so the cross-validation must
  keep the anomalies out of the training folds and put some in every test
  fold: :class:`~skanomaly.model_selection.NoveltySplit` does that;
* the score must rank anomalies above normal samples:
  :func:`skanomaly.metrics.get_scorer` gives scorers for the anomaly class
  that refuse a label convention they do not expect.

We search ``w_con`` and ``w_enc`` on scikit-learn's digits and plot the
cross-validated AUROC over the grid. See :doc:`/model_selection` for the
same search on a Dask cluster.
"""

# ruff: noqa: E402 (sphinx-gallery style: each cell imports what it uses)

# %%
# Data: digit 1 is normal, other digits are anomalies
# ---------------------------------------------------
# Labels are 1 = anomaly, as in most anomaly benchmarks. The search needs
# scikit-learn's outlier convention (+1 inlier, -1 outlier): ``fit(X, y)``
# leaves the samples labelled -1 out of training, which is what makes the
# final ``refit`` on all the data train on normal digits only.
# :func:`~skanomaly.metrics.to_outlier_labels` converts, and refuses labels
# it would have to guess about. A part of the data is held out to check the
# chosen detector on samples the search never saw.
import numpy as np
from sklearn.datasets import load_digits
from sklearn.model_selection import train_test_split

from skanomaly.metrics import to_outlier_labels

X_digits, digit = load_digits(return_X_y=True)
rng = np.random.default_rng(0)
normal = np.flatnonzero(digit == 1)
others = rng.choice(np.flatnonzero(digit != 1), size=80, replace=False)
X_all = X_digits[np.r_[normal, others]]  # 64 pixel intensities per row
is_anomaly = np.r_[np.zeros(normal.size, int), np.ones(others.size, int)]

X, X_new, is_anomaly_dev, is_anomaly_new = train_test_split(
    X_all, is_anomaly, test_size=0.2, stratify=is_anomaly, random_state=0
)
y = to_outlier_labels(is_anomaly_dev)
print(f"search data: {np.sum(y == 1)} normal, {np.sum(y == -1)} anomalies")

# %%
# The search
# ----------
# Twelve weight pairs, three folds. ``NoveltySplit`` wraps a shuffled
# ``StratifiedKFold`` and drops the anomalies from its training folds; the
# ``outlier_roc_auc`` scorer takes +1/-1 labels (scikit-learn's own
# ``"roc_auc"`` gives the same number on them, but silently inverts with
# 0/1 labels, where ``outlier_roc_auc`` raises). A fixed ``random_state``
# makes every fit reproducible, wherever it runs.
from sklearn.model_selection import GridSearchCV, StratifiedKFold

from skanomaly import GANomaly
from skanomaly.metrics import get_scorer
from skanomaly.model_selection import NoveltySplit

param_grid = {"w_con": [10, 25, 50, 100], "w_enc": [0.5, 1, 2]}
search = GridSearchCV(
    GANomaly(max_epochs=5, latent_dim=8, batch_size=16, random_state=0),
    param_grid,
    scoring=get_scorer("outlier_roc_auc"),
    cv=NoveltySplit(StratifiedKFold(3, shuffle=True, random_state=0)),
    n_jobs=-1,
)
search.fit(X, y)
print("best weights:", search.best_params_)
print(f"best CV AUROC: {search.best_score_:.3f}")

# %%
# CV AUROC over the grid
# ----------------------
import matplotlib.pyplot as plt

results = search.cv_results_
w_con, w_enc = param_grid["w_con"], param_grid["w_enc"]
mean = np.empty((len(w_con), len(w_enc)))
std = np.empty_like(mean)
for k, params in enumerate(results["params"]):
    i, j = w_con.index(params["w_con"]), w_enc.index(params["w_enc"])
    mean[i, j] = results["mean_test_score"][k]
    std[i, j] = results["std_test_score"][k]

fig, ax = plt.subplots(figsize=(5, 4.5))
image = ax.imshow(mean, cmap="viridis", origin="lower")
for i in range(len(w_con)):
    for j in range(len(w_enc)):
        ax.text(
            j,
            i,
            f"{mean[i, j]:.3f}\n± {std[i, j]:.3f}",
            ha="center",
            va="center",
            color="white" if mean[i, j] < mean.mean() else "black",
            fontsize=8,
        )
ax.set_xticks(range(len(w_enc)), labels=w_enc)
ax.set_yticks(range(len(w_con)), labels=w_con)
ax.set_xlabel("w_enc (latent loss weight)")
ax.set_ylabel("w_con (reconstruction loss weight)")
ax.set_title("GANomaly on digits: 3-fold CV AUROC")
fig.colorbar(image, ax=ax, label="mean AUROC")
fig.tight_layout()

# %%
# The chosen detector on held-out data
# ------------------------------------
# ``refit=True`` (the default) trained ``best_estimator_`` on all the
# normal samples of the search data. The held-out labels are 1 = anomaly,
# so they are scored with the ``anomaly_*`` scorers, which would raise on
# +1/-1 labels rather than return an inverted number.
detector = search.best_estimator_
predicted = detector.predict(X_new)  # +1 normal, -1 anomaly
print(f"flagged {np.sum(predicted == -1)} of {predicted.size} held-out samples")
for name in ["anomaly_roc_auc", "anomaly_average_precision", "anomaly_f1"]:
    print(f"held-out {name}: {get_scorer(name)(detector, X_new, is_anomaly_new):.3f}")

# %%
# On a Dask cluster
# -----------------
# The estimators pickle and their modules import in worker processes, so the
# same search runs on a Dask cluster through joblib's ``dask`` backend,
# unchanged (``pip install "skanomaly[distributed]"``):
#
# .. code-block:: python
#
#     import joblib
#     from dask.distributed import Client, LocalCluster
#
#     if __name__ == "__main__":  # worker processes re-import this script
#         with (
#             LocalCluster(n_workers=2, threads_per_worker=1) as cluster,
#             Client(cluster),  # or Client("tcp://scheduler:8786")
#             joblib.parallel_config(backend="dask"),
#         ):
#             search.fit(X, y)
#
# ``benchmarks/grid_search_dask.py`` runs this grid both ways, checks that the
# results are equal and times them; :doc:`/model_selection` covers a real
# cluster with one GPU per worker, and Ray.

plt.show()
