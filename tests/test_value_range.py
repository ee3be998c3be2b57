"""Images are read in the value range of fit, whatever their dtype (issue 22, item 2).

``image_value_range_`` records whether a model was trained on pixels in
[0, 1] (uint8 read as value / 255, or floats in [0, 1]) or in [0, 255]
(other integers, or floats up to 255, read as their values); later images
of the same pixels in any input type score the same, or are refused with
the fix. The export and the report follow the same rule
(test_export_images.py, test_reporting.py).
"""

import warnings

import numpy as np
import pytest
from _value_range import AS, digit_pixels

import skanomaly
from skanomaly import AutoEncoder, BaseDetector
from skanomaly.testing import fast_detector


class _MeanDistance(BaseDetector):
    """The smallest detector: the distance to the training mean."""

    def _fit(self, X):
        self.mean_ = X.mean(axis=0)

    def _score_samples(self, X):
        return -np.abs(X - self.mean_).reshape(len(X), -1).sum(axis=1)


@pytest.fixture(scope="module")
def pixels():
    return digit_pixels()


@pytest.fixture(scope="module")
def autoencoders(pixels):
    """An AutoEncoder fitted on the same training pixels as each input type."""
    train, _ = pixels
    return {
        kind: fast_detector(AutoEncoder, random_state=0).fit(as_kind(train))
        for kind, as_kind in AS.items()
    }


# What a model fitted on one input type makes of the same test pixels as
# another: the same scores ("same"), the same after a warning that they were
# converted ("converted"), or a ValueError that names the fix. Before the
# rule, the five refusals and the float32_255 fit's uint8 scored silently
# wrong (scores shifted by 0.39, every image an outlier; 8e4 after a
# float32_unit fit).
OUTCOMES = {
    ("uint8", "uint8"): "same",
    ("uint8", "int64"): "converted",
    ("uint8", "float32_255"): "divide by 255",
    ("uint8", "float32_unit"): "same",
    ("int64", "uint8"): "converted",
    ("int64", "int64"): "same",
    ("int64", "float32_255"): "same",
    ("int64", "float32_unit"): "look scaled to .0, 1.; multiply them by 255",
    ("float32_255", "uint8"): "converted",
    ("float32_255", "int64"): "same",
    ("float32_255", "float32_255"): "same",
    ("float32_255", "float32_unit"): "look scaled to .0, 1.; multiply them by 255",
    ("float32_unit", "uint8"): "same",
    ("float32_unit", "int64"): "converted",
    ("float32_unit", "float32_255"): "divide by 255",
    ("float32_unit", "float32_unit"): "same",
}


def test_the_recorded_ranges(autoencoders):
    ranges = {kind: det.image_value_range_ for kind, det in autoencoders.items()}
    assert ranges == {
        "uint8": (0.0, 1.0),
        "int64": (0.0, 255.0),
        "float32_255": (0.0, 255.0),
        "float32_unit": (0.0, 1.0),
    }


@pytest.mark.parametrize("method", ["score_samples", "anomaly_map"])
@pytest.mark.parametrize(("fit", "score"), list(OUTCOMES))
def test_the_same_pixels_score_the_same_or_are_refused(
    autoencoders, pixels, method, fit, score
):
    detector = autoencoders[fit]
    _, test = pixels
    run = getattr(detector, method)
    expected = run(AS[fit](test))
    outcome = OUTCOMES[fit, score]
    if outcome not in ("same", "converted"):
        with pytest.raises(ValueError, match=outcome):
            run(AS[score](test))
        return
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        actual = run(AS[score](test))
    converted = [w for w in caught if "converted to" in str(w.message)]
    assert len(converted) == (outcome == "converted")
    scale = float(np.abs(expected).max())
    np.testing.assert_allclose(actual, expected, rtol=1e-5, atol=1e-6 * scale)
    if method == "score_samples":
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            labels = detector.predict(AS[score](test))
        np.testing.assert_array_equal(labels, detector.predict(AS[fit](test)))


@pytest.mark.parametrize(
    ("images", "expected"),
    [
        (np.full((2, 1, 2, 2), 255, np.uint8), (0.0, 1.0)),
        (np.full((2, 1, 2, 2), 1, np.uint8), (0.0, 1.0)),
        (np.full((2, 1, 2, 2), 0.5, np.float64), (0.0, 1.0)),
        (np.full((2, 1, 2, 2), 1.005, np.float32), (0.0, 1.0)),  # overshoot
        (np.full((2, 1, 2, 2), 1.5, np.float32), (0.0, 255.0)),
        (np.full((2, 1, 2, 2), 255, np.int64), (0.0, 255.0)),
        (np.full((2, 1, 2, 2), 1, np.int32), (0.0, 255.0)),  # integers: values
        (np.full((2, 1, 2, 2), 256, np.int64), None),  # beyond 8 bits
        (np.full((2, 1, 2, 2), 65535, np.uint16), None),
        (np.full((2, 1, 2, 2), 300.0, np.float32), None),
        (np.linspace(-2, 2, 8).reshape(2, 1, 2, 2), None),  # standardised
        (np.linspace(-2.1, 2.6, 8).reshape(2, 1, 2, 2), None),  # ImageNet-like
        (np.linspace(-0.005, 200, 8).reshape(2, 1, 2, 2), (0.0, 255.0)),
    ],
)
def test_which_range_a_fit_records(images, expected):
    detector = _MeanDistance(calibration="training").fit(images)
    assert detector.image_value_range_ == expected
    assert detector.image_dtype_ == images.dtype.name


def test_tabular_data_records_no_range():
    X = np.random.default_rng(0).normal(size=(20, 3))
    assert _MeanDistance().fit(X).image_value_range_ is None


def test_images_of_other_values_are_read_as_they_are():
    rng = np.random.default_rng(0)
    detector = _MeanDistance().fit(rng.normal(size=(40, 1, 4, 4)))
    assert detector.image_value_range_ is None
    # no range to hold them to: floats and integers of any values score
    detector.score_samples(rng.normal(size=(3, 1, 4, 4)) * 100)
    detector.score_samples(rng.integers(-5, 5, size=(3, 1, 4, 4)))
    with pytest.raises(ValueError, match="uint8 images, which have no reading"):
        detector.score_samples(np.zeros((3, 1, 4, 4), np.uint8))


def test_images_outside_0_255_after_a_0_255_fit_are_refused(pixels):
    train, test = pixels
    detector = _MeanDistance().fit(AS["int64"](train))
    with pytest.raises(ValueError, match=r"values in \[0, 4080\], outside"):
        detector.score_samples(AS["int64"](test) * 16)  # 12-bit counts
    with pytest.raises(ValueError, match=r"values in \[-255, 0\], outside"):
        detector.score_samples(-AS["float32_255"](test))
    # a black image is black in either range
    assert np.isfinite(detector.score_samples(np.zeros((1, 1, 8, 8)))).all()


def test_the_range_is_checked_after_a_list_set_by_hand(pixels):
    train, test = pixels
    detector = _MeanDistance().fit(AS["float32_255"](train))
    detector.image_value_range_ = [0, 255]
    with pytest.raises(ValueError, match="multiply them by 255"):
        detector.score_samples(AS["float32_unit"](test))


def test_the_range_survives_save_and_load(autoencoders, pixels, tmp_path):
    _, test = pixels
    detector = autoencoders["float32_255"]
    skanomaly.save(detector, tmp_path / "m.ska")
    loaded = skanomaly.load(tmp_path / "m.ska")
    assert loaded.image_value_range_ == (0.0, 255.0)
    with pytest.raises(ValueError, match="multiply them by 255"):
        loaded.score_samples(AS["float32_unit"](test))
    with pytest.warns(UserWarning, match="converted to float32"):
        scores = loaded.score_samples(AS["uint8"](test))
    np.testing.assert_array_equal(
        scores, detector.score_samples(AS["float32_255"](test))
    )


@pytest.fixture(scope="module")
def padim(pixels):
    """A patch detector (uint8 kept, scaled per batch) fitted on floats in [0, 1]."""
    train, _ = pixels
    return fast_detector(skanomaly.PaDiM).fit(AS["float32_unit"](train))


@pytest.mark.parametrize("method", ["score_samples", "anomaly_map"])
def test_a_patch_detector_reads_the_range_of_fit(padim, pixels, method):
    # float 0..255 after a [0, 1] fit scored 1.1e4 away, silently
    _, test = pixels
    run = getattr(padim, method)
    expected = run(AS["float32_unit"](test))
    with pytest.raises(ValueError, match="divide by 255"):
        run(AS["float32_255"](test))
    with pytest.warns(UserWarning, match="converted to uint8"):
        converted = run(AS["int64"](test))
    scale = float(np.abs(expected).max())
    for actual in (run(AS["uint8"](test)), converted):
        np.testing.assert_allclose(actual, expected, rtol=1e-5, atol=1e-6 * scale)


# Every input type a user may hold 8-bit pixels in: integers (read as
# intensities) and floats in [0, 255] or divided by 255.
_TYPES = {
    **{name: (lambda p, t=name: p.astype(t)) for name in ["uint8", "int16", "uint16"]},
    **{
        f"{name}_{scale}": (lambda p, t=name, d=div: (p / d).astype(t))
        for name in ["float16", "float64"]
        for scale, div in [("255", 1.0), ("unit", 255.0)]
    },
    **AS,
}


@pytest.mark.parametrize("score", sorted(_TYPES))
@pytest.mark.parametrize("fit", sorted(_TYPES))
def test_no_input_type_reads_the_same_pixels_otherwise(pixels, fit, score):
    # the property behind the matrix above, over more types: the same pixels
    # score the same (float16 rounding aside) or are refused, and integer
    # pixels, which mean one thing in either range, are never refused
    train, test = pixels
    detector = _MeanDistance().fit(_TYPES[fit](train))
    expected = detector.score_samples(_TYPES[fit](test))
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            actual = detector.score_samples(_TYPES[score](test))
    except ValueError:
        assert score.startswith("float"), (fit, score)
        return
    np.testing.assert_allclose(actual, expected, rtol=1e-2)


def test_uint8_in_a_list_or_a_tensor_reads_as_uint8(pixels):
    # a list of uint8 arrays was read as 0..255 values, yet recorded as uint8
    torch = pytest.importorskip("torch")
    train, test = (AS["uint8"](p) for p in pixels)
    detector = _MeanDistance().fit(train)
    from_list = _MeanDistance().fit(list(train))
    assert from_list.image_value_range_ == (0.0, 1.0)
    expected = detector.score_samples(test)
    np.testing.assert_array_equal(from_list.score_samples(test), expected)
    for other in (list(test), torch.from_numpy(test)):
        np.testing.assert_array_equal(detector.score_samples(other), expected)
