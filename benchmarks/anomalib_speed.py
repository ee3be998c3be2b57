"""Fit and scoring speed side by side: skanomaly before/after issue 24 and anomalib 2.7.

Issue 24 asks for images/s of fit and score of PaDiM, PatchCore and
DeepMahalanobis at 256 px, before and after its speed work, next to anomalib
2.7's PatchCore and PaDiM on the same images with the same backbone and
weights, all on one thread, with image AUROC, pixel AUROC and AUPRO.

Data: the DeepPCB tiles of ``benchmarks/inspection_speed.py`` (native 256 px
crops, no resizing; ``--train`` template tiles, 2 x ``--test-pairs`` test
tiles, half of them around an annotated defect).

Methods (each in its own worker process, one torch thread,
``OMP_NUM_THREADS=1``):

- ``patchcore``, ``patchcore-faiss``, ``padim``, ``deepmahalanobis``:
  skanomaly at this commit, defaults with ``image_size=256,
  random_state=0`` (``search='faiss'`` for the second); each fitted model
  is scored with its backbone on torch and on ONNX Runtime (``runtime`` is
  read at scoring time).
- ``before-*``: the same detectors from the code before issue 24's speed
  work, imported from ``--before-root`` (a ``git worktree`` of that commit;
  it has no ``runtime`` and no ``search``).
- ``anomalib-patchcore`` (coreset 10 %, 9 neighbours) and ``anomalib-padim``
  (d=100): the unmodified LightningModules of anomalib 2.7 driven as in
  ``benchmarks/anomalib_patch.py`` (same ``tf_efficientnet_lite0`` state
  dict, same layers, normalisation with the backbone's mean and std, no
  resizing), run with ``--anomalib-python``. Scoring is one
  ``module.model(batch)`` in eval mode, which returns the image score *and*
  the smoothed map (anomalib has no score-only pass). anomalib's coreset is
  one greedy selection over all training patches, quadratic in their
  number (about 14 min for 100 tiles, 2.3 h for 300 and 19 h for 760 on one
  thread here); ``--anomalib-shard N`` runs its own ``KCenterGreedy`` on
  shards of N training images instead (as skanomaly's fit does, 16 images
  = 16,384 patches), which gives a bank of the same size (within 0.03 %)
  and so the same scoring cost, its brute-force search being independent
  of the bank's content.

Protocol: the parent starts the workers one after another; each fits
(timed, alone on its core), then waits. Scoring: one untimed warm-up pass
over the test tiles per (method, runtime) (ONNX Runtime's export happens
there), then ``--rounds`` rounds in which every (method, runtime) scores
the test tiles once, in an order reversed every other round, so that the
machine's load falls on all alike; the median round is reported. Finally
each worker scores and maps the test tiles once more for the metrics (ours:
``-score_samples`` and ``anomaly_map``, the map pass timed too; anomalib:
its forward's ``pred_score`` and ``anomaly_map``), computed by the parent
with ``skanomaly.metrics``::

    git worktree add /tmp/before e752a96
    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/anomalib_speed.py \\
        --pcb /work/data_real/deeppcb/PCBData --train 760 \\
        --before-root /tmp/before \\
        --anomalib-python /work/venv-anomalib-flows/bin/python \\
        --anomalib-shard 16 --out speed-760.jsonl
"""

import argparse
import ctypes
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent

TILE = 256
BOTH = ("torch", "onnxruntime")
# name -> (detector class, parameters, how it is timed): a runtime is
# score_samples with the backbone on it; RUNTIME+map is score_samples and
# then anomaly_map (ours need two passes for both; anomalib's one forward
# gives both)
OURS = {
    "patchcore": ("PatchCore", {}, (*BOTH, "torch+map", "onnxruntime+map")),
    "patchcore-faiss": (
        "PatchCore",
        {"search": "faiss"},
        (*BOTH, "torch+map", "onnxruntime+map"),
    ),
    "padim": ("PaDiM", {}, (*BOTH, "torch+map", "onnxruntime+map")),
    "padim-pooled": ("PaDiM", {"covariance_pooling": 0.5}, ("torch", "torch+map")),
    "deepmahalanobis": ("DeepMahalanobis", {}, BOTH),
    "before-patchcore": ("PatchCore", {}, ("torch", "torch+map")),
    "before-padim": ("PaDiM", {}, ("torch", "torch+map")),
    "before-deepmahalanobis": ("DeepMahalanobis", {}, ("torch",)),
}
PEERS = ("anomalib-patchcore", "anomalib-padim")
DEFAULT_METHODS = (
    "before-patchcore,patchcore,patchcore-faiss,anomalib-patchcore,"
    "before-padim,padim,anomalib-padim,before-deepmahalanobis,deepmahalanobis"
)


# ------------------------------------------------------------------ workers


def _protocol():
    """A private copy of stdout for the protocol; stdout itself goes to stderr
    (libraries that print must not break the exchange). Also starts a
    watchdog that ends the worker above ``_MAX_RSS_MB`` of resident memory
    (the machine is shared; see the anomalib coreset note in ``main``)."""
    import threading

    def watch():
        while True:
            with open("/proc/self/status") as f:
                rss = int(f.read().split("VmRSS:")[1].split()[0]) // 1024
            if rss > _MAX_RSS_MB:
                print(f"worker over {_MAX_RSS_MB} MB ({rss}): ended", file=sys.stderr)
                os._exit(9)
            time.sleep(0.2)

    threading.Thread(target=watch, daemon=True).start()
    out = os.fdopen(os.dup(1), "w", buffering=1)
    os.dup2(2, 1)
    return out


_MAX_RSS_MB = 8000


def _trim():
    """Give freed heap back to the system (the workers wait side by side)."""
    import gc

    gc.collect()
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except OSError:
        pass


def _serve(out, score, final):
    """Answer the parent: 'score VARIANT' (seconds) or 'final PATH' (writes)."""
    for line in sys.stdin:
        command, _, argument = line.strip().partition(" ")
        if command == "score":
            start = time.perf_counter()
            score(argument)
            reply = {"seconds": time.perf_counter() - start}
        elif command == "final":
            reply = final(argument)
        elif command == "quit":
            return
        else:
            raise ValueError(line)
        out.write(json.dumps(reply) + "\n")


def _cached(path, fit, save, load):
    """``(fitted, info)``: loaded from ``path`` (+ ``.json``) if there, else fitted
    and saved (a rerun of the parent reuses the fits: they take most of it)."""
    if path and Path(path).exists():
        with open(path + ".json") as f:
            info = json.load(f)
        info["reused_fit"] = path
        return load(path), info
    fitted, info = fit()
    if path:
        save(fitted, path)
        with open(path + ".json", "w") as f:
            json.dump(info, f)
    return fitted, info


def _ours_worker(args):
    import pickle

    sys.path.insert(0, args.root or str(HERE.parent))
    out = _protocol()
    import timm  # noqa: F401  (imports are not fit time)
    import torch

    import skanomaly

    torch.set_num_threads(1)
    with np.load(args.data) as data:
        train, test = data["train"], data["test"]
    kind, params, _ = OURS[args.worker]

    def fit():
        detector = getattr(skanomaly, kind)(
            image_size=TILE, random_state=args.seed, **params
        )
        bank_seconds = []
        if hasattr(detector, "_fit_patches"):  # the bank (or Gaussians) alone
            fit_patches = detector._fit_patches

            def timed(*a, **k):
                start = time.perf_counter()
                result = fit_patches(*a, **k)
                bank_seconds.append(time.perf_counter() - start)
                return result

            detector._fit_patches = timed
        start = time.perf_counter()
        detector.fit(train)
        fit_seconds = time.perf_counter() - start
        if bank_seconds:
            del detector._fit_patches
        info = {
            "fit_seconds": fit_seconds,
            "bank_seconds": bank_seconds[0] if bank_seconds else None,
        }
        if hasattr(detector, "memory_bank_"):
            info["bank_rows"] = len(detector.memory_bank_)
        return detector, info

    def save(detector, path):
        with open(path, "wb") as f:
            pickle.dump(detector, f)

    def load(path):
        with open(path, "rb") as f:
            return pickle.load(f)

    detector, info = _cached(args.cache, fit, save, load)
    _trim()
    info.update(method=args.worker, code=skanomaly.__file__)
    info.update(n_train=len(train), n_test=len(test))
    out.write(json.dumps(info) + "\n")
    if args.fit_only:
        return

    # the fitted feature stage (named features_ before issue 24's work)
    stage = getattr(detector, "feature_extractor_", None)
    stage = getattr(detector, "features_", None) if stage is None else stage

    def runtime(variant):
        if variant != "torch" or hasattr(stage, "runtime"):
            stage.runtime = variant

    def score(variant):
        runtime(variant.removesuffix("+map"))
        detector.score_samples(test)
        if variant.endswith("+map"):
            detector.anomaly_map(test)

    def final(path):
        runtime("torch")
        scores = -detector.score_samples(test)
        maps, map_seconds = None, None
        if hasattr(detector, "anomaly_map"):
            start = time.perf_counter()
            maps = detector.anomaly_map(test)
            map_seconds = time.perf_counter() - start
        np.savez(path, scores=scores, **({} if maps is None else {"maps": maps}))
        return {"map_seconds": map_seconds}

    _serve(out, score, final)


def _anomalib_fit(module, method, train, shard, seed=0):
    """anomalib's training: its training_step's embeddings, then its fit
    (or its KCenterGreedy per shard of ``shard`` images). Seconds."""
    import torch

    from benchmarks.anomalib_patch import _normalised

    step = 32
    start = time.perf_counter()
    module.model.train()
    with torch.no_grad():
        for i in range(0, len(train), step):
            module.model(_normalised(train[i : i + step]))
    features_seconds = time.perf_counter() - start
    torch.manual_seed(seed)
    np.random.seed(seed)  # noqa: NPY002
    if method == "patchcore" and shard:
        from anomalib.models.components.sampling import KCenterGreedy

        model = module.model
        embedding = torch.vstack(model.embedding_store)
        model.embedding_store.clear()
        per_shard = shard * len(embedding) // len(train)
        selected = [
            KCenterGreedy(embedding[i : i + per_shard], 0.1).sample_coreset()
            for i in range(0, len(embedding), per_shard)
        ]
        del embedding
        model.memory_bank = torch.vstack(selected)
    else:
        module.fit()
    fit_seconds = time.perf_counter() - start
    # no calibration: the bank (or the Gaussians) is the whole fit
    return {
        "fit_seconds": fit_seconds,
        "bank_seconds": fit_seconds,
        "features_seconds": features_seconds,
    }


def _anomalib_state(module, method):
    if method == "patchcore":
        return {"memory_bank": module.model.memory_bank}
    return {k: v for k, v in module.model.named_buffers()}


def _set_state(module, state):
    """Set fitted buffers by name (load_state_dict refuses their new shapes)."""
    for name, value in state.items():
        owner, _, attribute = name.rpartition(".")
        setattr(module.model.get_submodule(owner) if owner else module.model,
                attribute, value)  # fmt: skip


def _anomalib_worker(args):
    sys.path.insert(0, str(HERE.parent))
    out = _protocol()
    import timm  # noqa: F401
    import torch

    from benchmarks.anomalib_patch import _build, _normalised

    torch.set_num_threads(1)
    with np.load(args.data) as data:
        train, test = data["train"], data["test"]
    method = args.worker.removeprefix("anomalib-")
    module = _build(method, args.weights, 100, args.seed)
    shard = args.anomalib_shard if method == "patchcore" else 0

    def fit():
        return module, _anomalib_fit(module, method, train, shard, args.seed)

    def save(module, path):
        torch.save(_anomalib_state(module, method), path)

    def load(path):
        _set_state(module, torch.load(path, weights_only=True))
        return module

    module, info = _cached(args.cache, fit, save, load)
    _trim()
    code = "anomalib" + (f" (coreset in shards of {shard} images)" if shard else "")
    info.update(method=args.worker, code=code, n_train=len(train), n_test=len(test))
    if method == "patchcore":
        info["bank_rows"] = len(module.model.memory_bank)
    out.write(json.dumps(info) + "\n")
    if args.fit_only:
        return
    module.model.eval()
    step = 32

    def forward():
        scores, maps = [], []
        with torch.inference_mode():
            for i in range(0, len(test), step):
                result = module.model(_normalised(test[i : i + step]))
                scores.append(result.pred_score.reshape(-1).double().numpy())
                maps.append(result.anomaly_map[:, 0].float().numpy())
        return np.concatenate(scores), np.concatenate(maps)

    def final(path):
        scores, maps = forward()
        np.savez(path, scores=scores, maps=maps)
        return {"map_seconds": None}

    _serve(out, lambda variant: forward(), final)


# ------------------------------------------------------------------- parent


def _seed_suffix(args):
    """Of the cached fits' and results' names: none for seed 0 (older runs)."""
    return f"-seed{args.seed}" if args.seed else ""


class Worker:
    """A method's process: fits (``fit_only``: then saves and ends) or loads
    its saved fit and answers the parent's scoring requests."""

    def __init__(self, name, args, data, weights, fit_only=False):
        env = dict(os.environ, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1")
        env["TQDM_DISABLE"] = "1"
        cache = Path(args.work) / f"fit-{name}-{args.train}{_seed_suffix(args)}"
        command = ["--worker", name, "--data", data, "--seed", str(args.seed)]
        if name in PEERS:
            python = args.anomalib_python
            command += ["--weights", weights]
            if name == "anomalib-patchcore" and args.anomalib_shard:
                command += ["--anomalib-shard", str(args.anomalib_shard)]
                cache = cache.with_name(f"{cache.name}-shard{args.anomalib_shard}")
                # glibc otherwise fragments its heap on KCenterGreedy's
                # 16 MB temporaries (a shard's features minus the centre):
                # 19 GB resident after a few shards (the others' temporaries,
                # over 32 MB, are mmap'ed anyway)
                env["MALLOC_MMAP_THRESHOLD_"] = str(2**20)
            self.variants = ("score+map",)
        else:
            python = sys.executable
            if name.startswith("before-"):
                command += ["--root", args.before_root]
            self.variants = OURS[name][2]
        command += ["--cache", str(cache)]
        if fit_only:
            command.append("--fit-only")
        elif not cache.exists():
            raise FileNotFoundError(cache)
        self.name = name
        self.process = subprocess.Popen(
            [python, __file__, *command],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
            env=env,
        )
        self.info = self._read()
        if fit_only:
            self.process.stdin.close()
            self.process.wait()

    def _read(self):
        line = self.process.stdout.readline()
        if not line:
            raise RuntimeError(f"{self.name}: the worker ended ({self.process.wait()})")
        return json.loads(line)

    def ask(self, command):
        self.process.stdin.write(command + "\n")
        self.process.stdin.flush()
        return self._read()

    def close(self):
        self.process.stdin.write("quit\n")
        self.process.stdin.close()
        self.process.wait()


def _metrics(y, masks, scores, maps):
    from sklearn.metrics import roc_auc_score

    from skanomaly.metrics import aupro_score, pixel_roc_auc_score

    row = {"image_auroc": float(roc_auc_score(y, scores))}
    if maps is not None:
        row["pixel_auroc"] = float(pixel_roc_auc_score(masks, maps))
        row["aupro"] = float(aupro_score(masks, maps))
    return row


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--pcb", help="DeepPCB's PCBData folder")
    parser.add_argument("--train", type=int, default=760)
    parser.add_argument("--test-pairs", type=int, default=32)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--methods", default=DEFAULT_METHODS)
    parser.add_argument("--before-root", help="worktree of the code before")
    parser.add_argument("--anomalib-python")
    parser.add_argument(
        "--anomalib-shard",
        type=int,
        default=0,
        help="anomalib's greedy coreset on shards of this many training "
        "images (0: one selection over all, anomalib's own fit)",
    )
    parser.add_argument(
        "--seed",
        type=int,
        default=0,
        help="random_state of ours and the torch/NumPy seed of anomalib's "
        "coreset (the tiles do not change)",
    )
    parser.add_argument("--work", default="/tmp/anomalib_speed")
    parser.add_argument("--out", help="JSON lines of the results")
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    parser.add_argument("--data", help=argparse.SUPPRESS)
    parser.add_argument("--weights", help=argparse.SUPPRESS)
    parser.add_argument("--root", help=argparse.SUPPRESS)
    parser.add_argument("--cache", help=argparse.SUPPRESS)
    parser.add_argument("--fit-only", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker in PEERS:
        return _anomalib_worker(args)
    if args.worker:
        return _ours_worker(args)

    sys.path.insert(0, str(HERE.parent))
    import torch

    from benchmarks.inspection_speed import load_tiles
    from benchmarks.patch_localisation import _packaged_weights_file

    torch.set_num_threads(1)
    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    train, test, y, masks = load_tiles(args.pcb, args.train, args.test_pairs, 0)
    data = str(work / f"tiles-{args.train}.npz")
    np.savez(data, train=train, test=test)
    weights = _packaged_weights_file(work)
    names = args.methods.split(",")
    print(
        f"{len(train)} training tiles, {len(test)} test tiles of {TILE} px; "
        f"methods {names}",
        flush=True,
    )
    workers = []
    try:
        return _measure(args, names, workers, train, test, y, masks, data, weights)
    finally:
        for worker in workers:
            worker.process.kill()


def _measure(args, names, workers, train, test, y, masks, data, weights):
    fits = {}
    for name in names:  # one at a time, each alone on its core
        load = os.getloadavg()[0]
        fits[name] = Worker(name, args, data, weights, fit_only=True).info
        fits[name]["load_at_fit"] = load
        print(json.dumps(fits[name]), flush=True)
    for name in names:
        workers.append(Worker(name, args, data, weights))
        workers[-1].info = fits[name]
    jobs = [(w, v) for w in workers for v in w.variants]
    for worker, variant in jobs:  # warm-up (and ONNX Runtime's export)
        worker.ask(f"score {variant}")
    seconds = {(w.name, v): [] for w, v in jobs}
    loads = []
    for round_ in range(args.rounds):
        loads.append(os.getloadavg()[0])
        for worker, variant in jobs if round_ % 2 == 0 else jobs[::-1]:
            reply = worker.ask(f"score {variant}")
            seconds[worker.name, variant].append(reply["seconds"])
        print(
            f"round {round_}: "
            + ", ".join(f"{n}/{v} {s[-1]:.2f}" for (n, v), s in seconds.items()),
            flush=True,
        )
    rows = []
    for worker in workers:
        suffix = _seed_suffix(args)
        path = str(Path(args.work) / f"{worker.name}-{args.train}{suffix}.npz")
        reply = worker.ask(f"final {path}")
        worker.close()
        with np.load(path) as result:
            scores = result["scores"]
            maps = result["maps"] if "maps" in result else None
        metrics = _metrics(y, masks, scores, maps)
        for variant in worker.variants:
            times = seconds[worker.name, variant]
            median = statistics.median(times)
            row = {
                **worker.info,
                "variant": variant,
                "score_seconds": times,
                "fit_images_per_s": len(train) / worker.info["fit_seconds"],
                "score_images_per_s": len(test) / median,
                "map_seconds": reply["map_seconds"],
                "round_loads": loads,
                **metrics,
            }
            rows.append(row)
            print(json.dumps(row), flush=True)
    if args.out:
        with open(args.out, "a") as f:
            for row in rows:
                f.write(json.dumps(row) + "\n")
    print(_table(rows))
    return rows


def _table(rows):
    lines = [
        "| method | runtime | fit s (bank s) | fit images/s | score images/s "
        "| image AUROC | pixel AUROC | AUPRO |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        bank = f" ({r['bank_seconds']:.0f})" if r.get("bank_seconds") else ""
        lines.append(
            f"| {r['method']} | {r['variant']} | {r['fit_seconds']:.0f}{bank} "
            f"| {r['fit_images_per_s']:.2f} | {r['score_images_per_s']:.1f} "
            f"| {r['image_auroc']:.4f} | {r.get('pixel_auroc', float('nan')):.4f} "
            f"| {r.get('aupro', float('nan')):.4f} |"
        )
    return "\n".join(lines)


if __name__ == "__main__":
    main()
