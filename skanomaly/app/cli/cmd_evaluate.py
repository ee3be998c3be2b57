"""``skanomaly evaluate``: a saved model on labelled images or rows.

The metrics come from :func:`skanomaly.reporting._evaluate` and
:func:`skanomaly.reporting._pixel_metrics`, the same numbers the report shows.
"""

from pathlib import Path

from .inputs import _check_report_path, _row_names, _scores, _write_report
from .options import _add_report_option, _add_scoring_options, _show_progress
from .outputs import _check_outputs, _escaped


def add_parser(commands):
    """Add the ``evaluate`` command to ``commands`` (argparse subparsers)."""
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
    evaluate.set_defaults(func=run)
    return evaluate


def _ground_truth_masks(detector, root, X, anomalous, files):
    """The MVTec ground_truth masks, read before anything is printed (a
    missing mask fails the command before its output, not after); None
    without a ground_truth folder or anomaly maps."""
    import numpy as np

    from ...detectors.base import get_detector_tags
    from ..datasets import load_mvtec_masks

    if not (Path(root) / "ground_truth").is_dir():
        return None
    if not get_detector_tags(detector).anomaly_maps:
        return None
    return load_mvtec_masks(root, files, np.where(anomalous, -1, 1), X.shape[2:])


def _print_pixel_metrics(detector, root, X, masks):
    """Pixel AUROC and AUPRO when the MVTec ground_truth masks are there."""
    from ...reporting import _pixel_metrics

    if masks is None:
        if (Path(root) / "ground_truth").is_dir():
            name = type(detector).__name__
            print(f"(no pixel metrics: {name} has no anomaly maps)")
        return
    pixel_auroc, aupro = _pixel_metrics(masks, detector.anomaly_map(X))
    print(f"pixel AUROC  {pixel_auroc:.4f}")
    print(f"AUPRO@0.3    {aupro:.4f}")


def _labelled_images(detector, args):
    """(X, anomalous, names, kinds, source) of an MVTec-style test folder."""
    import numpy as np

    from ..datasets import color_mode_for, load_labelled_image_folder

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
    from ..tables import is_table_file, match_columns, read_table

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
    from ...reporting import _evaluate, _threshold_facts

    evaluation = _evaluate(anomalous, scores, labels == -1, kinds)
    normal, unit = ("normal", "rows") if kinds is None else ("good", "images")
    print(
        f"{type(detector).__name__} on {_escaped(source)}: {evaluation.n_normal} "
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
        print(f"  AUROC good vs {_escaped(kind)}: {auroc:.4f}  ({n})")


def run(args):
    from ...persistence import load

    _check_report_path(args)
    if args.report is not None:
        _check_outputs([("model", args.model), args.data], [("--report", args.report)])
    detector = load(args.model, device=args.device)
    if getattr(detector, "image_shape_", None) is None:
        X, anomalous, files, kinds, source = _labelled_table(detector, args)
    else:
        X, anomalous, files, kinds, source = _labelled_images(detector, args)
    masks = None
    if kinds is not None:  # images: MVTec masks live next to the test folder
        root = Path(source).parent
        masks = _ground_truth_masks(detector, root, X, anomalous, files)
    scores, _, labels = _scores(detector, X)
    _print_evaluation(detector, source, anomalous, scores, labels, kinds)
    if kinds is not None:
        _print_pixel_metrics(detector, root, X, masks)
    _write_report(
        args, detector, X, files, scores, y=anomalous, kinds=kinds, masks=masks
    )
    return 0
