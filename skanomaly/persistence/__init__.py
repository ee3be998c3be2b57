"""Save and load detectors as single files that load without running code.

A skanomaly model file (extension ``.ska`` by convention) is one
`safetensors <https://huggingface.co/docs/safetensors>`_ file:

- its string metadata holds one entry, ``"skanomaly"``, a JSON document with
  the format name and version, the detector's registry name and class, its
  constructor parameters (``get_params(deep=False)``) and its fitted state,
  plus a SHA-256 checksum of that document and the tensor data (it finds
  damaged and hand-edited files; it is not a signature);
- its tensors hold every array and weight: numpy arrays of the fitted state,
  torch tensors, and the ``state_dict`` of each module of a skorch net
  (generator, discriminator, criterion).

Loading parses JSON and raw tensor bytes only: no pickle, no ``torch.load``,
no code named by the file. The detector class is taken from the registry by
the name stored in the file (a file for a detector that is not registered
here is refused) and must be the class the file names. Nested estimators
(fitted sub-estimators such as ``DeepMahalanobis.feature_extractor_``) are rebuilt
only from registered detectors and the classes the format allows
(:mod:`skanomaly.persistence.trust`); no module path read from a file is
imported.

The package is split by concern: :mod:`~skanomaly.persistence.codec` (the
value codec, one table of type rules), :mod:`~skanomaly.persistence.estimators`
(estimators, their nets and modules), :mod:`~skanomaly.persistence.trust`
(which classes may load), :mod:`~skanomaly.persistence.format` (header,
checksum, atomic writes) and this module (the public API and the device
policy).

The fitted state is every attribute of the detector that is not a
constructor parameter. Plain values (numbers, strings, tuples, lists, dicts
with string keys, None) go to JSON; arrays and tensors to safetensors; a
skorch net (``net_``) is rebuilt with the detector's own ``_make_net`` for
its input shape and gets its modules' weights back; a nested estimator is
stored the same way, recursively. Two hooks cover other state:

- ``_make_persistent_module(name)``: for a fitted attribute holding a plain
  ``torch.nn.Module``, return a freshly built module of the same
  architecture on the default device, from the estimator's parameters alone
  (read no file, reach no network); its ``state_dict`` is then loaded into
  it. The loader calls it twice: first under ``torch.device("meta")``, to
  check the module's shapes against the stored weights without allocating
  them, then for real.
- ``_get_persistent_state()`` / ``_set_persistent_state(state)``: replace
  the attribute walk altogether; the first returns a dict of storable values
  (``state_dict()`` values are fine), the second receives it, decoded, on load.

Optimizer states are not stored and a loaded skorch net has no optimizers
(a loaded detector scores and predicts exactly as the saved one; ``fit``
builds a new net as always). Parameters that the
format cannot store, such as a list of skorch callback objects, make
``save`` fail with a message naming them.

What a file can and cannot make :func:`load` do is the threat model of the
user guide's persistence page; in short, it reads the one file, imports no
module the file names, allocates no more than the file's size plus
:data:`LOAD_MARGIN_BYTES` besides parsing its JSON (counted first, within
the limits of :mod:`~skanomaly.persistence.format`), and fails with a
``ValueError`` for everything else.

Pickle and joblib keep working as for any scikit-learn estimator, but
unpickling runs code named by the file: use them for trusted files only.
"""

from pathlib import Path

import numpy as np
import torch

from .._validation import check_device
from .codec import Budget, FormatError, Refused, short_message
from .format import (
    FORMAT_NAME,
    FORMAT_VERSION,
    checksum,
    read_model,
    refuse_unused,
    write_file,
)
from .trust import detector_class

__all__ = ["FORMAT_VERSION", "LOAD_MARGIN_BYTES", "load", "save"]

# What a load may allocate beyond the size of the file: modules are rebuilt
# at the size of their stored weights, plus buffers that are not stored and
# decoded values.
LOAD_MARGIN_BYTES = 16 * 2**20
# The widest element of a string array (a feature name, a level name...).
_MAX_STRING_ITEMSIZE = 64 * 2**10
# Where a file's tensors and modules may be loaded.
_LOADABLE_DEVICES = ("cpu", "cuda", "mps")
# What malformed contents raise when they reach numpy, torch or an estimator
# (a wrong type, a missing key, an impossible dtype or shape), besides
# ValueError.
_MALFORMED = (LookupError, TypeError, AttributeError, RuntimeError, ArithmeticError)


def _registered_name(cls):
    from ..registry import registered_name

    name = registered_name(cls)
    if name is None:
        raise ValueError(
            f"Cannot save {cls.__name__}: it is not a registered skanomaly detector "
            "(its file must name a detector that load() can find in the registry). "
            "Register it under the 'skanomaly.detectors' entry-point group, or use "
            "pickle/joblib (trusted files only)."
        )
    return name


def save(detector, path):
    """Save a detector to a single safetensors file (no pickle inside).

    Parameters
    ----------
    detector : estimator
        A registered skanomaly detector, fitted or not.
    path : str or path-like
        Destination, conventionally ending in ``.ska``; written atomically
        (a partly written file never replaces an existing one).

    Raises
    ------
    ValueError
        If the detector is not registered, a parameter or fitted
        attribute cannot be stored (the message names it), or the file
        would exceed a limit that :func:`load` enforces (its tensors, the
        size of its document: see :mod:`skanomaly.persistence.format`).

    See Also
    --------
    load : Read the file back.

    Examples
    --------
    >>> import tempfile
    >>> import numpy as np
    >>> from sklearn.datasets import load_digits
    >>> import skanomaly
    >>> X, y = load_digits(return_X_y=True)
    >>> det = skanomaly.VAE(max_epochs=2, random_state=0).fit(X[y == 0])
    >>> path = tempfile.mkdtemp() + "/digits.ska"
    >>> skanomaly.save(det, path)
    >>> loaded = skanomaly.load(path)
    >>> loaded
    VAE(max_epochs=2, random_state=0)
    >>> bool(np.array_equal(loaded.score_samples(X), det.score_samples(X)))
    True
    """
    from .. import __version__
    from .estimators import EstimatorWriter

    name = _registered_name(type(detector))
    writer = EstimatorWriter()
    encoded = writer.estimator(detector, "detector")
    covered = {"name": name, "detector": encoded}
    document = {
        "format": FORMAT_NAME,
        "format_version": FORMAT_VERSION,
        "skanomaly_version": __version__,
        **covered,
        "checksum": checksum(writer.tensors, covered),
    }
    try:
        write_file(path, writer.tensors, document)
    except FormatError as exc:  # over the limits load reads (no file written)
        raise ValueError(f"Cannot save {type(detector).__name__}: {exc}.") from None


def _device_policy(requested):
    """The checks of where a loaded detector's tensors and modules may go."""

    def loadable(device, what, fix):
        try:
            device = check_device(device, what=what, fix=fix)
        except ValueError as exc:
            raise Refused(str(exc).rstrip(".")) from None
        if device.type not in _LOADABLE_DEVICES:
            raise Refused(
                f"{what}, which is not a device a model loads to "
                f"({', '.join(_LOADABLE_DEVICES)}); {fix}"
            )
        return device

    def check_estimator_device(estimator):
        device = getattr(estimator, "device", None)
        if device is None:
            return
        if requested is not None:
            loadable(
                device,
                what=f"device={str(device)!r} was requested",
                fix="use device='cpu' (--device cpu), or leave it out to use the "
                "device the file was saved with",
            )
            return
        loadable(
            device,
            what=f"The {type(estimator).__name__} in this file was saved with "
            f"device={str(device)!r:.40}",
            fix="load it with skanomaly.load(path, device='cpu')",
        )

    def checked_device(saved):
        return loadable(
            saved,
            what=f"A tensor in this file was saved on {str(saved)!r:.40}",
            fix="load it with skanomaly.load(path, device='cpu')",
        )

    return check_estimator_device, checked_device


def _string_dtype(text):
    dtype = np.dtype(text)
    if dtype.kind not in "US":
        raise FormatError(f"a string array has dtype {text!r:.40}")
    if dtype.itemsize > _MAX_STRING_ITEMSIZE:
        raise FormatError(
            f"a string array has dtype {text!r:.40}, of {dtype.itemsize:,} bytes per "
            f"element (at most {_MAX_STRING_ITEMSIZE:,} are read)"
        )
    return dtype


def load(path, *, device=None):
    """Load a detector saved by :func:`save`, executing no code from the file.

    Loading reads this one file only (no other path, no network), imports
    no module the file names and allocates at most the file's size plus
    :data:`LOAD_MARGIN_BYTES` beyond its tensors; sizes and shapes are
    checked before anything is built. Its JSON is measured before it is
    parsed (bytes and elements, within the limits of
    :mod:`~skanomaly.persistence.format`), and every tensor it holds must
    be used.

    Parameters
    ----------
    path : str or path-like
    device : str, torch.device or None, default=None
        Override the ``device`` parameter of the detector (and of its
        nested estimators), e.g. 'cpu' for a model saved on a GPU.

    Returns
    -------
    detector : estimator
        Scores exactly as the saved detector did.

    Raises
    ------
    FileNotFoundError
        If there is no such file.
    ValueError
        If the file is not a skanomaly model (a foreign, corrupted or
        edited file), was written in another format version, holds a
        detector that is not registered here, or sizes, names or devices
        that this loader refuses; the message says which, in one line.

    Examples
    --------
    >>> import tempfile
    >>> import skanomaly
    >>> path = tempfile.mkdtemp() + "/unfitted.ska"
    >>> skanomaly.save(skanomaly.AutoEncoder(latent_dim=4), path)
    >>> skanomaly.load(path)
    AutoEncoder(latent_dim=4)
    """
    from .estimators import EstimatorReader

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"No skanomaly model file {str(path)!r}.")
    try:
        document, tensors, size = read_model(path)
        name = document.get("name")
        encoded = document.get("detector")
        if not isinstance(name, str) or not isinstance(encoded, dict):
            raise FormatError("its header names no detector")
        cls = detector_class(name, encoded.get("class"))
        check_estimator_device, checked_device = _device_policy(device)
        reader = EstimatorReader(
            tensors,
            device=device,
            check_estimator_device=check_estimator_device,
            checked_device=checked_device,
            string_dtype=_string_dtype,
            budget=Budget(size + LOAD_MARGIN_BYTES),
        )
        detector = reader.estimator(cls, encoded)
        unused = set(tensors) - reader.used
        if unused:
            refuse_unused(unused)
        return detector
    # every message is one line and quotes at most a short prefix of a value
    except Refused as exc:
        raise ValueError(
            f"{str(path)!r} cannot be loaded: {short_message(str(exc))}."
        ) from None
    except FormatError as exc:
        raise ValueError(
            f"{str(path)!r} is not a valid skanomaly model file: "
            f"{short_message(str(exc))}."
        ) from None
    except (ValueError, *_MALFORMED) as exc:
        if isinstance(exc, torch.cuda.OutOfMemoryError):
            raise
        reason = short_message(f"{type(exc).__name__}: {exc}", limit=200)
        raise ValueError(
            f"{str(path)!r} is not a valid skanomaly model file: its header is "
            f"malformed ({reason})."
        ) from None
