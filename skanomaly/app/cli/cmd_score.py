"""``skanomaly score``: score images or rows with a saved model (CSV, maps, report)."""

import os
import sys

from .inputs import (
    _check_file_output,
    _check_report_path,
    _model_input,
    _scores,
    _write_report,
)
from .maps import _check_maps_folder, _map_paths, _write_maps
from .options import _add_report_option, _add_scoring_options, _rate
from .outputs import _atomic_file, _check_outputs, _csv_text, _escaped, _map_files


def add_parser(commands):
    """Add the ``score`` command to ``commands`` (argparse subparsers)."""
    score = commands.add_parser(
        "score",
        help="score images or rows with a saved model (CSV: path, score, label, "
        "p_value)",
        description="Score every image under a folder (subfolders included), or "
        "the rows of a .npy, .csv or .parquet file, with a saved model; images "
        "are resized to the model's training size, table columns are matched "
        "to the training columns by name. "
        "Writes CSV rows path, score, label, p_value: score is the detector's "
        "decision_function (higher = more normal, negative = predicted "
        "anomaly), label is +1 (normal) or -1 (anomaly), and p_value the "
        "conformal p-value of being normal (conformal_p_values: small = unlike "
        "the calibration samples; with a float contamination c, label is -1 "
        "exactly where p_value <= c, unless calibration='training'). A model "
        "saved without calibration "
        "scores gets no p_value column.",
    )
    score.add_argument("model", help="model file written by skanomaly fit")
    score.add_argument(
        "data", help="folder of images, or a .npy, .csv or .parquet file of rows"
    )
    score.add_argument(
        "--csv", default=None, metavar="PATH", help="write to PATH instead of stdout"
    )
    score.add_argument(
        "--no-recursive", action="store_true", help="do not read subfolders"
    )
    score.add_argument(
        "--maps",
        default=None,
        metavar="DIR",
        help="also write each image's anomaly map to DIR as a 16-bit grayscale "
        "PNG named after the image (subfolders mirrored); 0..65535 spans 0..the "
        "largest map value of the run, stored in each PNG's "
        "'skanomaly_map_max' text chunk. Never overwrites an input.",
    )
    score.add_argument(
        "--fdr",
        type=_rate,
        default=None,
        metavar="ALPHA",
        help="also flag the samples of this run as a batch with the "
        "Benjamini-Hochberg procedure at false discovery rate ALPHA (e.g. "
        "0.05): a column fdr_label, -1 where flagged. label bounds the "
        "fraction of normal samples flagged; fdr_label bounds the fraction of "
        "flags that are false alarms",
    )
    _add_scoring_options(score)
    _add_report_option(
        score,
        "the score and p-value distributions, the calibration and the most "
        "anomalous samples",
    )
    score.set_defaults(func=run)
    return score


def _check_run_outputs(args, inputs, map_files=()):
    """Check this run's files (CSV, report, maps) and its maps folder."""
    outputs = [("--csv", args.csv), ("--report", args.report)]
    outputs += [("--maps", path) for path in map_files]
    _check_outputs(
        inputs,
        [(option, path) for option, path in outputs if path],
        folders=[("--maps", args.maps)] if args.maps else (),
    )


def run(args):
    import csv
    from contextlib import nullcontext

    from ...persistence import load
    from ...reporting import _p_values_of

    if args.csv:
        _check_file_output("--csv", args.csv)
    _check_report_path(args)
    inputs = [("model", args.model), args.data]
    map_files = _map_files(args.data, args.maps) if args.maps else ()
    _check_run_outputs(args, inputs, map_files)
    detector = load(args.model, device=args.device)
    X, files = _model_input(
        detector,
        args.data,
        recursive=not args.no_recursive,
        on_error="skip" if args.skip_unreadable else "raise",
    )
    if args.maps:
        _check_maps_folder(detector, args.maps, files)
        if not os.path.isdir(args.data):  # rows: named once read
            map_files = _map_paths(files, args.data, args.maps)
            _check_run_outputs(args, inputs, map_files)
    calibrated = getattr(detector, "calibration_scores_", None) is not None
    if args.fdr is not None and not calibrated:
        raise ValueError(
            f"--fdr needs conformal p-values, and {args.model} keeps no calibration "
            "scores (it was saved before calibrated thresholds, or its detector "
            "has none); refit it with this skanomaly."
        )
    scores, decision, labels = _scores(detector, X)
    if args.maps:
        _write_maps(detector, X, files, args.data, args.maps)
    header = ["path", "score", "label"]
    columns = [[repr(float(value)) for value in decision], labels.tolist()]
    p_values = _p_values_of(detector, scores)
    if p_values is None:
        print(
            f"skanomaly: note: {args.model} keeps no calibration scores (saved "
            "before calibrated thresholds, or a detector without them): no "
            "p_value column.",
            file=sys.stderr,
        )
    else:
        header.append("p_value")
        columns.append([repr(float(value)) for value in p_values])
    flagged = None
    if args.fdr is not None:
        from ...conformal import benjamini_hochberg

        flagged = benjamini_hochberg(p_values, args.fdr)
        header.append("fdr_label")
        columns.append([-1 if flag else 1 for flag in flagged])
    names = [_csv_text(name) for name in files]
    with (
        _atomic_file(args.csv, "w", newline="", encoding="utf-8")
        if args.csv
        else nullcontext(sys.stdout)
    ) as out:
        writer = csv.writer(out)
        writer.writerow(header)
        writer.writerows(zip(names, *columns))
    if args.csv:
        fdr = "" if flagged is None else f", {int(flagged.sum())} at FDR {args.fdr:g}"
        print(
            f"Scored {len(files)} samples, {int((labels == -1).sum())} predicted "
            f"anomalous{fdr}; wrote {_escaped(args.csv)}."
        )
    # with the CSV on stdout, the report's line goes to stderr
    _write_report(
        args, detector, X, files, scores, file=None if args.csv else sys.stderr
    )
    return 0
