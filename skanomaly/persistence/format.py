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
against the file's size, JSON nested at most :data:`MAX_DEPTH` levels, with
integers of at most 64 bits and no ``NaN``/``Infinity`` literals, and a
format version this module reads (version 1, whose checksum leaves the
header out, only when the caller allows it).
"""

import hashlib
import json
import os
import struct
import tempfile
from pathlib import Path

import torch

from .codec import FormatError, Refused

__all__ = [
    "FORMAT_NAME",
    "FORMAT_VERSION",
    "checksum",
    "read_document",
    "read_tensors",
    "write_atomically",
    "write_file",
]

FORMAT_NAME = "skanomaly"
# 2: the checksum also covers the detector document (1: tensors only).
FORMAT_VERSION = 2
METADATA_KEY = "skanomaly"
_MAX_HEADER_BYTES = 100_000_000
# A document written by save() nests about a dozen levels deep.
MAX_DEPTH = 64
_INT_LIMIT = 2**63


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
    write_atomically(path, save_bytes(tensors, metadata=metadata))


def write_atomically(path, data):
    """Write the bytes ``data`` to ``path`` through a temporary file.

    The bytes go to a temporary file in the same folder, which then replaces
    ``path``: a partly written file never replaces an existing one.
    """
    path = Path(path)
    handle, tmp = tempfile.mkstemp(dir=path.parent or ".", prefix=f".{path.name}.")
    try:
        with os.fdopen(handle, "wb") as file:
            file.write(data)
        # mkstemp makes the file private (0600); give it the permissions of
        # any new file (the umask's), as open() would
        os.chmod(tmp, 0o666 & ~_umask())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.remove(tmp)
        raise


def _umask():
    mask = os.umask(0)
    os.umask(mask)
    return mask


def _refuse_constant(name):
    raise FormatError(f"it holds the non-standard JSON value {name}")


def _check_structure(value, what):
    """Depth and integer size of parsed JSON, walked without recursion."""
    stack = [(value, 1)]
    while stack:
        item, depth = stack.pop()
        if isinstance(item, (dict, list)):
            if depth > MAX_DEPTH:
                raise FormatError(f"{what} nests deeper than {MAX_DEPTH} levels")
            children = item.values() if isinstance(item, dict) else item
            stack.extend((child, depth + 1) for child in children)
        elif (
            isinstance(item, int)
            and not isinstance(item, bool)
            and not -_INT_LIMIT <= item < _INT_LIMIT
        ):
            raise FormatError(f"{what} holds an integer of more than 64 bits")


def _parse_json(text, what):
    try:
        value = json.loads(text, parse_constant=_refuse_constant)
    except RecursionError:
        raise FormatError(f"{what} nests deeper than {MAX_DEPTH} levels") from None
    except FormatError:
        raise
    except (TypeError, ValueError) as exc:  # JSONDecodeError, too many digits
        reason = " ".join(str(exc).split())[:120]
        raise FormatError(f"{what} is not valid JSON ({reason})") from None
    _check_structure(value, what)
    return value


def read_document(path):
    """The skanomaly document of the file at ``path``; precise errors for others.

    Only the current format version is read: version 1, of development
    versions whose checksum did not cover the document, is refused.
    """
    size = path.stat().st_size
    with path.open("rb") as file:
        prefix = file.read(8)
        if len(prefix) < 8:
            raise FormatError("it is too short to be a safetensors file")
        (n,) = struct.unpack("<Q", prefix)
        if n > min(size - 8, _MAX_HEADER_BYTES):
            raise FormatError("it is not in the safetensors format")
        raw = file.read(n)
    try:
        raw = raw.decode("utf-8")
    except UnicodeDecodeError:
        raise FormatError("its safetensors header is not valid JSON") from None
    header = _parse_json(raw, "its safetensors header")
    if not isinstance(header, dict):
        raise FormatError("its safetensors header is not a JSON object")
    metadata = header.get("__metadata__") or {}
    if not isinstance(metadata, dict) or METADATA_KEY not in metadata:
        raise FormatError(
            "it is a safetensors file without a skanomaly header (not written by "
            "skanomaly.save)"
        )
    if not isinstance(metadata[METADATA_KEY], str):
        raise FormatError("its skanomaly header is not a JSON string")
    document = _parse_json(metadata[METADATA_KEY], "its skanomaly header")
    if not isinstance(document, dict) or document.get("format") != FORMAT_NAME:
        raise FormatError("its header does not describe a skanomaly model")
    version = document.get("format_version")
    if not isinstance(version, int) or isinstance(version, bool):
        raise FormatError(f"its format version {version!r} is not an integer")
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
    return document


def read_tensors(path, document):
    """The file's tensors, checked against the document's checksum."""
    from safetensors import SafetensorError
    from safetensors.torch import load as load_bytes

    try:
        tensors = load_bytes(path.read_bytes())
    except (SafetensorError, ValueError, RuntimeError) as exc:
        raise FormatError(f"its tensor data is damaged ({exc})") from None
    covered = None
    if document["format_version"] >= 2:
        covered = {"name": document.get("name"), "detector": document.get("detector")}
    try:
        expected = checksum(tensors, covered)
    except (TypeError, ValueError):  # a document JSON cannot hold
        expected = None
    if document.get("checksum") != expected:
        raise FormatError(
            "its contents do not match its checksum (the file is damaged or was edited)"
        )
    return tensors
