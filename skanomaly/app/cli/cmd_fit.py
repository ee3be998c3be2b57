"""``skanomaly fit``: fit a detector on normal images or rows and save it."""

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
        help="resize images to SIZE (64 or 64x48, height x width); without it "
        "all images must have the same size",
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


def run(args):
    from ...persistence import save
    from ...registry import make_detector

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
    X, files = _load_data(
        args.data,
        image_size=args.image_size,
        color_mode=args.color_mode,
        recursive=args.recursive,
        on_error="skip" if args.skip_unreadable else "raise",
    )
    detector.fit(X)
    if "verbose" in names and "verbose" not in params:
        detector.set_params(verbose=0)  # the saved model keeps the default
    save(detector, out)
    shape = "x".join(map(str, X.shape[1:]))
    print(
        f"Fitted {type(detector).__name__} on {len(X)} samples of shape {shape}; "
        f"saved to {_escaped(out)}."
    )
    return 0
