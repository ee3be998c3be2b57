"""Every registered detector takes NumPy views with negative strides (issue 22,
item 17): reversed rows (``X[::-1]``) and flipped channels or columns
(``img[..., ::-1]``, as OpenCV's BGR->RGB code makes) score exactly as their
contiguous copies."""

import numpy as np
import pytest
from sklearn.base import clone

import skanomaly
from skanomaly.detectors.base import get_detector_tags
from skanomaly.testing import fast_detector

_NAMES = skanomaly.list_detectors()


def _views(detector):
    """(what, view) pairs with negative strides, of the kinds it takes."""
    tags = get_detector_tags(detector)
    rng = np.random.default_rng(0)
    views = []
    if tags.tabular:
        table = rng.normal(size=(60, 5))
        views += [("rows reversed", table[::-1]), ("columns reversed", table[:, ::-1])]
    if tags.images:
        images = rng.integers(0, 256, size=(24, 3, 8, 8), dtype=np.uint8)
        views += [
            ("images reversed", images[::-1]),
            ("channels flipped", images[:, ::-1]),
            ("width flipped", images[..., ::-1]),
            ("float channels flipped", (images / np.float32(255))[:, ::-1]),
        ]
    return views


@pytest.mark.parametrize("name", _NAMES)
def test_negative_strides_score_as_their_contiguous_copy(name):
    detector = fast_detector(skanomaly.get_detector(name))
    for what, view in _views(detector):
        assert any(step < 0 for step in view.strides), what
        copy = np.ascontiguousarray(view)
        on_copy = clone(detector).fit(copy)
        expected = on_copy.score_samples(copy)
        message = f"{name}: {what}"
        # fitted on the view, scoring the view
        on_view = clone(detector).fit(view)
        np.testing.assert_allclose(
            on_view.score_samples(view), expected, rtol=1e-5, err_msg=message
        )
        # fitted on an ordinary array, scoring the view
        np.testing.assert_allclose(
            on_copy.score_samples(view), expected, rtol=1e-5, err_msg=message
        )


def test_ordinary_inputs_are_not_copied():
    from skanomaly._validation import as_tensor

    table = np.arange(12.0).reshape(3, 4)
    for array in (table, table[:, ::2], table.T):
        assert np.shares_memory(as_tensor(array).numpy(), array)
    reversed_rows = table[::-1]
    np.testing.assert_array_equal(as_tensor(reversed_rows).numpy(), reversed_rows)
