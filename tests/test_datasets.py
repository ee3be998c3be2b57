import numpy as np
import pytest
from PIL import Image
from sklearn.datasets import load_digits

from skanomaly.app.datasets import (
    list_image_files,
    load_digits_novelty,
    load_image_folder,
    load_labelled_image_folder,
    load_mvtec_category,
)


def _gray(value, size=(6, 8)):
    """A grayscale image of ``size`` (height, width) with a gradient row."""
    pixels = np.full(size, value, np.uint8)
    pixels[0] = np.arange(size[1], dtype=np.uint8)
    return pixels


def test_grayscale_folder_keeps_pixels_and_order(tmp_path):
    images = {name: _gray(10 * i) for i, name in enumerate(["b.png", "a.bmp", "c.tif"])}
    for name, pixels in images.items():
        Image.fromarray(pixels).save(tmp_path / name)
    (tmp_path / "notes.txt").write_text("not an image")
    X, paths = load_image_folder(tmp_path)
    assert [p.rsplit("/", 1)[1] for p in paths] == ["a.bmp", "b.png", "c.tif"]
    assert X.dtype == np.uint8 and X.shape == (3, 1, 6, 8)
    for x, path in zip(X, paths):
        np.testing.assert_array_equal(x[0], images[path.rsplit("/", 1)[1]])


def test_rgb_channels_first_and_alpha_dropped(tmp_path):
    rgba = np.zeros((4, 5, 4), np.uint8)
    rgba[..., 0], rgba[..., 1], rgba[..., 2], rgba[..., 3] = 200, 100, 50, 7
    Image.fromarray(rgba).save(tmp_path / "rgba.png")
    X, _ = load_image_folder(tmp_path)
    assert X.shape == (1, 3, 4, 5)
    assert X[0, :, 0, 0].tolist() == [200, 100, 50]


def test_color_mode_auto_and_forced(tmp_path):
    Image.fromarray(_gray(90)).save(tmp_path / "gray.png")
    rgb = np.zeros((6, 8, 3), np.uint8)
    rgb[..., 1] = 255
    Image.fromarray(rgb).save(tmp_path / "green.png")
    X, paths = load_image_folder(tmp_path)  # mixed: RGB for all
    assert X.shape == (2, 3, 6, 8)
    gray_index = [p.endswith("gray.png") for p in paths].index(True)
    assert (X[gray_index, :, 1:] == 90).all()  # grey repeated to 3 channels
    X, _ = load_image_folder(tmp_path, color_mode="grayscale")
    assert X.shape == (2, 1, 6, 8)
    (tmp_path / "green.png").unlink()
    assert load_image_folder(tmp_path)[0].shape == (1, 1, 6, 8)
    assert load_image_folder(tmp_path, color_mode="rgb")[0].shape == (1, 3, 6, 8)
    with pytest.raises(ValueError, match="color_mode must be one of"):
        load_image_folder(tmp_path, color_mode="cmyk")


def test_jpeg_is_decoded(tmp_path):
    rgb = np.full((16, 16, 3), (30, 120, 220), np.uint8)
    Image.fromarray(rgb).save(tmp_path / "x.jpg", quality=95)
    Image.fromarray(rgb).save(tmp_path / "y.JPEG", quality=95)
    X, _ = load_image_folder(tmp_path)
    assert X.shape == (2, 3, 16, 16)
    assert np.abs(X.astype(int) - [[[30]], [[120]], [[220]]]).max() <= 3


@pytest.mark.parametrize("suffix", [".png", ".tif"])
def test_16_bit_images_are_scaled_to_8_bits(tmp_path, suffix):
    pixels = np.array([[0, 257 * 100, 65535, 257 * 7 + 100]], dtype=np.uint16)
    Image.fromarray(pixels).save(tmp_path / f"deep{suffix}")
    X, _ = load_image_folder(tmp_path)
    assert X.dtype == np.uint8
    assert X[0, 0, 0].tolist() == [0, 100, 255, 7]
    Image.fromarray(np.full((4, 6), 257 * 123, np.uint16)).save(tmp_path / "deep.png")
    (tmp_path / "deep.tif").unlink(missing_ok=True)
    X, _ = load_image_folder(tmp_path, image_size=(3, 5))  # resized in floats
    assert X.shape == (1, 1, 3, 5) and (X == 123).all()


def test_32_bit_integer_and_float_images_read_on_their_scales(tmp_path):
    # a 0..65535 ramp in 32-bit integers, as 16 bits: 0, 85, 170, 255
    ramp = np.array([[0, 21845, 43690, 65535]], dtype=np.int32)
    Image.fromarray(ramp, mode="I").save(tmp_path / "int32.tif")
    X, _ = load_image_folder(tmp_path)
    assert Image.open(tmp_path / "int32.tif").mode == "I"
    assert X[0, 0, 0].tolist() == [0, 85, 170, 255]
    (tmp_path / "int32.tif").unlink()
    # floats in 0..1 as value x 255 (PIL's own conversion truncated to 0/1)
    floats = np.array([[0.0, 1 / 3, 2 / 3, 1.0]], dtype=np.float32)
    Image.fromarray(floats, mode="F").save(tmp_path / "float.tif")
    X, _ = load_image_folder(tmp_path, image_size=(1, 4))
    assert X[0, 0, 0].tolist() == [0, 85, 170, 255]


@pytest.mark.parametrize(
    "pixels, mode, match",
    [
        (np.array([[0.0, 2.0, 255.0]], np.float32), "F", r"\[0, 1\].*0\.\.255"),
        (np.array([[0.0, np.nan, 1.0]], np.float32), "F", r"\[0, 1\]"),
        (np.array([[-5, 0, 70000]], np.int32), "I", "0..65535.*-5..70000"),
    ],
)
def test_high_depth_values_without_a_meaning_are_refused(tmp_path, pixels, mode, match):
    Image.fromarray(pixels, mode=mode).save(tmp_path / "bad.tif")
    with pytest.raises(ValueError, match=f"bad.tif.*{match}"):
        load_image_folder(tmp_path)


def test_resize_int_and_pair(tmp_path):
    for i, size in enumerate([(10, 12), (30, 20)]):
        Image.fromarray(np.full(size, 77, np.uint8)).save(tmp_path / f"{i}.png")
    X, _ = load_image_folder(tmp_path, image_size=8)
    assert X.shape == (2, 1, 8, 8) and (X == 77).all()
    X, _ = load_image_folder(tmp_path, image_size=(5, 9))
    assert X.shape == (2, 1, 5, 9)
    with pytest.raises(ValueError, match="image_size must be"):
        load_image_folder(tmp_path, image_size=(5, 9, 3))


def test_mixed_sizes_name_the_files(tmp_path):
    Image.fromarray(np.zeros((4, 4), np.uint8)).save(tmp_path / "a.png")
    Image.fromarray(np.zeros((4, 6), np.uint8)).save(tmp_path / "b.png")
    with pytest.raises(ValueError, match=r"a\.png' is 4x4 but .*b\.png' is 6x4"):
        load_image_folder(tmp_path)


def test_unreadable_files_raise_or_are_skipped(tmp_path):
    Image.fromarray(_gray(1)).save(tmp_path / "good.png")
    (tmp_path / "garbage.png").write_bytes(b"this is not a png")
    with pytest.raises(ValueError, match=r"Cannot read image file .*garbage\.png"):
        load_image_folder(tmp_path)
    with pytest.warns(UserWarning, match=r"garbage\.png.*skipped"):
        X, paths = load_image_folder(tmp_path, on_error="skip")
    assert len(X) == 1 and paths[0].endswith("good.png")


def test_truncated_file_fails_at_decoding_naming_it(tmp_path):
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (64, 64), np.uint8)).save(
        tmp_path / "cut.png"
    )
    raw = (tmp_path / "cut.png").read_bytes()
    (tmp_path / "cut.png").write_bytes(raw[: len(raw) // 2])  # header intact
    with pytest.raises(ValueError, match=r"cut\.png"):
        load_image_folder(tmp_path)


def test_folder_errors_and_recursion(tmp_path):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        load_image_folder(tmp_path / "missing")
    with pytest.raises(ValueError, match="No image files"):
        load_image_folder(tmp_path)
    (tmp_path / "sub").mkdir()
    Image.fromarray(_gray(3)).save(tmp_path / "sub" / "x.png")
    with pytest.raises(ValueError, match="subfolders not searched"):
        load_image_folder(tmp_path)
    assert load_image_folder(tmp_path, recursive=True)[0].shape == (1, 1, 6, 8)
    assert list_image_files(tmp_path, recursive=True) == [tmp_path / "sub" / "x.png"]


def test_hidden_files_and_folders_are_no_images(tmp_path):
    # macOS writes a ._name resource fork beside each file on shared drives
    # and in zips (under __MACOSX/): they carry image extensions, no image
    Image.fromarray(_gray(3)).save(tmp_path / "a.png")
    (tmp_path / "._a.png").write_bytes(b"\x00\x05\x16\x07 resource fork")
    for hidden in (".thumbnails", "__MACOSX"):
        (tmp_path / hidden).mkdir()
        (tmp_path / hidden / "a.png").write_bytes(b"junk")
    assert list_image_files(tmp_path) == [tmp_path / "a.png"]
    assert list_image_files(tmp_path, recursive=True) == [tmp_path / "a.png"]
    assert load_image_folder(tmp_path, recursive=True)[0].shape == (1, 1, 6, 8)
    # a folder given by the user is read even when its own name is hidden
    (tmp_path / ".cache").mkdir()
    Image.fromarray(_gray(3)).save(tmp_path / ".cache" / "b.png")
    assert list_image_files(tmp_path / ".cache") == [tmp_path / ".cache" / "b.png"]


def _category(root, with_masks=True):
    for sub in ["train/good", "test/good", "test/hole", "ground_truth/hole"]:
        (root / sub).mkdir(parents=True)
    for i in range(3):
        Image.fromarray(_gray(20 + i, (8, 8))).save(
            root / "train/good" / f"{i:03d}.png"
        )
    Image.fromarray(_gray(20, (8, 8))).save(root / "test/good/000.png")
    for i in range(2):
        Image.fromarray(_gray(200, (8, 8))).save(root / "test/hole" / f"{i:03d}.png")
        if with_masks:
            mask = np.zeros((8, 8), np.uint8)
            mask[2 + i : 6, 2:6] = 255
            Image.fromarray(mask).save(root / "ground_truth/hole" / f"{i:03d}_mask.png")
    return root


def test_mvtec_splits_labels_and_masks(tmp_path):
    root = _category(tmp_path / "bottle")
    X, y, paths = load_mvtec_category(root, "train")
    assert X.shape == (3, 1, 8, 8) and y.tolist() == [1, 1, 1]
    X, y, paths, masks = load_mvtec_category(root, "test", return_masks=True)
    assert y.tolist() == [1, -1, -1]
    assert [p.split("/")[-2] for p in paths] == ["good", "hole", "hole"]
    assert masks.dtype == bool and masks.shape == (3, 8, 8)
    assert masks[0].sum() == 0
    assert masks[1].sum() == 16 and masks[2].sum() == 12
    assert masks[2, 3:6, 2:6].all() and not masks[2, 2].any()
    _, _, _, small = load_mvtec_category(root, "test", image_size=4, return_masks=True)
    assert small.shape == (3, 4, 4) and small[1].sum() == 4


def test_mvtec_errors(tmp_path):
    root = _category(tmp_path / "cable", with_masks=False)
    with pytest.raises(FileNotFoundError, match=r"000_mask\.png"):
        load_mvtec_category(root, "test", return_masks=True)
    assert load_mvtec_category(root, "test")[1].tolist() == [1, -1, -1]
    with pytest.raises(FileNotFoundError, match="MVTec AD layout"):
        load_mvtec_category(tmp_path, "train")
    with pytest.raises(ValueError, match="split must be one of"):
        load_mvtec_category(root, "validation")


def test_labelled_folder(tmp_path):
    root = _category(tmp_path / "bottle")
    X, y, paths = load_labelled_image_folder(root / "test", image_size=(4, 2))
    assert X.shape == (3, 1, 4, 2) and y.tolist() == [1, -1, -1]
    with pytest.raises(ValueError, match="No image files in the subfolders"):
        load_labelled_image_folder(root / "train/good")


def test_digits_novelty_protocol():
    X, digits = load_digits(return_X_y=True)
    X_train, X_test, y_test = load_digits_novelty(4, train_size=0.6, random_state=1)
    n_normal = int((digits == 4).sum())
    assert len(X_train) == round(0.6 * n_normal)
    assert (y_test == 1).sum() == n_normal - len(X_train)
    assert len(X_test) == len(X) - len(X_train)
    assert X_train.shape[1:] == (1, 8, 8) and X_train.dtype == np.float32
    assert X_train.min() >= 0.0 and X_train.max() == 1.0
    # every training row and every +1 test row is a 4; the -1 rows are the rest
    rows = {row.tobytes(): label for row, label in zip(X / 16.0, digits)}
    flat_train = X_train.reshape(len(X_train), -1).astype(np.float64)
    assert {rows[row.tobytes()] for row in flat_train} == {4}
    flat_test = X_test.reshape(len(X_test), -1).astype(np.float64)
    test_digits = np.array([rows[row.tobytes()] for row in flat_test])
    np.testing.assert_array_equal(test_digits == 4, y_test == 1)


def test_digits_novelty_split_is_fixed_by_the_seed():
    a = load_digits_novelty(0, as_images=False)
    b = load_digits_novelty(0, as_images=False)
    c = load_digits_novelty(0, as_images=False, random_state=5)
    assert a[0].shape[1] == 64
    np.testing.assert_array_equal(a[0], b[0])
    assert not np.array_equal(a[0], c[0])
    with pytest.raises(ValueError, match="digit 0..9"):
        load_digits_novelty(10)


@pytest.mark.parametrize("pixels", [12 * 12, 20 * 20])  # PIL: a warning, an error
def test_decompression_bombs_raise_or_are_skipped(tmp_path, monkeypatch, pixels):
    # PIL warns above MAX_IMAGE_PIXELS and raises above twice that; the
    # error was not skipped and the warning let the image load
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 100)
    for i in range(2):
        Image.fromarray(np.full((8, 8), 40 * i, np.uint8)).save(tmp_path / f"{i}.png")
    side = int(pixels**0.5)
    Image.fromarray(np.zeros((side, side), np.uint8)).save(tmp_path / "bomb.png")
    with pytest.raises(ValueError, match="bomb.png.*decompression bomb"):
        load_image_folder(tmp_path, image_size=8)
    with pytest.warns(UserWarning, match="bomb.png.*skipped"):
        X, paths = load_image_folder(tmp_path, image_size=8, on_error="skip")
    assert [p.rsplit("/", 1)[-1] for p in paths] == ["0.png", "1.png"]
    assert X.shape == (2, 1, 8, 8)
