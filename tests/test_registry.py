"""Entry-point discovery, with fake entry points, the installed ones and the
checkout's ``pyproject.toml``."""

import sys
import types
from importlib.metadata import EntryPoint
from pathlib import Path

import pytest

import skanomaly
from skanomaly import registry
from skanomaly.detectors.autoencoder import AutoEncoder


class _Dist:
    def __init__(self, name):
        self.name = name


def _entry_point(name, value, package="fake-plugin"):
    ep = EntryPoint(name=name, value=value, group=registry.ENTRY_POINT_GROUP)
    # EntryPoint is immutable; attach a distribution the way importlib does
    object.__setattr__(ep, "dist", _Dist(package))
    return ep


@pytest.fixture
def fake_entry_points(monkeypatch):
    """Replace discovery with a given list of entry points (``installed=True``:
    replace the installed metadata's only, the checkout's still apply)."""

    def install(entry_points, installed=False):
        where = "_installed_entry_points" if installed else "_entry_points_in_group"
        monkeypatch.setattr(registry, where, lambda: entry_points)
        registry.refresh_registry()

    yield install
    monkeypatch.undo()
    registry.refresh_registry()


@pytest.fixture
def plugin_module(monkeypatch):
    module = types.ModuleType("fake_plugin_module")

    class NotADetector:
        pass

    module.MyDetector = type("MyDetector", (AutoEncoder,), {})
    module.NotADetector = NotADetector
    module.not_a_class = 3
    monkeypatch.setitem(sys.modules, "fake_plugin_module", module)
    return module


def test_discovery_loads_good_and_warns_on_broken(fake_entry_points, plugin_module):
    fake_entry_points(
        [
            _entry_point("good", "fake_plugin_module:MyDetector"),
            _entry_point("missing", "no_such_module_xyz:Thing", package="broken-pkg"),
            _entry_point("wrong_type", "fake_plugin_module:NotADetector"),
            _entry_point("not_class", "fake_plugin_module:not_a_class"),
        ]
    )
    with pytest.warns(RuntimeWarning) as record:
        names = skanomaly.list_detectors()
    assert names == ["good"]
    messages = " ".join(str(w.message) for w in record)
    assert "'missing'" in messages and "broken-pkg" in messages
    assert "failed to import" in messages
    assert "'wrong_type'" in messages and "not a detector" in messages
    assert "'not_class'" in messages
    assert skanomaly.get_detector("good") is plugin_module.MyDetector


def test_duplicate_names_warn_and_first_wins(fake_entry_points, plugin_module):
    fake_entry_points(
        [
            _entry_point("dup", "fake_plugin_module:MyDetector", package="first"),
            _entry_point("dup", "skanomaly.vae:VAE", package="second"),
        ]
    )
    with pytest.warns(RuntimeWarning, match="declared twice.*first.*second"):
        assert skanomaly.get_detector("dup") is plugin_module.MyDetector


def test_loading_is_lazy_and_cached(fake_entry_points, plugin_module):
    calls = []
    real = EntryPoint.load

    def counting_load(self):
        calls.append(self.name)
        return real(self)

    fake_entry_points(
        [
            _entry_point("a", "fake_plugin_module:MyDetector"),
            _entry_point("b", "no_such_module_xyz:Thing"),
        ]
    )
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(EntryPoint, "load", counting_load)
        skanomaly.get_detector("a")
        skanomaly.get_detector("a")
        assert calls == ["a"]  # 'b' untouched, 'a' loaded once
        registry.refresh_registry()
        skanomaly.get_detector("a")
        assert calls == ["a", "a"]


def test_unknown_name_lists_known_ones(fake_entry_points, plugin_module):
    fake_entry_points([_entry_point("good", "fake_plugin_module:MyDetector")])
    with pytest.raises(ValueError, match=r"Unknown detector 'nope'.*good"):
        skanomaly.make_detector("nope")


def test_asking_for_a_broken_plugin_imports_no_other(fake_entry_points):
    # a file naming a broken plugin's class made the loader import them all
    fake_entry_points(
        [
            _entry_point("broken", "no_such_module_skanomaly_test:Detector"),
            _entry_point("other", "other_module_skanomaly_test:Detector"),
        ]
    )
    loaded = []
    original = EntryPoint.load
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(
            EntryPoint, "load", lambda self: loaded.append(self.name) or original(self)
        )
        with pytest.warns(RuntimeWarning, match="failed to import"):
            with pytest.raises(ValueError, match="'broken' is registered but"):
                skanomaly.get_detector("broken")
        with pytest.raises(ValueError, match="Unknown detector 'nope'.*broken, other"):
            skanomaly.get_detector("nope")
    assert loaded == ["broken"]


def test_make_detector_rejects_unknown_parameter():
    with pytest.raises(ValueError, match="autoencoder.*unexpected keyword"):
        skanomaly.make_detector("autoencoder", no_such_param=1)


def test_builtins_come_from_our_own_entry_points():
    eps = registry.detector_entry_points()
    assert eps["autoencoder"].value == "skanomaly.detectors.autoencoder:AutoEncoder"
    assert eps["autoencoder"].dist.name == "skanomaly"
    assert skanomaly.get_detector("vae") is skanomaly.VAE


def test_example_plugin_is_found_when_installed():
    """CI pip-installs examples/plugin; the registry must then find it."""
    pytest.importorskip("skanomaly_example_plugin")
    eps = registry.detector_entry_points()
    assert eps["mean_distance"].dist.name == "skanomaly-example-plugin"
    det = skanomaly.make_detector("mean_distance")
    import numpy as np

    X = np.random.default_rng(0).normal(size=(50, 3))
    scores = det.fit(X).score_samples(np.vstack([X[:1] * 0, X[:1] * 0 + 10]))
    assert scores[0] > scores[1]


def test_a_plugin_cannot_take_a_builtin_name(fake_entry_points, plugin_module):
    # found first on the path, the plugin used to replace the built-in (and
    # then saving a real AutoEncoder failed, older files were refused)
    builtin = "skanomaly.detectors.autoencoder:AutoEncoder"
    fake_entry_points(
        [
            _entry_point("autoencoder", "fake_plugin_module:MyDetector", "evil-pkg"),
            _entry_point("autoencoder", builtin, package="skanomaly"),
        ]
    )
    with pytest.warns(RuntimeWarning) as record:
        assert skanomaly.get_detector("autoencoder") is AutoEncoder
    (message,) = [str(w.message) for w in record]
    assert "evil-pkg" in message and "skanomaly" in message
    assert "built-in" in message and "skipped" in message
    assert registry.builtin_detector_classes()["AutoEncoder"] == "autoencoder"


@pytest.fixture
def exiting_plugin(tmp_path, monkeypatch):
    """A plugin module that calls sys.exit (or raises what it is told) on import."""

    def make(statement):
        name = f"exiting_plugin_{abs(hash(statement))}"
        (tmp_path / f"{name}.py").write_text(f"import sys\n{statement}\n")
        monkeypatch.syspath_prepend(str(tmp_path))
        return name

    return make


@pytest.mark.parametrize("statement", ["sys.exit(3)", "raise SystemExit", "1 / 0"])
def test_whatever_a_plugin_raises_on_import_is_a_warning(
    fake_entry_points, plugin_module, exiting_plugin, statement
):
    module = exiting_plugin(statement)
    fake_entry_points(
        [
            _entry_point("exiting", f"{module}:Thing", package="exit-pkg"),
            _entry_point("good", "fake_plugin_module:MyDetector"),
        ]
    )
    with pytest.warns(RuntimeWarning, match="'exiting'.*exit-pkg.*failed to import"):
        assert skanomaly.list_detectors() == ["good"]


def test_a_keyboard_interrupt_in_a_plugin_still_interrupts(
    fake_entry_points, exiting_plugin
):
    module = exiting_plugin("raise KeyboardInterrupt")
    fake_entry_points([_entry_point("interrupting", f"{module}:Thing")])
    with pytest.raises(KeyboardInterrupt):
        skanomaly.list_detectors()


def test_list_prints_the_others_when_a_plugin_exits(
    fake_entry_points, plugin_module, exiting_plugin, capsys
):
    from skanomaly.app.cli import main

    module = exiting_plugin("sys.exit(3)")
    fake_entry_points(
        [
            _entry_point("exiting", f"{module}:Thing", package="exit-pkg"),
            _entry_point("good", "fake_plugin_module:MyDetector"),
        ]
    )
    assert main(["list"]) == 0  # it printed nothing and exited 3
    out, err = capsys.readouterr()
    assert "good" in out and "fake-plugin" in out
    assert "warning" in err and "'exiting'" in err and "exit-pkg" in err


# ------------------------------------- built-ins from the checkout's pyproject

ROOT = Path(__file__).resolve().parents[1]


def _pyproject_builtins():
    tomllib = pytest.importorskip("tomllib")  # Python 3.11+
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    return project["entry-points"][registry.ENTRY_POINT_GROUP]


def _builtins():
    return {
        name: ep.value
        for name, ep in registry.detector_entry_points().items()
        if registry._is_builtin(ep)
    }


def test_builtins_are_the_entry_points_pyproject_declares():
    declared = _pyproject_builtins()
    assert _builtins() == declared
    assert set(registry.builtin_detector_classes().values()) == set(declared)
    for class_name in registry.builtin_detector_classes():
        assert class_name in skanomaly.__all__


def test_the_reader_without_tomllib_reads_what_tomllib_reads(tmp_path):
    # Python 3.10 has no tomllib: the simple reader must agree on what the
    # registry uses, also around the TOML it leaves out
    tomllib = pytest.importorskip("tomllib")
    text = (ROOT / "pyproject.toml").read_text()
    text += (
        '\n[[tool.array]]\nname = "not the project"\n'
        "[project.entry-points.'skanomaly.detectors']  # again, single quotes\n"
    )
    text = text.replace('autoencoder = "', "autoencoder='").replace(
        'autoencoder:AutoEncoder"', "autoencoder:AutoEncoder'  # a comment"
    )
    with pytest.raises(tomllib.TOMLDecodeError):  # the table twice
        tomllib.loads(text)
    simple = registry._read_simple_toml(text)["project"]
    expected = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    assert simple["name"] == expected["name"] == "skanomaly"
    assert simple["entry-points"] == expected["entry-points"]


def test_a_checkout_without_installed_metadata_has_its_detectors(fake_entry_points):
    # run from a source tree that was never pip-installed
    fake_entry_points([], installed=True)
    assert _builtins() == _pyproject_builtins()
    assert registry.builtin_detector_classes()["PaDiM"] == "padim"
    assert skanomaly.get_detector("patchcore").__name__ == "PatchCore"
    assert registry._package_of(registry.detector_entry_points()["vae"]) == (
        "skanomaly"
    )


def test_stale_metadata_gives_way_to_the_checkout(fake_entry_points):
    # pyproject.toml edited after the last `pip install -e .`: a detector
    # added (padim), one removed (gone), one moved (vae)
    real = [
        ep
        for ep in registry._installed_entry_points()
        if ep.name not in ("padim", "vae")
    ]
    stale = [
        _entry_point("gone", "skanomaly.detectors.gone:Gone", package="skanomaly"),
        _entry_point("vae", "skanomaly.vae:VAE", package="skanomaly"),
    ]
    fake_entry_points(real + stale, installed=True)
    assert _builtins() == _pyproject_builtins()
    eps = registry.detector_entry_points()
    assert eps["autoencoder"].dist.name == "skanomaly"  # the installed one
    assert eps["vae"].value == "skanomaly.detectors.vae:VAE"
    plugins = {ep.name for ep in real if registry._is_plugin(ep)}
    assert plugins <= set(eps)


def test_a_new_entry_point_is_found_without_reinstalling(
    fake_entry_points, tmp_path, monkeypatch
):
    module = types.ModuleType("skanomaly._fake_new_detector")
    module.NewDetector = type("NewDetector", (AutoEncoder,), {})
    monkeypatch.setitem(sys.modules, module.__name__, module)
    pyproject = (
        (ROOT / "pyproject.toml")
        .read_text()
        .replace(
            '[project.entry-points."skanomaly.detectors"]\n',
            '[project.entry-points."skanomaly.detectors"]\n'
            'new_detector = "skanomaly._fake_new_detector:NewDetector"\n',
        )
    )
    (tmp_path / "pyproject.toml").write_text(pyproject)
    monkeypatch.setattr(registry, "_CHECKOUT", tmp_path)
    fake_entry_points(registry._installed_entry_points(), installed=True)
    assert "new_detector" in skanomaly.list_detectors()
    assert registry.builtin_detector_classes()["NewDetector"] == "new_detector"
    try:
        assert skanomaly.NewDetector is module.NewDetector  # the top-level name
    finally:
        vars(skanomaly).pop("NewDetector", None)  # cached by its __getattr__


@pytest.mark.parametrize("pyproject", [None, '[project]\nname = "other"\n'])
def test_an_installed_skanomaly_reads_metadata_only(
    fake_entry_points, tmp_path, monkeypatch, pyproject
):
    # no pyproject.toml next to the package, or another project's
    if pyproject is not None:
        (tmp_path / "pyproject.toml").write_text(pyproject)
    monkeypatch.setattr(registry, "_CHECKOUT", tmp_path)
    assert registry._checkout_entry_points() is None
    only = [_entry_point("vae", "skanomaly.detectors.vae:VAE", package="skanomaly")]
    fake_entry_points(only, installed=True)
    assert list(registry.detector_entry_points()) == ["vae"]
