"""Tables for the command line: .csv and .parquet files as numeric frames.

Reading needs pandas (and pyarrow for Parquet): ``pip install
'skanomaly[tables]'``. Every check fails with one line that names what is
wrong: a non-numeric column, missing values, a label column that is not
1/0 or +1/-1, columns that differ from the ones a model was fitted on.
"""

from pathlib import Path

import numpy as np

__all__ = ["TABLE_SUFFIXES", "is_table_file", "match_columns", "read_table"]

TABLE_SUFFIXES = (".csv", ".parquet")
_SHOWN = 5  # names listed in a message before "..."


def is_table_file(path):
    """Whether ``path`` names a table file (.csv or .parquet)."""
    return Path(path).suffix.lower() in TABLE_SUFFIXES


def _listed(names):
    shown = ", ".join(repr(str(name)) for name in names[:_SHOWN])
    return shown + (f" and {len(names) - _SHOWN} more" if len(names) > _SHOWN else "")


def _pandas(path):
    try:
        import pandas
    except ImportError:
        raise ImportError(
            f"Reading {Path(path).suffix} files needs pandas: pip install "
            "'skanomaly[tables]'."
        ) from None
    return pandas


def read_table(path, *, label_column=None):
    """Read a table of numeric features; optionally split off a label column.

    Parameters
    ----------
    path : str or path-like
        A .csv file (with a header row) or a .parquet file.
    label_column : str or None, default=None
        Column of labels to take out of the features (see
        :func:`skanomaly.reporting.anomaly_mask` for the accepted labels).

    Returns
    -------
    frame : pandas.DataFrame
        The feature columns, float, with their names (so that a detector
        fitted on it records ``feature_names_in_``).
    labels : ndarray of bool or None
        True for the rows labelled anomalous; None without ``label_column``.

    Examples
    --------
    >>> import tempfile
    >>> from skanomaly.app.tables import read_table
    >>> path = tempfile.mkdtemp() + "/rows.csv"
    >>> _ = open(path, "w").write("a,b,label\\n1,2,0\\n3,4,1\\n")
    >>> frame, labels = read_table(path, label_column="label")
    >>> list(frame.columns), labels.tolist()
    (['a', 'b'], [False, True])
    """
    from ..reporting import anomaly_mask

    pandas = _pandas(path)
    path = Path(path)
    if not path.is_file():
        what = "is a folder" if path.is_dir() else "does not exist"
        raise FileNotFoundError(f"{str(path)!r} {what}.")
    frame = _read(pandas, path)
    frame.columns = [str(name) for name in frame.columns]
    if path.suffix.lower() == ".csv":
        _warn_if_header_is_data(frame.columns, path)
    if len(frame) == 0:
        raise ValueError(f"{str(path)!r} has a header but no rows.")
    labels = None
    if label_column is not None:
        if label_column not in frame.columns:
            raise ValueError(
                f"{str(path)!r} has no column {label_column!r} (--label-column); "
                f"its columns are {_listed(list(frame.columns))}."
            )
        labels = anomaly_mask(
            frame.pop(label_column).to_numpy(),
            what=f"label column {label_column!r} of {str(path)!r}",
        )
    _check_features(frame, path)
    return frame.astype(np.float64), labels


def _read(pandas, path):
    if path.suffix.lower() == ".parquet":
        try:
            import pyarrow  # noqa: F401
        except ImportError:
            raise ImportError(
                "Reading .parquet files needs pyarrow: pip install 'skanomaly[tables]'."
            ) from None
        return pandas.read_parquet(path)
    try:
        return pandas.read_csv(path)
    except pandas.errors.EmptyDataError:
        raise ValueError(f"{str(path)!r} is empty (no header row).") from None
    except (pandas.errors.ParserError, UnicodeDecodeError) as exc:
        message = " ".join(str(exc).split())
        raise ValueError(f"Cannot read {str(path)!r} as CSV: {message}") from None


def _is_number(name):
    # pandas renames a repeated name "x" to "x.1", "x.2"...
    for text in (name, name.rpartition(".")[0]):
        try:
            float(text)
            return True
        except ValueError:
            pass
    return False


def _warn_if_header_is_data(names, path):
    """Warn when a CSV's header row looks like a row of data.

    A file written without a header (``to_csv(header=False)``, ``np.savetxt``)
    loses its first row to the column names, silently. Names that are all
    numbers, other than the column numbers ``0..n-1`` or ``1..n`` that
    ``pandas.DataFrame(X).to_csv()`` writes, are taken for that row.
    """
    import warnings

    if not all(_is_number(name) for name in names):
        return
    if list(names) in (
        [str(i) for i in range(len(names))],
        [str(i + 1) for i in range(len(names))],
    ):
        return
    warnings.warn(
        f"The header row of {str(path)!r} is all numbers ({_listed(list(names))}), "
        "so it is probably a row of data: it was read as the column names and "
        "is not among the rows. Add a header row of column names as the "
        "file's first line.",
        UserWarning,
        stacklevel=3,
    )


def _check_features(frame, path):
    from pandas.api.types import is_bool_dtype, is_numeric_dtype

    if frame.shape[1] == 0:
        raise ValueError(f"{str(path)!r} has no feature columns.")
    text = [
        name
        for name, dtype in frame.dtypes.items()
        if not (is_numeric_dtype(dtype) or is_bool_dtype(dtype))
    ]
    if text:
        raise ValueError(
            f"{str(path)!r} has non-numeric column(s) {_listed(text)}; every "
            "column must be a number (drop or encode the others first)."
        )
    _refuse_counted(frame.isna().sum(), path, "missing values", "fill or drop")
    infinite = np.isinf(frame.astype(np.float64)).sum()
    _refuse_counted(infinite, path, "infinite values", "clip or drop")


def _refuse_counted(counts, path, what, fix):
    """A one-line error naming the columns with ``what`` and their row counts."""
    counts = counts[counts > 0]
    if len(counts):
        where = ", ".join(
            f"{name!r} ({count} row{'s' if count > 1 else ''})"
            for name, count in list(counts.items())[:_SHOWN]
        )
        more = f" and {len(counts) - _SHOWN} more" if len(counts) > _SHOWN else ""
        raise ValueError(
            f"{str(path)!r} has {what} in column(s) {where}{more}; {fix} them first."
        )


def match_columns(frame, detector, path):
    """The columns of ``frame`` a fitted detector takes, in its training order.

    A detector fitted on named columns (``feature_names_in_``) gets exactly
    those columns, reordered by name if needed; one fitted without names
    gets the frame's values when the number of columns matches.

    Parameters
    ----------
    frame : pandas.DataFrame
        From :func:`read_table`.
    detector : fitted detector
    path : str or path-like
        The file ``frame`` came from, for the messages.

    Returns
    -------
    X : pandas.DataFrame or ndarray
    """
    names = getattr(detector, "feature_names_in_", None)
    name = type(detector).__name__
    if names is None:
        if frame.shape[1] != detector.n_features_in_:
            raise ValueError(
                f"{name} was fitted on {detector.n_features_in_} columns but "
                f"{str(path)!r} has {frame.shape[1]}."
            )
        return frame.to_numpy()
    names = [str(n) for n in names]
    missing = [n for n in names if n not in frame.columns]
    extra = [n for n in frame.columns if n not in set(names)]
    if missing or extra:
        parts = []
        if missing:
            parts.append(f"lacks the training column(s) {_listed(missing)}")
        if extra:
            parts.append(f"has column(s) {_listed(extra)} the model was not fitted on")
        raise ValueError(
            f"{str(path)!r} {' and '.join(parts)}; {name} was fitted on the "
            f"columns {_listed(names)}."
        )
    return frame[names]
