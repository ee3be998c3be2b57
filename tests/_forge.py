"""Hand-edited skanomaly files, as a forger would write them (checksums redone).

The checksum finds damage, not intent: these helpers recompute it, so that
what a test exercises is the loader's own checks.
"""

import json
import struct

from safetensors.torch import load as load_tensors
from safetensors.torch import save as save_tensors

from skanomaly.persistence.format import checksum


def read_model(path):
    """``(document, tensors)`` of a skanomaly file."""
    raw = path.read_bytes()
    (n,) = struct.unpack("<Q", raw[:8])
    document = json.loads(json.loads(raw[8 : 8 + n])["__metadata__"]["skanomaly"])
    return document, load_tensors(raw)


def named_strings(document):
    """Every string of ``document`` (the names a file's tensors must have)."""
    found, stack = set(), [document]
    while stack:
        item = stack.pop()
        if isinstance(item, dict):
            stack.extend(item.values())
        elif isinstance(item, list):
            stack.extend(item)
        elif isinstance(item, str):
            found.add(item)
    return found


def drop_unused(document, tensors):
    """Drop the tensors that an edit left unnamed (load refuses those)."""
    named = named_strings(document)
    for name in [name for name in tensors if name not in named]:
        del tensors[name]


def write_model(path, document, tensors, *, keep_checksum=False, text=None):
    """Write ``document`` and ``tensors`` to ``path`` as a skanomaly file.

    The checksum is recomputed (format 2: document and tensors) unless
    ``keep_checksum``; ``text`` replaces the JSON of the document (for
    documents json.dumps cannot write, such as nesting past its limits).
    """
    if not keep_checksum and isinstance(document, dict) and "checksum" in document:
        covered = {"name": document.get("name"), "detector": document.get("detector")}
        document["checksum"] = checksum(tensors, covered)
    text = json.dumps(document) if text is None else text
    path.write_bytes(save_tensors(tensors, metadata={"skanomaly": text}))


def rewrite(path, edit, *, keep_checksum=False):
    """Apply ``edit(document)`` to the JSON document of a saved file."""
    document, tensors = read_model(path)
    edit(document)
    write_model(path, document, tensors, keep_checksum=keep_checksum)


def write_header(path, source, edit):
    """A copy of ``source`` whose safetensors header is ``edit(header_bytes)``.

    The tensor bytes (and the offsets the header gives them) are kept; the
    header is padded with spaces to a multiple of 8 bytes, as safetensors
    writes it.
    """
    raw = source.read_bytes()
    (n,) = struct.unpack("<Q", raw[:8])
    header = edit(raw[8 : 8 + n].rstrip(b" "))
    header += b" " * (-len(header) % 8)
    path.write_bytes(struct.pack("<Q", len(header)) + header + raw[8 + n :])
