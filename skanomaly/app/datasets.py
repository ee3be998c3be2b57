"""Image folders, the MVTec AD layout and the embedded digits default, as arrays.

Every loader returns channels-first ``uint8`` images of shape
``(n_samples, channels, height, width)`` (detectors scale ``uint8`` input to
[0, 1]) and labels in scikit-learn's outlier convention, +1 normal and -1
anomalous. Decoding uses Pillow; PNG, JPEG, BMP and TIFF files are read,
8- and 16-bit, grayscale or colour (an alpha channel is dropped). Deeper
grayscale images are read on an agreed scale or refused with the reason:
16- and 32-bit integers hold 0..65535 (read as value / 257), 32-bit floats
hold 0..1 (read as value x 255).
"""

import warnings
from pathlib import Path

import numpy as np

from .._validation import parse_image_size

__all__ = [
    "IMAGE_EXTENSIONS",
    "color_mode_for",
    "list_image_files",
    "load_digits_novelty",
    "load_image_folder",
    "load_labelled_image_folder",
    "load_mvtec_category",
    "load_mvtec_masks",
]

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff")

_GRAY_MODES = {"1", "L", "LA", "La", "I", "F", "I;16", "I;16L", "I;16B", "I;16N"}
# grayscale modes deeper than 8 bits: 16-bit, 32-bit integer, 32-bit float
_HIGH_DEPTH_MODES = {"I;16", "I;16L", "I;16B", "I;16N", "I", "F"}


def _check_choice(name, value, options):
    if value not in options:
        raise ValueError(f"{name} must be one of {sorted(options)}; got {value!r}.")


def color_mode_for(channels):
    """The ``color_mode`` that loads images with ``channels`` channels.

    Parameters
    ----------
    channels : int
        1 (grayscale) or 3 (RGB).

    Returns
    -------
    color_mode : {'grayscale', 'rgb'}

    Examples
    --------
    >>> from skanomaly.app.datasets import color_mode_for
    >>> color_mode_for(1), color_mode_for(3)
    ('grayscale', 'rgb')
    """
    modes = {1: "grayscale", 3: "rgb"}
    if channels not in modes:
        raise ValueError(
            f"Image files load with 1 (grayscale) or 3 (RGB) channels; a model of "
            f"{channels}-channel images cannot read them."
        )
    return modes[channels]


def list_image_files(folder, *, recursive=False):
    """Image files (by extension) of a folder, sorted by path.

    Hidden files and folders (names starting with ``.``, such as the
    ``._name.png`` resource forks macOS writes beside each file on shared
    drives and in zip archives) and ``__MACOSX`` folders are skipped: they
    are no images.

    Parameters
    ----------
    folder : str or path-like
    recursive : bool, default=False
        Also look in subfolders.

    Returns
    -------
    paths : list of pathlib.Path

    Raises
    ------
    FileNotFoundError
        If ``folder`` is not an existing folder.
    """
    folder = Path(folder)
    if not folder.is_dir():
        what = "is not a folder" if folder.exists() else "does not exist"
        raise FileNotFoundError(f"Image folder {str(folder)!r} {what}.")
    candidates = folder.rglob("*") if recursive else folder.iterdir()
    return sorted(
        path
        for path in candidates
        if path.suffix.lower() in IMAGE_EXTENSIONS
        and not _hidden(path.relative_to(folder))
        and path.is_file()
    )


def _hidden(relative_path):
    return any(
        part.startswith(".") or part == "__MACOSX" for part in relative_path.parts
    )


def _as_8_bit_scale(image):
    """Float32 pixels on the 0..255 scale of a high-depth grayscale image.

    16-bit and 32-bit integer images hold 0..65535 (read as value / 257);
    float images hold 0..1 (read as value x 255). Values outside those
    ranges have no agreed meaning, so they are refused, naming the range
    found, rather than clipped.
    """
    if image.mode == "F":
        values = np.asarray(image, dtype=np.float32)
        low, high = (
            (float(values.min()), float(values.max())) if values.size else (0, 0)
        )
        if not np.isfinite(values).all() or low < 0 or high > 1:
            raise ValueError(
                f"a floating-point image must hold values in [0, 1] (read as "
                f"value x 255); this one holds {low:.6g}..{high:.6g}. Save it as "
                "8- or 16-bit integers, or rescale it to [0, 1]."
            )
        return values * 255.0
    values = np.asarray(image, dtype=np.int64)
    low, high = int(values.min()), int(values.max())
    if low < 0 or high > 65535:
        raise ValueError(
            f"a {image.mode} integer image must hold values in 0..65535 (read as "
            f"value / 257, as 16-bit images); this one holds {low}..{high}. "
            "Rescale it to 8 or 16 bits."
        )
    return values.astype(np.float32) / 257.0


def _decode(image, grayscale, size_hw, resample):
    """Pixels of an open PIL image as (height, width, channels) uint8, resized."""
    from PIL import Image

    size_wh = (size_hw[1], size_hw[0])
    if image.mode in _HIGH_DEPTH_MODES:
        # to the 0..255 scale, resized in floating point to keep the precision
        image = Image.fromarray(_as_8_bit_scale(image))
        if image.size != size_wh:
            image = image.resize(size_wh, resample)
        pixels = np.clip(np.rint(np.asarray(image)), 0, 255).astype(np.uint8)
        pixels = pixels[:, :, None]
        return pixels if grayscale else np.repeat(pixels, 3, axis=2)
    image = image.convert("L" if grayscale else "RGB")
    if image.size != size_wh:
        image = image.resize(size_wh, resample)
    pixels = np.asarray(image, dtype=np.uint8)
    return pixels[:, :, None] if pixels.ndim == 2 else pixels


class ImageSizesDiffer(ValueError):
    """Images of one folder differ in size and no size to resize them to was given.

    ``first`` and ``other`` are ``(path, (width, height))`` of the first image
    and of the first one whose size differs.
    """

    def __init__(self, message, first, other):
        super().__init__(message)
        self.first = first
        self.other = other


def _open_image(path):
    """``PIL.Image.open``, with PIL's decompression-bomb warning an error."""
    from PIL import Image

    with warnings.catch_warnings():
        warnings.simplefilter("error", Image.DecompressionBombWarning)
        return Image.open(path)


def _read_images(paths, *, image_size, color_mode, on_error, progress=False):
    """Decode ``paths`` into one (n, c, h, w) uint8 array; return it and the kept paths.

    A first pass reads only the headers (size and mode) so that the colour
    mode and the output shape are known, and the array is filled in place in
    the second.
    """
    from PIL import Image, UnidentifiedImageError

    _check_choice("color_mode", color_mode, {"auto", "grayscale", "rgb"})
    _check_choice("on_error", on_error, {"raise", "skip"})
    size_hw = parse_image_size(image_size)
    resample = Image.Resampling.BILINEAR
    read_errors = (
        OSError,
        UnidentifiedImageError,
        ValueError,
        SyntaxError,
        # more pixels than PIL.Image.MAX_IMAGE_PIXELS (a decompression bomb)
        Image.DecompressionBombError,
        Image.DecompressionBombWarning,
    )

    def failed(path, exc):
        message = f"Cannot read image file {str(path)!r}: {exc}"
        if on_error == "raise":
            raise ValueError(message) from exc
        warnings.warn(f"{message}; skipped.", UserWarning, stacklevel=4)

    headers = []
    for path in paths:
        try:
            with _open_image(path) as image:
                headers.append((path, image.size, image.mode))
        except read_errors as exc:
            failed(path, exc)
    if not headers:
        raise ValueError("No readable image files to load.")

    if color_mode == "auto":
        grayscale = all(mode in _GRAY_MODES for _, _, mode in headers)
    else:
        grayscale = color_mode == "grayscale"
    if size_hw is None:
        first_path, (width, height), _ = headers[0]
        for path, size, _ in headers[1:]:
            if size != (width, height):
                raise ImageSizesDiffer(
                    f"Images have different sizes: {str(first_path)!r} is "
                    f"{width}x{height} but {str(path)!r} is {size[0]}x{size[1]} "
                    "(width x height); pass image_size to resize them.",
                    (first_path, (width, height)),
                    (path, size),
                )
        size_hw = (height, width)

    channels = 1 if grayscale else 3
    X = np.empty((len(headers), channels, *size_hw), dtype=np.uint8)
    kept = []
    from tqdm.auto import tqdm

    for path, _, _ in tqdm(
        headers, desc="reading images", unit="img", disable=not progress, leave=False
    ):
        try:
            with _open_image(path) as image:
                image.load()
                pixels = _decode(image, grayscale, size_hw, resample)
        except read_errors as exc:
            failed(path, exc)
            continue
        X[len(kept)] = pixels.transpose(2, 0, 1)
        kept.append(path)
    if not kept:
        raise ValueError("No readable image files to load.")
    return X[: len(kept)], kept


def load_image_folder(
    folder,
    *,
    image_size=None,
    color_mode="auto",
    recursive=False,
    on_error="raise",
    progress=False,
):
    """Load every image of a folder as one array.

    Parameters
    ----------
    folder : str or path-like
        Folder holding PNG, JPEG, BMP or TIFF files (other files are ignored).
    image_size : int, (height, width) or None, default=None
        Resize every image to this size (bilinear). With None all images
        must have the same size.
    color_mode : {'auto', 'grayscale', 'rgb'}, default='auto'
        Channels of the output: 'auto' gives one channel when every image is
        grayscale and three otherwise.
    recursive : bool, default=False
        Also load images from subfolders.
    on_error : {'raise', 'skip'}, default='raise'
        What to do with a file that cannot be decoded: raise a ``ValueError``
        naming it, or skip it with a ``UserWarning`` naming it.
    progress : bool, default=False
        Show a progress bar (tqdm, on stderr) while decoding.

    Returns
    -------
    X : ndarray of shape (n_images, channels, height, width), dtype uint8
        The images, channels first.
    paths : list of str
        The file of each image, in the order of ``X`` (sorted by path).

    Raises
    ------
    FileNotFoundError
        If the folder does not exist.
    ValueError
        If it holds no image file, a file cannot be read (with
        ``on_error='raise'``) or sizes differ without ``image_size``; the
        message names the file.

    Examples
    --------
    >>> import tempfile
    >>> import numpy as np
    >>> from PIL import Image
    >>> from skanomaly.app.datasets import load_image_folder
    >>> folder = tempfile.mkdtemp()
    >>> for i in range(3):
    ...     Image.fromarray(np.full((20, 30), 40 * i, np.uint8)).save(
    ...         f"{folder}/{i}.png")
    >>> X, paths = load_image_folder(folder, image_size=16)
    >>> X.shape, X.dtype
    ((3, 1, 16, 16), dtype('uint8'))
    """
    paths = list_image_files(folder, recursive=recursive)
    if not paths:
        raise ValueError(
            f"No image files ({', '.join(IMAGE_EXTENSIONS)}) in folder "
            f"{str(folder)!r}" + ("." if recursive else " (subfolders not searched).")
        )
    X, kept = _read_images(
        paths,
        image_size=image_size,
        color_mode=color_mode,
        on_error=on_error,
        progress=progress,
    )
    return X, [str(path) for path in kept]


def load_labelled_image_folder(
    folder, *, image_size=None, color_mode="auto", on_error="raise", progress=False
):
    """Load a folder with one subfolder per kind: ``good`` normal, others anomalous.

    This is the layout of an MVTec AD test split (``test/good``,
    ``test/<defect>``). Files directly in ``folder`` are ignored.

    Parameters
    ----------
    folder : str or path-like
    image_size, color_mode, on_error, progress
        As in :func:`load_image_folder`.

    Returns
    -------
    X : ndarray of shape (n_images, channels, height, width), dtype uint8
    y : ndarray of shape (n_images,)
        +1 for images in ``good``, -1 for the others (the outlier
        convention).
    paths : list of str
        Sorted by subfolder, then file name.

    Examples
    --------
    >>> import tempfile
    >>> from pathlib import Path
    >>> import numpy as np
    >>> from PIL import Image
    >>> from skanomaly.app.datasets import load_labelled_image_folder
    >>> folder = Path(tempfile.mkdtemp())
    >>> for kind in ["good", "good", "hole"]:
    ...     (folder / kind).mkdir(exist_ok=True)
    ...     n = len(list((folder / kind).iterdir()))
    ...     Image.fromarray(np.zeros((4, 4), np.uint8)).save(folder / kind / f"{n}.png")
    >>> X, y, paths = load_labelled_image_folder(folder)
    >>> y.tolist(), [Path(p).parent.name for p in paths]
    ([1, 1, -1], ['good', 'good', 'hole'])
    """
    folder = Path(folder)
    if not folder.is_dir():
        what = "is not a folder" if folder.exists() else "does not exist"
        raise FileNotFoundError(f"Image folder {str(folder)!r} {what}.")
    paths = []
    for sub in sorted(p for p in folder.iterdir() if p.is_dir()):
        paths += list_image_files(sub)
    if not paths:
        raise ValueError(
            f"No image files in the subfolders of {str(folder)!r} (expected "
            f"{str(folder / 'good')!r} and one folder per anomaly type)."
        )
    X, kept = _read_images(
        paths,
        image_size=image_size,
        color_mode=color_mode,
        on_error=on_error,
        progress=progress,
    )
    y = np.array([1 if path.parent.name == "good" else -1 for path in kept])
    return X, y, [str(path) for path in kept]


def _read_masks(mask_paths, image_paths, size_hw):
    from PIL import Image

    masks = np.zeros((len(mask_paths), *size_hw), dtype=bool)
    for i, (mask_path, image_path) in enumerate(zip(mask_paths, image_paths)):
        if mask_path is None:  # a normal image: empty mask
            continue
        if not mask_path.is_file():
            raise FileNotFoundError(
                f"No ground-truth mask {str(mask_path)!r} for defect image "
                f"{str(image_path)!r}."
            )
        try:
            with Image.open(mask_path) as mask:
                mask = mask.convert("L")
                if mask.size != (size_hw[1], size_hw[0]):
                    mask = mask.resize((size_hw[1], size_hw[0]), Image.NEAREST)
                masks[i] = np.asarray(mask) > 0
        except OSError as exc:
            raise ValueError(
                f"Cannot read mask file {str(mask_path)!r}: {exc}"
            ) from exc
    return masks


def load_mvtec_category(
    root,
    split="test",
    *,
    image_size=None,
    color_mode="auto",
    return_masks=False,
    on_error="raise",
    progress=False,
):
    """Load one category of a dataset in the MVTec AD folder layout.

    The layout is ``root/train/good/*``, ``root/test/<defect>/*`` (normal
    test images in ``root/test/good``) and, for defect images,
    ``root/ground_truth/<defect>/<image stem>_mask.png``. Any subfolder of
    the split other than ``good`` counts as a defect type.

    Parameters
    ----------
    root : str or path-like
        The category folder (e.g. ``mvtec/bottle``).
    split : {'train', 'test'}, default='test'
    image_size : int, (height, width) or None, default=None
        Resize images (bilinear) and masks (nearest) to this size.
    color_mode : {'auto', 'grayscale', 'rgb'}, default='auto'
        As in :func:`load_image_folder`.
    return_masks : bool, default=False
        Also return the pixel masks (all False for normal images).
    on_error : {'raise', 'skip'}, default='raise'
        As in :func:`load_image_folder`.
    progress : bool, default=False
        Show a progress bar while decoding.

    Returns
    -------
    X : ndarray of shape (n_images, channels, height, width), dtype uint8
    y : ndarray of shape (n_images,)
        +1 for ``good`` images, -1 for defects (the outlier convention).
    paths : list of str
    masks : ndarray of shape (n_images, height, width), dtype bool
        Only with ``return_masks=True``.

    Raises
    ------
    FileNotFoundError
        If ``root/split`` does not exist, or a defect image has no mask
        when masks are asked for.

    Examples
    --------
    >>> import tempfile
    >>> from pathlib import Path
    >>> import numpy as np
    >>> from PIL import Image
    >>> from skanomaly.app.datasets import load_mvtec_category
    >>> root = Path(tempfile.mkdtemp())
    >>> for sub in ["train/good", "test/good", "test/crack", "ground_truth/crack"]:
    ...     (root / sub).mkdir(parents=True)
    >>> image = Image.fromarray(np.zeros((8, 8, 3), np.uint8))
    >>> image.save(root / "train/good/000.png")
    >>> image.save(root / "test/good/000.png")
    >>> image.save(root / "test/crack/000.png")
    >>> Image.fromarray(np.eye(8, dtype=np.uint8) * 255).save(
    ...     root / "ground_truth/crack/000_mask.png")
    >>> X, y, paths, masks = load_mvtec_category(root, "test", return_masks=True)
    >>> X.shape, y.tolist(), int(masks.sum())
    ((2, 3, 8, 8), [-1, 1], 8)
    """
    _check_choice("split", split, {"train", "test"})
    root = Path(root)
    split_dir = root / split
    if not split_dir.is_dir():
        raise FileNotFoundError(
            f"No {split!r} folder in {str(root)!r}: expected the MVTec AD layout "
            f"{str(root / 'train' / 'good')!r} and {str(root / 'test')!r}/<defect>."
        )
    X, y, paths = load_labelled_image_folder(
        split_dir,
        image_size=image_size,
        color_mode=color_mode,
        on_error=on_error,
        progress=progress,
    )
    if not return_masks:
        return X, y, paths
    return X, y, paths, load_mvtec_masks(root, paths, y, X.shape[2:])


def load_mvtec_masks(root, paths, y, size):
    """Ground-truth masks of MVTec-layout test images, at ``size``.

    The mask of a defect image ``root/test/<defect>/<stem>.<ext>`` is
    ``root/ground_truth/<defect>/<stem>_mask.png``; normal images (``y ==
    1``) get an empty mask. Masks of another size are resized with nearest
    neighbours to the size the images were read at.

    Parameters
    ----------
    root : str or path-like
        The category folder.
    paths : list of str
        The test images.
    y : array-like of shape (n_images,)
        +1 for normal images, -1 for defects.
    size : (int, int)
        ``(height, width)`` of the masks to return.

    Returns
    -------
    masks : ndarray of shape (n_images, height, width), dtype bool
    """
    root = Path(root)
    mask_paths = [
        None
        if label == 1
        else root
        / "ground_truth"
        / Path(path).parent.name
        / f"{Path(path).stem}_mask.png"
        for path, label in zip(paths, y)
    ]
    return _read_masks(mask_paths, paths, tuple(size))


def load_digits_novelty(
    normal_class=0, *, train_size=0.5, as_images=True, random_state=0
):
    """The embedded default: scikit-learn's digits, one class normal.

    The samples of ``normal_class`` are split at random (a fixed split for a
    given ``random_state``) into a training set and held-out normal test
    samples; every sample of the other nine digits is a test anomaly. No
    download is needed: the data ships with scikit-learn.

    Parameters
    ----------
    normal_class : int in 0..9, default=0
    train_size : float in (0, 1), default=0.5
        Fraction of the normal class used for training.
    as_images : bool, default=True
        Return images of shape (n, 1, 8, 8); else rows of 64 features.
    random_state : int, default=0
        Seed of the train/test split of the normal class.

    Returns
    -------
    X_train : ndarray of float32, values in [0, 1]
        Normal training samples.
    X_test : ndarray of float32
        Held-out normal samples followed by all anomalies.
    y_test : ndarray of int
        +1 for the normal class, -1 for anomalies.

    Examples
    --------
    >>> from skanomaly.app.datasets import load_digits_novelty
    >>> X_train, X_test, y_test = load_digits_novelty(3)
    >>> X_train.shape, X_test.shape, int((y_test == 1).sum())
    ((92, 1, 8, 8), (1705, 1, 8, 8), 91)
    """
    from sklearn.datasets import load_digits

    if normal_class not in range(10) or isinstance(normal_class, bool):
        raise ValueError(f"normal_class must be a digit 0..9; got {normal_class!r}.")
    if not 0 < train_size < 1:
        raise ValueError(f"train_size must be in (0, 1); got {train_size!r}.")
    X, y = load_digits(return_X_y=True)
    X = (X / 16.0).astype(np.float32)
    normal = np.flatnonzero(y == normal_class)
    normal = np.random.default_rng(random_state).permutation(normal)
    n_train = int(round(train_size * normal.size))
    train, held_out = normal[:n_train], np.sort(normal[n_train:])
    anomalies = np.flatnonzero(y != normal_class)
    test = np.concatenate([held_out, anomalies])
    y_test = np.where(y[test] == normal_class, 1, -1)
    if as_images:
        X = X.reshape(-1, 1, 8, 8)
    return X[train], X[test], y_test
