"""What the commands share on their command line: the parser, value types, options.

Nothing here imports numpy or torch: ``skanomaly --help`` stays fast.
"""

import argparse
import ast
import sys


class _Parser(argparse.ArgumentParser):
    """An argument parser whose usage errors are one line."""

    def error(self, message):
        self.exit(2, f"{self.prog}: error: {message} (see '{self.prog} --help')\n")


def _one_line(text):
    """``text`` on one line, printable (file names that are not UTF-8 escaped)."""
    from .outputs import _escaped

    return " ".join(_escaped(str(text)).split())


def _positive_int(text):
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected an integer, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text}")
    return value


def _rate(text):
    """A level in (0, 1), such as a false discovery rate."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
    if not 0 < value < 1:
        raise argparse.ArgumentTypeError(f"expected a level in (0, 1), got {text}")
    return value


def _int_list(text):
    try:
        return [int(part) for part in text.split(",") if part.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"expected comma-separated integers, got {text!r}"
        ) from None


def _name_list(text):
    return [part.strip() for part in text.split(",") if part.strip()]


# Larger than any camera's side: every image is resized to it in memory
# (float32), so a typo such as 100000 would ask for terabytes.
_MAX_IMAGE_SIDE = 16384


def _image_size(text):
    """'64' or '64x48' (height x width)."""
    from ..._validation import parse_image_size

    try:
        parts = [int(part) for part in text.lower().split("x")]
        size = parse_image_size(parts[0] if len(parts) == 1 else tuple(parts))
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"expected a size like 64 or 64x48 (height x width), got {text!r}"
        ) from None
    if max(size) > _MAX_IMAGE_SIDE:
        raise argparse.ArgumentTypeError(
            f"{text!r} is larger than {_MAX_IMAGE_SIDE} pixels a side; every image "
            "is resized to it in memory. For large images give the backbone's "
            "size and tile them (-p tile_size=...)."
        )
    return size


_LITERALS = {"true": True, "false": False, "none": None, "null": None}


def _parse_value(text):
    """A Python literal (int, float, tuple, list, None, True...) or the string."""
    if text.strip().lower() in _LITERALS:
        return _LITERALS[text.strip().lower()]
    try:
        return ast.literal_eval(text)
    except (ValueError, SyntaxError, TypeError, MemoryError, RecursionError):
        return text


def _param(text):
    key, sep, value = text.partition("=")
    if not sep or not key.strip().isidentifier():
        raise argparse.ArgumentTypeError(f"expected NAME=VALUE, got {text!r}")
    return key.strip(), _parse_value(value)


def _show_progress():
    """Progress bars only on a terminal: logs and pipes get the results alone."""
    return sys.stderr.isatty()


def _add_skip_unreadable(parser):
    parser.add_argument(
        "--skip-unreadable",
        action="store_true",
        help="skip files that cannot be decoded (with a warning) instead of failing",
    )


def _add_scoring_options(parser):
    parser.add_argument(
        "--device", default=None, help="run on this device (e.g. cpu, cuda)"
    )
    _add_skip_unreadable(parser)


def _add_report_option(parser, contents):
    parser.add_argument(
        "--report",
        default=None,
        metavar="PATH",
        help=f"also write a self-contained HTML report to PATH ({contents}; "
        "needs matplotlib: pip install 'skanomaly[report]')",
    )
