"""Benchmark peer: anomalib 2.7's PaDiM and PatchCore on in-memory arrays.

Run by ``benchmarks/patch_localisation.py`` with a separate virtualenv that
has anomalib (it is *not* a skanomaly dependency)::

    python3 -m venv /work/venv-anomalib
    /work/venv-anomalib/bin/pip install torch==2.14.1 torchvision==0.29.1 \
        anomalib==2.7.0

How the models are driven
    The unmodified ``anomalib.models.Padim`` / ``Patchcore`` LightningModules,
    built with ``pre_trained=False`` (anomalib has no weights-path argument)
    and then given the same ``tf_efficientnet_lite0`` state dict as skanomaly
    through ``load_state_dict(strict=False)`` on the timm feature extractor;
    the script checks that no backbone key is missing. The pre-processor is
    off: both libraries get the same tensors, scaled to [0, 1], repeated to 3
    channels and normalised with the backbone's own mean and std (0.5, 0.5)
    (anomalib's default would use ImageNet statistics, which
    tf_efficientnet_lite0 was not trained with). No resizing: the images
    already have the size the backbone sees. Training is what the
    LightningModule's ``training_step`` does (``module.model(batch)`` in train
    mode collects embeddings), then ``module.fit()`` (PaDiM's Gaussians,
    PatchCore's coreset); scoring is ``module.model(batch)`` in eval mode,
    whose ``pred_score`` and ``anomaly_map`` are used raw (the
    post-processor's min-max normalisation is monotone and off).

Writes an ``.npz`` with ``scores`` (higher = more anomalous), ``maps``
(n, H, W) float32 and the timings; the driver computes every metric.
"""

import argparse
import json
import resource
import time

import numpy as np
import torch


def _normalised(images, mean=0.5, std=0.5):
    x = torch.from_numpy(images).float().div_(255.0)
    if x.shape[1] == 1:
        x = x.expand(-1, 3, -1, -1)
    return (x - mean) / std


def _build(method, weights, n_features, seed):
    from anomalib.models import Padim, Patchcore

    off = dict(pre_processor=False, post_processor=False, evaluator=False)
    off["visualizer"] = False
    torch.manual_seed(seed)
    np.random.seed(seed)  # noqa: NPY002 (anomalib's projection draws from it)
    if method == "padim":
        module = Padim(
            backbone="tf_efficientnet_lite0",
            layers=["blocks.1", "blocks.2", "blocks.4"],
            pre_trained=False,
            n_features=n_features,
            **off,
        )
        expected = ["blocks.1", "blocks.2", "blocks.4"]
    else:
        module = Patchcore(
            backbone="tf_efficientnet_lite0",
            layers=["blocks.2", "blocks.4"],
            pre_trained=False,
            coreset_sampling_ratio=0.1,
            num_neighbors=9,
            **off,
        )
        expected = ["blocks.2", "blocks.4"]
    extractor = module.model.feature_extractor
    # a misspelt layer is dropped with the one after it: check what is kept
    assert list(extractor.layers) == expected, extractor.layers
    state = torch.load(weights, map_location="cpu", weights_only=True)
    result = extractor.feature_extractor.load_state_dict(state, strict=False)
    assert not result.missing_keys, result.missing_keys
    return module


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("method", choices=["padim", "patchcore"])
    parser.add_argument("--data", required=True, help=".npz with train and test")
    parser.add_argument("--weights", required=True, help="timm state dict (.pth)")
    parser.add_argument("--out", required=True)
    parser.add_argument("--n-features", type=int, default=100)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    torch.set_num_threads(1)
    with np.load(args.data) as data:
        train, test = data["train"], data["test"]
    module = _build(args.method, args.weights, args.n_features, args.seed)
    step = args.batch_size

    start = time.perf_counter()
    module.model.train()
    with torch.no_grad():
        for i in range(0, len(train), step):
            module.model(_normalised(train[i : i + step]))
    torch.manual_seed(args.seed)
    np.random.seed(args.seed)  # noqa: NPY002
    module.fit()
    fit_seconds = time.perf_counter() - start

    module.model.eval()
    scores, maps = [], []
    start = time.perf_counter()
    with torch.inference_mode():
        for i in range(0, len(test), step):
            out = module.model(_normalised(test[i : i + step]))
            scores.append(out.pred_score.reshape(-1).double().numpy())
            maps.append(out.anomaly_map[:, 0].float().numpy())
    score_seconds = time.perf_counter() - start
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    extra = {}
    if args.method == "padim":  # the channel subset, to compare like with like
        extra["channels"] = module.model.idx.numpy()
    np.savez(
        args.out, scores=np.concatenate(scores), maps=np.concatenate(maps), **extra
    )
    with open(args.out + ".json", "w") as f:
        json.dump(
            {
                "fit_seconds": fit_seconds,
                "score_seconds": score_seconds,
                "map_seconds": score_seconds,
                "peak_bytes": peak,
                "n_train": len(train),
                "n_test": len(test),
            },
            f,
        )


if __name__ == "__main__":
    main()
