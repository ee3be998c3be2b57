"""The ``skanomaly`` command line: list, fit, score, evaluate, export, benchmark.

Run ``skanomaly --help`` or ``skanomaly <command> --help``. Errors on bad
input (a missing folder, an unknown detector, a bad parameter) are printed
as one line, ``skanomaly: error: ...``, with exit status 1 (2 for command
line syntax errors); ``--debug`` shows the full traceback instead.

One module per command (``cmd_list``, ``cmd_fit``, ``cmd_score``,
``cmd_evaluate``, ``cmd_export``, ``cmd_benchmark``), each with its
``add_parser(commands)`` and ``run(args)``; what they share is in
``options`` (the parser, value types, common options), ``inputs`` (reading
data, scoring, the --report file), ``outputs`` (what every command writes:
checked against its inputs before any work, written atomically, names
escaped, CSV cells never formulas) and ``maps`` (anomaly maps as PNG
files). This package keeps the name ``skanomaly.app.cli``, so the console
script ``skanomaly = "skanomaly.app.cli:main"`` is unchanged.
"""

import os
import sys
import warnings

from . import cmd_benchmark, cmd_evaluate, cmd_export, cmd_fit, cmd_list, cmd_score
from .options import _one_line, _Parser

__all__ = ["main"]

# in the order of ``skanomaly --help``
_COMMANDS = (cmd_list, cmd_fit, cmd_score, cmd_evaluate, cmd_export, cmd_benchmark)


def _build_parser():
    parser = _Parser(
        prog="skanomaly",
        description="Anomaly detection for images and tables with skanomaly's "
        "detectors: fit, score, evaluate and export models, and run the benchmark.",
    )
    parser.add_argument(
        "--debug",
        action="store_true",
        help="show full tracebacks instead of one-line errors",
    )
    commands = parser.add_subparsers(dest="command", metavar="COMMAND")
    commands.required = True
    for command in _COMMANDS:
        command.add_parser(commands)
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
        except BrokenPipeError:
            # the reader went away (``skanomaly score ... | head``): not an
            # error; send what Python still flushes at exit to devnull
            devnull = os.open(os.devnull, os.O_WRONLY)
            os.dup2(devnull, sys.stdout.fileno())
            return 0
        except Exception as exc:
            if args.debug:
                raise
            print(f"skanomaly: error: {_one_line(exc)}", file=sys.stderr)
            return 1


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
