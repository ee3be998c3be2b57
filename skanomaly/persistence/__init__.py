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
(fitted sub-estimators such as ``DeepMahalanobis.features_``) are rebuilt
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
  architecture; its ``state_dict`` is then loaded into it.
- ``_get_persistent_state()`` / ``_set_persistent_state(state)``: replace
  the attribute walk altogether; the first returns a dict of storable values
  (``state_dict()`` values are fine), the second receives it, decoded, on load.

Optimizer states are not stored and a loaded skorch net has no optimizers
(a loaded detector scores and predicts exactly as the saved one; ``fit``
builds a new net as always). Parameters that the
format cannot store, such as a list of skorch callback objects, make
``save`` fail with a message naming them.

Pickle and joblib keep working as for any scikit-learn estimator, but
unpickling runs code named by the file: use them for trusted files only.
"""

from pathlib import Path

import numpy as np

from .._validation import check_device
from .codec import FormatError
from .format import (
    FORMAT_NAME,
    FORMAT_VERSION,
    checksum,
    read_document,
    read_tensors,
    write_file,
)
from .trust import detector_class

__all__ = ["FORMAT_VERSION", "load", "save"]


def _registered_name(cls):
    from ..registry import detector_entry_points, get_detector

    entry_points = detector_entry_points()
    for name, entry_point in entry_points.items():
        if entry_point.value.replace(" ", "") == f"{cls.__module__}:{cls.__qualname__}":
            return name
    for name in entry_points:  # re-exported under another module path
        try:
            if get_detector(name) is cls:
                return name
        except ValueError:
            continue
    raise ValueError(
        f"Cannot save {cls.__name__}: it is not a registered skanomaly detector "
        "(its file must name a detector that load() can find in the registry). "
        "Register it under the 'skanomaly.detectors' entry-point group, or use "
        "pickle/joblib (trusted files only)."
    )


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
        If the detector is not registered, or a parameter or fitted
        attribute cannot be stored (the message names it).

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
    write_file(path, writer.tensors, document)


def _device_policy(requested):
    """The checks of where a loaded detector's tensors and modules may go."""

    def check_estimator_device(estimator):
        device = getattr(estimator, "device", None)
        if device is None:
            return
        if requested is not None:
            check_device(
                device,
                what=f"device={str(device)!r} was requested",
                fix="use device='cpu' (--device cpu), or leave it out to use the "
                "device the file was saved with",
            )
            return
        check_device(
            device,
            what=f"The {type(estimator).__name__} in this file was saved with "
            f"device={str(device)!r}",
            fix="load it with skanomaly.load(path, device='cpu')",
        )

    def checked_device(saved):
        return check_device(
            saved,
            what=f"A tensor in this file was saved on {str(saved)!r}",
            fix="load it with skanomaly.load(path, device='cpu')",
        )

    return check_estimator_device, checked_device


def _string_dtype(text):
    dtype = np.dtype(text)
    if dtype.kind not in "US":
        raise FormatError(f"a string array has dtype {text!r}")
    return dtype


def load(path, *, device=None):
    """Load a detector saved by :func:`save`, executing no code from the file.

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
        If the file is not a skanomaly model (a foreign or corrupted file),
        was written by a newer format version, or holds a detector that is
        not registered here; the message says which.

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
        document = read_document(path)
        tensors = read_tensors(path, document)
        name = document.get("name")
        encoded = document.get("detector")
        if not isinstance(name, str) or not isinstance(encoded, dict):
            raise FormatError("its header names no detector")
        try:
            cls = detector_class(name, encoded.get("class"))
        except ValueError as exc:
            raise ValueError(f"{str(path)!r} {exc}.") from None
        check_estimator_device, checked_device = _device_policy(device)
        reader = EstimatorReader(
            tensors,
            device=device,
            check_estimator_device=check_estimator_device,
            checked_device=checked_device,
            string_dtype=_string_dtype,
        )
        return reader.estimator(cls, encoded)
    except FormatError as exc:
        raise ValueError(
            f"{str(path)!r} is not a valid skanomaly model file: {exc}."
        ) from None
    except (KeyError, TypeError, AttributeError) as exc:
        raise ValueError(
            f"{str(path)!r} is not a valid skanomaly model file: its header is "
            f"malformed ({type(exc).__name__}: {exc})."
        ) from None
