"""The ``skanomaly`` command line: list, fit, score, evaluate, benchmark.

Run ``skanomaly --help`` or ``skanomaly <command> --help``. Errors on bad
input (a missing folder, an unknown detector, a bad parameter) are printed
as one line, ``skanomaly: error: ...``, with exit status 1 (2 for command
line syntax errors); ``--debug`` shows the full traceback instead.
"""

import argparse
import sys
import warnings

__all__ = ["main"]


class _Parser(argparse.ArgumentParser):
    """An argument parser whose usage errors are one line."""

    def error(self, message):
        self.exit(2, f"{self.prog}: error: {message} (see '{self.prog} --help')\n")


def _one_line(text):
    return " ".join(str(text).split())


def _positive_int(text):
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected an integer, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text}")
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


# ---------------------------------------------------------------- commands


def _cmd_list(args):
    from .registry import detector_entry_points, get_detector, list_detectors

    names = list_detectors()
    if not names:
        print("No detectors found.")
        return 0
    entry_points = detector_entry_points()
    rows = [("detector", "class", "package")]
    for name in names:
        cls = get_detector(name)
        dist = getattr(entry_points[name], "dist", None)
        package = dist.name if dist is not None else "unknown"
        rows.append((name, f"{cls.__module__}.{cls.__qualname__}", package))
    widths = [max(len(row[i]) for row in rows) for i in range(2)]
    for row in rows:
        print(f"{row[0].ljust(widths[0])}  {row[1].ljust(widths[1])}  {row[2]}")
    return 0


def _cmd_benchmark(args):
    from .benchmark import describe_benchmark, format_results, run_benchmark

    normal_classes = args.normal_classes
    bad = [c for c in normal_classes if not 0 <= c <= 9]
    if bad or not normal_classes:
        raise ValueError(f"--normal-classes must be digits 0..9; got {bad or 'none'}.")
    results = run_benchmark(
        args.detectors,
        epochs=args.epochs,
        data=args.data,
        normal_classes=normal_classes,
        image_size=args.image_size,
        seed=args.seed,
        threads=args.threads,
        progress=not args.no_progress,
    )
    print(
        describe_benchmark(
            args.data,
            normal_classes=normal_classes,
            epochs=args.epochs,
            seed=args.seed,
            image_size=args.image_size,
        )
    )
    print(format_results(results))
    return 0 if all(r.status != "failed" for r in results) or args.allow_failures else 1


# ---------------------------------------------------------------- parser


def _build_parser():
    from .benchmark import DEFAULT_EPOCHS, DEFAULT_NORMAL_CLASSES

    parser = _Parser(
        prog="skanomaly",
        description="Anomaly detection for images and tables with skanomaly's "
        "detectors: fit, score and evaluate models, and run the benchmark.",
    )
    parser.add_argument(
        "--debug",
        action="store_true",
        help="show full tracebacks instead of one-line errors",
    )
    commands = parser.add_subparsers(dest="command", metavar="COMMAND")
    commands.required = True

    listing = commands.add_parser(
        "list",
        help="list the detectors found, with their plugin package",
        description="List the registered detectors (built-in and plugins) with "
        "their class and the package that provides them.",
    )
    listing.set_defaults(func=_cmd_list)

    bench = commands.add_parser(
        "benchmark",
        help="train every detector on a one-class benchmark and compare AUROC",
        description="The main job: train each registered detector with small "
        "settings and print detector, AUROC, fit and score seconds. The "
        "default data is embedded (scikit-learn digits, one-class: for each "
        "normal digit train on half of its samples and test on the other half "
        "plus all other digits).",
    )
    bench.add_argument(
        "--detectors",
        type=_name_list,
        default=None,
        metavar="A,B",
        help="comma-separated detector names (default: all registered, except "
        "ones needing downloaded weights)",
    )
    bench.add_argument(
        "--epochs",
        type=_positive_int,
        default=DEFAULT_EPOCHS,
        help=f"max_epochs of detectors that train in epochs (default: "
        f"{DEFAULT_EPOCHS})",
    )
    bench.add_argument(
        "--data",
        default=None,
        metavar="PATH",
        help="an MVTec-style category folder (train/good, test/<defect>) or a "
        "folder of categories, instead of the embedded digits",
    )
    bench.add_argument(
        "--image-size",
        type=_positive_int,
        default=64,
        help="image size for --data (default: 64)",
    )
    bench.add_argument(
        "--normal-classes",
        type=_int_list,
        default=list(DEFAULT_NORMAL_CLASSES),
        metavar="0,1,2",
        help="normal digits of the embedded benchmark (default: "
        f"{','.join(map(str, DEFAULT_NORMAL_CLASSES))})",
    )
    bench.add_argument("--seed", type=int, default=0, help="random seed (default: 0)")
    bench.add_argument(
        "--threads",
        type=_positive_int,
        default=1,
        help="torch CPU threads (default: 1; the benchmark's models are tiny and "
        "more threads mostly add synchronisation)",
    )
    bench.add_argument(
        "--no-progress", action="store_true", help="do not show a progress bar"
    )
    bench.add_argument(
        "--allow-failures",
        action="store_true",
        help="exit with status 0 even if a detector failed",
    )
    bench.set_defaults(func=_cmd_benchmark)
    return parser


def _show_warning(message, category, filename, lineno, file=None, line=None):
    print(
        f"skanomaly: warning: {_one_line(message)}",
        file=sys.stderr if file is None else file,
    )


def main(argv=None):
    """Run the ``skanomaly`` command line; return the exit status.

    Parameters
    ----------
    argv : list of str or None, default=None
        Arguments without the program name; None reads ``sys.argv``.

    Returns
    -------
    status : int
        0 on success, 1 on an error, 2 on a command line syntax error.
    """
    parser = _build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:  # --help and usage errors
        return exc.code if isinstance(exc.code, int) else 2
    with warnings.catch_warnings():
        if not args.debug:
            warnings.showwarning = _show_warning
        try:
            return args.func(args)
        except KeyboardInterrupt:
            print("skanomaly: interrupted", file=sys.stderr)
            return 130
        except Exception as exc:
            if args.debug:
                raise
            print(f"skanomaly: error: {_one_line(exc)}", file=sys.stderr)
            return 1


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
