"""``skanomaly fit``: fit a detector on normal images or rows and save it."""

import sys
from functools import partial
from pathlib import Path

from .inputs import _check_file_output, _load_data
from .options import _add_skip_unreadable, _image_size, _param, _show_progress
from .outputs import _check_outputs, _escaped


def add_parser(commands):
    """Add the ``fit`` command to ``commands`` (argparse subparsers)."""
    fit = commands.add_parser(
        "fit",
        help="fit a detector on a folder of normal images and save it",
        description="Fit a registered detector on a folder of (normal) images, "
        "or on the rows of a .npy array, and save it as a skanomaly model file "
        "(safe to load: no code runs).",
    )
    fit.add_argument("detector", help="registered detector name (skanomaly list)")
    fit.add_argument(
        "data", help="folder of images, or a .npy, .csv or .parquet file of rows"
    )
    fit.add_argument(
        "-o", "--output", required=True, help="model file to write (e.g. model.ska)"
    )
    fit.add_argument(
        "--param",
        "-p",
        type=_param,
        action="append",
        default=[],
        metavar="NAME=VALUE",
        help="a constructor parameter, repeatable; values are Python literals "
        "(15, 1e-3, (64, 32), None, true) or else strings",
    )
    fit.add_argument(
        "--image-size",
        type=_image_size,
        default=None,
        metavar="SIZE",
        help="resize images to SIZE (64 or 64x48, height x width); without it, "
        "images of different sizes are resized to the detector's input size",
    )
    fit.add_argument(
        "--color-mode",
        choices=["auto", "grayscale", "rgb"],
        default="auto",
        help="channels of the images (default: auto, grayscale when every image is)",
    )
    fit.add_argument(
        "--recursive", action="store_true", help="also read images in subfolders"
    )
    _add_skip_unreadable(fit)
    shown = fit.add_mutually_exclusive_group()
    shown.add_argument(
        "--quiet", action="store_true", help="no training log or progress bar"
    )
    shown.add_argument(
        "--verbose",
        action="store_true",
        help="show the training log even when stderr is not a terminal (by "
        "default it is shown on a terminal only)",
    )
    fit.set_defaults(func=run)
    return fit


def _resize_to(detector, exc):
    """The detector's declared input size for images of different sizes."""
    from ...detectors.base import get_detector_tags

    (_, first), (path, other) = exc.first, exc.other
    differ = (
        f"Images differ in size ({first[0]}x{first[1]} and {other[0]}x{other[1]} "
        f"for {_escaped(path)}, width x height)"
    )
    size = get_detector_tags(detector).input_size
    if size is None:
        raise ValueError(
            f"{differ}, and {type(detector).__name__} declares no input size: pass "
            "--image-size SIZE (64, or 64x48 for height x width) to resize them."
        ) from None
    print(
        f"{differ}: resized to {size[0]}x{size[1]} (height x width), the input size "
        f"of {type(detector).__name__}; --image-size sets another.",
        file=sys.stderr,
    )
    return size


def run(args):
    from ...persistence import save
    from ...registry import make_detector
    from ..datasets import ImageSizesDiffer

    params = dict(args.param)
    detector = make_detector(args.detector, **params)
    names = detector.get_params(deep=False)
    show_log = args.verbose or (_show_progress() and not args.quiet)
    if "verbose" in names and "verbose" not in params and show_log:
        detector.set_params(verbose=1)
    detector._validate_params()  # bad values fail before reading any image
    out = Path(args.output)
    _check_file_output("-o", out)  # before training, not after
    _check_outputs([args.data], [("-o", out)])
    image_size = args.image_size
    load = partial(
        _load_data,
        args.data,
        color_mode=args.color_mode,
        recursive=args.recursive,
        on_error="skip" if args.skip_unreadable else "raise",
    )
    try:
        X, files = load(image_size=image_size)
    except ImageSizesDiffer as exc:
        image_size = _resize_to(detector, exc)
        X, files = load(image_size=image_size)
    try:
        detector.fit(X)
    except ValueError as exc:
        # a detector's "pad or resize the images first": here the flag does it
        if X.ndim == 4 and "resize the images" in str(exc):
            raise ValueError(
                f"{exc} With skanomaly fit, --image-size SIZE resizes the images "
                "as they are read."
            ) from None
        raise
    if "verbose" in names and "verbose" not in params:
        detector.set_params(verbose=0)  # the saved model keeps the default
    save(detector, out)
    shape = "x".join(map(str, X.shape[1:]))
    print(
        f"Fitted {type(detector).__name__} on {len(X)} samples of shape {shape}; "
        f"saved to {_escaped(out)}."
    )
    return 0
