"""Tiling of large images: PatchFeatures/PaDiM/PatchCore(tile_size, tile_overlap)."""

import warnings

import numpy as np
import pytest
import torch
from scipy.ndimage import binary_dilation, gaussian_filter
from sklearn.metrics import roc_auc_score

import skanomaly
from skanomaly import PaDiM, PatchCore, PatchFeatures
from skanomaly.detectors.base import CalibrationWarning, get_detector_tags
from skanomaly.nn.maps import TileStitcher, smooth_maps, tile_origins

TINY = dict(backbone="resnet18", weights=None, random_state=0, strides=(4, 8))
DETECTORS = {
    "padim": lambda **kw: PaDiM(n_channels=16, **TINY, **kw),
    "patchcore": lambda **kw: PatchCore(**TINY, **kw),
}


@pytest.fixture(autouse=True)
def _quiet():
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", CalibrationWarning)
        yield


def _texture(rng, n, size):
    """Gray noise low-passed into a fine stochastic texture, uint8 (n, 1, s, s)."""
    x = np.stack([gaussian_filter(im, 1.5) for im in rng.normal(size=(n, size, size))])
    x = (x - x.mean()) / x.std()
    return np.clip(128 + 30 * x, 0, 255).astype(np.uint8)[:, None]


@pytest.fixture(scope="module")
def small():
    return np.random.default_rng(0).integers(100, 156, (6, 3, 64, 64), np.uint8)


def test_tile_origins_cover_the_image_and_end_at_its_edge():
    origins = tile_origins((100, 130), 32, 8)
    covered = np.zeros((100, 130), int)
    for top, left in origins:
        covered[top : top + 32, left : left + 32] += 1
    assert covered.min() >= 1
    assert origins[:, 0].max() == 100 - 32 and origins[:, 1].max() == 130 - 32
    steps = np.diff(np.unique(origins[:, 1]))
    assert steps[:-1].tolist() == [24] * (len(steps) - 1) and steps[-1] <= 24
    assert tile_origins((64, 64), 64, 0).tolist() == [[0, 0]]


def test_stitching_without_overlap_places_each_tiles_map_and_averages_overlaps():
    # tiles that do not overlap: each region of the stitched map is that
    # tile's grid upsampled to the tile, as an untiled image's would be
    origins = tile_origins((64, 96), 32, 0)
    grids = torch.rand(len(origins), 4, 4, generator=torch.Generator().manual_seed(0))
    stitcher = TileStitcher(origins, 32, (64, 96), sigma=0)
    ((image, stitched),) = list(stitcher.add(0, grids))
    assert image == 0 and stitched.shape == (64, 96)
    alone = smooth_maps(grids, size=(32, 32), sigma=0)
    for (top, left), expected in zip(origins, alone, strict=True):
        torch.testing.assert_close(
            stitched[top : top + 32, left : left + 32], expected, rtol=0, atol=1e-6
        )
    # smoothing runs across the seams, on the stitched map
    smoothed = list(TileStitcher(origins, 32, (64, 96), sigma=2).add(0, grids))[0][1]
    torch.testing.assert_close(
        smoothed, smooth_maps(stitched[None], size=(64, 96), sigma=2)[0]
    )
    # two tiles overlapping by 16 px: the overlap is their average
    stitcher = TileStitcher(tile_origins((32, 48), 32, 16), 32, (32, 48), sigma=0)
    grids = torch.stack([torch.full((4, 4), 1.0), torch.full((4, 4), 3.0)])
    # tiles arrive in batches that split images: images finish in order
    first = list(stitcher.add(0, grids[:1]))
    ((image, stitched),) = list(stitcher.add(1, grids[1:]))
    assert first == [] and image == 0
    assert torch.all(stitched[:, :16] == 1) and torch.all(stitched[:, 16:32] == 2)
    assert torch.all(stitched[:, 32:] == 3)


@pytest.mark.parametrize("name", DETECTORS)
def test_one_tile_the_size_of_the_image_equals_the_untiled_detector(name, small):
    untiled = DETECTORS[name](image_size=64).fit(small)
    tiled = DETECTORS[name](tile_size=64).fit(small)
    assert tiled.feature_extractor_.n_tiles_ == 1
    np.testing.assert_array_equal(
        tiled.score_samples(small), untiled.score_samples(small)
    )
    assert tiled.offset_ == untiled.offset_
    np.testing.assert_allclose(
        tiled.anomaly_map(small), untiled.anomaly_map(small), rtol=0, atol=1e-5
    )


def test_a_thin_scratch_on_a_large_texture_is_found_with_tiles_and_missed_without():
    rng = np.random.default_rng(0)
    train, test = _texture(rng, 3, 512), _texture(rng, 5, 512)
    scratch = np.zeros((512, 512), bool)
    scratch[200:260, 300:302] = True  # 2 px wide, 60 px long
    test[:2, 0][:, scratch] = 255
    truth = np.array([1, 1, 0, 0, 0])
    tiled = PaDiM(n_channels=20, tile_size=64, tile_overlap=16, **TINY).fit(train)
    scores = -tiled.score_samples(test)
    assert roc_auc_score(truth, scores) == 1.0
    # the map's maximum lies on the scratch (within the smoothing's reach)
    near = binary_dilation(scratch, iterations=4)
    for anomaly_map in tiled.anomaly_map(test[:2]):
        assert near[np.unravel_index(anomaly_map.argmax(), anomaly_map.shape)]
    # the whole image resized to one 64 px tile: the scratch all but vanishes
    untiled = PaDiM(n_channels=20, image_size=64, **TINY).fit(train)
    assert roc_auc_score(truth, -untiled.score_samples(test)) < 1.0
    for anomaly_map in untiled.anomaly_map(test[:2]):
        assert not near[np.unravel_index(anomaly_map.argmax(), anomaly_map.shape)]


def test_tiles_come_in_batches_of_batch_size_tiles(small):
    features = PatchFeatures(
        tile_size=32, tile_overlap=8, batch_size=4, n_channels=8, **TINY
    ).fit(small)
    assert features.n_tiles_ == 9 and features.image_size_ == (64, 64)
    with torch.inference_mode():
        batches = list(features.patch_batches(small))
    assert [start for start, _ in batches] == list(range(0, 6 * 9, 4))
    assert max(len(batch) for _, batch in batches) == 4
    out = features.transform(small)
    assert out.shape == (6, 9, 8, *features.grid_shape_)
    # tile j of image i is the image's crop at tile_origins_[j]
    (top, left) = features.tile_origins_[4]
    crop = PatchFeatures(image_size=32, n_channels=8, **TINY).fit(small)
    expected = crop.transform(small[:, :, top : top + 32, left : left + 32])
    np.testing.assert_allclose(out[:, 4], expected, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("name", DETECTORS)
def test_a_saved_tiled_detector_loads_and_scores_the_same(name, small, tmp_path):
    detector = DETECTORS[name](tile_size=32, tile_overlap=8).fit(small)
    path = tmp_path / "tiled.ska"
    skanomaly.save(detector, path)
    loaded = skanomaly.load(path)
    assert (loaded.tile_size, loaded.tile_overlap) == (32, 8)
    np.testing.assert_array_equal(
        loaded.score_samples(small), detector.score_samples(small)
    )
    np.testing.assert_array_equal(
        loaded.anomaly_map(small), detector.anomaly_map(small)
    )
    # and fitting again gives the same model
    again = DETECTORS[name](tile_size=32, tile_overlap=8).fit(small)
    np.testing.assert_array_equal(
        again.score_samples(small), detector.score_samples(small)
    )


@pytest.mark.parametrize(
    ("params", "message"),
    [
        (
            dict(tile_size=128),
            r"tile_size=128 is larger than the images .*tile_size <= 64",
        ),
        (
            dict(tile_size=48, image_size=40),
            r"tile_size=48 is larger than image_size=40",
        ),
        (
            dict(tile_size=32, tile_overlap=32),
            r"tile_overlap=32 is not less than tile_size",
        ),
        (dict(tile_size=32, tile_overlap=40), r"tile_overlap=40 .*below tile_size"),
        (dict(tile_size=8), r"tile_size must be at least 16 px"),
        (dict(tile_size=0), r"'tile_size' parameter"),
        (dict(tile_size=32, tile_overlap=-1), r"'tile_overlap' parameter"),
        (dict(tile_size=32.0), r"'tile_size' parameter"),
    ],
)
@pytest.mark.parametrize("name", [*DETECTORS, "features"])
def test_bad_tiles_are_refused_naming_the_parameter_and_nothing_is_fitted(
    name, params, message, small
):
    make = DETECTORS.get(name, lambda **kw: PatchFeatures(**TINY, **kw))
    estimator = make(**params)
    with pytest.raises(ValueError, match=message):
        estimator.fit(small)
    assert not [key for key in vars(estimator) if key.endswith("_")]


@pytest.mark.parametrize("name", DETECTORS)
def test_a_fitted_detector_refitted_with_a_bad_tile_keeps_its_model(name, small):
    fitted = DETECTORS[name](tile_size=32).fit(small)
    before = fitted.score_samples(small)
    with pytest.raises(ValueError, match="tile_overlap=32"):
        fitted.set_params(tile_overlap=32).fit(small)
    np.testing.assert_array_equal(fitted.score_samples(small), before)
    assert (
        fitted.feature_extractor_.tile_size == 32
        and fitted.feature_extractor_.tile_overlap == 0
    )


def test_a_tiled_model_declares_no_input_size_of_its_own():
    assert get_detector_tags(PaDiM(tile_size=224)).input_size is None
    assert get_detector_tags(PaDiM(tile_size=224, image_size=1024)).input_size == (
        1024,
        1024,
    )


@pytest.mark.parametrize(
    ("name", "tiles"),
    [
        # 20 px images resized to the test parameters' 32 px, 3 x 3 tiles
        ("padim", dict(tile_size=16, tile_overlap=4)),
        # at their own 20 px, 2 x 2 tiles overlapping by 12 px
        ("patchcore", dict(tile_size=16, tile_overlap=4, image_size=None)),
    ],
    ids=["padim-resized", "patchcore-own-size"],
)
def test_a_tiled_graph_equals_score_samples_and_anomaly_map(name, tiles, tmp_path):
    pytest.importorskip("onnxruntime")
    pytest.importorskip("onnxscript")
    from _export import check_case

    check_case(name, tiles, "images", tmp_path)
