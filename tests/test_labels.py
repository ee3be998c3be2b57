"""The labels' one rule: every reader of labels agrees on what they mean."""

import warnings

import numpy as np
import pytest
from sklearn.model_selection import KFold

from skanomaly import labels
from skanomaly._validation import select_inliers
from skanomaly.labels import anomaly_mask, to_outlier_labels
from skanomaly.metrics import _anomaly_mask
from skanomaly.model_selection import NoveltySplit

# (labels, their convention, True = anomaly)
LABELLED = [
    ([0, 1, 1, 0], "anomaly", [False, True, True, False]),
    ([0.0, 1.0, 1.0, 0.0], "anomaly", [False, True, True, False]),
    ([False, True, True, False], "anomaly", [False, True, True, False]),
    ([1, -1, -1, 1], "outlier", [False, True, True, False]),
    ([1.0, -1.0, -1.0, 1.0], "outlier", [False, True, True, False]),
]


def _other(convention):
    return "outlier" if convention == "anomaly" else "anomaly"


@pytest.mark.parametrize(("y", "convention", "expected"), LABELLED)
def test_every_reader_agrees(y, convention, expected):
    # rule 2: the inferred convention is the one whose readers accept y ...
    assert anomaly_mask(y).tolist() == expected
    assert anomaly_mask(y, convention=convention).tolist() == expected
    name = f"{convention}_roc_auc"
    assert _anomaly_mask(y, convention, name).tolist() == expected
    # ... and the readers of the other convention refuse it (rule 3)
    with pytest.raises(ValueError, match="convention"):
        anomaly_mask(y, convention=_other(convention))
    with pytest.raises(ValueError, match="convention"):
        _anomaly_mask(y, _other(convention), f"{_other(convention)}_roc_auc")
    X = np.arange(len(y))[:, None]
    if convention == "outlier":
        kept = select_inliers(X, np.asarray(y), estimator_name="D")
        np.testing.assert_array_equal(kept, X[~np.asarray(expected)])
        outlier = np.asarray(y)
        assert -1 in outlier
    else:
        with pytest.warns(UserWarning, match="ignores y"):
            assert select_inliers(X, np.asarray(y), estimator_name="D") is X
        outlier = to_outlier_labels(y)
        assert (outlier == -1).tolist() == expected
    # NoveltySplit reads the outlier labels the same way
    y12 = np.resize(outlier, 12)
    for train, _ in NoveltySplit(KFold(2)).split(np.zeros((12, 1)), y12):
        assert (y12[train] == 1).all()


@pytest.mark.parametrize(
    "y", [["0", "1"], ["1", "-1"], np.array([0, "1"], dtype=object)]
)
def test_strings_are_not_labels(y):
    # rule 1: no reader takes "1" for 1
    with pytest.raises(ValueError, match="non-numbers"):
        anomaly_mask(y)
    for convention in ("anomaly", "outlier"):
        with pytest.raises(ValueError, match="non-numbers"):
            anomaly_mask(y, convention=convention)
        with pytest.raises(ValueError, match="expects"):
            _anomaly_mask(np.asarray(y), convention, f"{convention}_f1")
    with pytest.warns(UserWarning, match="ignores y"):
        select_inliers(np.zeros((len(y), 1)), np.asarray(y), estimator_name="D")


def test_booleans_are_never_outlier_labels():
    # rule 2: True = anomaly everywhere; all-True is not "all inliers" for fit
    y = np.ones(4, dtype=bool)
    X = np.zeros((4, 1))
    with pytest.warns(UserWarning, match="ignores y"):
        select_inliers(X, y, estimator_name="D")
    with pytest.raises(ValueError, match="booleans"):
        anomaly_mask(y, convention="outlier")
    assert anomaly_mask(y, convention="anomaly").all()


def test_only_ones_are_refused_where_the_convention_is_not_given():
    # rule 4: [1, 1] is all anomalies in one convention, all normal in the other
    with pytest.raises(ValueError, match="only the label 1"):
        anomaly_mask([1, 1])
    assert anomaly_mask([1, 1], convention="anomaly").tolist() == [True, True]
    assert anomaly_mask([1, 1], convention="outlier").tolist() == [False, False]


def test_outlier_labels_pass_fit_without_a_warning():
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        kept = select_inliers(
            np.arange(3)[:, None], np.array([1, -1, 1]), estimator_name="D"
        )
    assert kept.ravel().tolist() == [0, 2]


def test_public_names_stay_where_users_import_them():
    from skanomaly.metrics import to_outlier_labels as from_metrics
    from skanomaly.reporting import anomaly_mask as from_reporting

    assert from_metrics is labels.to_outlier_labels
    assert from_reporting is labels.anomaly_mask


def test_unknown_convention():
    with pytest.raises(ValueError, match="convention must be"):
        anomaly_mask([0, 1], convention="binary")
