"""Where a command writes: outputs checked against its inputs, written atomically.

Every command lists what it reads and what it writes before any work
(:func:`_check_outputs`): an output that is an input (a file, or any file
of an input folder), a folder of outputs inside an input folder, or an
output that is another output of the same command is refused with a
one-line error. Files are written to a temporary file beside the target and renamed
over it at the end (:func:`_atomic_file`), so a failure leaves an older
output as it was. File names that are not UTF-8 are shown and written with
``\\xNN`` escapes (:func:`_escaped`), and CSV cells of text that a spreadsheet
would run as a formula get a leading ``'`` (:func:`_csv_text`).
"""

import contextlib
import os
from pathlib import Path


def _escaped(name):
    """``name`` (str or path) with undecodable bytes as visible ``\\xNN`` escapes.

    Names of files that are not UTF-8 reach Python as lone surrogates
    (``surrogateescape``), which no UTF-8 file or terminal can hold.
    """
    name = os.fspath(name)
    if isinstance(name, bytes):
        return name.decode("utf-8", "backslashreplace")
    try:
        return os.fsencode(name).decode("utf-8", "backslashreplace")
    except UnicodeError:
        return name.encode("utf-8", "backslashreplace").decode("utf-8")


# OWASP, CSV injection: a cell starting with one of these is a formula (or
# ends the cell) in a spreadsheet; a leading single quote makes it text.
_FORMULA_STARTS = ("=", "+", "-", "@", "\t", "\r")


def _csv_text(text):
    """A text cell for a CSV file: escaped, and never read as a formula."""
    text = _escaped(text)
    return "'" + text if text.startswith(_FORMULA_STARTS) else text


def _real(path):
    return os.path.realpath(os.fspath(path))


def _inside(path, folder):
    return path.startswith(folder.rstrip(os.sep) + os.sep)


def _files_under(folder):
    """Every file under ``folder``, subfolders included."""
    for directory, _, names in os.walk(folder):
        for name in names:
            yield os.path.join(directory, name)


def _map_files(data, folder):
    """The maps ``score --maps folder`` could write for ``data``: one per image
    file (subfolders included; hidden files are no images)."""
    from ..datasets import IMAGE_EXTENSIONS, _hidden

    if not os.path.isdir(data):
        return []  # rows of an array: checked by name once the rows are read
    first_input = {}
    for path in _files_under(data):
        relative = Path(path).relative_to(data)
        if relative.suffix.lower() not in IMAGE_EXTENSIONS or _hidden(relative):
            continue
        output = os.path.join(folder, relative.with_suffix(".png"))
        other = first_input.setdefault(output, path)
        if other != path:  # a.png and a.jpg: one map name
            raise ValueError(
                f"--maps would write {output!r} for both {str(other)!r} and "
                f"{str(path)!r}; rename one of them or score them separately."
            )
    return list(first_input)


def _check_outputs(inputs, outputs, folders=()):
    """Refuse, before any work, outputs that would replace an input or each other.

    Parameters
    ----------
    inputs : list of path-like or (str, path-like)
        What the command reads: files, and folders (with every file inside),
        each with what it is for the messages (``('model', path)``; by
        default ``'input'``).
    outputs : list of (str, path-like)
        The files it writes, each with the option that names it
        (``'--csv'``); for ``--maps`` one entry per map it would write.
    folders : list of (str, path-like), default=()
        The folders it fills (``('--maps', folder)``): one may not be an
        input folder or lie inside one, where the next run would read what
        it holds.

    Raises
    ------
    ValueError
        If an output is an input (also through a link), a folder output
        lies inside an input folder, or an output is also another output.
    """
    files, input_folders = {}, {}
    for entry in inputs:
        role, path = entry if isinstance(entry, tuple) else ("input", entry)
        real = _real(path)
        if os.path.isdir(real):
            input_folders[real] = (f"{role} folder", path)
            for inner in _files_under(real):
                files.setdefault(_real(inner), (role, inner))
        else:
            files[real] = (role, path)
    inodes = {}
    for real, path in files.items():
        with contextlib.suppress(OSError):
            status = os.stat(real)
            inodes[(status.st_dev, status.st_ino)] = path
    seen = {}
    for option, path in [*folders, *outputs]:
        real = _real(path)
        shown = f"{option} {str(path)!r}"
        clash = files.get(real, input_folders.get(real))
        if clash is None and os.path.isfile(real):  # a hard link to an input
            status = os.stat(real)
            clash = inodes.get((status.st_dev, status.st_ino))
        if clash is not None:
            role, given = clash
            raise ValueError(
                f"Refusing to write {shown}: it would overwrite the {role} "
                f"{str(given)!r}. Choose another output."
            )
        if (option, path) in folders:
            for folder, (role, given) in input_folders.items():
                if _inside(real, folder):
                    raise ValueError(
                        f"Refusing to write {shown}: it lies inside the {role} "
                        f"{str(given)!r}. Choose another folder."
                    )
        if real in seen:
            raise ValueError(
                f"Refusing to write {shown}: it is also the {seen[real]} output. "
                "Choose different outputs."
            )
        seen[real] = option


def _atomic_file(path, mode="w", **kwargs):
    """Open a temporary file beside ``path``; rename it over ``path`` on success.

    The rules of every file skanomaly writes
    (:func:`skanomaly.persistence.format.atomic_writer`): on an error
    ``path`` is left as it was; a symbolic link is written through; an
    existing file keeps its permissions; a read-only file is refused.
    """
    from ...persistence.format import atomic_writer

    return atomic_writer(path, mode, **kwargs)
