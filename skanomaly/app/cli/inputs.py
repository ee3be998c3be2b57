"""Reading a command's data, checking where it writes, and scoring it."""

from pathlib import Path

from .options import _show_progress
from .outputs import _escaped


def _row_names(path, n_rows):
    return [f"{path}[{i}]" for i in range(n_rows)]


def _load_data(path, *, image_size, color_mode, recursive, on_error):
    """Images of a folder, or the rows of a .npy, .csv or .parquet file.

    Returns (X, names); a table comes as a DataFrame, so that a detector
    fitted on it records its column names.
    """
    import numpy as np

    from ..datasets import load_image_folder
    from ..tables import is_table_file, read_table

    path = Path(path)
    if is_table_file(path):
        frame, _ = read_table(path)
        return frame, _row_names(path, len(frame))
    if path.suffix.lower() == ".npy" and path.is_file():
        try:
            X = np.load(path, allow_pickle=False)
        except ValueError as exc:  # object arrays need pickle: never loaded
            raise ValueError(f"Cannot read {str(path)!r}: {exc}") from None
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
    from ..tables import is_table_file, match_columns, read_table

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
        X, names = _load_data(
            path, image_size=None, color_mode="auto", recursive=False, on_error=on_error
        )
        return _named_like_fit(X, detector, path), names
    if is_table_file(path):
        raise ValueError(
            f"the model was fitted on images; give a folder of images, not the "
            f"table {str(path)!r}."
        )
    from ..datasets import color_mode_for

    channels, height, width = image_shape
    return _load_data(
        path,
        image_size=(height, width),
        color_mode=color_mode_for(channels) if Path(path).is_dir() else "auto",
        recursive=recursive,
        on_error=on_error,
    )


def _named_like_fit(X, detector, path):
    """Rows of a .npy file for a model fitted on named columns (a table).

    An array has no column names: its columns are taken in the training
    order, said once, instead of scikit-learn's warning on every call.
    """
    import sys

    names = getattr(detector, "feature_names_in_", None)
    if names is None or getattr(X, "ndim", 0) != 2 or X.shape[1] != len(names):
        return X  # nothing to name, or the detector's own error follows
    try:
        import pandas
    except ImportError:  # scikit-learn's warning then says the same
        return X

    print(
        f"note: {Path(path).name} has no column names; its {len(names)} columns "
        "are read as the model's training columns, in that order.",
        file=sys.stderr,
    )
    return pandas.DataFrame(X, columns=names)


def _check_file_output(option, output):
    """Refuse an output file path that is a folder or in a missing folder."""
    output = Path(output)
    if output.is_dir():
        raise ValueError(
            f"{option} {str(output)!r} is a folder; give a file path (e.g. "
            f"{str(output / 'out')!r} with an extension)."
        )
    if not output.parent.is_dir():
        raise FileNotFoundError(f"Output folder {str(output.parent)!r} does not exist.")


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


def _check_report_path(args):
    """Fail before any work if --report cannot be written (see outputs too)."""
    if args.report is None:
        return
    from ...reporting import _matplotlib

    _matplotlib()  # its ImportError names the extra to install
    _check_file_output("--report", args.report)


def _write_report(
    args, detector, X, files, scores, y=None, kinds=None, masks=None, file=None
):
    if args.report is None:
        return
    from ...reporting import report

    report(
        detector,
        X,
        args.report,
        y=y,
        names=[_escaped(name) for name in files],
        scores=scores,
        kinds=None if kinds is None else [_escaped(kind) for kind in kinds],
        masks=masks,
        dataset=_escaped(args.data),
    )
    print(f"Wrote the report {_escaped(args.report)}.", file=file)
