"""The ``skanomaly`` command line: list, fit, score, evaluate, export, benchmark.

Run ``skanomaly --help`` or ``skanomaly <command> --help``. Errors on bad
input (a missing folder, an unknown detector, a bad parameter) are printed
as one line, ``skanomaly: error: ...``, with exit status 1 (2 for command
line syntax errors); ``--debug`` shows the full traceback instead.
"""

import argparse
import ast
import os
import sys
import warnings
from pathlib import Path

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


def _image_size(text):
    """'64' or '64x48' (height x width)."""
    from .._validation import parse_image_size

    try:
        parts = [int(part) for part in text.lower().split("x")]
        return parse_image_size(parts[0] if len(parts) == 1 else tuple(parts))
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"expected a size like 64 or 64x48 (height x width), got {text!r}"
        ) from None


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


def _row_names(path, n_rows):
    return [f"{path}[{i}]" for i in range(n_rows)]


def _load_data(path, *, image_size, color_mode, recursive, on_error):
    """Images of a folder, or the rows of a .npy, .csv or .parquet file.

    Returns (X, names); a table comes as a DataFrame, so that a detector
    fitted on it records its column names.
    """
    import numpy as np

    from .datasets import load_image_folder
    from .tables import is_table_file, read_table

    path = Path(path)
    if is_table_file(path):
        frame, _ = read_table(path)
        return frame, _row_names(path, len(frame))
    if path.suffix.lower() == ".npy" and path.is_file():
        X = np.load(path, allow_pickle=False)
        return X, _row_names(path, len(X))
    if not path.exists():
        raise FileNotFoundError(f"{str(path)!r} does not exist.")
    if not path.is_dir():
        raise ValueError(
            f"{str(path)!r} is neither a folder of images nor a .npy, .csv or "
            ".parquet file."
        )
    return load_image_folder(
        path,
        image_size=image_size,
        color_mode=color_mode,
        recursive=recursive,
        on_error=on_error,
        progress=_show_progress(),
    )


def _model_input(detector, path, *, recursive, on_error):
    """Data for a fitted detector: images resized to its training shape."""
    from .tables import is_table_file, match_columns, read_table

    image_shape = getattr(detector, "image_shape_", None)
    if image_shape is None:
        if Path(path).is_dir():
            raise ValueError(
                "the model was fitted on tabular data; give a .npy, .csv or "
                f".parquet file, not the folder {str(path)!r}."
            )
        if is_table_file(path):
            frame, _ = read_table(path)
            return match_columns(frame, detector, path), _row_names(path, len(frame))
        return _load_data(
            path, image_size=None, color_mode="auto", recursive=False, on_error=on_error
        )
    if is_table_file(path):
        raise ValueError(
            f"the model was fitted on images; give a folder of images, not the "
            f"table {str(path)!r}."
        )
    from .datasets import color_mode_for

    channels, height, width = image_shape
    return _load_data(
        path,
        image_size=(height, width),
        color_mode=color_mode_for(channels) if Path(path).is_dir() else "auto",
        recursive=recursive,
        on_error=on_error,
    )


def _check_output(output, inputs):
    """Refuse an output path that is a folder or one of the ``inputs``."""
    output = Path(output)
    if output.is_dir():
        raise ValueError(
            f"Output {str(output)!r} is a folder; give a file path (e.g. "
            f"{str(output / 'out')!r} with an extension)."
        )
    if not output.exists():
        return
    for path in inputs:
        try:
            same = os.path.samefile(output, path)
        except OSError:  # an input that is not a file (e.g. 'rows.npy[3]')
            continue
        if same:
            raise ValueError(
                f"Refusing to write {str(output)!r}: it is the input "
                f"{str(path)!r}. Choose another output file."
            )


def _scores(detector, X):
    """score_samples over chunks with a progress bar; (scores, decision, labels).

    The decision is ``scores - offset_``, as ``decision_function`` computes
    it; the scores themselves are kept (not ``decision + offset_``, which
    may round differently) for the conformal p-values.
    """
    import numpy as np
    from tqdm.auto import tqdm

    chunk = 512
    starts = range(0, len(X), chunk)
    parts = [
        detector.score_samples(X[start : start + chunk])
        for start in tqdm(
            starts,
            desc="scoring",
            unit="chunk",
            leave=False,
            disable=not _show_progress(),
        )
    ]
    scores = np.concatenate(parts) if parts else np.empty(0)
    decision = scores - detector.offset_
    return scores, decision, np.where(decision < 0, -1, 1)


# ---------------------------------------------------------------- anomaly maps

# Maps are 16-bit grayscale PNGs: 0 .. 65535 spans 0 .. the largest map value
# of the run, which each file records in its 'skanomaly_map_max' text chunk.
_MAP_LEVELS = 65535


def _map_paths(files, data, folder):
    """One PNG per input, named after it; subfolders of a data folder mirrored."""
    data, folder = Path(data), Path(folder)
    paths = []
    for i, name in enumerate(files):
        if data.is_dir():
            relative = Path(name).resolve().relative_to(data.resolve())
            paths.append(folder / relative.with_suffix(".png"))
        else:  # rows of a .npy file
            paths.append(folder / f"{data.stem}_{i:05d}.png")
    return paths


def _check_maps_folder(detector, folder, files):
    from ..detectors.base import get_detector_tags

    if not get_detector_tags(detector).anomaly_maps:
        raise ValueError(
            f"{type(detector).__name__} has no anomaly maps; --maps needs a detector "
            "that makes them (e.g. padim, patchcore, autoencoder)."
        )
    if Path(folder).exists() and not Path(folder).is_dir():
        raise ValueError(f"--maps {str(folder)!r} exists and is not a folder.")


def _write_maps(detector, X, files, data, folder):
    """Write ``detector.anomaly_map`` of each input as a 16-bit PNG."""
    import numpy as np
    from PIL import Image
    from PIL.PngImagePlugin import PngInfo

    paths = _map_paths(files, data, folder)
    inputs = {Path(name).resolve() for name in files if Path(name).exists()}
    clashes = [str(path) for path in paths if path.resolve() in inputs]
    if clashes:
        raise ValueError(
            f"--maps would overwrite input image(s) such as {clashes[0]!r}; choose "
            "another folder."
        )
    maps = np.concatenate(
        [
            detector.anomaly_map(X[start : start + 256])
            for start in range(0, len(X), 256)
        ]
    )
    top = float(maps.max()) if maps.size else 0.0
    scale = _MAP_LEVELS / top if top > 0 else 0.0
    info = PngInfo()
    info.add_text("skanomaly_map_max", repr(top))
    for path, image in zip(paths, maps):
        path.parent.mkdir(parents=True, exist_ok=True)
        levels = np.clip(np.round(image * scale), 0, _MAP_LEVELS).astype(np.uint16)
        Image.fromarray(levels).save(path, pnginfo=info)
    print(
        f"Wrote {len(paths)} anomaly maps to {folder} (16-bit PNG; 65535 = "
        f"{top:.6g}, the largest value).",
        file=sys.stderr,
    )


def _print_pixel_metrics(detector, root, X, anomalous, files):
    """Pixel AUROC and AUPRO when the MVTec ground_truth masks are there.

    Returns the masks (for the report), or None.
    """
    import numpy as np

    from ..detectors.base import get_detector_tags
    from ..reporting import _pixel_metrics
    from .datasets import load_mvtec_masks

    if not (Path(root) / "ground_truth").is_dir():
        return None
    if not get_detector_tags(detector).anomaly_maps:
        print(f"(no pixel metrics: {type(detector).__name__} has no anomaly maps)")
        return None
    masks = load_mvtec_masks(root, files, np.where(anomalous, -1, 1), X.shape[2:])
    pixel_auroc, aupro = _pixel_metrics(masks, detector.anomaly_map(X))
    print(f"pixel AUROC  {pixel_auroc:.4f}")
    print(f"AUPRO@0.3    {aupro:.4f}")
    return masks


# ---------------------------------------------------------------- commands


def _cmd_list(args):
    from ..registry import detector_entry_points, get_detector, list_detectors

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


def _cmd_fit(args):
    from ..persistence import save
    from ..registry import make_detector

    params = dict(args.param)
    detector = make_detector(args.detector, **params)
    names = detector.get_params(deep=False)
    show_log = args.verbose or (_show_progress() and not args.quiet)
    if "verbose" in names and "verbose" not in params and show_log:
        detector.set_params(verbose=1)
    detector._validate_params()  # bad values fail before reading any image
    out = Path(args.output)
    if not out.parent.is_dir():
        raise FileNotFoundError(f"Output folder {str(out.parent)!r} does not exist.")
    _check_output(out, [args.data])  # before training, not after
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
        f"saved to {out}."
    )
    return 0


def _cmd_score(args):
    import csv

    from ..persistence import load
    from ..reporting import _p_values_of

    _check_report_path(args)
    detector = load(args.model, device=args.device)
    X, files = _model_input(
        detector,
        args.data,
        recursive=not args.no_recursive,
        on_error="skip" if args.skip_unreadable else "raise",
    )
    if args.csv:
        _check_output(args.csv, [args.model, args.data, *files])
    if args.maps:
        _check_maps_folder(detector, args.maps, files)
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
        from ..conformal import benjamini_hochberg

        flagged = benjamini_hochberg(p_values, args.fdr)
        header.append("fdr_label")
        columns.append([-1 if flag else 1 for flag in flagged])
    out = open(args.csv, "w", newline="") if args.csv else sys.stdout
    try:
        writer = csv.writer(out)
        writer.writerow(header)
        writer.writerows(zip(files, *columns))
    finally:
        if args.csv:
            out.close()
    if args.csv:
        fdr = "" if flagged is None else f", {int(flagged.sum())} at FDR {args.fdr:g}"
        print(
            f"Scored {len(files)} samples, {int((labels == -1).sum())} predicted "
            f"anomalous{fdr}; wrote {args.csv}."
        )
    # with the CSV on stdout, the report's line goes to stderr
    _write_report(
        args, detector, X, files, scores, file=None if args.csv else sys.stderr
    )
    return 0


def _check_report_path(args):
    """Fail before any work if --report cannot be written (or would hit the model)."""
    if args.report is None:
        return
    from ..reporting import _matplotlib

    _matplotlib()  # its ImportError names the extra to install
    report = Path(args.report)
    if not report.parent.is_dir():
        raise FileNotFoundError(f"Report folder {str(report.parent)!r} does not exist.")
    if report.is_dir():
        raise IsADirectoryError(f"--report {str(report)!r} is a folder, not a file.")
    if report.exists() and report.resolve() == Path(args.model).resolve():
        raise ValueError(f"--report {str(report)!r} would overwrite the model file.")


def _write_report(
    args, detector, X, files, scores, y=None, kinds=None, masks=None, file=None
):
    if args.report is None:
        return
    from ..reporting import report

    report(
        detector,
        X,
        args.report,
        y=y,
        names=files,
        scores=scores,
        kinds=kinds,
        masks=masks,
        dataset=str(args.data),
    )
    print(f"Wrote the report {args.report}.", file=file)


def _labelled_images(detector, args):
    """(X, anomalous, names, kinds, source) of an MVTec-style test folder."""
    import numpy as np

    from .datasets import color_mode_for, load_labelled_image_folder

    if args.label_column is not None:
        raise ValueError(
            "--label-column is for tables (.csv, .parquet); the model was fitted "
            "on images, whose labels are their folders (good = normal)."
        )
    folder = Path(args.data)
    if (folder / "test").is_dir() and not (folder / "good").is_dir():
        folder = folder / "test"  # an MVTec category root
    image_shape = detector.image_shape_
    X, y, files = load_labelled_image_folder(
        folder,
        image_size=tuple(image_shape[1:]),
        color_mode=color_mode_for(image_shape[0]),
        on_error="skip" if args.skip_unreadable else "raise",
        progress=_show_progress(),
    )
    if len(np.unique(y)) < 2:
        raise ValueError(
            f"{str(folder)!r} needs both normal images (in 'good') and anomalous "
            "ones (in other subfolders) to evaluate."
        )
    kinds = [Path(name).parent.name for name in files]
    return X, y == -1, files, kinds, folder


def _labelled_table(detector, args):
    """(X, anomalous, names, None, source) of a table with a label column."""
    from .tables import is_table_file, match_columns, read_table

    path = Path(args.data)
    if not is_table_file(path) or args.label_column is None:
        raise ValueError(
            "evaluate on a model fitted on tabular data needs a .csv or .parquet "
            "file and --label-column NAME (labels 1 = anomaly / 0 = normal, or "
            "+1 normal / -1 anomaly)."
        )
    frame, anomalous = read_table(path, label_column=args.label_column)
    X = match_columns(frame, detector, path)
    return X, anomalous, _row_names(path, len(frame)), None, path


def _print_evaluation(detector, source, anomalous, scores, labels, kinds):
    from ..reporting import _evaluate, _threshold_facts

    evaluation = _evaluate(anomalous, scores, labels == -1, kinds)
    normal, unit = ("normal", "rows") if kinds is None else ("good", "images")
    print(
        f"{type(detector).__name__} on {source}: {evaluation.n_normal} "
        f"{normal}, {evaluation.n_anomalous} anomalous {unit}"
    )
    print(f"AUROC  {evaluation.auroc:.4f}")
    print(f"AP     {evaluation.average_precision:.4f}")
    print(
        f"F1     {evaluation.f1:.4f}  (at the model's threshold: "
        f"{evaluation.n_predicted} predicted anomalous)"
    )
    facts = _threshold_facts(detector)
    print(
        f"FAR    {evaluation.false_alarm_rate:.4f}  (false-alarm rate at the "
        f"threshold: {evaluation.n_false_alarms} of {evaluation.n_normal} "
        f"{normal} {unit} predicted anomalous)"
    )
    print(f"  requested: {facts.level_text}")
    print(f"  calibration: {facts.calibration_text}")
    for kind, n, auroc in evaluation.kinds:
        print(f"  AUROC good vs {kind}: {auroc:.4f}  ({n})")


def _cmd_evaluate(args):
    from ..persistence import load

    _check_report_path(args)
    detector = load(args.model, device=args.device)
    if getattr(detector, "image_shape_", None) is None:
        X, anomalous, files, kinds, source = _labelled_table(detector, args)
    else:
        X, anomalous, files, kinds, source = _labelled_images(detector, args)
    scores, _, labels = _scores(detector, X)
    _print_evaluation(detector, source, anomalous, scores, labels, kinds)
    masks = None
    if kinds is not None:  # images: MVTec masks live next to the test folder
        root = Path(source).parent
        masks = _print_pixel_metrics(detector, root, X, anomalous, files)
    _write_report(
        args, detector, X, files, scores, y=anomalous, kinds=kinds, masks=masks
    )
    return 0


def _cmd_export(args):
    from ..export import export_onnx, model_card_path
    from ..persistence import load

    detector = load(args.model, device="cpu")
    card = export_onnx(
        detector,
        args.output,
        force=args.force,
        calibration_scores=not args.no_calibration_scores,
    )
    outputs = ", ".join(output["name"] for output in card["outputs"])
    shape = ", ".join(map(str, card["input"]["shape"]))
    print(
        f"Exported {type(detector).__name__} to {args.output} (input "
        f"{card['input']['dtype']} ({shape}); outputs {outputs}); model card "
        f"{model_card_path(args.output)}."
    )
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
        progress=not args.no_progress and _show_progress(),
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


def _build_parser():
    from .benchmark import DEFAULT_EPOCHS, DEFAULT_NORMAL_CLASSES

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

    listing = commands.add_parser(
        "list",
        help="list the detectors found, with their plugin package",
        description="List the registered detectors (built-in and plugins) with "
        "their class and the package that provides them.",
    )
    listing.set_defaults(func=_cmd_list)

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
    fit.set_defaults(func=_cmd_fit)

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
    score.set_defaults(func=_cmd_score)

    evaluate = commands.add_parser(
        "evaluate",
        help="AUROC, AP and F1 of a saved model on labelled images or rows",
        description="Evaluate a saved model on an MVTec-style folder: DATA/good "
        "holds normal images and every other subfolder anomalies (an MVTec "
        "category root is read from its test folder); or, for a model fitted "
        "on tabular data, on a .csv/.parquet table whose --label-column holds "
        "the labels. Prints AUROC and AP (anomalies positive), F1 at the "
        "model's threshold, the false-alarm rate (FAR: the fraction of normal "
        "samples predicted anomalous) next to the rate requested "
        "(contamination) and how the threshold was calibrated, and for images "
        "the AUROC per anomaly type; with "
        "MVTec ground-truth masks (ROOT/ground_truth/<defect>/<image>_mask.png) "
        "and a detector with anomaly maps, also pixel AUROC and AUPRO (up to "
        "FPR 0.3).",
    )
    evaluate.add_argument("model", help="model file written by skanomaly fit")
    evaluate.add_argument(
        "data",
        help="folder with good/ and one folder per defect, or a .csv/.parquet "
        "table with --label-column",
    )
    evaluate.add_argument(
        "--label-column",
        default=None,
        metavar="NAME",
        help="for a table: the column of labels, 1 = anomaly / 0 = normal or +1 "
        "normal / -1 anomaly (both classes needed); the other columns are the "
        "features",
    )
    _add_scoring_options(evaluate)
    _add_report_option(
        evaluate,
        "ROC and PR curves, score and p-value histograms, the false-alarm rate, "
        "the confusion matrix and the worst samples",
    )
    evaluate.set_defaults(func=_cmd_evaluate)

    export = commands.add_parser(
        "export",
        help="export a saved model to ONNX, with a JSON model card",
        description="Export a saved model to an ONNX graph from the raw input "
        "(uint8 images, or float64 rows; any batch size) to anomaly_score "
        "(-score_samples: higher = more anomalous) and, for detectors with "
        "anomaly maps, anomaly_map. The model card OUTPUT.json beside it "
        "records the input, the outputs and the threshold: a sample is an "
        "anomaly when anomaly_score > -offset_; and the calibration (scheme, "
        "number of samples and their anomaly scores, from which a deployment "
        "computes conformal p-values). Needs the onnx extra: pip "
        "install 'skanomaly[onnx]'.",
    )
    export.add_argument("model", help="model file written by skanomaly fit")
    export.add_argument(
        "-o", "--output", required=True, help="ONNX file to write (e.g. model.onnx)"
    )
    export.add_argument(
        "--force",
        action="store_true",
        help="overwrite OUTPUT and its model card if they exist",
    )
    export.add_argument(
        "--no-calibration-scores",
        action="store_true",
        help="leave the calibration scores (at most 5,000 numbers) out of the "
        "model card; it still records the scheme and their number",
    )
    export.set_defaults(func=_cmd_export)

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
        "ones whose pretrained weights would need a download)",
    )
    bench.add_argument(
        "--epochs",
        type=_positive_int,
        default=DEFAULT_EPOCHS,
        help="max_epochs of detectors that train in epochs (default: each "
        "detector's own, 'auto': enough optimizer steps for the data)",
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
        "--no-progress",
        action="store_true",
        help="no progress bar (it is shown only when stderr is a terminal)",
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
