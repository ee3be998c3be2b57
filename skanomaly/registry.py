"""Detector discovery through the ``skanomaly.detectors`` entry-point group.

Built-in detectors are declared in skanomaly's own ``pyproject.toml`` exactly
like a plugin declares its own::

    [project.entry-points."skanomaly.detectors"]
    my_detector = "my_package.module:MyDetector"

Discovery reads package metadata, and nothing is imported until a detector
is asked for. Run from a source checkout (an editable install, or the
checkout on ``sys.path``), skanomaly takes its own detectors from that
checkout's ``pyproject.toml`` rather than from installed metadata, which is
missing there or may be stale: the code that runs and the list of its
detectors then come from the same files, so a new built-in entry point is
found without reinstalling. Plugins always come from installed metadata.

A plugin that fails to import (whatever it raises, ``SystemExit``
included; ``KeyboardInterrupt`` still interrupts), or whose entry point is
not a detector class, is skipped with a warning naming it. A plugin cannot
take a built-in detector's name: the built-in keeps it and the plugin is
skipped with a warning naming both packages. When two plugins declare the
same name, the first found wins with a warning. Results are cached;
``refresh_registry()`` rescans (e.g. after a pip install in a running
session, or an edit of ``pyproject.toml``).
"""

import functools
import re
import warnings
from importlib.metadata import EntryPoint, entry_points
from pathlib import Path

__all__ = [
    "ENTRY_POINT_GROUP",
    "builtin_detector_classes",
    "detector_entry_points",
    "get_detector",
    "list_detectors",
    "make_detector",
    "refresh_registry",
    "registered_name",
]

ENTRY_POINT_GROUP = "skanomaly.detectors"

_DETECTOR_METHODS = ("fit", "predict", "score_samples", "decision_function")


# the folder holding skanomaly's pyproject.toml when skanomaly runs from a
# source checkout (an installed copy has none next to it)
_CHECKOUT = Path(__file__).resolve().parents[1]


def _installed_entry_points():
    return list(entry_points(group=ENTRY_POINT_GROUP))


def _entry_points_in_group():
    """Every entry point of the group: installed metadata, with skanomaly's
    own taken from the checkout's ``pyproject.toml`` when it runs from one."""
    installed = _installed_entry_points()
    declared = _checkout_entry_points()
    if declared is None:
        return installed
    # the installed entry point where it matches (it names its package),
    # the checkout's declaration where metadata lacks it or differs
    matching = {(ep.name, ep.value): ep for ep in installed if _is_builtin(ep)}
    builtins = [
        matching.get((name, value))
        or EntryPoint(name=name, value=value, group=ENTRY_POINT_GROUP)
        for name, value in declared.items()
    ]
    return builtins + [ep for ep in installed if _is_plugin(ep)]


def _checkout_entry_points(root=None):
    """Name to ``"module:Class"`` of the built-in detectors, as declared by
    the ``pyproject.toml`` of the checkout in ``root`` (default: the one
    skanomaly runs from), or None without a readable ``pyproject.toml`` of
    the skanomaly project there (an installed skanomaly)."""
    path = Path(_CHECKOUT if root is None else root) / "pyproject.toml"
    try:
        project = _read_toml(path.read_text(encoding="utf-8")).get("project", {})
    except (OSError, UnicodeDecodeError, ValueError):  # TOMLDecodeError too
        return None
    if project.get("name") != "skanomaly":
        return None
    return dict(project.get("entry-points", {}).get(ENTRY_POINT_GROUP, {}))


def _read_toml(text):
    try:
        import tomllib  # Python 3.11+
    except ModuleNotFoundError:
        return _read_simple_toml(text)
    return tomllib.loads(text)


_TOML_HEADER = re.compile(r"^\[([^\[\]]+)\]\s*(?:#.*)?$")
_TOML_KEY = r'"[^"]*"|\'[^\']*\'|[A-Za-z0-9_-]+'
_TOML_STRING = re.compile(
    rf"^({_TOML_KEY})\s*=\s*(?:\"([^\"\\]*)\"|'([^']*)')\s*(?:#.*)?$"
)


def _read_simple_toml(text):
    """The tables and single-line string values of a TOML file (Python 3.10,
    which has no tomllib): enough for the project's name and entry points;
    arrays, numbers and multi-line values are left out."""
    data = {}
    table = data
    for line in text.splitlines():
        line = line.strip()
        if line.startswith("[["):  # an array of tables: not needed here
            table = {}
            continue
        header = _TOML_HEADER.match(line)
        if header:
            table = data
            for key in re.findall(_TOML_KEY, header.group(1)):
                table = table.setdefault(key.strip("\"'"), {})
            continue
        value = _TOML_STRING.match(line)
        if value:
            key, double, single = value.groups()
            table[key.strip("\"'")] = double if double is not None else single
    return data


def _package_of(entry_point):
    dist = getattr(entry_point, "dist", None)
    if dist is not None:
        return dist.name
    # declared by the checkout's pyproject.toml (no installed distribution)
    return "skanomaly" if entry_point.value.startswith("skanomaly.") else "unknown"


@functools.cache
def detector_entry_points():
    """Map each detector name to its entry point, first declaration winning.

    Returns
    -------
    dict of str to importlib.metadata.EntryPoint

    Examples
    --------
    >>> from skanomaly.registry import detector_entry_points
    >>> detector_entry_points()["ganomaly"].value
    'skanomaly.detectors.ganomaly:GANomaly'
    """
    found = {}
    # built-ins first: a plugin cannot take over their names
    for entry_point in sorted(_entry_points_in_group(), key=_is_plugin):
        kept = found.get(entry_point.name)
        if kept is None:
            found[entry_point.name] = entry_point
        elif kept.value != entry_point.value and not _is_plugin(kept):
            warnings.warn(
                f"Detector plugin {entry_point.value!r} (package "
                f"{_package_of(entry_point)}) declares the name "
                f"{entry_point.name!r} of skanomaly's built-in detector "
                f"{kept.value!r} (package {_package_of(kept)}) and is skipped; "
                "a plugin must register under a name of its own.",
                RuntimeWarning,
                stacklevel=2,
            )
        elif kept.value != entry_point.value:
            warnings.warn(
                f"Detector name {entry_point.name!r} is declared twice: "
                f"{kept.value!r} (package {_package_of(kept)}) and "
                f"{entry_point.value!r} (package {_package_of(entry_point)}); "
                f"using {kept.value!r}.",
                RuntimeWarning,
                stacklevel=2,
            )
    return dict(sorted(found.items()))


def _is_builtin(entry_point):
    return _package_of(entry_point) == "skanomaly"


def _is_plugin(entry_point):
    return not _is_builtin(entry_point)


@functools.cache
def builtin_detector_classes():
    """Class name to registry name of skanomaly's own detectors.

    Read from the entry points skanomaly declares (its installed metadata, or
    its checkout's ``pyproject.toml``; nothing is imported): the one list of
    built-in detectors.

    Returns
    -------
    dict of str to str

    Examples
    --------
    >>> from skanomaly.registry import builtin_detector_classes
    >>> builtin_detector_classes()["GANomaly"]
    'ganomaly'
    """
    return {
        entry_point.value.split(":")[-1].strip(): name
        for name, entry_point in detector_entry_points().items()
        if _is_builtin(entry_point)
    }


def _is_detector_class(obj):
    from sklearn.base import BaseEstimator

    return (
        isinstance(obj, type)
        and issubclass(obj, BaseEstimator)
        and all(callable(getattr(obj, name, None)) for name in _DETECTOR_METHODS)
    )


@functools.cache
def _load(name):
    """The detector class behind ``name``, or None (with a warning) if broken."""
    entry_point = detector_entry_points()[name]
    where = f"{entry_point.value!r} from package {_package_of(entry_point)}"
    try:
        obj = entry_point.load()
    except (Exception, SystemExit) as exc:  # a broken plugin must not break others
        warnings.warn(
            f"Detector plugin {name!r} ({where}) failed to import and is "
            f"skipped: {type(exc).__name__}: {exc}",
            RuntimeWarning,
            stacklevel=3,
        )
        return None
    if not _is_detector_class(obj):
        warnings.warn(
            f"Detector plugin {name!r} ({where}) is not a detector class (a "
            "scikit-learn estimator with fit, predict, score_samples and "
            "decision_function) and is skipped.",
            RuntimeWarning,
            stacklevel=3,
        )
        return None
    return obj


def refresh_registry():
    """Forget cached discovery results so the next call rescans entry points.

    Call it after installing a plugin into a running interpreter.

    Examples
    --------
    >>> import skanomaly
    >>> skanomaly.refresh_registry()
    >>> "vae" in skanomaly.list_detectors()
    True
    """
    detector_entry_points.cache_clear()
    builtin_detector_classes.cache_clear()
    _load.cache_clear()


def list_detectors():
    """Names of every detector found, built-in and plugins, sorted.

    Each detector is imported to check it; broken ones are left out with a
    warning.

    Returns
    -------
    names : list of str

    Examples
    --------
    >>> import skanomaly
    >>> names = skanomaly.list_detectors()
    >>> {"autoencoder", "ganomaly", "deep_mahalanobis"} <= set(names)
    True
    """
    return [name for name in detector_entry_points() if _load(name) is not None]


def get_detector(name):
    """The detector class registered under ``name``.

    Parameters
    ----------
    name : str

    Returns
    -------
    cls : type

    Raises
    ------
    ValueError
        If no detector has that name (the message lists the registered
        names) or its plugin is broken. Only the entry point of ``name`` is
        imported.

    Examples
    --------
    >>> import skanomaly
    >>> skanomaly.get_detector("mahalanobis")
    <class 'skanomaly.detectors.mahalanobis.Mahalanobis'>
    """
    # the names come from the entry points alone: asking for one detector
    # never imports the others (list_detectors would import every plugin)
    if name not in detector_entry_points():
        known = ", ".join(sorted(detector_entry_points())) or "none"
        raise ValueError(f"Unknown detector {name!r}. Known detectors: {known}.")
    cls = _load(name)
    if cls is None:
        raise ValueError(
            f"Detector {name!r} is registered but cannot be used: its plugin failed "
            "to import or is not a detector class (the warning says why)."
        )
    return cls


def make_detector(name, **params):
    """Instantiate the detector registered under ``name`` with ``params``.

    Parameters
    ----------
    name : str
    **params
        Constructor parameters of that detector.

    Returns
    -------
    detector : estimator

    Examples
    --------
    >>> import skanomaly
    >>> skanomaly.make_detector("autoencoder", max_epochs=5)
    AutoEncoder(max_epochs=5)
    """
    cls = get_detector(name)
    try:
        return cls(**params)
    except TypeError as exc:
        raise ValueError(
            f"Invalid parameters for detector {name!r} ({cls.__name__}): {exc}"
        ) from exc


def registered_name(cls):
    """The name a detector class is registered under, or None.

    Parameters
    ----------
    cls : type

    Returns
    -------
    name : str or None

    Examples
    --------
    >>> import skanomaly
    >>> from skanomaly.registry import registered_name
    >>> registered_name(skanomaly.Mahalanobis), registered_name(dict)
    ('mahalanobis', None)
    """
    target = f"{cls.__module__}:{cls.__qualname__}"
    entry_points = detector_entry_points()
    for name, entry_point in entry_points.items():
        if entry_point.value.replace(" ", "") == target:
            return name
    for name in entry_points:  # re-exported under another module path
        try:
            if get_detector(name) is cls:
                return name
        except ValueError:
            continue
    return None
