"""PatchFeatures, PaDiM and PatchCore: features, Gaussians, coreset, maps."""

import importlib.util
import warnings

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from scipy.ndimage import gaussian_filter
from sklearn.covariance import ledoit_wolf

import skanomaly
from skanomaly import PaDiM, PatchCore, PatchFeatures
from skanomaly.detectors import patch_base
from skanomaly.detectors.base import CalibrationWarning
from skanomaly.nn import patchcore as bank_module
from skanomaly.nn.backbones import preprocess_images
from skanomaly.nn.maps import gaussian_blur
from skanomaly.nn.patchcore import greedy_coreset, nearest_in_bank, nearest_neighbours

SMALL = dict(backbone="test_efficientnet", weights=None, random_state=0)


def _textures(n, size=32, seed=0):
    """Smooth random textures (uint8, 1 channel): the normal class."""
    rng = np.random.default_rng(seed)
    noise = rng.normal(size=(n, size, size))
    smooth = np.stack([gaussian_filter(x, 1.5) for x in noise])
    smooth = (smooth - smooth.mean()) / smooth.std()
    return np.clip(128 + 40 * smooth, 0, 255).astype(np.uint8)[:, None]


def _with_square(images, top=8, left=16, side=8):
    """Images with a bright square: the defect, and its mask."""
    bad = images.copy()
    bad[:, :, top : top + side, left : left + side] = 255
    mask = np.zeros(images.shape[2:], bool)
    mask[top : top + side, left : left + side] = True
    return bad, mask


# ----------------------------------------------------------- PatchFeatures


def test_default_levels_are_the_last_of_each_stride():
    images = _textures(2, 64)
    lite = PatchFeatures("tf_efficientnet_lite0", weights=None, strides=(4, 8, 16))
    lite.fit(images)
    assert lite.levels_ == ("blocks.1", "blocks.2", "blocks.4")
    assert lite.level_channels_ == (24, 40, 112) and lite.n_channels_ == 176
    assert lite.level_strides_ == (4, 8, 16)
    resnet = PatchFeatures("resnet18", weights=None, image_size=64).fit(images)
    assert resnet.levels_ == ("layer2", "layer3")
    assert resnet.grid_shape_ == (8, 8)
    with pytest.raises(ValueError, match="no level of stride 5"):
        PatchFeatures("resnet18", weights=None, strides=(5,)).fit(images)


def test_patch_features_are_pooled_upsampled_and_concatenated():
    images = _textures(3, 40)
    stage = PatchFeatures(**SMALL, image_size=48, strides=(4, 8)).fit(images)
    out = stage.transform(images)
    x = preprocess_images(
        torch.from_numpy(images),
        size=(48, 48),
        mean=stage.mean_,
        std=stage.std_,
        interpolation=stage.interpolation_,
        in_chans=3,
    )
    with torch.inference_mode():
        _, levels = stage.backbone_.forward_intermediates(x, extra_blocks=True)
    fine, coarse = (levels[stage.all_levels_.index(n)] for n in stage.levels_)
    fine = F.avg_pool2d(fine, 3, 1, 1)
    coarse = F.interpolate(
        F.avg_pool2d(coarse, 3, 1, 1), size=fine.shape[-2:], mode="bilinear"
    )
    expected = torch.cat([fine, coarse], dim=1).numpy()
    assert out.shape == (3, stage.n_channels_, 12, 12)
    np.testing.assert_allclose(out, expected, rtol=1e-4, atol=1e-5)
    subset = PatchFeatures(**SMALL, image_size=48, strides=(4, 8), n_channels=10)
    subset.fit(images)
    np.testing.assert_array_equal(
        subset.channel_indices_, np.sort(subset.channel_indices_)
    )
    np.testing.assert_allclose(
        subset.transform(images), out[:, subset.channel_indices_], rtol=1e-5, atol=1e-6
    )
    assert subset.get_feature_names_out().shape == (10,)


def test_orthogonal_reduction_projects_every_channel_onto_orthonormal_columns():
    images = _textures(3, 40)
    params = dict(SMALL, image_size=48, strides=(4, 8))
    full = PatchFeatures(**params).fit(images)
    out = full.transform(images)  # (3, 56, 12, 12)
    stage = PatchFeatures(**params, n_channels=10, channel_reduction="orthogonal")
    stage.fit(images)
    W = stage.projection_
    assert W.shape == (56, 10) and stage.channel_indices_ is None
    np.testing.assert_allclose(W.T @ W, np.eye(10), atol=1e-5)
    # not a subset in disguise: every reduced channel mixes many channels
    assert (np.abs(W) > 1e-3).sum(axis=0).min() > 40
    expected = np.einsum("nchw,cd->ndhw", out, W)
    reduced = stage.transform(images)
    assert reduced.shape == (3, 10, 12, 12)
    np.testing.assert_allclose(reduced, expected, rtol=1e-4, atol=1e-4)
    assert list(stage.get_feature_names_out()[:2]) == ["projection0", "projection1"]
    again = PatchFeatures(**params, n_channels=10, channel_reduction="orthogonal")
    np.testing.assert_array_equal(again.fit(images).projection_, W)
    other = PatchFeatures(
        **{**params, "random_state": 1}, n_channels=10, channel_reduction="orthogonal"
    )
    assert not np.allclose(other.fit(images).projection_, W)
    with pytest.raises(ValueError, match="channel_reduction"):
        PatchFeatures(**params, n_channels=10, channel_reduction="pca").fit(images)


def test_padim_projects_by_default_and_keeps_the_papers_subset_as_an_option():
    images = _textures(12, 32)
    params = dict(SMALL, image_size=32, strides=(4, 8), n_channels=12)
    det = PaDiM(**params).fit(images)
    assert det.feature_extractor_.projection_.shape == (56, 12)
    assert det.location_.shape == (64, 12)
    paper = PaDiM(**params, channel_reduction="random").fit(images)
    assert paper.feature_extractor_.projection_ is None
    assert paper.feature_extractor_.channel_indices_.shape == (12,)
    assert not np.allclose(det.score_samples(images), paper.score_samples(images))


def test_patch_features_refuse_what_they_cannot_compute():
    images = _textures(2, 32)
    with pytest.raises(ValueError, match="at least 32 px"):
        PatchFeatures("tf_efficientnet_lite0", weights=None, image_size=24).fit(images)
    with pytest.raises(ValueError, match="more than the 56 channels"):
        PatchFeatures(**SMALL, image_size=32, strides=(4, 8), n_channels=57).fit(images)
    with pytest.raises(ValueError, match="pooled vectors"):
        PatchFeatures(**SMALL, levels=["blocks.1", "head"]).fit(images)
    with pytest.raises(ValueError, match="odd"):
        PatchFeatures(**SMALL, pool_size=2).fit(images)


# ------------------------------------------------------------------- PaDiM


@pytest.mark.parametrize("covariance", ["empirical", "ledoit_wolf"])
def test_padim_gaussians_are_the_per_position_estimates(covariance):
    images = _textures(24, 32)
    params = dict(SMALL, image_size=32, strides=(4, 8), n_channels=12)
    # batches of 5: the float64 sums stream over several batches
    # the paper's per-position Gaussians (the blend with their mean: below)
    det = PaDiM(
        **params, covariance=covariance, covariance_pooling=0.0, batch_size=5
    ).fit(images)
    features = det.feature_extractor_.transform(images)  # (24, 12, 8, 8)
    rows = features.reshape(24, 12, -1).transpose(2, 0, 1).astype(np.float64)
    np.testing.assert_allclose(det.location_, rows.mean(axis=1), rtol=1e-5, atol=1e-5)
    for position in (0, 17, 63):
        x = rows[position]
        if covariance == "empirical":
            expected = np.cov(x, rowvar=False)
        else:
            expected = ledoit_wolf(x)[0]
        expected += 0.01 * np.eye(12)
        factor = det.cholesky_[position].astype(np.float64)
        np.testing.assert_allclose(factor @ factor.T, expected, rtol=1e-4, atol=1e-5)
    # the map's grid is the Mahalanobis distance to each position's Gaussian
    state = det._device_state(torch.device("cpu"))
    grid = det._patch_scores(torch.from_numpy(features[:2]), state)[0].numpy()
    x = rows[17, :2] - rows[17].mean(axis=0)
    factor = det.cholesky_[17].astype(np.float64)
    expected = np.sqrt(np.einsum("ij,ij->i", x @ np.linalg.inv(factor @ factor.T), x))
    np.testing.assert_allclose(grid.reshape(2, -1)[:, 17], expected, rtol=1e-3)


@pytest.mark.parametrize("covariance", ["empirical", "ledoit_wolf"])
def test_padim_covariance_pooling_blends_each_position_with_the_mean(covariance):
    images = _textures(24, 32)
    params = dict(SMALL, image_size=32, strides=(4, 8), n_channels=12)
    params.update(covariance=covariance, calibration="training", batch_size=5)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", CalibrationWarning)
        per_position = PaDiM(**params, covariance_pooling=0.0).fit(images)
        half = PaDiM(**params, covariance_pooling=0.5).fit(images)
        pooled = PaDiM(**params, covariance_pooling=1.0).fit(images)

    def covariances(det):  # without the ridge
        factors = det.cholesky_.astype(np.float64)
        return factors @ factors.transpose(0, 2, 1) - 0.01 * np.eye(12)

    own, mixed, mean = covariances(per_position), covariances(half), covariances(pooled)
    # w = 1: one covariance, the mean of the positions' sample covariances
    # (before any Ledoit-Wolf shrinkage and the ridge)
    features = per_position.feature_extractor_.transform(images)  # (24, 12, 8, 8)
    rows = features.reshape(24, 12, -1).transpose(2, 0, 1).astype(np.float64)
    ddof = 0 if covariance == "ledoit_wolf" else 1
    expected = np.mean([np.cov(x, rowvar=False, ddof=ddof) for x in rows], axis=0)
    np.testing.assert_allclose(mean, np.broadcast_to(mean[0], mean.shape), atol=1e-5)
    np.testing.assert_allclose(mean[0], expected, rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(mixed, 0.5 * own + 0.5 * mean, rtol=1e-4, atol=1e-5)
    # the locations do not change, and the positions' covariances differed
    np.testing.assert_array_equal(half.location_, per_position.location_)
    assert np.abs(own - mean).max() > 10 * np.abs(mean).max() * 1e-4


def test_padim_covariance_pooling_calibrates_leave_one_out(tmp_path):
    images = _textures(20, 32)
    params = dict(SMALL, image_size=32, strides=(4, 8), n_channels=8)
    det = PaDiM(**params, covariance_pooling=0.5).fit(images)
    assert det.calibration_ == "leave-one-out"
    assert det.pooled_covariance_.shape == (8, 8)
    assert PaDiM(**params, covariance_pooling=0).fit(images).pooled_covariance_ is None
    # the standardised score's training maps are leave-one-out maps too
    standardized = PaDiM(**params, covariance_pooling=0.5, image_score="standardized")
    standardized.fit(images)
    X = _textures(4, 32, seed=1)
    assert np.isfinite(standardized.score_samples(X)).all()
    assert not np.allclose(standardized.map_std_, standardized.map_std_.mean())
    with pytest.raises(ValueError, match="covariance_pooling"):
        PaDiM(**params, covariance_pooling=1.5).fit(images)
    # saved and loaded: the same scores
    skanomaly.save(det, tmp_path / "pooled.ska")
    loaded = skanomaly.load(tmp_path / "pooled.ska")
    assert loaded.covariance_pooling == 0.5
    np.testing.assert_array_equal(loaded.score_samples(X), det.score_samples(X))
    if importlib.util.find_spec("onnxruntime") and importlib.util.find_spec(
        "onnxscript"
    ):
        from _export import check_case

        check_case("padim", {"covariance_pooling": 0.5}, "images", tmp_path)


def test_padim_saved_before_covariance_pooling_loads_as_per_position(tmp_path):
    import pickle

    from _forge import rewrite

    images = _textures(12, 32)
    params = dict(SMALL, image_size=32, strides=(4, 8), n_channels=8)
    det = PaDiM(**params, covariance_pooling=0.0).fit(images)
    X = _textures(3, 32, seed=1)
    # pickled by a version without the parameter (and without its default,
    # 0.5, which would describe another model)
    earlier = pickle.loads(pickle.dumps(det))
    del earlier.covariance_pooling
    old = pickle.loads(pickle.dumps(earlier))
    # a skanomaly file of that version
    skanomaly.save(det, tmp_path / "old.ska")

    def drop(document):
        params = document["detector"]["params"]
        assert "covariance_pooling" in params
        del params["covariance_pooling"]

    rewrite(tmp_path / "old.ska", drop)
    for loaded in (old, skanomaly.load(tmp_path / "old.ska")):
        assert loaded.get_params()["covariance_pooling"] == 0.0
        np.testing.assert_array_equal(loaded.score_samples(X), det.score_samples(X))
        np.testing.assert_array_equal(loaded.predict(X), det.predict(X))
    assert PaDiM().covariance_pooling == 0.5


def test_padim_localises_a_defect():
    normal = _textures(40, 32)
    det = PaDiM(**SMALL, image_size=32, strides=(4, 8), n_channels=24).fit(normal)
    good = _textures(6, 32, seed=1)
    bad, mask = _with_square(good)
    maps = det.anomaly_map(bad)
    assert maps.shape == (6, 32, 32) and maps.dtype == np.float32
    peaks = maps.reshape(6, -1).argmax(axis=1)
    assert mask.ravel()[peaks].all()
    assert det.score_samples(bad).max() < det.score_samples(good).min()
    # at the backbone's own size, the image score is the map's maximum
    np.testing.assert_allclose(
        -det.score_samples(bad), maps.max(axis=(1, 2)), rtol=1e-5
    )


def test_padim_map_is_smoothed_upsampled_and_resized():
    images = _textures(20, 24)
    images = np.concatenate([images, images[:, :, :, :16]], axis=3)  # 24 x 40
    det = PaDiM(**SMALL, image_size=32, strides=(4, 8), n_channels=8, sigma=2.0)
    det.fit(images)
    features = torch.from_numpy(det.feature_extractor_.transform(images[:2]))
    grid = det._patch_scores(features, det._device_state(torch.device("cpu")))[0]
    up = F.interpolate(grid[:, None], size=(32, 32), mode="bilinear")[:, 0]
    expected = F.interpolate(
        gaussian_blur(up, 2.0)[:, None], size=(24, 40), mode="bilinear", antialias=True
    )[:, 0]
    maps = det.anomaly_map(images[:2])
    assert maps.shape == (2, 24, 40)
    np.testing.assert_allclose(maps, expected.numpy(), rtol=1e-5, atol=1e-6)


def test_padim_refuses_gaussians_that_would_not_fit_before_allocating():
    images = _textures(4, 32)
    det = PaDiM(**SMALL, image_size=32, strides=(4, 8), n_channels=16)
    # 64 positions x 16 x 16 x 12 bytes = 196,608 bytes
    with pytest.raises(ValueError, match="max_memory_bytes=100,000"):
        det.set_params(max_memory_bytes=100_000).fit(images)
    assert not hasattr(det, "offset_") and not hasattr(det, "feature_extractor_")
    det.set_params(max_memory_bytes=196_608).fit(images)


def test_padim_with_two_images_says_how_to_calibrate():
    images = _textures(2, 32)
    det = PaDiM(**SMALL, image_size=32, strides=(4, 8), n_channels=8)
    with pytest.raises(ValueError, match="at least 3 training images.*'training'"):
        det.fit(images)
    assert not hasattr(det, "cholesky_")  # nothing half-fitted
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", CalibrationWarning)
        det.set_params(calibration="training").fit(images)
    assert np.isfinite(det.score_samples(images)).all()


def test_padim_singular_covariances_get_a_ridge_with_a_warning():
    # the rule of every Gaussian here (skanomaly.gaussian.regularised_cholesky)
    images = _textures(4, 32)  # 4 images, 16 channels: singular sample covariances
    det = PaDiM(
        **SMALL, image_size=32, strides=(4, 8), n_channels=16, covariance="empirical"
    )
    with pytest.warns(UserWarning, match="grid positions.*singular"):
        det.set_params(reg_covar=0.0, covariance_pooling=0.0).fit(images)
    assert np.all(np.isfinite(det.score_samples(images)))
    with warnings.catch_warnings():
        warnings.simplefilter("error", UserWarning)
        warnings.simplefilter("ignore", CalibrationWarning)
        det.set_params(covariance="ledoit_wolf").fit(images)
        # the mean over 64 positions of 4 images spans all 16 channels
        det.set_params(covariance="empirical", covariance_pooling=0.5).fit(images)


def _statistics(maps):
    """Per-pixel mean and std of ``maps``, the variance shrunk (PaDiM's rule)."""
    mean, var = maps.mean(axis=0), maps.var(axis=0)
    var = (len(maps) * var + 10 * var.mean()) / (len(maps) + 10)
    return mean, np.sqrt(var)


def _standardized(maps, others):
    """``maps`` standardised by the statistics of ``others``."""
    mean, std = _statistics(others)
    return (maps - mean) / std


def test_padim_standardized_image_score_uses_leave_one_out_training_maps():
    images = _textures(12, 32)
    params = dict(SMALL, image_size=32, strides=(4, 8), n_channels=8)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", CalibrationWarning)
        det = PaDiM(**params, image_score="standardized").fit(images)
        plain = PaDiM(**params).fit(images)
        # each training image's map under the Gaussians of the other eleven
        loo = np.concatenate(
            [
                PaDiM(**params)
                .fit(np.delete(images, i, axis=0))
                .anomaly_map(images[i : i + 1])
                for i in range(12)
            ]
        )
    assert plain.map_mean_ is None and plain.map_std_ is None
    assert det.map_mean_.shape == det.map_std_.shape == (32, 32)
    mean, std = _statistics(loo)
    np.testing.assert_allclose(det.map_mean_, mean, rtol=1e-3)
    np.testing.assert_allclose(det.map_std_, std, rtol=1e-3)
    # the maps are unchanged; the image score is the standardised map's maximum
    test = _textures(6, 32, seed=1)
    bad, _ = _with_square(test)
    X = np.concatenate([test, bad])
    maps = det.anomaly_map(X)
    np.testing.assert_allclose(maps, plain.anomaly_map(X), rtol=1e-6)
    z = (maps - det.map_mean_) / det.map_std_
    np.testing.assert_allclose(-det.score_samples(X), z.max(axis=(1, 2)), rtol=1e-4)
    assert not np.allclose(det.score_samples(X), plain.score_samples(X), rtol=0.1)
    assert det.score_samples(bad).max() < det.score_samples(test).min()
    # calibration: each image's leave-one-out map, standardised by the others'
    expected = [
        -_standardized(loo[i], np.delete(loo, i, axis=0)).max() for i in range(12)
    ]
    np.testing.assert_allclose(
        det.calibration_scores_, np.sort(expected), rtol=1e-3, atol=1e-3
    )


def test_padim_standardized_pixels_vary_less_where_normal_maps_vary_less():
    # normal images whose right half is flat: a defect there is unusual
    # although its distance is below the textured half's normal spread
    images = _textures(30, 32)
    images[:, :, :, 16:] = 128
    params = dict(SMALL, image_size=32, strides=(4, 8), n_channels=8)
    det = PaDiM(**params, image_score="standardized").fit(images)
    assert det.map_std_[:, 24:].mean() < det.map_std_[:, :8].mean()


@pytest.mark.parametrize("tiles", [{}, dict(tile_size=16, tile_overlap=4)])
def test_padim_standardized_survives_save_load_and_onnx(tiles, tmp_path):
    from _export import check_case

    params = {"image_score": "standardized", **tiles}
    if importlib.util.find_spec("onnxruntime") and importlib.util.find_spec(
        "onnxscript"
    ):
        check_case("padim", params, "images", tmp_path)
    images = _textures(12, 32)
    X = _textures(4, 32, seed=1)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", CalibrationWarning)
        det = PaDiM(**SMALL, image_size=32, strides=(4, 8), n_channels=8, **params).fit(
            images
        )
    skanomaly.save(det, tmp_path / "m.ska")
    loaded = skanomaly.load(tmp_path / "m.ska")
    np.testing.assert_array_equal(loaded.map_std_, det.map_std_)
    np.testing.assert_array_equal(loaded.score_samples(X), det.score_samples(X))


def test_padim_refuses_an_unknown_image_score():
    with pytest.raises(ValueError, match="image_score"):
        PaDiM(**SMALL, image_score="mean").fit(_textures(4, 32))


# --------------------------------------------------------------- PatchCore


def _farthest_point_reference(x, n, start):
    """Greedy k-center, the textbook way (numpy, float64)."""
    picks = [start]
    nearest = np.linalg.norm(x - x[start], axis=1)
    for _ in range(n - 1):
        pick = int(np.argmax(nearest))
        picks.append(pick)
        nearest = np.minimum(nearest, np.linalg.norm(x - x[pick], axis=1))
    return picks


def test_greedy_coreset_is_farthest_point_selection():
    x = np.random.default_rng(0).normal(size=(500, 6))
    picks = greedy_coreset(torch.from_numpy(x).float(), 40, start=7)
    assert picks.tolist() == _farthest_point_reference(x, 40, 7)


def test_nearest_neighbours_match_brute_force():
    rng = np.random.default_rng(0)
    bank, queries = rng.normal(size=(300, 5)), rng.normal(size=(70, 5))
    bank_t = torch.from_numpy(bank).float()
    distances, indices = nearest_neighbours(
        torch.from_numpy(queries).float(), bank_t, bank_t.square().sum(1), k=3
    )
    full = np.linalg.norm(queries[:, None] - bank[None], axis=2)
    np.testing.assert_array_equal(indices.numpy(), np.argsort(full, axis=1)[:, :3])
    np.testing.assert_allclose(
        distances.numpy(), np.sort(full, axis=1)[:, :3], atol=1e-4
    )


@pytest.mark.parametrize("k", [1, 4])
@pytest.mark.parametrize("grouped", [False, True])
def test_tiled_search_equals_one_block(monkeypatch, k, grouped):
    # tiles of 7 queries x 3 bank rows: ragged edges, bank tiles shorter than k
    monkeypatch.setattr(bank_module, "_QUERY_BLOCK", 7)
    monkeypatch.setattr(bank_module, "_BANK_BLOCK", 3)
    rng = np.random.default_rng(1)
    bank = torch.from_numpy(rng.normal(size=(50, 6))).float()
    queries = torch.from_numpy(rng.normal(size=(40, 6))).float()
    norms2 = bank.square().sum(1)
    groups, one_block = {}, None
    if grouped:
        query_groups = torch.from_numpy(rng.integers(0, 4, 40))
        bank_groups = torch.from_numpy(rng.integers(0, 4, 50))
        groups = dict(query_groups=query_groups, bank_groups=bank_groups)
        one_block = (query_groups, bank_groups)
    distances, indices = nearest_neighbours(queries, bank, norms2, k, **groups)
    expected, expected_indices = nearest_in_bank(
        queries, bank, norms2, k, groups=one_block
    )
    np.testing.assert_allclose(distances, expected, rtol=1e-5, atol=1e-5)
    np.testing.assert_array_equal(indices, expected_indices)
    if grouped:  # no query found a row of its own group
        assert (bank_groups[indices] != query_groups[:, None]).all()


def _one_block_search(queries, bank, bank_norms2, k=1, **groups):
    """The search before tiling: the whole bank per query chunk."""
    pair = None
    if groups:
        pair = (groups["query_groups"], groups["bank_groups"])
    return nearest_in_bank(queries, bank, bank_norms2, k, groups=pair)


def test_patchcore_scores_equal_the_one_block_search(monkeypatch):
    from skanomaly.detectors import patchcore as patchcore_module

    images, test = _textures(16, 32), _textures(4, 32, seed=5)
    params = dict(SMALL, image_size=32, strides=(4, 8), num_neighbors=3)
    monkeypatch.setattr(bank_module, "_QUERY_BLOCK", 50)
    monkeypatch.setattr(bank_module, "_BANK_BLOCK", 16)
    tiled = PatchCore(**params).fit(images)
    monkeypatch.setattr(patchcore_module, "nearest_neighbours", _one_block_search)
    one_block = PatchCore(**params).fit(images)
    # leave-one-out calibration (group masking) and re-weighting (k > 1)
    np.testing.assert_allclose(
        tiled.calibration_scores_, one_block.calibration_scores_, rtol=1e-5
    )
    np.testing.assert_allclose(
        tiled.score_samples(test), one_block.score_samples(test), rtol=1e-5
    )


def test_patchcore_faiss_search_is_exact_when_every_cell_is_probed():
    pytest.importorskip("faiss")
    images, test = _textures(40, 32), _textures(4, 32, seed=5)
    params = dict(SMALL, image_size=32, strides=(4, 8), num_neighbors=3)
    exact = PatchCore(**params).fit(images)
    approx = PatchCore(**params, search="faiss", n_probes=1000).fit(images)
    np.testing.assert_array_equal(approx.memory_bank_, exact.memory_bank_)
    n_cells = len(approx.search_centroids_)
    assert 1 < n_cells < len(approx.memory_bank_)
    assert approx.search_cells_.shape == (len(approx.memory_bank_),)
    assert exact.search_centroids_ is None and exact.search_cells_ is None
    np.testing.assert_allclose(
        approx.calibration_scores_, exact.calibration_scores_, rtol=1e-4
    )
    np.testing.assert_allclose(
        approx.score_samples(test), exact.score_samples(test), rtol=1e-4
    )
    # the cells are fitted; the parameter picks the search
    np.testing.assert_array_equal(
        approx.set_params(search="exact").score_samples(test),
        exact.score_samples(test),
    )
    with pytest.raises(ValueError, match="fit it again"):
        exact.set_params(search="faiss").score_samples(test)
    exact.set_params(search="exact")
    approx.set_params(search="faiss")
    # one cell per patch: never nearer than the exact neighbour
    approx.set_params(n_probes=1)
    features = torch.from_numpy(exact.feature_extractor_.transform(test))
    queries = features.flatten(2).transpose(1, 2).reshape(-1, features.shape[1])
    state = exact._device_state(torch.device("cpu"))
    near, _ = exact._search(queries, state)
    far, rows = approx._search(queries, approx._device_state(torch.device("cpu")))
    assert (far >= near - 1e-4).all()
    bank = torch.from_numpy(approx.memory_bank_)
    np.testing.assert_allclose(
        far[:, 0], (queries - bank[rows[:, 0]]).norm(dim=1), rtol=1e-4
    )


def test_patchcore_faiss_cells_survive_save_and_load(tmp_path):
    pytest.importorskip("faiss")
    images, test = _textures(40, 32), _textures(4, 32, seed=5)
    det = PatchCore(**SMALL, image_size=32, strides=(4, 8), search="faiss")
    det.fit(images)
    skanomaly.save(det, tmp_path / "m.ska")
    loaded = skanomaly.load(tmp_path / "m.ska")
    assert loaded.search == "faiss" and loaded.n_probes == 16
    np.testing.assert_array_equal(loaded.search_cells_, det.search_cells_)
    np.testing.assert_array_equal(loaded.score_samples(test), det.score_samples(test))


def test_patchcore_faiss_search_without_faiss_fits_nothing(monkeypatch):
    import builtins

    real_import = builtins.__import__

    def no_faiss(name, *args, **kwargs):
        if name == "faiss":
            raise ImportError("No module named 'faiss'")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_faiss)
    det = PatchCore(**SMALL, image_size=32, strides=(4, 8), search="faiss")
    with pytest.raises(ImportError, match=r"search='faiss'.*faiss-cpu"):
        det.fit(_textures(8, 32))
    assert not hasattr(det, "feature_extractor_") and not hasattr(det, "memory_bank_")
    with pytest.raises(ValueError, match="search"):
        PatchCore(**SMALL, image_size=32, search="annoy").fit(_textures(8, 32))


def test_patchcore_bank_is_a_coreset_of_training_patches():
    images = _textures(12, 32)
    params = dict(SMALL, image_size=32, strides=(4, 8), coreset_ratio=0.25)
    det = PatchCore(**params, shard_size=None).fit(images)
    patches = det.feature_extractor_.transform(images)
    patches = patches.transpose(0, 2, 3, 1).reshape(
        -1, det.feature_extractor_.n_channels_
    )
    assert det.n_training_patches_ == 12 * 64
    assert det.memory_bank_.shape == (int(0.25 * 12 * 64), 56)
    distance = np.linalg.norm(det.memory_bank_[:, None] - patches[None], axis=2)
    assert distance.min(axis=1).max() < 1e-4  # every bank row is a training patch
    # 56 channels < projection_dim: the selection ran on the features themselves
    start = int(np.flatnonzero(distance[0] < 1e-4)[0])
    order = np.argsort(
        np.linalg.norm(patches[start] - patches, axis=1)
    )  # only to check the second pick is the farthest from the first
    assert np.linalg.norm(det.memory_bank_[1] - patches[order[-1]]) < 1e-4
    # shards of 3 images: the shares still add up to 25% of all patches
    sharded = PatchCore(**params, shard_size=3 * 64).fit(images)
    assert sharded.memory_bank_.shape == det.memory_bank_.shape
    # with the whole bank, training patches are at distance 0
    full = PatchCore(**dict(params, coreset_ratio=1.0), num_neighbors=1).fit(images)
    np.testing.assert_allclose(full.score_samples(images), 0.0, atol=1e-3)


def test_patchcore_auto_shards_only_above_the_exact_limit(monkeypatch):
    from skanomaly.detectors import patchcore as patchcore_module

    images = _textures(12, 32)
    params = dict(SMALL, image_size=32, strides=(4, 8), coreset_ratio=0.25)
    exact = PatchCore(**params, shard_size=None).fit(images)
    auto = PatchCore(**params).fit(images)  # 768 patches: one selection
    assert auto.shard_size_ is None and exact.shard_size_ is None
    np.testing.assert_array_equal(auto.memory_bank_, exact.memory_bank_)
    monkeypatch.setattr(patchcore_module, "_AUTO_EXACT_PATCHES", 12 * 64 - 1)
    monkeypatch.setattr(patchcore_module, "_AUTO_SHARD_SIZE", 3 * 64)
    above = PatchCore(**params).fit(images)
    assert above.shard_size_ == 3 * 64
    sharded = PatchCore(**params, shard_size=3 * 64).fit(images)
    np.testing.assert_array_equal(above.memory_bank_, sharded.memory_bank_)
    assert not np.array_equal(above.memory_bank_, exact.memory_bank_)


def test_patchcore_image_score_is_the_reweighted_top_patch():
    images = _textures(16, 32)
    det = PatchCore(**SMALL, image_size=32, strides=(4, 8), num_neighbors=4)
    det.fit(images)
    test, _ = _with_square(_textures(2, 32, seed=3))
    patches = (
        det.feature_extractor_.transform(test).reshape(2, 56, -1).transpose(0, 2, 1)
    )
    bank = det.memory_bank_.astype(np.float64)
    for image, score in zip(patches, -det.score_samples(test)):
        d = np.linalg.norm(image[:, None] - bank[None], axis=2)
        top = d.min(axis=1).argmax()
        s, m = d[top].min(), d[top].argmin()
        neighbours = np.argsort(np.linalg.norm(bank - bank[m], axis=1))[:4]
        weight = 1 - np.exp(s) / np.exp(d[top, neighbours]).sum()
        assert score == pytest.approx(weight * s, rel=1e-4)
    plain = PatchCore(**SMALL, image_size=32, strides=(4, 8), num_neighbors=1)
    plain.fit(images)
    grid = plain._patch_scores(
        torch.from_numpy(plain.feature_extractor_.transform(test)),
        plain._device_state(torch.device("cpu")),
    )[0]
    np.testing.assert_allclose(
        -plain.score_samples(test), grid.amax(dim=(1, 2)), rtol=1e-6
    )


def test_patchcore_localises_a_defect():
    normal = _textures(30, 32)
    det = PatchCore(**SMALL, image_size=32, strides=(4, 8)).fit(normal)
    good = _textures(6, 32, seed=1)
    bad, mask = _with_square(good)
    maps = det.anomaly_map(bad)
    assert mask.ravel()[maps.reshape(6, -1).argmax(axis=1)].all()
    assert det.score_samples(bad).max() < det.score_samples(good).min()


def test_patchcore_refuses_an_empty_bank():
    with pytest.raises(ValueError, match="empty memory bank"):
        PatchCore(**SMALL, image_size=32, strides=(4, 8), coreset_ratio=0.001).fit(
            _textures(4, 32)
        )


# ------------------------------------------------------------ both of them


@pytest.mark.parametrize("cls", [PaDiM, PatchCore])
def test_patch_detectors_save_and_load_identically(cls, tmp_path):
    images = _textures(10, 32)
    params = {"n_channels": 16} if cls is PaDiM else {}
    det = cls(**SMALL, image_size=32, strides=(4, 8), **params).fit(images)
    path = tmp_path / "model.ska"
    skanomaly.save(det, path)
    loaded = skanomaly.load(path)
    np.testing.assert_array_equal(
        loaded.score_samples(images), det.score_samples(images)
    )
    np.testing.assert_array_equal(loaded.anomaly_map(images), det.anomaly_map(images))
    assert isinstance(loaded.feature_extractor_, PatchFeatures)


@pytest.mark.parametrize("name", ["padim", "patchcore"])
def test_patch_detectors_declare_maps_and_images_only(name):
    tags = skanomaly.detectors.base.get_detector_tags(skanomaly.get_detector(name))
    assert tags.anomaly_maps and tags.images and not tags.tabular
    assert tags.pretrained_weights
    det = skanomaly.make_detector(name)
    assert (det.backbone, det.weights) == ("tf_efficientnet_lite0", "imagenet")


@pytest.mark.parametrize("cls", [PaDiM, PatchCore])
def test_calibration_scores_from_kept_or_recomputed_features(cls, monkeypatch):
    images = _textures(40, 32)
    params = {"n_channels": 16} if cls is PaDiM else {"shard_size": 5 * 64}
    params = dict(SMALL, image_size=32, strides=(4, 8), batch_size=7, **params)
    in_sample = cls(**params, calibration="training").fit(images)
    np.testing.assert_allclose(
        in_sample.calibration_scores_,
        np.sort(in_sample.score_samples(images)),
        rtol=1e-5,
    )
    loo = cls(**params).fit(images)
    assert loo.calibration_ == "leave-one-out" and loo.calibration_scores_.size == 40
    # each image scores less normal without its own patches / in its Gaussians
    assert np.all(loo.calibration_scores_ < in_sample.calibration_scores_)
    # features too large to keep: a second backbone pass, the same scores
    monkeypatch.setattr(patch_base, "_KEEP_TRAINING_BYTES", 0)
    recomputed = cls(**params).fit(images)
    np.testing.assert_allclose(
        recomputed.calibration_scores_, loo.calibration_scores_, rtol=1e-5
    )


@pytest.mark.parametrize("name", ["padim", "patchcore"])
def test_patch_detectors_fit_offline_with_the_packaged_weights(name):
    normal = _textures(12, 64)
    bad, mask = _with_square(_textures(2, 64, seed=1), top=20, left=30, side=12)
    det = skanomaly.make_detector(name, image_size=64, random_state=0).fit(normal)
    maps = det.anomaly_map(bad)
    assert maps.shape == (2, 64, 64)
    assert mask.ravel()[maps.reshape(2, -1).argmax(axis=1)].all()


@pytest.mark.parametrize("dtype", ["int64", "uint16", "list"])
def test_integer_images_are_read_as_8_bit_intensities(dtype):
    # the pretrained backbones read [0, 1]: integers 0..255 are uint8 values,
    # as the other detectors read them, not floats outside [0, 1]
    from skanomaly import PaDiM
    from skanomaly.testing import _images, fast_detector

    images = _images(n_samples=12, shape=(1, 16, 16))
    given = images.tolist() if dtype == "list" else images.astype(dtype)
    reference = fast_detector(PaDiM).fit(images)
    detector = fast_detector(PaDiM).fit(given)
    assert detector.image_dtype_ == "uint8"
    np.testing.assert_array_equal(
        detector.score_samples(images), reference.score_samples(images)
    )
    with pytest.raises(ValueError, match=r"values in \[1, 256\], outside the 8-bit"):
        fast_detector(PaDiM).fit(np.asarray(images, dtype=np.int64) + 1)
