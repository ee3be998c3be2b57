"""DTE: diffusion time estimation, parametric and non-parametric (issue 25)."""

import pickle
import warnings

import numpy as np
import pytest
import torch
from sklearn.base import clone
from sklearn.exceptions import ConvergenceWarning
from sklearn.metrics import roc_auc_score
from sklearn.model_selection import GridSearchCV
from sklearn.utils._param_validation import InvalidParameterError

import skanomaly
from skanomaly import DTE
from skanomaly.detectors.base import CalibrationWarning
from skanomaly.nn.dte import (
    NearestNeighbourTime,
    diffusion_variances,
    searched_time_from_variance,
    time_from_variance,
)
from skanomaly.testing import fast_detector, parametrize_detector_checks

# a network, small and fast: a few hundred steps of a small MLP
FAST = dict(
    variant="categorical", hidden_sizes=(32, 32), min_steps=300, lr=1e-3, random_state=0
)


def _separable(seed=0):
    """Gaussian inliers for training; test inliers and shifted anomalies."""
    rng = np.random.default_rng(seed)
    train = rng.normal(size=(300, 6))
    test = np.r_[rng.normal(size=(100, 6)), rng.normal(size=(100, 6)) + 3.0]
    labels = np.r_[np.zeros(100), np.ones(100)]
    return train, test, labels


@pytest.mark.parametrize(
    "params",
    [
        dict(FAST),
        # dropout 0.5 (the authors') left its regression at chance in 300 steps
        dict(FAST, variant="inverse_gamma", dropout=0.0, lr=1e-3),
        dict(variant="nonparametric"),
    ],
    ids=["categorical", "inverse_gamma", "nonparametric"],
)
def test_ranks_shifted_anomalies_below_inliers(params):
    train, test, labels = _separable()
    detector = DTE(**params).fit(train)
    auroc = roc_auc_score(labels, -detector.score_samples(test))
    assert auroc > 0.95, auroc


@pytest.mark.parametrize("params", [FAST, {}], ids=["categorical", "nonparametric"])
def test_anomaly_score_is_the_estimated_step(params):
    # a row noised for longer is estimated at a later step
    train, _, _ = _separable()
    detector = DTE(**params).fit(train)
    rng = np.random.default_rng(1)
    clean = rng.normal(size=(200, 6))
    variances = diffusion_variances(400, 1e-4, 0.01).numpy()
    late = clean + np.sqrt(variances[350]) * rng.normal(size=clean.shape)
    steps_clean = -detector.score_samples(clean)
    steps_late = -detector.score_samples(late)
    assert steps_clean.mean() < steps_late.mean()
    assert (steps_clean >= 0).all()
    if detector.variant == "categorical":  # DTE-NP reads on past the last step
        assert (steps_late <= 400).all()


def test_default_is_the_nonparametric_variant_and_fits_quietly():
    train, test, labels = _separable()
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no training, so no loss to warn about
        detector = DTE().fit(train)
    assert detector.variant == "nonparametric"
    assert not hasattr(detector, "net_") and detector.train_rows_.shape == (300, 6)
    assert roc_auc_score(labels, -detector.score_samples(test)) > 0.95


def test_nonparametric_equals_a_hand_computation():
    X = np.array(
        [[0.0, 1.0, 2.0], [1.0, 0.0, 1.0], [2.0, 2.0, 0.0], [0.5, 1.5, 1.0]]
        + [[1.5, 0.5, 2.5], [3.0, 1.0, 1.0]]
    )
    queries = np.array([[1.0, 1.0, 1.0], [4.0, 4.0, -3.0], [0.0, 1.0, 2.0]])
    det = DTE(
        n_neighbors=2,
        n_steps=50,
        beta_start=0.001,
        beta_end=0.05,
        calibration="training",
    ).fit(X)

    # the torch detectors keep their scaling statistics in float32
    mean, std = X.mean(axis=0).astype(np.float32), X.std(axis=0).astype(np.float32)
    Z, Q = (X - mean) / std, (queries - mean) / std
    betas = np.linspace(0.001, 0.05, 50)
    variances = 1.0 - np.cumprod(1.0 - betas)
    expected, grid = [], []
    for q in Q:
        squared = np.sort(((Z - q) ** 2).sum(axis=1))
        m = squared[:2].mean()
        mode = m / 3  # of the inverse gamma with shape d/2 - 1 and scale m/2
        if mode <= variances[-1]:
            expected.append(np.interp(mode, variances, np.arange(50)))
        else:  # the last segment's slope, on beyond the schedule
            slope = 1.0 / (variances[-1] - variances[-2])
            expected.append(49 + (mode - variances[-1]) * slope)
        # the authors' rule: the largest log density on the schedule's steps
        grid.append(np.argmax(-1.5 * np.log(variances) - (m / 2) / variances))
    scores = det.score_samples(queries)
    np.testing.assert_allclose(scores, -np.array(expected), rtol=1e-12)
    assert det.n_neighbors_ == 2
    # within one step of the authors' rule inside the schedule; beyond it,
    # theirs ties at the last step where this keeps ranking
    assert expected[1] > 49 and grid[1] == 49
    for estimate, step in zip(expected[::2], grid[::2]):
        assert abs(estimate - step) <= 1.0


@pytest.mark.parametrize(
    "k", [5, (2, 3, 5, 10), (1, 2, 3, 5, 10)], ids=["k=5", "default", "with-k=1"]
)
def test_nonparametric_calibrates_on_leave_one_out_scores(k):
    train, _, _ = _separable()
    train = np.r_[train, train[:1]]  # a duplicate keeps its twin as a neighbour
    det = DTE(n_neighbors=k).fit(train)
    assert det.calibration_ == "leave-one-out" and len(det.train_rows_) == 301
    rows = torch.from_numpy(det.train_rows_)
    variances = diffusion_variances(400, 1e-4, 0.01)
    expected = []
    for i in range(len(rows)):
        others = torch.cat([rows[:i], rows[i + 1 :]])
        module = NearestNeighbourTime(others, variances, k)
        expected.append(-module(rows[i : i + 1]).item())
    np.testing.assert_allclose(det.calibration_scores_, np.sort(expected), rtol=1e-10)
    # scored in-sample, a row is its own nearest neighbour, so looks more normal
    in_sample = det.score_samples(train)
    if k != 5 and 1 in k:  # m_1 = 0 for every row: the geometric mean is 0
        assert (in_sample == 0.0).all()
    else:
        assert (in_sample > np.array(expected)).all()


def test_in_sample_calibration_with_k_1_warns():
    train, test, _ = _separable()
    with pytest.warns(CalibrationWarning, match="step 0"):
        det = DTE(n_neighbors=(1, 2, 3, 5, 10), calibration="training").fit(train)
    assert det.offset_ == 0.0 and (det.predict(test) == -1).all()
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        DTE(n_neighbors=(2, 5), calibration="training").fit(train)
        DTE(calibration="training").fit(train)  # the default has no k = 1


@pytest.mark.parametrize("algorithm", ["brute", "kd_tree"])
@pytest.mark.parametrize(
    "k", [5, (2, 3, 5, 10), (1, 2, 3, 5, 10)], ids=["k=5", "default", "with-k=1"]
)
@pytest.mark.parametrize("block_values", [None, 1000], ids=["default", "small"])
def test_nonparametric_tiled_search_equals_one_block(
    block_values, k, algorithm, monkeypatch
):
    # the search runs in tiles of 1024 queries x 2048 training rows in
    # float32; more of both here, with duplicates (ties at the k-th place)
    # and far rows; the scores must equal the one-block float64 formula
    if block_values is not None:  # many blocks of rows in the detector too
        monkeypatch.setattr("skanomaly.detectors.dte._NP_BLOCK_VALUES", block_values)
    rng = np.random.default_rng(0)
    train = rng.normal(size=(3000, 6))
    train[2500:2600] = train[:100]
    queries = np.r_[rng.normal(size=(2400, 6)), 5.0 * rng.normal(size=(100, 6))]
    queries[:50] = train[:50]  # at distance 0 of two training rows
    det = DTE(n_neighbors=k, calibration="training", algorithm=algorithm).fit(train)
    assert det._search_algorithm() == algorithm
    module = det._neighbour_module()
    scaled = det._scale_batch(torch.from_numpy(queries), torch.float64)
    with torch.inference_mode():
        expected = -module(scaled).numpy()
        rows = torch.from_numpy(det.train_rows_)
        every = torch.arange(len(rows))
        expected_loo = -module(rows, every).numpy()
    np.testing.assert_allclose(det.score_samples(queries), expected, rtol=1e-9)
    loo = det._neighbour_scores(det.train_rows_, exclude=every.numpy())
    np.testing.assert_allclose(loo, expected_loo, rtol=1e-9)
    # a duplicated row, left out, keeps its twin (at distance 0): the two
    # score alike, and more normal than their neighbours' median
    np.testing.assert_allclose(loo[:100], loo[2500:2600], rtol=1e-12)
    assert np.median(loo[:100]) > np.median(loo[100:2500])
    if isinstance(k, tuple) and 1 in k:  # their k = 1 mode is 0, so is the mean
        assert (loo[:100] == 0.0).all() and (det.score_samples(queries[:50]) == 0).all()


@pytest.mark.parametrize(
    ("k", "capped"),
    [
        (5, 3),
        ((2, 3, 5, 10), (2, 3)),
        ((1, 2, 3, 5, 10), (1, 2, 3)),
        ((2, 10), (2, 3)),
        ((10, 20), (3,)),
    ],
)
def test_nonparametric_leave_one_out_with_as_few_rows_as_neighbours(k, capped):
    # each k is capped at n - 1 (repeats dropped), so a row scored without
    # itself still has k neighbours (none of them infinitely far)
    X = np.random.default_rng(0).normal(size=(4, 3))
    det = DTE(n_neighbors=k, calibration_size=0.5).fit(X)
    assert det.n_neighbors_ == capped
    assert np.isfinite(det.calibration_scores_).all()
    assert np.isfinite(det.score_samples(X + 1.0)).all()
    expected = DTE(n_neighbors=capped, calibration_size=0.5).fit(X)
    np.testing.assert_array_equal(det.calibration_scores_, expected.calibration_scores_)


def _steps_by_brute_force(Z, Q, ks, variances, leave_out=False):
    """The k-mix step of each row of Q against Z, one row at a time in numpy."""
    steps = []
    for i, q in enumerate(Q):
        squared = ((Z - q) ** 2).sum(axis=1)
        if leave_out:  # Q is Z: row i is not its own neighbour
            squared = np.delete(squared, i)
        squared = np.sort(squared)
        modes = np.array([squared[:k].mean() / Z.shape[1] for k in ks])
        mode = 0.0 if modes.min() == 0 else np.exp(np.log(modes).mean())
        if mode <= variances[-1]:
            steps.append(np.interp(mode, variances, np.arange(len(variances))))
        else:
            slope = 1.0 / (variances[-1] - variances[-2])
            steps.append(len(variances) - 1 + (mode - variances[-1]) * slope)
    return np.array(steps)


@pytest.mark.parametrize("ks", [None, (1, 2, 3, 5, 10)], ids=["default", "with-k=1"])
def test_k_mix_equals_a_brute_force_computation(ks):
    rng = np.random.default_rng(3)
    X = rng.normal(size=(40, 4)) * [1.0, 2.0, 0.5, 3.0]
    X[30] = X[3]  # a duplicated training row
    queries = np.r_[rng.normal(size=(15, 4)), 4.0 + rng.normal(size=(5, 4)), X[7:8]]
    if ks is None:
        det = DTE(calibration_size=0.3).fit(X)  # leave-one-out on 12 of the 40
        ks = (2, 3, 5, 10)
        assert det.n_neighbors == ks and det.n_neighbors_ == ks
    else:
        det = DTE(n_neighbors=ks, calibration_size=0.3).fit(X)

    mean, std = X.mean(axis=0).astype(np.float32), X.std(axis=0).astype(np.float32)
    Z, Q = (X - mean) / std, (queries - mean) / std
    np.testing.assert_allclose(det.train_rows_, Z, rtol=1e-12)
    variances = diffusion_variances(400, 1e-4, 0.01).numpy()
    expected = _steps_by_brute_force(Z, Q, ks, variances)
    scores = det.score_samples(queries)
    np.testing.assert_allclose(scores, -expected, rtol=1e-10)
    assert (expected[:-1] > 0).all()
    if 1 in ks:  # a training row is at distance 0 of itself: step 0
        assert scores[-1] == 0.0
    else:  # with k >= 2 it is still ranked by its other neighbours
        assert 0.0 < expected[-1] < np.median(expected[:15])
    assert (expected[15:20] > 399).all()  # far rows read on past the schedule

    loo = _steps_by_brute_force(Z, Z, ks, variances, leave_out=True)
    assert loo[3] == loo[30]  # the twins keep each other as neighbours
    assert (loo[3] == 0.0) == (1 in ks)
    subset = det._calibration_subset(len(X))
    np.testing.assert_allclose(det.calibration_scores_, np.sort(-loo[subset]))
    every = det._neighbour_scores(det.train_rows_, exclude=np.arange(len(X)))
    np.testing.assert_allclose(every, -loo, rtol=1e-10)
    # not the plain mean of one k: the mix differs from every single k
    for k in ks:
        single = _steps_by_brute_force(Z, Q, (k,), variances)
        assert np.abs(single - expected).max() > 1.0


def test_an_int_k_is_dte_np_and_equals_its_one_element_tuple():
    train, test, _ = _separable()
    five = DTE(n_neighbors=5).fit(train)
    assert five.n_neighbors_ == 5
    np.testing.assert_array_equal(
        five.score_samples(test), DTE(n_neighbors=(5,)).fit(train).score_samples(test)
    )
    # DTE-NP: the step of m_5 / d, the mean of the 5 nearest squared distances
    Z = five.train_rows_
    Q = five._scale_batch(torch.from_numpy(test), torch.float64).numpy()
    variances = diffusion_variances(400, 1e-4, 0.01).numpy()
    squared = np.sort(((Q[:, None, :] - Z[None]) ** 2).sum(axis=2), axis=1)
    mode = squared[:, :5].mean(axis=1) / 6
    inside = mode <= variances[-1]
    np.testing.assert_allclose(
        -five.score_samples(test)[inside],
        np.interp(mode[inside], variances, np.arange(400)),
        rtol=1e-10,
    )
    mixed = DTE().fit(train).score_samples(test)
    assert np.abs(mixed - five.score_samples(test)).max() > 1.0


@pytest.mark.parametrize("ks", [(1, 2, 3, 5, 10), (2, 3, 5, 10)])
def test_duplicates_give_step_zero_without_warnings(ks):
    # every row twice: a training row's two nearest neighbours are at
    # distance 0 (its own copies), so m_1 = m_2 = 0, and left out its twin is
    # (m_1 = 0): the geometric mean is 0 there, and no log(0) may leak
    X = np.repeat(np.random.default_rng(0).normal(size=(20, 3)), 2, axis=0)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        det = DTE(n_neighbors=ks, calibration_size=0.5).fit(X)
        scores = det.score_samples(X[::2])
    assert (scores == 0.0).all()
    if 1 in ks:
        assert (det.calibration_scores_ == 0.0).all()
    else:  # left out, m_2 counts the twin and one other row
        assert np.isfinite(det.calibration_scores_).all()
        assert (det.calibration_scores_ < 0.0).all()
    assert det.predict(X[::2] + 10.0).tolist() == [-1] * 20


@pytest.mark.parametrize(
    ("k", "match"),
    [
        ((), "n_neighbors"),
        ((1, 0), "n_neighbors"),
        ((3, -2), "n_neighbors"),
        ((1, 2, 2), "n_neighbors"),
        ((1, 2.0), "n_neighbors"),
        ((1, True), "n_neighbors"),
        (0, "n_neighbors"),
        (2.5, "n_neighbors"),
        ("5", "n_neighbors"),
    ],
)
def test_bad_n_neighbors_are_refused(k, match):
    with pytest.raises(ValueError, match=match):
        DTE(n_neighbors=k).fit(np.eye(5))


@pytest.mark.parametrize(
    ("k", "match"),
    [((), "empty"), ((1, 1), "repeats"), ((2, 0), "not a positive int"), (1.0, "int")],
)
def test_neighbour_counts_say_what_is_wrong(k, match):
    from skanomaly.nn.dte import neighbour_counts

    with pytest.raises(ValueError, match=match):
        neighbour_counts(k)
    rows = torch.zeros(3, 2, dtype=torch.float64)
    with pytest.raises(ValueError, match="n_neighbors"):
        NearestNeighbourTime(rows, diffusion_variances(5, 0.01, 0.1), k)
    with pytest.raises(ValueError, match="4 neighbours of 3 training rows"):
        NearestNeighbourTime(rows, diffusion_variances(5, 0.01, 0.1), (1, 4))


def test_n_neighbors_in_a_grid_search_and_clone():
    train, _, _ = _separable()
    det = DTE()
    assert det.get_params()["n_neighbors"] == (2, 3, 5, 10)
    assert clone(det.set_params(n_neighbors=(1, 3))).n_neighbors == (1, 3)

    def mean_step(estimator, X, y=None):
        return float(estimator.score_samples(X).mean())

    grid = GridSearchCV(
        DTE(), {"n_neighbors": [1, (1, 2, 3, 5, 10), (2, 4)]}, scoring=mean_step, cv=2
    ).fit(train)
    # in-distribution rows look least noised by their single nearest row
    assert grid.best_params_ == {"n_neighbors": 1}
    assert grid.best_estimator_.n_neighbors_ == 1


def test_searched_time_from_variance_equals_the_one_matrix_form():
    # scoring uses the binary search, ONNX export the (rows x steps) form
    variances = diffusion_variances(400, 1e-4, 0.01)
    v = torch.cat(
        [
            torch.rand(
                5000, dtype=torch.float64, generator=torch.Generator().manual_seed(0)
            )
            * 1.2,
            variances,  # exactly at the steps
            torch.tensor([0.0, -1.0, 5.0], dtype=torch.float64),  # below, beyond
        ]
    )
    np.testing.assert_allclose(
        searched_time_from_variance(v, variances),
        time_from_variance(v, variances),
        rtol=1e-12,
        atol=1e-12,
    )


def test_time_from_variance_inverts_the_schedule():
    variances = diffusion_variances(20, 1e-3, 0.1)
    np.testing.assert_allclose(
        time_from_variance(variances, variances).numpy(), np.arange(20), atol=1e-9
    )
    halfway = (variances[4] + variances[5]) / 2
    assert time_from_variance(halfway[None], variances).item() == pytest.approx(4.5)
    # beyond the last step it keeps growing, so larger variances rank higher
    beyond = time_from_variance(variances[-1:] * torch.tensor([1.0, 2.0]), variances)
    assert beyond[1] > beyond[0] == pytest.approx(19)


@pytest.mark.parametrize(
    "params",
    [
        dict(variant="categorical"),
        {},
        dict(n_neighbors=5),
        dict(n_neighbors=[1, 4]),
        dict(algorithm="brute"),
    ],
    ids=["categorical", "k-mix", "k=5", "list", "brute"],
)
def test_deterministic_and_saved_scores_identical(params, tmp_path):
    train, test, _ = _separable()
    train = np.r_[train, train[:3]]  # duplicates: leave-one-out steps 0
    first = DTE(**{**FAST, "variant": "nonparametric", **params}).fit(train)
    second = DTE(**{**FAST, "variant": "nonparametric", **params}).fit(train)
    np.testing.assert_array_equal(first.score_samples(test), second.score_samples(test))
    path = tmp_path / "dte.ska"
    skanomaly.save(first, path)
    loaded = skanomaly.load(path)
    np.testing.assert_array_equal(loaded.score_samples(test), first.score_samples(test))
    assert loaded.offset_ == first.offset_
    assert loaded.get_params() == first.get_params()
    if hasattr(first, "n_neighbors_"):
        assert loaded.n_neighbors_ == first.n_neighbors_
    unpickled = pickle.loads(pickle.dumps(first))
    np.testing.assert_array_equal(
        unpickled.score_samples(test), first.score_samples(test)
    )


@pytest.mark.parametrize(
    ("value", "loads"),
    [([1, 2, 3, 5, 10], True), (7, True), ([1, 1], False), ([], False), ([0], False)],
)
def test_the_safe_loader_checks_n_neighbors(value, loads, tmp_path):
    from _forge import rewrite

    path = tmp_path / "dte.ska"
    skanomaly.save(DTE().fit(np.random.default_rng(0).normal(size=(30, 3))), path)

    def edit(document):
        params = document["detector"]["params"]
        if isinstance(value, list):
            params["n_neighbors"] = {"__tuple__": value}
        else:
            params["n_neighbors"] = value

    rewrite(path, edit)
    if loads:
        assert skanomaly.load(path).n_neighbors == (
            tuple(value) if isinstance(value, list) else value
        )
    else:
        with pytest.raises(ValueError, match="n_neighbors"):
            skanomaly.load(path)


def test_random_state_changes_the_network():
    train, test, _ = _separable()
    one = DTE(**{**FAST, "random_state": 1}).fit(train).score_samples(test)
    two = DTE(**{**FAST, "random_state": 2}).fit(train).score_samples(test)
    assert not np.allclose(one, two)


def test_scores_do_not_depend_on_the_batch():
    # DTE-NP scores in blocks; the network in batches
    train, test, _ = _separable()
    for params in (dict(FAST, batch_size=7), {}):
        det = DTE(**params).fit(train)
        whole = det.score_samples(test)
        one_by_one = np.concatenate([det.score_samples(row[None]) for row in test[:20]])
        np.testing.assert_allclose(one_by_one, whole[:20], rtol=1e-12)


def test_refit_with_another_variant_drops_the_old_state():
    train, test, _ = _separable()
    det = DTE(variant="nonparametric").fit(train)
    assert hasattr(det, "train_rows_") and not hasattr(det, "net_")
    det.set_params(**FAST).fit(train)
    assert hasattr(det, "net_") and not hasattr(det, "train_rows_")
    det.set_params(variant="nonparametric").fit(train)
    assert hasattr(det, "train_rows_") and not hasattr(det, "net_")


@pytest.mark.parametrize(
    ("params", "X", "match"),
    [
        ({}, [[0.0, np.nan], [1.0, 2.0], [2.0, 1.0]], "NaN"),
        ({}, [[0.0, 1.0]], "sample"),
        (dict(beta_start=0.02, beta_end=0.01), np.eye(5), "beta_start"),
        (dict(variant="inverse_gamma"), np.eye(5)[:, :2], "at least 3 features"),
    ],
    ids=["nan", "single-row", "decreasing-schedule", "inverse-gamma-2d"],
)
def test_bad_input_errors(params, X, match):
    with pytest.raises(ValueError, match=match):
        DTE(**{**FAST, **params}).fit(X)


@pytest.mark.parametrize(
    "params",
    [
        dict(variant="gaussian"),
        dict(n_steps=1),
        dict(beta_end=1.0),
        dict(n_bins=1),
        dict(n_neighbors=0),
        dict(n_neighbors=(1, 1)),
        dict(algorithm="ball_tree"),
        dict(algorithm=None),
    ],
)
def test_invalid_parameters_are_refused(params):
    with pytest.raises(InvalidParameterError):
        DTE(**params).fit(np.eye(5))


@pytest.mark.parametrize(
    "params",
    [
        dict(variant="categorical"),
        dict(variant="inverse_gamma"),
        dict(variant="nonparametric", n_neighbors=5),
        dict(variant="nonparametric"),
        dict(variant="nonparametric", n_neighbors=(1, 2, 3, 5, 10)),
        dict(variant="nonparametric", n_neighbors=(2, 7)),
    ],
    ids=["categorical", "inverse_gamma", "k=5", "default", "with-k=1", "k-pair"],
)
def test_onnx_graph_equals_score_samples(params, tmp_path):
    # tests/test_export_tabular.py runs DTE's test parameters (n_neighbors=5)
    pytest.importorskip("onnxruntime")
    pytest.importorskip("onnxscript")
    from _export import check_case

    check_case("dte", params, "tabular", tmp_path)


def test_onnx_graph_of_a_k_mix_with_duplicates(tmp_path):
    # with k = 1 among the k, rows at distance 0 of a training row are at
    # step 0, so the graph must compute those distances as exactly 0
    pytest.importorskip("onnxruntime")
    pytest.importorskip("onnxscript")
    from _export import check_export

    rng = np.random.default_rng(0)
    X = np.r_[rng.normal(size=(40, 4)), np.zeros((2, 4))]
    det = DTE(n_neighbors=(1, 2, 3, 5, 10)).fit(X)
    queries = np.r_[X[:5], rng.normal(size=(5, 4)), X[-1:]]
    assert (det.score_samples(queries)[[0, 1, 2, 3, 4, 10]] == 0.0).all()
    check_export(det, queries, tmp_path / "model.onnx")


@pytest.mark.parametrize(
    "value", [{"__tuple__": [0, 2]}, {"__tuple__": [1, 1]}, 10**6, "five"]
)
def test_a_forged_fitted_n_neighbors_fails_scoring_with_a_value_error(value, tmp_path):
    # the loader checks parameters, not this fitted value; scoring refuses it
    from _forge import rewrite

    X = np.random.default_rng(0).normal(size=(30, 3))
    path = tmp_path / "dte.ska"
    skanomaly.save(DTE().fit(X), path)

    def edit(document):
        document["detector"]["state"]["n_neighbors_"] = value

    rewrite(path, edit)
    try:
        loaded = skanomaly.load(path)
    except ValueError:
        return  # refused on load: as good
    with pytest.raises(ValueError, match="n_neighbors"):
        loaded.score_samples(X)


def test_categorical_training_does_not_warn_of_divergence():
    # tests/test_conformance.py runs this check on the default variant, which
    # does not train; DTE-C's loss (bounded, 1.95 untrained) falls slowly
    from sklearn.datasets import load_digits

    from skanomaly.detectors.torch_base import _MIN_EPOCHS_TO_DECREASE

    X, digit = load_digits(return_X_y=True)
    detector = fast_detector(
        DTE, variant="categorical", max_epochs=_MIN_EPOCHS_TO_DECREASE
    )
    with warnings.catch_warnings():
        warnings.simplefilter("error", ConvergenceWarning)
        detector.fit(X[digit == 1])


# tests/test_conformance.py checks the default (non-parametric) DTE; the
# network passes the same checks ('inverse_gamma' refuses the checks' one-
# and two-column tables, by design: it needs three features)
@parametrize_detector_checks([fast_detector(DTE, variant="categorical")])
def test_categorical_variant_conforms(estimator, check):
    check(estimator)


def _tied_rows(n_features, seed=0):
    """Training rows on a coarse grid (many exact ties at every k-th place),
    a row repeated 15 times (more twins than the largest k + 1), and queries:
    grid rows, training rows, new rows and far rows."""
    rng = np.random.default_rng(seed)
    train = rng.integers(0, 3, size=(1500, n_features)).astype(float)
    train[:500] += rng.normal(scale=0.3, size=(500, n_features))
    train[1000:1015] = train[0]
    queries = np.r_[
        rng.integers(0, 3, size=(300, n_features)).astype(float),
        train[:40],
        rng.normal(size=(300, n_features)),
        6.0 * rng.normal(size=(60, n_features)),
    ]
    return train, queries


@pytest.mark.parametrize("n_features", [1, 2, 3, 10, 24])
@pytest.mark.parametrize(
    "k",
    [1, 5, (2, 3, 5, 10), (1, 2, 3, 5, 10)],
    ids=["k=1", "k=5", "default", "k=1-10"],
)
def test_kd_tree_scores_equal_brute_force(n_features, k):
    # the tree finds its neighbours exactly in float64; ties (the grid, the
    # repeated row) may name other rows, but never other distances. The
    # reference is the one-block float64 search (the module's forward).
    train, queries = _tied_rows(n_features)
    brute = DTE(n_neighbors=k, algorithm="brute").fit(train)
    tree = DTE(n_neighbors=k, algorithm="kd_tree").fit(train)
    assert brute._search_algorithm() == "brute"
    assert tree._search_algorithm() == "kd_tree"
    module = tree._neighbour_module()
    every = np.arange(len(train))
    with torch.inference_mode():
        scaled = tree._scale_batch(torch.from_numpy(queries), torch.float64)
        expected = -module(scaled).numpy()
        rows = torch.from_numpy(tree.train_rows_)
        expected_loo = -module(rows, torch.from_numpy(every)).numpy()
    scores = tree.score_samples(queries)
    np.testing.assert_allclose(scores, expected, rtol=1e-9)
    loo = tree._neighbour_scores(tree.train_rows_, exclude=every)
    np.testing.assert_allclose(loo, expected_loo, rtol=1e-9)
    # the tiled brute search finds its rows in float32: where rounding swaps
    # two nearly equidistant rows at the k-th place (here: 1 column, k = 5,
    # left out) its steps move by up to 4e-5
    np.testing.assert_allclose(
        scores, brute.score_samples(queries), rtol=1e-5, atol=1e-4
    )
    brute_loo = brute._neighbour_scores(brute.train_rows_, exclude=every)
    np.testing.assert_allclose(loo, brute_loo, rtol=1e-5, atol=1e-4)
    np.testing.assert_allclose(
        tree.calibration_scores_, brute.calibration_scores_, rtol=1e-5, atol=1e-4
    )
    # the 15 copies of row 0 keep k of each other at distance 0 left out
    assert (loo[[0, *range(1000, 1015)]] == 0.0).all()


def test_kd_tree_equals_a_numpy_brute_force_computation():
    # against the one-row-at-a-time numpy reference, not another search
    train, queries = _tied_rows(3, seed=1)
    train, queries = train[::3], queries[::3]
    det = DTE(algorithm="kd_tree", calibration_size=0.5).fit(train)
    Z = det.train_rows_
    Q = det._scale_batch(torch.from_numpy(queries), torch.float64).numpy()
    variances = diffusion_variances(400, 1e-4, 0.01).numpy()
    ks = (2, 3, 5, 10)
    expected = _steps_by_brute_force(Z, Q, ks, variances)
    np.testing.assert_allclose(det.score_samples(queries), -expected, rtol=1e-10)
    loo = _steps_by_brute_force(Z, Z, ks, variances, leave_out=True)
    every = det._neighbour_scores(Z, exclude=np.arange(len(Z)))
    np.testing.assert_allclose(every, -loo, rtol=1e-10)


def test_tree_neighbours_leaves_out_the_row_itself():
    from scipy.spatial import cKDTree

    from skanomaly.nn.dte import tree_neighbours

    rows = np.array([[0.0], [0.0], [0.0], [1.0], [3.0]])
    tree = cKDTree(rows)
    index = tree_neighbours(tree, rows, 2, exclude=np.arange(5))
    for i, found in enumerate(index):
        assert i not in found.tolist() or np.sum(rows[found, 0] == rows[i, 0]) > 2
        others = np.sort(np.abs(np.delete(rows[:, 0], i) - rows[i, 0]))[:2]
        np.testing.assert_array_equal(
            np.sort(np.abs(rows[found, 0] - rows[i, 0])), others
        )
    assert index.shape == (5, 2) and index.dtype == np.int64
    assert tree_neighbours(tree, rows[3:4], 1).tolist() == [[3]]


@pytest.mark.parametrize(
    ("n_features", "expected"), [(1, "kd_tree"), (10, "kd_tree"), (11, "brute")]
)
def test_auto_takes_the_tree_up_to_ten_columns(n_features, expected, monkeypatch):
    import skanomaly.detectors.dte as module

    calls = []

    def spy(*args, **kwargs):
        calls.append(1)
        return module_tree_neighbours(*args, **kwargs)

    module_tree_neighbours = module.tree_neighbours
    monkeypatch.setattr(module, "tree_neighbours", spy)
    X = np.random.default_rng(0).normal(size=(50, n_features))
    det = DTE().fit(X)  # leave-one-out calibration searches too
    assert det.algorithm == "auto" and det._search_algorithm() == expected
    det.score_samples(X[:5])
    assert (len(calls) == 2) == (expected == "kd_tree")
    assert (len(calls) == 0) == (expected == "brute")
    forced = DTE(algorithm="kd_tree").fit(X)
    assert forced._search_algorithm() == "kd_tree"
    np.testing.assert_allclose(
        forced.score_samples(X + 0.1), det.score_samples(X + 0.1), rtol=1e-9
    )


def test_the_tree_is_rebuilt_not_stored(tmp_path):
    # a refit on other rows searches the new rows; the file and the pickle
    # hold the training rows, not the tree
    train, test, _ = _separable()
    det = DTE(algorithm="kd_tree").fit(train)
    first = det.score_samples(test)
    assert not any("tree" in name for name in vars(det))
    det.fit(train[:150] + 1.0)
    np.testing.assert_array_equal(
        det.score_samples(test),
        DTE(algorithm="kd_tree").fit(train[:150] + 1.0).score_samples(test),
    )
    assert np.abs(det.score_samples(test) - first).max() > 1.0
    path = tmp_path / "dte.ska"
    skanomaly.save(det, path)
    loaded = skanomaly.load(path)
    assert loaded.algorithm == "kd_tree"
    np.testing.assert_array_equal(loaded.score_samples(test), det.score_samples(test))
    assert b"cKDTree" not in pickle.dumps(det)


def test_algorithm_in_a_grid_search_and_clone():
    train, _, _ = _separable()
    assert DTE().get_params()["algorithm"] == "auto"
    assert clone(DTE(algorithm="brute")).algorithm == "brute"

    def mean_step(estimator, X, y=None):
        return float(estimator.score_samples(X).mean())

    grid = GridSearchCV(
        DTE(), {"algorithm": ["brute", "kd_tree"]}, scoring=mean_step, cv=2
    ).fit(train)
    scores = grid.cv_results_["mean_test_score"]
    assert scores[0] == pytest.approx(scores[1], rel=1e-9)


def test_bad_algorithm_says_which_values_it_takes():
    with pytest.raises(ValueError, match="'algorithm' parameter") as error:
        DTE(algorithm="kdtree").fit(np.eye(5))
    for value in ("'auto'", "'brute'", "'kd_tree'", "'kdtree'"):
        assert value in str(error.value)


def test_algorithm_set_after_fit_is_checked_when_scoring():
    X = np.random.default_rng(0).normal(size=(30, 2))
    det = DTE().fit(X)
    det.algorithm = "ball_tree"
    with pytest.raises(ValueError, match="algorithm must be"):
        det.score_samples(X)


@pytest.mark.parametrize("algorithm", ["kd_tree", "brute"])
def test_rows_whose_distances_overflow_score_lowest_with_a_warning(algorithm):
    # finite rows near 1e155 overflow every squared distance; the tree then
    # names no neighbour at all (index n), which once raised an IndexError
    X = np.random.default_rng(0).normal(size=(40, 3))
    detector = DTE(algorithm=algorithm).fit(X)
    queries = np.vstack([X[:2], X[2:4] * 1e155])
    with pytest.warns(RuntimeWarning, match="non-finite score"):
        scores = detector.score_samples(queries)
    assert (scores[2:] == np.finfo(np.float64).min).all()
    np.testing.assert_array_equal(scores[:2], detector.score_samples(X[:2]))
    assert (detector.predict(queries) == [1, 1, -1, -1]).all()
