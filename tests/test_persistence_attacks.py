"""Model files from a stranger: what a hand-crafted .ska file can make load() do.

Every file here is forged as an attacker would, with the checksum recomputed
(it finds damage, not intent). Each attack must end in a one-line
ValueError, import nothing, reach no network and read no other path, and
allocate nothing the file's size does not account for; the loader fuzz test
runs mutated files through the same checks.
"""

import json
import os
import re
import shutil
import socket
import struct
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from _forge import drop_unused, read_model, rewrite, write_header, write_model
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
        features = document["detector"]["state"]["feature_extractor_"]["__estimator__"]
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
        features = document["detector"]["state"]["feature_extractor_"]["__estimator__"]
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
    message = _refused(path, None)  # the message is checked below
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
        # the fitted values of the parameters the score reads: only compared,
        # but only plain values of the class's own scoring parameters
        (
            _state(scoring_params_={"__dict__": {"score_method": "elbo"}}),
            r"scoring_params_ is .*, not a dict of plain values of AutoEncoder's "
            r"scoring parameters \(complexity_correction\)",
        ),
        (_state(scoring_params_=[1]), "scoring_params_ is .1., not a dict of plain"),
        (_state(scoring_params_="x"), "scoring_params_ is 'x', not a dict of plain"),
    ],
)
def test_thresholds_and_calibrations_are_checked(table_model, tmp_path, edit, message):
    path = tmp_path / "hostile.ska"
    document, tensors = read_model(table_model)
    edit(document, tensors)
    drop_unused(document, tensors)  # the calibration the edit replaced
    write_model(path, document, tensors)
    assert "is not a valid skanomaly model file" in _refused(path, message)


def test_the_largest_calibration_loads(table_model, tmp_path):
    path = tmp_path / "large.ska"
    document, tensors = read_model(table_model)
    _calibration(np.linspace(-1.0, 0.0, 5000))(document, tensors)
    document["detector"]["state"]["calibration_"] = "split"
    drop_unused(document, tensors)
    write_model(path, document, tensors)
    loaded = load(path)
    assert loaded.calibration_ == "split" and len(loaded.calibration_scores_) == 5000


# ------------------------------------------------- 5. resource limits
# What the JSON and the tensor count can make the parsers allocate. Issue 22:
# 4 million empty lists (12 MB) in the document added 597 MB and loaded; in
# the safetensors header, 588 MB before a refusal; 250,000 zero-size tensors
# (16 MB) added 358 MB and loaded.

_MANY = 4_000_000


def _empty_lists(n):
    return "[" + ",".join(["[]"] * n) + "]"


def _in_document(n):
    def forge(source, path):
        document, tensors = read_model(source)
        text = json.dumps(document)[:-1] + ', "x": ' + _empty_lists(n) + "}"
        write_model(path, document, tensors, text=text)

    return forge


def _in_header(n):
    def forge(source, path):
        def edit(header):
            return header[:-1] + b', "x": ' + _empty_lists(n).encode() + b"}"

        write_header(path, source, edit)

    return forge


def _header_size(path):
    with open(path, "rb") as file:
        return struct.unpack("<Q", file.read(8))[0]


def _zero_size_tensors(n, *, named):
    """``n`` zero-size tensors, named by a fitted list of arrays or by nothing.

    Unnamed ones are written into the header as safetensors writes them
    (offsets at the end of the data), and the checksum is redone: quicker
    than safetensors for a quarter of a million.
    """

    def forge(source, path):
        document, tensors = read_model(source)
        names = [f"zero/{i}" for i in range(n)]
        if named:
            tensors.update((name, torch.zeros(0)) for name in names)
            document["detector"]["state"]["zeros_"] = [
                {"__ndarray__": name, "dtype": "float32"} for name in names
            ]
            write_model(path, document, tensors)
            return
        tensors.update(dict.fromkeys(names, torch.zeros(0)))
        covered = {"name": document["name"], "detector": document["detector"]}
        document["checksum"] = checksum(tensors, covered)
        size = _header_size(source)
        data = source.stat().st_size - 8 - size
        header = json.loads(source.read_bytes()[8 : 8 + size])
        header["__metadata__"]["skanomaly"] = json.dumps(document)
        entry = {"dtype": "F32", "shape": [0], "data_offsets": [data, data]}
        header.update(dict.fromkeys(names, entry))
        text = json.dumps(header, separators=(",", ":")).encode()
        write_header(path, source, lambda _: text)

    return forge


def _fitted_list(n):
    """A fitted attribute of ``n`` empty lists: as many elements as allowed."""

    def forge(source, path):
        document, tensors = read_model(source)
        document["detector"]["state"]["lists_"] = [[]] * n
        write_model(path, document, tensors)

    return forge


_RESOURCE_ATTACKS = {
    # name: (forge, the message of the refusal, or None: it loads)
    "document_4m_lists": (_in_document(_MANY), "at most 8,388,608 are read"),
    "document_1m_lists": (_in_document(1_000_000), "more than 500,000 JSON elements"),
    "header_4m_lists": (_in_header(_MANY), "more than 244,096 JSON elements"),
    "250k_zero_size_tensors": (
        _zero_size_tensors(250_000, named=False),
        "more than 244,096 JSON elements",
    ),
    "10001_named_tensors": (
        _zero_size_tensors(10_001, named=True),
        "10,0[0-9]{2} tensors; a model file holds at most 10,000",
    ),
    "5000_unnamed_tensors": (
        _zero_size_tensors(5000, named=False),
        "5,000 tensor.s. that its header never uses",
    ),
    # the most a file may hold, as legitimate-looking as it gets: it loads
    "9900_named_tensors": (_zero_size_tensors(9900, named=True), None),
    "document_240k_lists": (_fitted_list(240_000), None),
}
# What one of these loads may add to the loader's peak memory, measured
# (see the user guide: ~35 MB for the largest refused files, of 12-17 MB,
# and ~40 MB for those at the limits that load).
RESOURCE_BUDGET_MB = 96

# Loads each file in a fresh process and reports the growth of its peak
# resident memory during that load alone: on Linux the high-water mark is
# reset before each load (/proc/self/clear_refs) and the memory that earlier
# loads freed handed back (malloc_trim), elsewhere the growth of
# the process's peak since start-up is all there is (a weaker check).
_MEASURE = """
import gc, json, re, resource, sys, warnings
warnings.simplefilter("ignore")
import skanomaly

def kb(key):
    with open("/proc/self/status") as status:
        return int(re.search(key + r":\\s+(\\d+)", status.read()).group(1))

def maxrss_kb():
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss

skanomaly.load(sys.argv[1])  # warm: what any load imports and builds once
try:  # a load that escapes its limits fails here, not the machine
    with open("/proc/self/statm") as statm:
        size = int(statm.read().split()[0]) * resource.getpagesize()
    resource.setrlimit(resource.RLIMIT_AS, (size + 2**31, resource.RLIM_INFINITY))
except OSError:
    pass
try:
    import ctypes
    trim = ctypes.CDLL("libc.so.6").malloc_trim
except (OSError, AttributeError):
    trim = None
report = []
for path in sys.argv[2:]:
    gc.collect()
    if trim is not None:  # what earlier loads freed goes back to the system
        trim(0)
    try:
        with open("/proc/self/clear_refs", "w") as refs:
            refs.write("5")
        before, peak = kb("VmRSS"), lambda: kb("VmHWM")
    except OSError:
        before, peak = maxrss_kb(), maxrss_kb
    modules = set(sys.modules)
    try:
        skanomaly.load(path)
        outcome, message = "loaded", ""
    except Exception as exc:
        outcome, message = type(exc).__name__, str(exc)
    report.append({
        "outcome": outcome,
        "message": message[:300],
        "peak_growth_mb": round((peak() - before) / 1024, 1),
        "new_modules": sorted(set(sys.modules) - modules),
    })
print(json.dumps(report))
"""


def _measure_loads(warm, paths):
    done = subprocess.run(
        [sys.executable, "-c", _MEASURE, str(warm), *map(str, paths)],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(done.stdout.splitlines()[-1])


@pytest.fixture(scope="module")
def resource_loads(table_model, tmp_path_factory):
    """The attacks above and the fuzzed shapes below, measured in one process."""
    folder = tmp_path_factory.mktemp("resources")
    files = {}
    for name, (forge, _) in _RESOURCE_ATTACKS.items():
        files[name] = folder / f"{name}.ska"
        forge(table_model, files[name])
    fuzzed = _resource_fuzz_files(table_model, folder)
    paths = [*files.values(), *(path for _, path in fuzzed)]
    results = _measure_loads(table_model, paths)
    attacks = dict(zip(files, results))
    cases = [case for case, _ in fuzzed]
    return attacks, list(zip(cases, results[len(files) :]))


@pytest.mark.parametrize("name", sorted(_RESOURCE_ATTACKS))
def test_the_json_and_the_tensors_are_counted_before_they_are_parsed(
    resource_loads, name
):
    result = resource_loads[0][name]
    message = _RESOURCE_ATTACKS[name][1]
    if message is None:
        assert result["outcome"] == "loaded", result
    else:
        assert result["outcome"] == "ValueError", result
        assert re.search(message, result["message"]), result
    assert result["peak_growth_mb"] < RESOURCE_BUDGET_MB, result
    assert result["new_modules"] == []


def _json_elements(value):
    """What count_elements counts, from the parsed value: every string, and
    every '[', '{', ',' and ':' that its JSON text holds outside strings."""
    if isinstance(value, str):
        return 1
    if isinstance(value, list):
        return 1 + max(len(value) - 1, 0) + sum(map(_json_elements, value))
    if isinstance(value, dict):
        inner = sum(map(_json_elements, value.values()))
        return 1 + max(len(value) - 1, 0) + 2 * len(value) + inner
    return 0


def _random_json(rng, depth=0):
    kind = rng.integers(6 if depth < 4 else 3)
    if kind == 0:
        return [1, -2.5, None, True][rng.integers(4)]
    if kind in (1, 2):  # the characters that could fool a scanner
        return "".join(rng.choice(list('ab[]{},:"\\\\ \n\u00e9'), rng.integers(9)))
    if kind == 3:
        return [_random_json(rng, depth + 1) for _ in range(rng.integers(4))]
    return {
        _random_json(rng, 4) if rng.random() < 0.5 else "k": _random_json(
            rng, depth + 1
        )
        for _ in range(rng.integers(4))
    }


@pytest.mark.parametrize("chunk", [None, 1, 2, 3, 7])
def test_elements_are_counted_exactly_near_the_limit(monkeypatch, chunk):
    from skanomaly.persistence import format as persistence_format

    if chunk is not None:  # escapes and strings across the chunks' borders
        monkeypatch.setattr(persistence_format, "_CHUNK", chunk)
    rng = np.random.default_rng(0)
    for _ in range(400):
        value = {"k": _random_json(rng)} if rng.random() < 0.5 else _random_json(rng)
        text = json.dumps(
            value,
            ensure_ascii=bool(rng.integers(2)),
            separators=[(",", ":"), (", ", ": ")][rng.integers(2)],
        )
        expected = _json_elements(value)
        # at the limit, the exact count; one below, a count past it
        assert persistence_format.count_elements(text, expected) == expected, text
        assert persistence_format.count_elements(text, expected - 1) == expected, text


@pytest.mark.parametrize(
    ("text", "count"),
    [
        # a backtracking pattern took 550 MB on it
        ('"' + '\\"' * 3_000_000, 1),
        # an escape at every chunk's border: '[', a string, ',', a string
        ('["' + "\\" * 6_000_001 + '", "a,b"]', 4),
        ("[" + ",".join(['"a,b"'] * 1_000_000) + "]", None),
        ('"' * 6_000_000, None),
    ],
    ids=["escaped_quotes", "backslashes", "strings_with_commas", "quotes"],
)
def test_counting_allocates_a_chunk_at_most(text, count):
    import tracemalloc

    from skanomaly.persistence.format import count_elements

    tracemalloc.start()
    try:
        counted = count_elements(text, 3)  # past the upper bound of each text
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    # exact below the limit; past it, the count stops early
    assert counted == count if count is not None else counted > 3
    assert peak < 4 * 2**20, peak


def test_a_tensor_named_only_as_a_string_is_refused(table_model, tmp_path):
    # named in the document (so counted as referenced before the tensors are
    # read), used by no value: refused once the detector is built
    document, tensors = read_model(table_model)
    tensors["padding"] = torch.zeros(1000)
    document["detector"]["state"]["note_"] = "padding"
    path = tmp_path / "padded.ska"
    write_model(path, document, tensors)
    _refused(path, "1 tensor.s. that its header never uses, such as 'padding'")


def test_one_unnamed_tensor_is_refused(table_model, tmp_path):
    document, tensors = read_model(table_model)
    tensors["padding"] = torch.zeros(1000)
    path = tmp_path / "padded.ska"
    write_model(path, document, tensors)
    _refused(path, "1 tensor.s. that its header never uses, such as 'padding'")


@pytest.mark.parametrize(
    ("limit", "value", "message"),
    [
        ("MAX_DOCUMENT_ELEMENTS", 100, "more than 100 JSON elements"),
        ("MAX_DOCUMENT_BYTES", 1000, "characters long; at most 1,000 are read"),
        ("MAX_HEADER_ELEMENTS", 100, "more than 100 JSON elements"),
        ("MAX_TENSORS", 3, "tensors; a model file holds at most 3"),
    ],
)
def test_save_refuses_a_file_over_the_limits(
    monkeypatch, tmp_path, limit, value, message
):
    from skanomaly.persistence import format as persistence_format

    detector = fast_detector(skanomaly.AutoEncoder).fit(TABLE)
    monkeypatch.setattr(persistence_format, limit, value)
    path = tmp_path / "model.ska"
    with pytest.raises(ValueError, match=f"Cannot save AutoEncoder: .*{message}"):
        save(detector, path)
    assert list(tmp_path.iterdir()) == []


def test_a_long_history_is_stored_without_its_batches(monkeypatch, tmp_path):
    from skanomaly.persistence import estimators

    detector = fast_detector(skanomaly.AutoEncoder).fit(TABLE)
    n_batches = sum(len(epoch["batches"]) for epoch in detector.net_.history)
    path = tmp_path / "model.ska"
    save(detector, path)
    assert load(path).net_.history.to_list() == detector.net_.history.to_list()
    monkeypatch.setattr(estimators, "MAX_STORED_BATCHES", n_batches - 1)
    with pytest.warns(UserWarning, match=f"records {n_batches:,} batches"):
        save(detector, path)
    history = load(path).net_.history
    assert len(history) == len(detector.net_.history)
    assert history[:, "batches"] == [[]] * len(history)
    assert history[:, "train_loss"] == detector.net_.history[:, "train_loss"]


def test_real_models_are_far_from_the_limits(table_model, seed_models):
    """The limits leave room: the test models use under 2 % of each."""
    from skanomaly.persistence import format as persistence_format

    for path in (
        table_model,
        seed_models["autoencoder_images"],
        seed_models["deep_mahalanobis"],
    ):
        raw = path.read_bytes()
        (n,) = struct.unpack("<Q", raw[:8])
        header = raw[8 : 8 + n].decode()
        names, document = persistence_format.read_header(raw)
        text = json.loads(header)["__metadata__"]["skanomaly"]
        elements = persistence_format.count_elements
        assert len(names) < persistence_format.MAX_TENSORS / 50
        assert n < persistence_format.MAX_HEADER_BYTES / 50
        assert elements(header, 10**9) < persistence_format.MAX_HEADER_ELEMENTS / 50
        assert len(text) < persistence_format.MAX_DOCUMENT_BYTES / 50
        assert elements(text, 10**9) < persistence_format.MAX_DOCUMENT_ELEMENTS / 50


# Resource shapes, fuzzed: random JSON shapes of random sizes around the
# limits, in each place a file holds JSON, and tensor counts around theirs.
# Each file must load or be refused with a ValueError within the budget.
_SHAPES = {
    "lists": lambda n: _empty_lists(n // 2),
    "dicts": lambda n: "[" + ",".join(["{}"] * (n // 2)) + "]",
    "keys": lambda n: "{" + ",".join(f'"{i}":0' for i in range(n // 3)) + "}",
    "strings": lambda n: "[" + ",".join(['"a\\"b"'] * (n // 2)) + "]",
    "nesting": lambda n: "[" + ",".join(["[" * 60 + "]" * 60] * (n // 120)) + "]",
    "numbers": lambda n: "[" + ",".join(["1e300"] * n) + "]",
}


def _in_state(text):
    def forge(source, path):
        document, tensors = read_model(source)
        document["detector"]["state"]["fuzz_"] = json.loads(text)
        write_model(path, document, tensors)

    return forge


def _in_metadata(text):
    def forge(source, path):
        def edit(header):
            metadata = b'"__metadata__":{'
            assert metadata in header
            return header.replace(metadata, metadata + b'"x":' + text.encode() + b",")

        write_header(path, source, edit)

    return forge


_PLACES = {
    # place: (forge from JSON text, the element limit that applies)
    "document": (lambda text: _in_document_text(text), "MAX_DOCUMENT_ELEMENTS"),
    "state": (_in_state, "MAX_DOCUMENT_ELEMENTS"),
    "header": (lambda text: _in_header_text(text), "MAX_HEADER_ELEMENTS"),
    "metadata": (_in_metadata, "MAX_HEADER_ELEMENTS"),
}


def _in_document_text(text):
    def forge(source, path):
        document, tensors = read_model(source)
        write_model(
            path,
            document,
            tensors,
            text=json.dumps(document)[:-1] + ', "x": ' + text + "}",
        )

    return forge


def _in_header_text(text):
    def forge(source, path):
        write_header(
            path, source, lambda header: header[:-1] + b', "x": ' + text.encode() + b"}"
        )

    return forge


RESOURCE_FUZZ_CASES = int(os.environ.get("SKANOMALY_RESOURCE_FUZZ_CASES", "10"))


def _resource_fuzz_files(table_model, folder):
    """``(case, path)`` of SKANOMALY_RESOURCE_FUZZ_CASES forged files."""
    from skanomaly.persistence import format as persistence_format

    rng = np.random.default_rng(FUZZ_SEED)
    fuzzed = []
    for case in range(RESOURCE_FUZZ_CASES):
        path = folder / f"fuzz{case}.ska"
        scale = float(rng.choice([0.3, 0.9, 1.05, 2.0, 8.0]))
        if rng.random() < 0.2:
            named = scale < 1.1 and bool(rng.integers(2))
            n = int(scale * persistence_format.MAX_TENSORS)
            forge = _zero_size_tensors(n, named=named)
            description = ("tensors", n, named)
        else:
            shape = str(rng.choice(sorted(_SHAPES)))
            place = str(rng.choice(sorted(_PLACES)))
            make, limit = _PLACES[place]
            n = int(scale * getattr(persistence_format, limit))
            forge = make(_SHAPES[shape](n))
            description = (shape, place, n)
        forge(table_model, path)
        fuzzed.append((description, path))
    return fuzzed


def test_fuzzed_resource_shapes_stay_within_the_budget(resource_loads):
    cases = resource_loads[1]
    assert len(cases) == RESOURCE_FUZZ_CASES
    for case, result in cases:
        assert result["outcome"] in ("loaded", "ValueError"), (case, result)
        assert "\n" not in result["message"]
        assert result["peak_growth_mb"] < RESOURCE_BUDGET_MB, (case, result)
        assert result["new_modules"] == [], (case, result)


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


# ------------------------------------------ the complexity correction's state


@pytest.fixture(scope="module")
def corrected_model(tmp_path_factory):
    path = tmp_path_factory.mktemp("corrected") / "autoencoder.ska"
    images = (TABLE.reshape(-1, 1, 8, 8) * 16).astype(np.uint8)
    detector = skanomaly.AutoEncoder(
        max_epochs=2, base_channels=4, random_state=0, complexity_correction="auto"
    )
    save(detector.fit(images), path)
    return path


def _without(key):
    def edit(document, tensors=None):
        del document["detector"]["state"][key]

    return edit


@pytest.mark.parametrize(
    ("edit", "message"),
    [
        (
            _state(complexity_floor_={"__float__": "nan"}),
            "complexity_floor_ is nan, not a finite number > 0",
        ),
        (_state(complexity_floor_=-1.0), "complexity_floor_ is -1.0, not a finite"),
        (_state(complexity_floor_="x"), "complexity_floor_ is 'x', not a finite"),
        (_state(complexity_floor_=True), "complexity_floor_ is True, not a finite"),
        # the blur's padding is allocated when scoring
        (
            _state(complexity_sigma_=1e9),
            "complexity_sigma_ is 1000000000.0, not a blur",
        ),
        (_state(complexity_sigma_=-2.0), "complexity_sigma_ is -2.0, not a blur"),
        (_without("complexity_floor_"), "complexity_sigma_ is set without complexity"),
    ],
)
def test_the_complexity_correction_state_is_checked(
    corrected_model, tmp_path, edit, message
):
    path = _forged(corrected_model, tmp_path, edit)
    assert "is not a valid skanomaly model file" in _refused(path, message)


def test_a_blur_on_a_table_model_is_refused(table_model, tmp_path):
    path = _forged(table_model, tmp_path, _state(complexity_sigma_=2.0))
    _refused(path, "complexity_sigma_ is set, but it has no image shape")


def test_the_unforged_corrected_model_loads(corrected_model):
    loaded = load(corrected_model)
    assert loaded.complexity_sigma_ == 2.0 and loaded.complexity_floor_ > 0


@pytest.mark.parametrize(
    "value",
    [
        {"__dict__": {"score_lambda": [[0.5]]}},
        {"__dict__": {"score_lambda": 0.9, "w_con": 50}},
        {"__dict__": {"__class__": "os.system"}},
    ],
)
def test_a_scoring_record_of_other_parameters_is_refused(tmp_path, value):
    path = tmp_path / "skip.ska"
    images = (TABLE.reshape(-1, 1, 8, 8) * 16).astype(np.uint8)
    save(fast_detector(skanomaly.SkipGANomaly).fit(images), path)
    forged = _forged(path, tmp_path, _state(scoring_params_=value))
    _refused(forged, r"scoring_params_ is .*SkipGANomaly's scoring parameters")


class _SizedScore(skanomaly.detectors.base.BaseDetector):
    """A plugin whose score reads a tuple of sizes."""

    _scoring_parameters = ("widths",)

    def __init__(self, widths=(2, 3)):
        super().__init__()
        self.widths = widths

    def _fit(self, X):
        pass

    def _score_samples(self, X):
        return -np.abs(X).sum(axis=1)


@pytest.mark.parametrize(
    ("record", "refused"),
    [
        ({"widths": (2, 3)}, False),
        ({"widths": [2, 3]}, False),
        ({"widths": tuple(range(65))}, True),
        ({"widths": ((2, 3),)}, True),
        ({"widths": {"a": 1}}, True),
    ],
)
def test_a_plugins_sequence_scoring_parameter_is_a_plain_value(record, refused):
    from skanomaly.persistence.estimators import check_fitted_values
    from skanomaly.persistence.format import FormatError

    detector = _SizedScore().fit(np.random.default_rng(0).normal(size=(30, 2)))
    assert detector.scoring_params_ == {"widths": (2, 3)}
    detector.scoring_params_ = record
    if refused:
        with pytest.raises(FormatError, match="scoring_params_ is"):
            check_fitted_values(detector)
    else:
        check_fitted_values(detector)
