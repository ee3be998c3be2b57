"""Benchmark peer: anomalib's GANomaly, trained and scored on in-memory arrays.

Run with the separate bench virtualenv (anomalib is *not* a skanomaly dependency)::

    python3 -m venv /work/venv-bench
    /work/venv-bench/bin/pip install torch==2.14.1 torchvision==0.29.1
    /work/venv-bench/bin/pip install anomalib==2.7.0 pyod scikit-learn numpy

    /work/venv-bench/bin/python benchmarks/anomalib_ganomaly.py \
        --train train.npy --test test.npy --test-labels test_labels.npy \
        --epochs 15 --batch-size 64 --out result.json

Inputs
    ``--train`` / ``--test``: float32 arrays of shape ``(N, 1, 32, 32)`` (or
    ``(N, 3, 32, 32)``) scaled to ``[-1, 1]``.  anomalib's decoder ends in
    ``Tanh`` and the generator is trained with an L1 loss between the input and
    its reconstruction, so ``[-1, 1]`` is the range the network can reproduce
    (it is also the original GANomaly's ``Normalize(0.5, 0.5)``).  anomalib's
    *default* pre-processor (resize to 256 + ImageNet mean/std) is replaced by
    ``Resize((32, 32))``, which is how anomalib sets the image size and is a
    no-op on 32x32 inputs; no further scaling is applied here.
    ``--test-labels``: int array, 1 = anomaly, 0 = normal.

How the model is driven
    The unmodified ``anomalib.models.Ganomaly`` LightningModule is fitted by a
    plain ``lightning.Trainer`` (CPU, ``model.trainer_arguments`` applied, no
    logger, no checkpointing, no progress bar, no validation) over a
    ``DataLoader`` of the in-memory array (``shuffle=True``, ``drop_last=False``
    and ``num_workers=0``, like anomalib's train dataloader) whose collate
    function wraps each batch in anomalib's ``ImageBatch``.  Its own
    ``training_step`` (manual optimisation: one generator step then one
    discriminator step per batch), ``configure_optimizers`` and loss classes
    therefore run exactly as shipped; anomalib's ``Engine`` and datamodules
    are skipped only because they need image files on disk.  The
    post-processor (min-max normalisation + thresholding from validation
    data), evaluator and visualiser are disabled.

    ``--channels 3`` (default) is anomalib as shipped: the Lightning module
    hard-codes ``num_input_channels=3`` and ``ImageBatch`` rejects anything
    but 3 channels, so grey images are repeated to RGB, as anomalib's
    datasets do when they load grey images.  ``--channels 1`` swaps
    ``module.model`` for the same ``GanomalyModel`` class built with one input
    channel (architectural parity with a 1-channel GANomaly) and hands the
    module a minimal batch object instead of ``ImageBatch``; the training step,
    optimisers and losses are unchanged.

Timing and scoring
    ``train_seconds`` is the wall time of the training loop (``on_train_start``
    to ``on_train_end``, i.e. excluding Trainer set-up); ``fit_seconds`` is the
    whole ``trainer.fit`` call.  ``images_per_s = epochs * n_train /
    train_seconds``.  The test set is scored with ``module.model`` in eval mode
    (BatchNorm uses its running statistics) under ``torch.inference_mode``;
    the score is anomalib's ``pred_score``, ``mean((latent_i - latent_o)**2)``
    over the latent dimension, higher = more anomalous.  anomalib's
    ``test_step`` additionally min-max normalises scores over the test set,
    which is monotone and leaves AUROC unchanged, so it is skipped.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import os
import time
import warnings
from pathlib import Path

import numpy as np
import torch
from sklearn.metrics import roc_auc_score


@dataclasses.dataclass
class _GreyBatch:
    """Minimal stand-in for ``ImageBatch`` (which only accepts 3 channels)."""

    image: torch.Tensor
    gt_mask: torch.Tensor | None = None


class _TrainTimer:
    """Records wall time from ``on_train_start`` to ``on_train_end``."""

    def __init__(self) -> None:
        self.start = self.end = 0.0


def _make_timer_callback(timer: _TrainTimer):
    from lightning.pytorch.callbacks import Callback

    class TrainTimerCallback(Callback):
        def on_train_start(self, trainer, pl_module) -> None:
            timer.start = time.perf_counter()

        def on_train_end(self, trainer, pl_module) -> None:
            timer.end = time.perf_counter()

    return TrainTimerCallback()


def _load(path: str, channels: int) -> torch.Tensor:
    arr = np.load(path).astype(np.float32, copy=False)
    if arr.ndim == 3:
        arr = arr[:, None]
    if arr.ndim != 4 or arr.shape[-2:] != (32, 32):
        raise ValueError(f"{path}: expected (N, C, 32, 32), got {arr.shape}")
    x = torch.from_numpy(np.ascontiguousarray(arr))
    if x.shape[1] != channels:
        if x.shape[1] != 1:
            raise ValueError(f"{path}: cannot map {x.shape[1]} channels to {channels}")
        x = x.expand(-1, channels, -1, -1).contiguous()
    return x


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--train", required=True, help="float32 (N,1,32,32) in [-1,1]")
    parser.add_argument("--test", required=True, help="float32 (M,1,32,32) in [-1,1]")
    parser.add_argument("--test-labels", required=True, help="(M,) 1=anomaly 0=normal")
    parser.add_argument("--epochs", type=int, required=True)
    parser.add_argument("--batch-size", type=int, required=True)
    parser.add_argument("--out", required=True, help="result JSON path")
    parser.add_argument("--channels", type=int, choices=(1, 3), default=3)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=len(os.sched_getaffinity(0)))
    args = parser.parse_args()

    warnings.filterwarnings("ignore", ".*does not have many workers.*")
    warnings.filterwarnings("ignore", ".*GPU available but not used.*")
    logging.getLogger("lightning.pytorch").setLevel(logging.ERROR)
    logging.getLogger("anomalib").setLevel(logging.ERROR)

    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)

    import anomalib
    from anomalib.data import ImageBatch
    from anomalib.models import Ganomaly
    from anomalib.models.image.ganomaly.torch_model import GanomalyModel
    from anomalib.pre_processing import PreProcessor
    from lightning.pytorch import Trainer
    from torch.utils.data import DataLoader, TensorDataset
    from torchvision.transforms.v2 import Resize

    x_train = _load(args.train, args.channels)
    x_test = _load(args.test, args.channels)
    y_test = np.load(args.test_labels).astype(int).ravel()
    if len(y_test) != len(x_test):
        raise ValueError("test and test-labels lengths differ")

    module = Ganomaly(
        batch_size=args.batch_size,
        n_features=64,
        latent_vec_size=100,
        pre_processor=PreProcessor(transform=Resize((32, 32), antialias=True)),
        post_processor=False,
        evaluator=False,
        visualizer=False,
    )
    if args.channels == 1:
        module.model = GanomalyModel(
            input_size=(32, 32),
            num_input_channels=1,
            n_features=64,
            latent_vec_size=100,
        )
        wrap = _GreyBatch
    else:
        wrap = ImageBatch

    loader = DataLoader(
        TensorDataset(x_train),
        batch_size=args.batch_size,
        shuffle=True,
        num_workers=0,
        collate_fn=lambda items: wrap(image=torch.stack([t[0] for t in items])),
        generator=torch.Generator().manual_seed(args.seed),
    )
    timer = _TrainTimer()
    trainer = Trainer(
        accelerator="cpu",
        devices=1,
        max_epochs=args.epochs,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        limit_val_batches=0,
        callbacks=[_make_timer_callback(timer)],
        **module.trainer_arguments,
    )
    t0 = time.perf_counter()
    trainer.fit(module, train_dataloaders=loader)
    fit_seconds = time.perf_counter() - t0
    train_seconds = timer.end - timer.start

    model = module.model.eval()
    scores = []
    t0 = time.perf_counter()
    with torch.inference_mode():
        for chunk in torch.split(x_test, args.batch_size):
            scores.append(model(chunk).pred_score)
    score_seconds = time.perf_counter() - t0
    scores = torch.cat(scores).numpy()

    result = {
        "anomalib_version": anomalib.__version__,
        "auroc": float(roc_auc_score(y_test, scores)),
        "train_seconds": train_seconds,
        "images_per_s": args.epochs * len(x_train) / train_seconds,
        "score_seconds": score_seconds,
        "epochs": args.epochs,
        "batch_size": args.batch_size,
        "n_train": len(x_train),
        "n_test": len(x_test),
        "fit_seconds": fit_seconds,
        "channels": args.channels,
        "threads": args.threads,
        "torch_version": torch.__version__,
    }
    Path(args.out).write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
