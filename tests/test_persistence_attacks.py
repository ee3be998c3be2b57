"""Model files from a stranger: what a hand-crafted .ska file can make load() do.

Every file here is forged as an attacker would, with the checksum recomputed
(it finds damage, not intent). Each attack must end in a one-line
ValueError, import nothing, reach no network and read no other path, and
allocate nothing the file's size does not account for; the loader fuzz test
runs mutated files through the same checks.
"""

import json
import os
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from _forge import read_model, rewrite, write_model
from sklearn.datasets import load_digits

import skanomaly
from skanomaly.persistence import load, save
from skanomaly.persistence.format import checksum
from skanomaly.testing import fast_detector

HERE = Path(__file__).parent
X_DIGITS, Y_DIGITS = load_digits(return_X_y=True)
TABLE = X_DIGITS[Y_DIGITS == 0][:48]


@pytest.fixture(scope="module")
def table_model(tmp_path_factory):
    path = tmp_path_factory.mktemp("models") / "autoencoder.ska"
    save(fast_detector(skanomaly.AutoEncoder).fit(TABLE), path)
    return path


@pytest.fixture(scope="module")
def seed_models(tmp_path_factory):
    """Files the attacks start from: an image network, a deep feature stage."""
    folder = tmp_path_factory.mktemp("seeds")
    images = (TABLE.reshape(-1, 1, 8, 8) * 16).astype(np.uint8)
    rgb = np.repeat(images, 3, axis=1)
    models = {
        "autoencoder_images": (
            skanomaly.AutoEncoder(
                max_epochs=2, hidden_sizes=(8,), base_channels=4, random_state=0
            ),
            images,
        ),
        "deep_mahalanobis": (
            skanomaly.DeepMahalanobis(
                "test_efficientnet",
                weights=None,
                levels=[0, 2],
                image_size=32,
                random_state=0,
            ),
            rgb,
        ),
    }
    paths = {}
    for name, (detector, X) in models.items():
        paths[name] = folder / f"{name}.ska"
        save(detector.fit(X), paths[name])
    paths["deep_mahalanobis_test"] = rgb[::5]
    return paths


def _forged(source, tmp_path, edit):
    path = tmp_path / f"forged_{source.stem}.ska"
    shutil.copy(source, path)
    rewrite(path, edit)
    return path


def _params(**values):
    def edit(document, tensors=None):
        document["detector"]["params"].update(values)

    return edit


def _state(**values):
    def edit(document, tensors=None):
        document["detector"]["state"].update(values)

    return edit


def _backbone(name):
    def edit(document):
        features = document["detector"]["state"]["features_"]["__estimator__"]
        features["params"]["backbone"] = name

    return edit


def _refused(path, match, **kwargs):
    with pytest.raises(ValueError, match=match) as info:
        load(path, **kwargs)
    assert "\n" not in str(info.value)
    return str(info.value)


# ------------------------------------------------- 1. classes and imports


@pytest.mark.parametrize(
    "class_path",
    [
        "skanomaly.__main__.X",  # would run the command line with the host's argv
        "sklearn.conftest.X",  # would import pytest and dozens of modules
        "skanomaly.app.cli.main",
        "os.system",
        "skanomaly_plugin_example.nonexistent.X",
    ],
)
def test_a_nested_class_path_imports_nothing(
    table_model, seed_models, tmp_path, class_path
):
    nested = {"class": class_path, "params": {}, "state": {}, "nets": {}}
    path = _forged(table_model, tmp_path, _state(extra_={"__estimator__": nested}))
    # what clean loads import (the allow-listed classes too), imported
    load(table_model)
    load(seed_models["deep_mahalanobis"])
    before = set(sys.modules)
    _refused(path, "neither a registered detector nor an estimator the format")
    assert set(sys.modules) == before


def test_a_detector_class_path_imports_nothing(table_model, tmp_path):
    def edit(document):
        document["detector"]["class"] = "skanomaly.__main__.AutoEncoder"

    path = _forged(table_model, tmp_path, edit)
    load(table_model)
    before = set(sys.modules)
    _refused(path, "refusing to load it into another class")
    assert set(sys.modules) == before


# ------------------------------------------------- 2. sizes and memory


def _run_probe(request, tmp_path):
    """Load files in a child process with bounded address space (see the probe)."""
    request_path = tmp_path / "request.json"
    request_path.write_text(json.dumps(request))
    done = subprocess.run(
        [sys.executable, str(HERE / "_loader_probe.py"), str(request_path)],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(done.stdout.splitlines()[-1])


def _string_array(dtype, n):
    return {"__ndarray_list__": ["a"] * n, "dtype": dtype, "shape": [n]}


_SIZE_ATTACKS = {
    # (source, edit, message): a few KB that asked for 160 GB ...
    "hidden_sizes_200000": (
        "table",
        _params(hidden_sizes={"__tuple__": [200_000, 200_000]}),
        "do not fit",
    ),
    # ... or reached 1.7 GB of RSS before the refusal
    "hidden_sizes_12000": (
        "table",
        _params(hidden_sizes={"__tuple__": [12_000, 12_000]}),
        "do not fit",
    ),
    "hidden_sizes_100000_layers": (
        "table",
        _params(hidden_sizes={"__tuple__": [8] * 100_000}),
        "far larger than the weights it stores",
    ),
    "latent_dim_2_62": ("table", _params(latent_dim=2**62), "impossible to build"),
    "input_shape_2_20": (
        "images",
        lambda d: d["detector"]["nets"]["net_"].update(input_shape=[1, 2**20, 2**20]),
        "do not fit",
    ),
    # 2 KB that added 1.5 GB and loaded
    "dtype_U200000000": (
        "table",
        _state(names_=_string_array("<U200000000", 1)),
        "bytes per element",
    ),
    "strings_over_budget": (
        "table",
        _state(names_=_string_array("<U16000", 20_000)),
        "more than a file of this size can account for",
    ),
    "giant_backbone": (
        "deep_mahalanobis",
        _backbone("vit_giant_patch14_224"),
        "do not fit the VisionTransformer",
    ),
}


@pytest.fixture(scope="module")
def size_attacks(table_model, seed_models, tmp_path_factory):
    folder = tmp_path_factory.mktemp("sizes")
    sources = {
        "table": table_model,
        "images": seed_models["autoencoder_images"],
        "deep_mahalanobis": seed_models["deep_mahalanobis"],
    }
    files = {}
    for name, (source, edit, _) in _SIZE_ATTACKS.items():
        files[name] = folder / f"{name}.ska"
        shutil.copy(sources[source], files[name])
        rewrite(files[name], edit)
    request = {"warm": list(map(str, sources.values()))}
    request["files"] = list(map(str, files.values()))
    report = _run_probe(request, folder)
    assert [w["outcome"] for w in report["warm"]] == ["loaded"] * 3
    results = {name: result for name, result in zip(files, report["files"])}
    return results, {name: path.stat().st_size for name, path in files.items()}


@pytest.mark.parametrize("name", sorted(_SIZE_ATTACKS))
def test_sizes_are_checked_before_anything_is_allocated(size_attacks, name):
    results, sizes = size_attacks
    result = results[name]
    assert result["outcome"] == "ValueError", result
    assert _SIZE_ATTACKS[name][2] in result["message"]
    assert "\n" not in result["message"]
    # the probe build on the meta device allocates nothing
    assert result["rss_growth_mb"] < 64 + sizes[name] / 2**20, result
    assert result["seconds"] < 20, result
    assert result["new_modules"] == []


# ------------------------------------------------- 3. no network, no other path


@pytest.fixture
def no_network(monkeypatch):
    calls = []

    def refuse(*args, **kwargs):
        calls.append(args)
        raise OSError("the network was reached during load()")

    monkeypatch.setattr(socket, "getaddrinfo", refuse)
    monkeypatch.setattr(socket.socket, "connect", refuse)
    return calls


@pytest.mark.parametrize(
    "backbone",
    [
        "hf-hub:someone/repo",  # queried the hub (27 s of retries)
        "local-dir:/etc",  # read a path named by the file
        "timm/resnet18.a1_in1k",
        "../../resnet18",
        "no_such_architecture",
    ],
)
def test_a_backbone_must_build_offline(seed_models, tmp_path, no_network, backbone):
    path = _forged(seed_models["deep_mahalanobis"], tmp_path, _backbone(backbone))
    message = _refused(path, "not a timm architecture that builds offline")
    assert "cannot be loaded" in message
    assert no_network == []


def test_weights_paths_are_stored_but_never_read(
    seed_models, tmp_path, no_network, monkeypatch
):
    from skanomaly.weights import sources

    def never(*args, **kwargs):
        raise AssertionError("load() read a weights file")

    monkeypatch.setattr(sources, "load_weights_file", never)
    elsewhere = {"__path__": str(tmp_path / "elsewhere" / "weights.pth")}

    def edit(document):
        document["detector"]["params"]["weights"] = elsewhere
        features = document["detector"]["state"]["features_"]["__estimator__"]
        features["params"]["weights"] = elsewhere

    source = seed_models["deep_mahalanobis"]
    path = _forged(source, tmp_path, edit)
    X = seed_models["deep_mahalanobis_test"]
    loaded = load(path)
    assert loaded.weights == Path(elsewhere["__path__"])
    expected = load(source).score_samples(X)
    np.testing.assert_array_equal(loaded.score_samples(X), expected)
    assert no_network == []


# ------------------------------------------------- 4. the header itself


def _raw(table_model, tmp_path, text_edit):
    """A file whose document JSON is edited as text (checksum left as it was)."""
    document, tensors = read_model(table_model)
    path = tmp_path / "raw.ska"
    write_model(path, document, tensors, text=text_edit(json.dumps(document)))
    return path


@pytest.mark.parametrize(
    ("text_edit", "message"),
    [
        # raised RecursionError out of load()
        (lambda t: t[:-1] + ', "x": ' + "[" * 100_000 + "]" * 100_000 + "}", "nests"),
        (lambda t: t[:-1] + ', "x": ' + "[" * 65 + "]" * 65 + "}", "nests deeper"),
        (lambda t: t.replace('"lr": 0.001', '"lr": NaN'), "non-standard JSON"),
        (lambda t: t.replace('"latent_dim": 8', '"latent_dim": ' + "9" * 5000), "JSON"),
        (lambda t: t.replace('"latent_dim": 8', f'"latent_dim": {2**70}'), "64 bits"),
        # parsed as inf: the document had no canonical form, and its checksum
        # was not checked
        (lambda t: t.replace('"lr": 0.001', '"lr": 1e400'), "too large for a float"),
        (lambda t: t.replace('"lr": 0.001', '"lr": -1E+999'), "too large for a float"),
    ],
)
def test_malformed_json_is_a_format_error(table_model, tmp_path, text_edit, message):
    _refused(_raw(table_model, tmp_path, text_edit), message)


def _edit_a_tensor(tensors):
    name = next(iter(tensors))
    tensors[name] = tensors[name] + 1


@pytest.mark.parametrize(
    ("checksum_text", "message"),
    [
        ('"checksum": null', "too large for a float"),
        ('"checksum": "x"', "too large for a float"),
    ],
)
def test_a_document_without_a_canonical_form_is_refused(
    table_model, tmp_path, checksum_text, message
):
    # issue 22: a 1e400 literal made the canonical JSON fail, the checksum
    # step was skipped and "checksum": null matched: an edited tensor loaded
    document, tensors = read_model(table_model)
    _edit_a_tensor(tensors)
    text = json.dumps(document).replace('"lr": 0.001', '"lr": 1e400')
    text = text.replace(f'"checksum": "{document["checksum"]}"', checksum_text)
    assert checksum_text in text and "1e400" in text
    path = tmp_path / "no_canonical_form.ska"
    write_model(path, document, tensors, text=text)
    _refused(path, message)


@pytest.mark.parametrize("value", [None, 0, "", ["x"], "A" * 64, "absent"])
def test_a_checksum_that_is_not_a_sha256_is_refused(table_model, tmp_path, value):
    document, tensors = read_model(table_model)
    _edit_a_tensor(tensors)
    if value == "absent":
        del document["checksum"]
    else:
        document["checksum"] = value
    path = tmp_path / "no_checksum.ska"
    write_model(path, document, tensors, keep_checksum=True)
    _refused(path, "checksum")


def test_checking_the_checksum_without_a_canonical_form(table_model, tmp_path):
    # the check itself, below the parser: a document JSON cannot write
    from skanomaly.persistence.format import FormatError, check_checksum

    document, tensors = read_model(table_model)
    document["detector"]["params"]["lr"] = float("inf")
    with pytest.raises(FormatError, match="no canonical JSON form"):
        check_checksum(tensors, document)


def test_format_1_is_refused(table_model, tmp_path):
    # format 1 left the header out of the checksum: an edited offset_
    # loaded silently
    def edit(document):
        document["format_version"] = 1
        document["detector"]["state"]["offset_"] = 1e6

    path = tmp_path / "format1.ska"
    shutil.copy(table_model, path)
    document, tensors = read_model(path)
    edit(document)
    document["checksum"] = checksum(tensors)
    write_model(path, document, tensors, keep_checksum=True)
    message = _refused(path, "format version 1")
    assert "fit the detector again" in message


# ------------------------------------------------- other hostile values


def _int_tensor_with_grad(document, tensors):
    tensors["ints"] = torch.zeros(3, dtype=torch.int64)
    document["detector"]["state"]["x_"] = {
        "__tensor__": "ints",
        "device": "cpu",
        "requires_grad": True,
    }


def _tensor_on(device):
    def edit(document, tensors):
        document["detector"]["state"]["x_"] = {
            "__tensor__": next(iter(tensors)),
            "device": device,
            "requires_grad": False,
        }

    return edit


@pytest.mark.parametrize(
    ("edit", "message"),
    [
        (_params(device="meta"), "not a device a model loads to"),
        (_params(device="cuda:7"), "CUDA"),
        (_tensor_on("hpu"), "not a device a model loads to"),
        (_state(__dict__={"__dict__": {}}), "which no fitted state has"),
        (_state(score_samples=1), "which no fitted state has"),
        (_state(lr=1), "which no fitted state has"),
        (_state(x_={"__scalar__": "int8", "value": 1000}), "malformed"),
        (_int_tensor_with_grad, "malformed"),
        (_state(x_={**_string_array("<U1", 3), "shape": [-1, -3]}), "has shape"),
        (_params(callbacks=["x"]), "must be a list of skorch callbacks"),
        (_params(hidden_sizes="abc"), "parameters are invalid"),
        (_state(x_={"__float__": "x"}), "malformed"),
    ],
)
def test_hostile_values_are_one_line_value_errors(table_model, tmp_path, edit, message):
    path = tmp_path / "hostile.ska"
    document, tensors = read_model(table_model)
    edit(document, tensors)
    write_model(path, document, tensors)
    _refused(path, message)


def _set_class(value):
    def edit(document, tensors=None):
        document["detector"]["class"] = value

    return edit


def _set_top(key, value):
    def edit(document, tensors=None):
        document[key] = value

    return edit


_HUGE = "a" * 5_000_000
_HUGE_WORDS = "a " * 2_500_000


@pytest.mark.parametrize(
    "edit",
    [
        _params(hidden_sizes=_HUGE),  # scikit-learn's parameter validation
        _params(lr=_HUGE_WORDS),
        _params(device=_HUGE),  # the device check
        _params(no_such_param=_HUGE),
        _params(**{_HUGE: 1}),
        _set_top("name", _HUGE),
        _set_class(_HUGE),
        _set_top("format_version", _HUGE),
        _state(offset_=_HUGE),
        _state(**{"-" + _HUGE: 1}),
        _state(x_={"__float__": _HUGE}),
        _state(x_={_HUGE: 1}),
        _state(x_={"__ndarray_list__": ["a"], "dtype": _HUGE, "shape": [1]}),
    ],
    ids=[
        "sklearn-validation",
        "words",
        "device",
        "unknown-param-value",
        "param-name",
        "registry-name",
        "class-path",
        "format-version",
        "offset",
        "attribute-name",
        "float-tag",
        "unknown-tag",
        "string-dtype",
    ],
)
def test_errors_quote_only_a_short_prefix_of_a_value(table_model, tmp_path, edit):
    # issue 22: a 5 MB string parameter gave a 5,000,000-character error
    path = tmp_path / "huge.ska"
    document, tensors = read_model(table_model)
    edit(document, tensors)
    write_model(path, document, tensors)
    message = _refused(path, "")
    assert len(message) < len(repr(str(path))) + 650, message[:1000]
    assert "aaaaaaaaaa" in message or "a a a a" in message or "valid" in message


# ------------------------------------------------- threshold and calibration
# What predict, the p-values and the report act on without checking again.


def _calibration(values, dtype="float64"):
    """Store ``values`` as calibration_scores_, a tensor of ``dtype``."""

    def edit(document, tensors):
        tensors["forged_calibration"] = torch.as_tensor(np.asarray(values, dtype=dtype))
        document["detector"]["state"]["calibration_scores_"] = {
            "__ndarray__": "forged_calibration",
            "dtype": dtype,
        }

    return edit


@pytest.mark.parametrize(
    ("edit", "message"),
    [
        (_state(offset_={"__float__": "nan"}), "offset_ is nan, not a finite number"),
        (_state(offset_={"__float__": "-inf"}), "offset_ is -inf, not a finite"),
        (
            _state(offset_={"__scalar__": "float64", "value": {"__float__": "nan"}}),
            "offset_ is np.float64.nan.?, not a finite number",
        ),
        (_state(offset_="0.5"), "offset_ is '0.5', not a finite number"),
        (_state(offset_=True), "offset_ is True, not a finite number"),
        (_state(offset_=[0.5]), "offset_ is .0.5., not a finite number"),
        (_state(calibration_="magic"), "calibration_ is 'magic', not one of 'split'"),
        (_state(calibration_=None), "calibration_ is None, not one of"),
        (_calibration([0.0, 2.0, 1.0]), "calibration_scores_ is not sorted ascending"),
        (_calibration([0.0, np.nan]), "calibration_scores_ holds non-finite values"),
        (_calibration([-np.inf, 0.0]), "calibration_scores_ holds non-finite values"),
        (_calibration([[0.0, 1.0]]), r"calibration_scores_ has shape \(1, 2\)"),
        (_calibration([]), r"calibration_scores_ has shape \(0,\)"),
        # the length is read from the tensor's shape, before decoding
        (_calibration(np.arange(5001.0)), r"has shape \(5001,\); a detector keeps"),
        (_calibration([0.0, 1.0], "float32"), "not stored as an array of float64"),
        (_state(calibration_scores_=[0.0, 1.0]), "not stored as an array of float64"),
        (
            _state(
                calibration_scores_={
                    "__ndarray_list__": [],
                    "dtype": "float64",
                    "shape": [10**12],
                }
            ),
            "not stored as an array of float64",
        ),
    ],
)
def test_thresholds_and_calibrations_are_checked(table_model, tmp_path, edit, message):
    path = tmp_path / "hostile.ska"
    document, tensors = read_model(table_model)
    edit(document, tensors)
    write_model(path, document, tensors)
    assert "is not a valid skanomaly model file" in _refused(path, message)


def test_the_largest_calibration_loads(table_model, tmp_path):
    path = tmp_path / "large.ska"
    document, tensors = read_model(table_model)
    _calibration(np.linspace(-1.0, 0.0, 5000))(document, tensors)
    document["detector"]["state"]["calibration_"] = "split"
    write_model(path, document, tensors)
    loaded = load(path)
    assert loaded.calibration_ == "split" and len(loaded.calibration_scores_) == 5000


# ------------------------------------------------- the loader, fuzzed

FUZZ_CASES = int(os.environ.get("SKANOMALY_FUZZ_CASES", "200"))
FUZZ_SEED = int(os.environ.get("SKANOMALY_FUZZ_SEED", "0"))


def test_fuzzed_files_load_or_raise_a_value_error(table_model, seed_models, tmp_path):
    """Mutated real files (see _loader_probe): a detector or a one-line
    ValueError, no import, bounded memory; SKANOMALY_FUZZ_CASES and
    SKANOMALY_FUZZ_SEED run it longer or elsewhere."""
    seeds = [
        table_model,
        seed_models["autoencoder_images"],
        seed_models["deep_mahalanobis"],
    ]
    report = _run_probe(
        {
            "warm": list(map(str, seeds)),
            "fuzz": {
                "seeds": list(map(str, seeds)),
                "cases": FUZZ_CASES,
                "seed": FUZZ_SEED,
                "workdir": str(tmp_path),
            },
        },
        tmp_path,
    )
    assert {w["outcome"] for w in report["warm"]} == {"loaded"}
    cases = report["fuzz"]
    assert len(cases) > FUZZ_CASES * 0.9
    bad = [c for c in cases if c["outcome"] not in ("loaded", "ValueError")]
    assert bad == []
    assert [c for c in cases if c["new_modules"]] == []
    assert report["rss_growth_mb"] < 256
    outcomes = {c["outcome"] for c in cases}
    assert outcomes == {"loaded", "ValueError"}  # the mutations reach both


@pytest.mark.parametrize("cls", [skanomaly.DeepMahalanobis, skanomaly.PaDiM])
def test_an_unfitted_model_naming_a_hub_backbone_is_refused(cls, tmp_path, no_network):
    # its first fit would have downloaded the model the file names
    path = tmp_path / "unfitted.ska"
    save(cls(backbone="resnet18", weights=None), path)
    rewrite(path, _params(backbone="hf-hub:someone/repo"))
    _refused(path, "not a timm architecture that builds offline")
    # and save refuses to write one
    with pytest.raises(ValueError, match="Cannot save .*builds offline"):
        save(cls(backbone="hf-hub:someone/repo"), tmp_path / "other.ska")
    assert not (tmp_path / "other.ska").exists()
    assert no_network == []
