"""The skanomaly file: a safetensors file with one JSON document in its metadata.

Layout (safetensors): 8 bytes little-endian header length ``n``, ``n``
bytes of JSON header (tensor names, dtypes, shapes, byte offsets, and the
string ``__metadata__``), then the raw tensor bytes. The metadata holds one
entry, ``"skanomaly"``: the JSON document ``{"format", "format_version",
"skanomaly_version", "name", "detector", "checksum"}``. The checksum is a
SHA-256 of the ``name`` and ``detector`` entries (canonical JSON) and of
every tensor's name, dtype, shape and bytes: it finds damaged and edited
files; it is not a signature.

Reading checks the structure before anything uses it: the header's length
against the file's size, the size of the header and of the document and
their number of JSON elements before they are parsed (:data:`MAX_HEADER_BYTES`,
:data:`MAX_HEADER_ELEMENTS`, :data:`MAX_DOCUMENT_BYTES`,
:data:`MAX_DOCUMENT_ELEMENTS`: parsing allocates tens of bytes per element,
so these bound what parsing can allocate), at most :data:`MAX_TENSORS`
tensors, each named somewhere in the document (a file cannot pad its
load with tensors nothing uses), JSON nested at most :data:`MAX_DEPTH` levels, with
integers of at most 64 bits, no ``NaN``/``Infinity`` literals and no
numbers too large for a float (``1e400``), and a format version this module
reads (version 1, whose checksum leaves the header out, is refused). The
checksum must be a SHA-256 digest and must match: a document that has no
canonical JSON form (which the parser's checks leave none) is refused, not
let through unchecked.
"""

import contextlib
import errno
import hashlib
import json
import math
import os
import re
import secrets
import stat
import struct
import time

import torch

from .codec import FormatError, Refused, _short

__all__ = [
    "FORMAT_NAME",
    "FORMAT_VERSION",
    "MAX_DEPTH",
    "MAX_DOCUMENT_BYTES",
    "MAX_DOCUMENT_ELEMENTS",
    "MAX_HEADER_BYTES",
    "MAX_HEADER_ELEMENTS",
    "MAX_TENSORS",
    "check_checksum",
    "checksum",
    "count_elements",
    "is_temporary_file",
    "read_document",
    "read_file",
    "read_header",
    "read_model",
    "refuse_unused",
    "write_atomically",
    "write_file",
]

FORMAT_NAME = "skanomaly"
# 2: the checksum also covers the detector document (1: tensors only).
FORMAT_VERSION = 2
METADATA_KEY = "skanomaly"
# A document written by save() nests about a dozen levels deep.
MAX_DEPTH = 64

# What a file's JSON may hold, checked before it is parsed (count_elements).
# Parsing allocates at most ~56 bytes an element plus the characters of its
# strings (measured on the worst shapes: empty containers, unique keys), so
# the element limits bound the parser's memory: ~28 MB for a document,
# ~14 MB for a header. The largest models measured hold far less: a PaDiM
# or PatchCore on resnet18 125 tensors, ~2,100 header and ~1,000 document
# elements; a network's document grows with its training history, ~14
# elements a batch (an AutoEncoder fitted on digits: 560 batches, ~7,900),
# which save() keeps within half the document's limit (estimators.py).
MAX_TENSORS = 10_000
MAX_DOCUMENT_BYTES = 8 * 2**20
MAX_DOCUMENT_ELEMENTS = 500_000
# The header holds the document as a JSON string (quotes and backslashes
# escaped: at most twice as long) and 15 elements a tensor plus one a
# dimension of its shape.
MAX_HEADER_BYTES = 2 * MAX_DOCUMENT_BYTES + 4 * 2**20
MAX_HEADER_ELEMENTS = 24 * MAX_TENSORS + 4096
_INT_LIMIT = 2**63
_SHA256 = re.compile(r"[0-9a-f]{64}")


def checksum(tensors, document=None):
    """SHA-256 of the tensors and, from format 2 on, of the detector document."""
    digest = hashlib.sha256()
    if document is not None:
        canonical = json.dumps(document, sort_keys=True, allow_nan=False)
        digest.update(canonical.encode())
    for name in sorted(tensors):
        tensor = tensors[name]
        digest.update(name.encode())
        digest.update(str(tensor.dtype).encode())
        digest.update(str(tuple(tensor.shape)).encode())
        if tensor.numel():  # an empty tensor has no bytes (and may not view)
            digest.update(tensor.reshape(-1).view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


def write_file(path, tensors, document):
    """Write ``tensors`` and ``document`` to ``path`` atomically."""
    from safetensors.torch import save as save_bytes

    metadata = {METADATA_KEY: json.dumps(document, allow_nan=False)}
    if len(tensors) > MAX_TENSORS:
        raise FormatError(
            f"it has {len(tensors):,} tensors; a model file holds at most "
            f"{MAX_TENSORS:,}"
        )
    data = save_bytes(tensors, metadata=metadata)
    read_document(data)  # what load would refuse, save refuses (the limits)
    write_atomically(path, data)


def write_atomically(path, data):
    """Write the bytes ``data`` to ``path`` through a temporary file.

    See :func:`atomic_writer`, whose rules it follows.

    Raises
    ------
    PermissionError
        If ``path`` (or the target of the link it is) is read-only.
    """
    with atomic_writer(path) as file:
        file.write(data)


@contextlib.contextmanager
def atomic_writer(path, mode="wb", **open_kwargs):
    """Open a temporary file beside ``path``; on success it replaces ``path``.

    What is written goes to a temporary file beside the file it replaces,
    which then replaces it in one rename: a partly written file never
    replaces an existing one, and on an error the temporary file is removed
    and ``path`` is left as it was. As an editor saves a file:

    - a symbolic link is written through: its target (resolved, links of
      links too) is replaced, the link stays;
    - an existing file keeps its permission bits (a new one gets the
      umask's, as ``open()`` gives) and, where allowed, its owner;
    - a file that nobody may write (no write permission bit, ``chmod 444``)
      or that this process may not write is not replaced: PermissionError,
      root included;
    - a temporary file is named ``.<name>.<16 hex digits>.skanomaly-tmp``;
      one that a killed process left behind is removed by the next write
      to the same file once it is :data:`STALE_TEMPORARY_SECONDS` old.

    Parameters
    ----------
    path : str or path-like
    mode : str, default="wb"
        ``open()``'s mode for the temporary file ("w" for text).
    **open_kwargs
        More ``open()`` arguments (``encoding``, ``newline``).

    Yields
    ------
    file : file object

    Raises
    ------
    PermissionError
        If ``path`` (or the target of the link it is) is read-only.
    """
    target = os.path.realpath(os.fspath(path))
    folder, name = os.path.split(target)
    try:
        existing = os.stat(target)
    except FileNotFoundError:
        existing = None
    if existing is not None:
        _check_writable(path, target, existing)
        permissions = stat.S_IMODE(existing.st_mode)
    else:
        permissions = 0o666 & ~_umask()
    _remove_stale_temporary_files(folder, name)
    tmp, handle = _create_temporary_file(folder, name)
    try:
        with open(handle, mode, **open_kwargs) as file:
            yield file
        if existing is not None and (existing.st_uid, existing.st_gid) != _owner(tmp):
            with contextlib.suppress(OSError):  # allowed to root only
                os.chown(tmp, existing.st_uid, existing.st_gid)
        os.chmod(tmp, permissions)
        os.replace(tmp, target)
    except BaseException:
        with contextlib.suppress(OSError):
            os.remove(tmp)
        raise


# A temporary file this old that no write has touched was left by a killed
# process (a write in progress keeps changing its modification time).
STALE_TEMPORARY_SECONDS = 10 * 60
_TEMPORARY_SUFFIX = ".skanomaly-tmp"
_TEMPORARY_RANDOM = re.compile(r"[0-9a-f]{16}")


def is_temporary_file(filename, name):
    """Whether ``filename`` is a temporary file of a write to the file ``name``."""
    prefix = f".{name}."
    return (
        filename.startswith(prefix)
        and filename.endswith(_TEMPORARY_SUFFIX)
        and _TEMPORARY_RANDOM.fullmatch(filename[len(prefix) : -len(_TEMPORARY_SUFFIX)])
        is not None
    )


def _create_temporary_file(folder, name):
    """A new private file ``.<name>.<random>.skanomaly-tmp`` in ``folder``."""
    while True:
        tmp = os.path.join(folder, f".{name}.{secrets.token_hex(8)}{_TEMPORARY_SUFFIX}")
        try:
            return tmp, os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        except FileExistsError:
            continue


def _remove_stale_temporary_files(folder, name):
    """Remove what killed writes to ``name`` left in ``folder`` (regular files)."""
    cutoff = time.time() - STALE_TEMPORARY_SECONDS
    try:
        entries = list(os.scandir(folder))
    except OSError:
        return
    for entry in entries:
        if not is_temporary_file(entry.name, name):
            continue
        with contextlib.suppress(OSError):
            info = entry.stat(follow_symlinks=False)
            if stat.S_ISREG(info.st_mode) and info.st_mtime < cutoff:
                os.remove(entry.path)


def _check_writable(path, target, existing):
    shown = repr(os.fspath(path))
    if target != os.path.abspath(os.fspath(path)):
        shown += f" (a link to {target!r})"
    if not existing.st_mode & 0o222:
        raise PermissionError(
            errno.EACCES,
            f"Refusing to replace {shown}: it is read-only (mode "
            f"{stat.S_IMODE(existing.st_mode):o}); make it writable (chmod u+w) "
            "or write to another file",
        )
    if not os.access(target, os.W_OK):
        raise PermissionError(
            errno.EACCES,
            f"Refusing to replace {shown}: it is not writable by this user; "
            "write to another file",
        )


def _owner(path):
    info = os.stat(path)
    return info.st_uid, info.st_gid


def _umask():
    mask = os.umask(0)
    os.umask(mask)
    return mask


def _refuse_constant(name):
    raise FormatError(f"it holds the non-standard JSON value {name}")


def _check_structure(value, what, strings=None):
    """Depth and integer size of parsed JSON, walked without recursion.

    Only containers go on the stack; the scalars are checked where they
    are found (a load walks every value of its document once, here). With
    ``strings``, a set, every string value is added to it.
    """
    stack = [([value], 0)]
    while stack:
        container, depth = stack.pop()
        if depth > MAX_DEPTH:
            raise FormatError(f"{what} nests deeper than {MAX_DEPTH} levels")
        # json.loads makes exactly these types (bool is not int here)
        for item in container.values() if type(container) is dict else container:
            kind = type(item)
            if kind is dict or kind is list:
                stack.append((item, depth + 1))
            elif kind is str:
                if strings is not None:
                    strings.add(item)
            elif kind is int:
                if not -_INT_LIMIT <= item < _INT_LIMIT:
                    raise FormatError(f"{what} holds an integer of more than 64 bits")
            elif kind is float and not math.isfinite(item):
                # a literal such as 1e400, which Python reads as inf
                raise FormatError(f"{what} holds a number too large for a float")


_STRUCTURAL = "[{,:"
# The bytes that are neither structural characters nor quotes.
_UNCOUNTED = bytes(sorted(set(range(256)) - set(b'[{,:"')))
# Texts are read this many characters at a time: the copies and the pieces
# a chunk splits into stay a few MB whatever the text holds.
_CHUNK = 2**16
_BYTES_CHUNK = 2**20


def _upper_bound(data, start, stop):
    """An upper bound of the JSON elements of the bytes ``data[start:stop]``.

    Its structural characters and half its quotes, inside strings too: a
    header's bound also bounds the document it holds as a string. One
    C-speed pass, a chunk at a time.
    """
    total = quotes = 0
    for begin in range(start, stop, _BYTES_CHUNK):
        kept = data[begin : min(begin + _BYTES_CHUNK, stop)].translate(None, _UNCOUNTED)
        n_quotes = kept.count(b'"')
        total += len(kept) - n_quotes
        quotes += n_quotes
    return total + quotes // 2


def count_elements(text, limit):
    """The number of JSON elements of ``text``, counted up to past ``limit``.

    An element is a string or a ``[``, ``{``, ``,`` or ``:`` outside
    strings: about one per value and key. What parsing allocates is
    proportional to it (at most ~56 bytes an element plus the characters of
    its strings, measured), so counting first bounds the parser's memory.
    Counts over the whole text give an upper bound, enough for any text not
    near the limit; otherwise the text is read in chunks of :data:`_CHUNK`
    characters, each with its escaped backslashes and quotes removed, so
    that the quotes left alternately open and close strings. Linear in the
    length of ``text`` whatever it holds, with no loop over characters in
    Python; the count stops at the first chunk that takes it past
    ``limit``.
    """
    upper = sum(text.count(char) for char in _STRUCTURAL) + text.count('"') // 2
    if upper <= limit:
        return upper
    count, inside, start = 0, False, 0
    while start < len(text) and count <= limit:
        stop = min(start + _CHUNK, len(text))
        chunk = text[start:stop]
        # never split an escape: a chunk starts where one may start, so a
        # trailing run of backslashes is pairs, and an odd one escapes the
        # next character
        if (len(chunk) - len(chunk.rstrip("\\"))) % 2:
            stop += 1
            chunk = text[start:stop]
        pieces = chunk.replace("\\\\", "").replace('\\"', "").split('"')
        del chunk
        start = stop
        outside = "".join(pieces[int(inside) :: 2])
        count += sum(outside.count(char) for char in _STRUCTURAL)
        quotes = len(pieces) - 1
        count += (quotes + (not inside)) // 2  # the quotes that open a string
        inside ^= quotes % 2 == 1
    return count


def _parse_json(text, what, max_chars, max_elements, *, counted, strings=None):
    """Parse ``text`` once its size and elements are known to be within limits.

    ``counted``: an upper bound already showed it holds at most
    ``max_elements`` elements.
    """
    if len(text) > max_chars:
        raise FormatError(
            f"{what} is {len(text):,} characters long; at most {max_chars:,} are read"
        )
    if not counted and count_elements(text, max_elements) > max_elements:
        raise FormatError(
            f"{what} holds more than {max_elements:,} JSON elements (values and "
            "keys), the most that is read"
        )
    try:
        value = json.loads(text, parse_constant=_refuse_constant)
    except RecursionError:
        raise FormatError(f"{what} nests deeper than {MAX_DEPTH} levels") from None
    except FormatError:
        raise
    except (TypeError, ValueError) as exc:  # JSONDecodeError, too many digits
        reason = " ".join(str(exc).split())[:120]
        raise FormatError(f"{what} is not valid JSON ({reason})") from None
    _check_structure(value, what, strings)
    return value


def _header_length(prefix, size):
    """The header length that the 8 bytes ``prefix`` give, checked."""
    if len(prefix) < 8:
        raise FormatError("it is too short to be a safetensors file")
    (n,) = struct.unpack("<Q", prefix[:8])
    if n > size - 8:
        raise FormatError("it is not in the safetensors format")
    if n > MAX_HEADER_BYTES:
        raise FormatError(
            f"its safetensors header is {n:,} bytes long; at most "
            f"{MAX_HEADER_BYTES:,} are read"
        )
    return n


def read_file(path):
    """The bytes of the file at ``path``, read through one open file.

    A save that replaces the file meanwhile (a rename) cannot make a load
    mix two versions: the document and the tensors come from these bytes.
    The header's length is checked against the file's size (and
    :data:`MAX_HEADER_BYTES`) before the file is read.
    """
    # unbuffered: readall() reads the whole file into one allocation
    with open(path, "rb", buffering=0) as file:
        size = os.fstat(file.fileno()).st_size
        _header_length(file.read(8), size)
        file.seek(0)
        return file.readall()


def read_header(data):
    """``(tensor_names, document)`` of the file ``data``; precise errors for others.

    Both JSON texts are measured before they are parsed, and the tensors
    counted (:data:`MAX_TENSORS`) and their names looked up in the document
    before any is read: a tensor that no string of the document names is
    refused (:func:`refuse_unused`).
    """
    n = _header_length(data[:8], len(data))
    # one bound for both texts: the header holds the document
    upper = _upper_bound(data, 8, 8 + n)
    try:
        raw = str(memoryview(data)[8 : 8 + n], "utf-8")  # no copy of the bytes
    except UnicodeDecodeError:
        raise FormatError("its safetensors header is not valid JSON") from None
    header = _parse_json(
        raw,
        "its safetensors header",
        MAX_HEADER_BYTES,
        MAX_HEADER_ELEMENTS,
        counted=upper <= MAX_HEADER_ELEMENTS,
    )
    del raw
    if not isinstance(header, dict):
        raise FormatError("its safetensors header is not a JSON object")
    metadata = header.pop("__metadata__", None) or {}
    if not isinstance(metadata, dict) or METADATA_KEY not in metadata:
        raise FormatError(
            "it is a safetensors file without a skanomaly header (not written by "
            "skanomaly.save)"
        )
    if len(header) > MAX_TENSORS:
        raise FormatError(
            f"it has {len(header):,} tensors; a model file holds at most "
            f"{MAX_TENSORS:,}"
        )
    text = metadata[METADATA_KEY]
    if not isinstance(text, str):
        raise FormatError("its skanomaly header is not a JSON string")
    strings = set()
    document = _parse_json(
        text,
        "its skanomaly header",
        MAX_DOCUMENT_BYTES,
        MAX_DOCUMENT_ELEMENTS,
        counted=upper <= MAX_DOCUMENT_ELEMENTS,
        strings=strings,
    )
    if not isinstance(document, dict) or document.get("format") != FORMAT_NAME:
        raise FormatError("its header does not describe a skanomaly model")
    version = document.get("format_version")
    if not isinstance(version, int) or isinstance(version, bool):
        raise FormatError(f"its format version {_short(version)} is not an integer")
    if version > FORMAT_VERSION:
        raise Refused(
            f"it was written in skanomaly file format version {version}, newer "
            f"than the version {FORMAT_VERSION} this skanomaly reads; upgrade "
            "skanomaly"
        )
    if version == 1:
        raise Refused(
            "it is in skanomaly file format version 1, of a development version "
            "whose checksum did not cover the parameters and fitted values; fit "
            "the detector again and save it"
        )
    if version != FORMAT_VERSION:
        raise FormatError(f"its format version {version} is unknown")
    # a name the document holds somewhere may still go unused: load()
    # refuses those once the detector is built
    unreferenced = [name for name in header if name not in strings]
    if unreferenced:
        refuse_unused(unreferenced)
    return list(header), document


def read_document(data):
    """The skanomaly document of the file ``data``; precise errors for others.

    Only the current format version is read: version 1, of development
    versions whose checksum did not cover the document, is refused.
    """
    return read_header(data)[1]


def refuse_unused(names):
    """Refuse a file for tensors that its document does not use.

    Every tensor a file holds is used by its document (an array, a tensor,
    a module's weights); one that is not can only pad the load.

    Raises
    ------
    FormatError
        Always, naming the first of ``names``.
    """
    raise FormatError(
        f"it holds {len(names):,} tensor(s) that its header never uses, such as "
        f"{_short(sorted(names)[0])}"
    )


def read_model(path):
    """``(document, tensors, size)`` of the file at ``path``, read once.

    The file's bytes are dropped once its tensors are read (before the
    checksum is computed), so a load holds them no longer than it did when
    it read the file twice.
    """
    data = read_file(path)
    _, document = read_header(data)
    tensors = _read_tensors(data)
    size = len(data)
    del data
    check_checksum(tensors, document)
    return document, tensors, size


def _read_tensors(data):
    from safetensors import SafetensorError
    from safetensors.torch import load as load_bytes

    try:
        return load_bytes(data)
    except (SafetensorError, ValueError, RuntimeError) as exc:
        raise FormatError(f"its tensor data is damaged ({exc})") from None


def check_checksum(tensors, document):
    """Refuse ``tensors`` and ``document`` unless the document's checksum matches.

    The checksum must be a SHA-256 digest, and the document must have a
    canonical JSON form to compute it on (a missing or ``null`` checksum and
    an uncomputable one are refused, not skipped).
    """
    stored = document.get("checksum")
    if not isinstance(stored, str) or not _SHA256.fullmatch(stored):
        raise FormatError("its checksum is missing or is not a SHA-256 digest")
    covered = {"name": document.get("name"), "detector": document.get("detector")}
    try:
        expected = checksum(tensors, covered)
    except (TypeError, ValueError):  # a document JSON cannot write: no checksum
        raise FormatError(
            "its header has no canonical JSON form, so its checksum cannot be checked"
        ) from None
    if stored != expected:
        raise FormatError(
            "its contents do not match its checksum (the file is damaged or was edited)"
        )
