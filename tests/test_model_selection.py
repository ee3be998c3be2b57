"""NoveltySplit: inlier-only training folds, and the searches that use it."""

import numpy as np
import pytest
from sklearn.datasets import load_digits
from sklearn.experimental import enable_halving_search_cv  # noqa: F401
from sklearn.metrics import roc_auc_score
from sklearn.model_selection import (
    GridSearchCV,
    GroupKFold,
    HalvingGridSearchCV,
    KFold,
    PredefinedSplit,
    RandomizedSearchCV,
    RepeatedStratifiedKFold,
    StratifiedKFold,
    cross_validate,
)

from skanomaly import AutoEncoder
from skanomaly.metrics import get_scorer, to_outlier_labels
from skanomaly.model_selection import NoveltySplit


def labels(n_inliers=50, n_outliers=10, seed=0):
    y = np.r_[np.ones(n_inliers, dtype=int), -np.ones(n_outliers, dtype=int)]
    return np.random.default_rng(seed).permutation(y)


@pytest.fixture(scope="module")
def digits():
    """Digit 9 as the normal class, 30 other digits as outliers (+1/-1)."""
    X, digit = load_digits(return_X_y=True)
    rng = np.random.default_rng(0)
    idx = np.r_[np.flatnonzero(digit == 9), rng.choice(np.flatnonzero(digit != 9), 30)]
    idx = rng.permutation(idx)
    return X[idx], to_outlier_labels(digit[idx] != 9)


AE = dict(hidden_sizes=(16,), max_epochs=2, batch_size=32, random_state=0)
# the searches train for a few steps on purpose (speed), and say so
SHORT_TRAINING_IS_MEANT = "ignore::skanomaly.detectors.torch_base.TooFewStepsWarning"


# -- the splits ---------------------------------------------------------------


def test_default_split_is_stratified_with_inlier_only_train_folds():
    y = labels()
    X = np.zeros((y.size, 2))
    folds = list(NoveltySplit(5).split(X, y))
    assert len(folds) == 5 == NoveltySplit(5).get_n_splits(X, y)
    tested = np.concatenate([test for _, test in folds])
    assert sorted(tested.tolist()) == list(range(y.size))  # each sample once
    for train, test in folds:
        assert (y[train] == 1).all()
        assert np.sum(y[test] == -1) == 2  # 10 outliers over 5 folds
        assert np.sum(y[test] == 1) == 10
        # the training fold is every inlier not under test
        assert (
            sorted(np.r_[train, test[y[test] == 1]]) == np.flatnonzero(y == 1).tolist()
        )


def test_wraps_a_shuffled_splitter_and_passes_y():
    y = labels()
    X = np.zeros((y.size, 2))
    inner = StratifiedKFold(3, shuffle=True, random_state=1)
    for (train, test), (inner_train, inner_test) in zip(
        NoveltySplit(inner).split(X, y), inner.split(X, y)
    ):
        np.testing.assert_array_equal(test, inner_test)
        np.testing.assert_array_equal(train, inner_train[y[inner_train] == 1])


def test_wraps_predefined_split_and_index_lists():
    y = labels(12, 4, seed=1)
    X = np.zeros((y.size, 1))
    test_fold = np.arange(y.size) % 2
    test_fold[np.flatnonzero(y == -1)] = [0, 0, 1, 1]  # outliers in both folds
    pairs = list(PredefinedSplit(test_fold).split())
    for cv in (PredefinedSplit(test_fold), pairs):
        folds = list(NoveltySplit(cv).split(X, y))
        assert len(folds) == 2 == NoveltySplit(cv).get_n_splits()
        for (train, test), (inner_train, inner_test) in zip(folds, pairs):
            np.testing.assert_array_equal(test, inner_test)
            np.testing.assert_array_equal(train, inner_train[y[inner_train] == 1])


def test_groups_reach_a_group_splitter():
    y = labels(40, 8, seed=2)
    groups = np.arange(y.size) % 4
    X = np.zeros((y.size, 1))
    folds = list(NoveltySplit(GroupKFold(4)).split(X, y, groups))
    assert len(folds) == 4
    for train, test in folds:
        assert set(groups[train]).isdisjoint(groups[test])
        assert (y[train] == 1).all() and (y[test] == -1).any()


def test_get_n_splits_delegates():
    assert NoveltySplit().get_n_splits() == 5
    assert (
        NoveltySplit(RepeatedStratifiedKFold(n_splits=2, n_repeats=3)).get_n_splits()
        == 6
    )
    assert repr(NoveltySplit(3)) == "NoveltySplit(cv=3)"


def test_fold_without_outliers_raises():
    # outliers at the end and an unshuffled KFold: early test folds lack them
    y = np.r_[np.ones(20, dtype=int), -np.ones(4, dtype=int)]
    with pytest.raises(ValueError, match=r"split 0 of KFold.*test fold has no outlier"):
        list(NoveltySplit(KFold(3)).split(np.zeros((24, 1)), y))


def test_fold_without_inliers_raises():
    y = np.r_[-np.ones(8, dtype=int), np.ones(16, dtype=int)]
    with pytest.raises(ValueError, match=r"split 0 .*test fold has no inlier"):
        list(NoveltySplit(KFold(3)).split(np.zeros((24, 1)), y))


@pytest.mark.parametrize(
    "y, match",
    [
        (None, "needs y"),
        (np.r_[np.zeros(8, dtype=int), np.ones(4, dtype=int)], "to_outlier_labels"),
        (np.r_[np.zeros(8, dtype=bool), np.ones(4, dtype=bool)], "outlier convention"),
        (np.ones(12, dtype=int), "no outlier"),
        (np.r_[np.ones(8), 2 * np.ones(4)], "outlier convention"),
        (np.ones((12, 1), dtype=int), "1-D"),
    ],
)
def test_labels_are_checked(y, match):
    with pytest.raises(ValueError, match=match):
        list(NoveltySplit(2).split(np.zeros((12, 1)), y))


# -- the searches ---------------------------------------------------------------
# UserWarnings are errors here: neither fit's "ignores y" warning nor an
# undefined score on a one-class fold may pass unnoticed.


@pytest.mark.filterwarnings(SHORT_TRAINING_IS_MEANT)
@pytest.mark.filterwarnings("error::UserWarning")
def test_grid_search_scores_equal_a_manual_novelty_cv(digits):
    X, y = digits
    cv = NoveltySplit(StratifiedKFold(3, shuffle=True, random_state=0))
    grid = {"latent_dim": [2, 16]}
    search = GridSearchCV(
        AutoEncoder(**AE), grid, scoring=get_scorer("outlier_roc_auc"), cv=cv
    ).fit(X, y)

    for i, latent_dim in enumerate(grid["latent_dim"]):
        manual = []
        for train, test in cv.split(X, y):
            assert (y[train] == 1).all()
            det = AutoEncoder(**AE, latent_dim=latent_dim).fit(X[train])
            manual.append(roc_auc_score(y[test] == -1, -det.score_samples(X[test])))
        assert search.cv_results_["mean_test_score"][i] == pytest.approx(
            np.mean(manual), abs=1e-12
        )
    assert search.cv_results_["mean_test_score"].min() > 0.6
    # refit=True trained the final detector on the inliers only
    best = AutoEncoder(**AE, **search.best_params_).fit(X[y == 1])
    np.testing.assert_array_equal(
        search.best_estimator_.score_samples(X), best.score_samples(X)
    )


@pytest.mark.filterwarnings(SHORT_TRAINING_IS_MEANT)
@pytest.mark.filterwarnings("error::UserWarning")
def test_cross_validate_with_several_scorers(digits):
    X, y = digits
    names = ["outlier_roc_auc", "outlier_average_precision", "outlier_f1"]
    result = cross_validate(
        AutoEncoder(**AE),
        X,
        y,
        cv=NoveltySplit(3),
        scoring={name: get_scorer(name) for name in names},
        return_estimator=True,
    )
    for name in names:
        assert np.isfinite(result[f"test_{name}"]).all()
    for det, (train, test) in zip(result["estimator"], NoveltySplit(3).split(X, y)):
        manual = roc_auc_score(y[test] == -1, -det.score_samples(X[test]))
        assert manual in result["test_outlier_roc_auc"]
        # each fold's detector was trained on that fold's inliers only (less
        # the ones it held out to calibrate)
        n_fit = train.size - det.calibration_scores_.size
        assert det.net_.history[-1, "train_batch_count"] == np.ceil(n_fit / 32)


@pytest.mark.filterwarnings(SHORT_TRAINING_IS_MEANT)
@pytest.mark.filterwarnings("error::UserWarning")
def test_randomized_search_refits(digits):
    X, y = digits
    search = RandomizedSearchCV(
        AutoEncoder(**AE),
        {"latent_dim": [2, 4, 8, 16], "lr": [1e-3, 1e-2]},
        n_iter=3,
        random_state=0,
        scoring="roc_auc",  # scikit-learn's, right with +1/-1 labels
        cv=NoveltySplit(3),
    ).fit(X, y)
    scores = search.cv_results_["mean_test_score"]
    assert np.isfinite(scores).all()
    assert search.best_score_ == scores.max()
    assert search.best_estimator_.predict(X[:5]).shape == (5,)


@pytest.mark.filterwarnings(SHORT_TRAINING_IS_MEANT)
@pytest.mark.filterwarnings("error::UserWarning")
def test_halving_search_over_epochs(digits):
    X, y = digits
    search = HalvingGridSearchCV(
        AutoEncoder(**AE),
        {"latent_dim": [2, 4, 8, 16]},
        resource="max_epochs",
        min_resources=1,
        max_resources=4,
        factor=2,
        scoring=get_scorer("outlier_roc_auc"),
        cv=NoveltySplit(3),
        random_state=0,
        return_train_score=False,  # training folds hold no outlier to rank
    ).fit(X, y)
    assert search.n_resources_ == [1, 2, 4]
    assert np.isfinite(search.cv_results_["mean_test_score"]).all()
    assert search.best_estimator_.max_epochs == 4
    assert len(search.best_estimator_.net_.history) == 4
