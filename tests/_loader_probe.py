"""Load untrusted model files in a child process and report what each load did.

The child limits its address space (its size after start-up plus
``--headroom-mb``), so a load that tries a large allocation fails there
instead of taking the machine's memory, and reports for each file: the
outcome (``"loaded"``, or the exception's type name), the message, the
modules the load imported and the growth of the process's peak RSS.

Run by the tests, not collected: ``python tests/_loader_probe.py REQUEST``
with ``REQUEST`` a JSON file ``{"warm": [paths], "files": [paths], "fuzz":
{"seeds": [paths], "cases": n, "seed": s, "workdir": path}}`` (every key
optional); it prints one JSON report on stdout.

The fuzzer mutates real files as a forger would, recomputing the checksum:
it replaces a random node of the JSON document by a value from a pool of
hostile ones (huge or negative sizes, dtype strings, class paths, device
names, tags, deep nesting) or by a copy of another node, deletes or adds
keys, changes a tensor's dtype or shape, adds or drops tensors, or flips
raw bytes of the file.
"""

import copy
import json
import resource
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent


def _rss_peak_mb():
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / 2**20 if sys.platform == "darwin" else peak / 2**10


def _limit_address_space(headroom_mb):
    try:
        with open("/proc/self/statm") as statm:
            pages = int(statm.read().split()[0])
    except OSError:  # not Linux: no limit, the RSS check still applies
        return
    size = pages * resource.getpagesize() + headroom_mb * 2**20
    resource.setrlimit(resource.RLIMIT_AS, (size, resource.RLIM_INFINITY))


def _load(path):
    import skanomaly

    modules = set(sys.modules)
    peak = _rss_peak_mb()
    start = time.perf_counter()
    try:
        detector = skanomaly.load(path)
        outcome, message = "loaded", type(detector).__name__
        if not isinstance(detector, skanomaly.BaseDetector):
            outcome = "loaded a non-detector"
    except Exception as exc:
        outcome, message = type(exc).__name__, str(exc)
        if isinstance(exc, ValueError) and "\n" in message:
            outcome = "ValueError of several lines"
    return {
        "path": str(path),
        "outcome": outcome,
        "message": message[:300],
        "new_modules": sorted(set(sys.modules) - modules),
        "rss_growth_mb": round(_rss_peak_mb() - peak, 1),
        "seconds": round(time.perf_counter() - start, 3),
    }


# ------------------------------------------------------------------ mutations

_INTS = [-(2**63), -1, 0, 1, 2, 3, 7, 64, 200_000, 2**31, 2**53, 2**62]
_STRINGS = [
    "",
    "x",
    "cpu",
    "meta",
    "hpu",
    "cuda:7",
    "hf-hub:someone/repo",
    "local-dir:/",
    "../../../etc/passwd",
    "vit_giant_patch14_224",
    "skanomaly.__main__.X",
    "sklearn.conftest.X",
    "os.system",
    "<U200000000",
    "|S99999999",
    "object",
    "V16",
    "float16",
    "bfloat16",
    "int8",
    "complex128",
    "M8[ns]",
]
_TAGS = [
    "__tuple__",
    "__ndarray__",
    "__ndarray_list__",
    "__tensor__",
    "__scalar__",
    "__dict__",
    "__dict_items__",
    "__random_state__",
    "__estimator__",
    "__slice__",
    "__path__",
    "__device__",
    "__float__",
]


def _nodes(document):
    """Every (container, key) of the document, iteratively."""
    found, stack = [], [document]
    while stack:
        node = stack.pop()
        keys = node.keys() if isinstance(node, dict) else range(len(node))
        for key in keys:
            found.append((node, key))
            if isinstance(node[key], (dict, list)):
                stack.append(node[key])
    return found


def _value(rng, names, depth=0):
    """A hostile value: scalars, containers, tagged objects, deep nesting."""
    choice = rng.integers(12)
    if choice == 0:
        return int(rng.choice(_INTS))
    if choice == 1:
        return [float(rng.choice([0.0, -1.5, 1e308, 5e-324])), None, True][
            rng.integers(3)
        ]
    if choice == 2:
        return str(rng.choice(_STRINGS + names))
    if choice == 3 and depth < 3:
        return [_value(rng, names, depth + 1) for _ in range(rng.integers(4))]
    if choice == 4:
        return [int(rng.choice(_INTS))] * int(rng.choice([1, 2, 1000, 50_000]))
    if choice == 5:
        nested = []
        for _ in range(int(rng.choice([20, 70]))):
            nested = [nested]
        return nested
    if choice == 6:
        return {
            "__ndarray_list__": ["a"] * int(rng.integers(3)),
            "dtype": str(rng.choice(_STRINGS)),
            "shape": [int(rng.choice(_INTS))],
        }
    if choice == 7 and names:
        tag = str(rng.choice(["__ndarray__", "__tensor__"]))
        return {
            tag: str(rng.choice(names)),
            "dtype": str(rng.choice(_STRINGS)),
            "device": str(rng.choice(_STRINGS)),
            "requires_grad": bool(rng.integers(2)),
        }
    if choice == 8:
        return {
            "__scalar__": str(rng.choice(_STRINGS)),
            "value": int(rng.choice(_INTS)),
        }
    if choice == 9:
        return {
            "__estimator__": {
                "class": str(rng.choice(_STRINGS)),
                "params": {},
                "state": {},
                "nets": {},
                "modules": {},
            }
        }
    if choice == 10 and depth < 3:
        return {str(rng.choice(_TAGS)): _value(rng, names, depth + 1)}
    return {"__float__": str(rng.choice(["nan", "1e999", "x", "-inf"]))}


def _mutate_document(document, rng, names):
    nodes = _nodes(document)
    if not nodes:
        return
    container, key = nodes[rng.integers(len(nodes))]
    action = rng.integers(10)
    if action < 6:
        container[key] = _value(rng, names)
    elif action < 8:  # a copy of another node: right structure, wrong place
        other, other_key = nodes[rng.integers(len(nodes))]
        container[key] = copy.deepcopy(other[other_key])
    elif isinstance(container, dict):
        if action == 8:
            del container[key]
        else:
            container[str(rng.choice(_STRINGS + _TAGS))] = _value(rng, names)
    else:
        container.append(_value(rng, names))


def _mutate_tensors(tensors, rng):
    import torch

    names = sorted(tensors)
    name = names[rng.integers(len(names))] if names else "new"
    tensor = tensors.get(name, torch.zeros(3))
    action = rng.integers(5)
    if action == 0:
        dtype = [torch.float64, torch.int8, torch.bool, torch.float16, torch.bfloat16]
        tensors[name] = tensor.to(dtype[rng.integers(len(dtype))])
    elif action == 1:
        tensors[name] = tensor.reshape(-1)[: max(0, tensor.numel() - 1)].clone()
    elif action == 2:
        tensors[name] = tensor.reshape(1, *tensor.shape).clone()
    elif action == 3:
        tensors.pop(name, None)
    else:
        tensors[f"{name}/extra"] = torch.zeros(int(rng.choice([0, 1, 1000])))


def fuzz_cases(seeds, cases, seed, workdir):
    """Write ``cases`` mutated files from the ``seeds`` into ``workdir``."""
    import numpy as np

    sys.path.insert(0, str(HERE))
    from _forge import read_model, write_model

    rng = np.random.default_rng(seed)
    originals = [(Path(path), read_model(Path(path))) for path in seeds]
    workdir = Path(workdir)
    for case in range(cases):
        source, (document, tensors) = originals[rng.integers(len(originals))]
        document, tensors = copy.deepcopy(document), dict(tensors)
        path = workdir / f"case{case}.ska"
        kind = rng.random()
        if kind < 0.1:  # raw damage: the parser's checks
            raw = bytearray(source.read_bytes())
            for _ in range(rng.integers(1, 8)):
                raw[rng.integers(len(raw))] = int(rng.integers(256))
            if rng.random() < 0.3:
                raw = raw[: rng.integers(len(raw))]
            path.write_bytes(bytes(raw))
        else:
            for _ in range(rng.integers(1, 4)):
                if kind < 0.25:
                    _mutate_tensors(tensors, rng)
                else:
                    _mutate_document(document, rng, sorted(tensors))
            try:
                write_model(path, document, tensors)
            except (TypeError, ValueError, RecursionError):  # unwritable JSON
                continue
        yield path


def main(request_path):
    request = json.loads(Path(request_path).read_text())
    import skanomaly

    skanomaly.list_detectors()  # the registry, once, as any session would
    warm = [_load(path) for path in request.get("warm", [])]
    headroom = request.get("headroom_mb", 1024)
    _limit_address_space(headroom)
    peak = _rss_peak_mb()
    report = {"warm": warm, "files": [_load(p) for p in request.get("files", [])]}
    fuzz = request.get("fuzz")
    if fuzz:
        start = time.perf_counter()
        report["fuzz"] = [
            _load(path)
            for path in fuzz_cases(
                fuzz["seeds"], fuzz["cases"], fuzz.get("seed", 0), fuzz["workdir"]
            )
        ]
        report["fuzz_seconds"] = round(time.perf_counter() - start, 1)
    report["rss_growth_mb"] = round(_rss_peak_mb() - peak, 1)
    print(json.dumps(report))


if __name__ == "__main__":
    main(sys.argv[1])
