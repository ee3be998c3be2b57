"""Backbone inference on a CPU: which execution of the patch stage is fastest.

Issue 24, item 2. The patch detectors' backbone pass (EfficientNet-Lite0 on
its packaged ImageNet weights, the levels of stride 8 and 16 that
PatchFeatures keeps by default, 256 px) is run on the same batch by:

- ``eager``: torch, channels_last float32, the way PatchFeatures runs it;
- ``eager-contiguous``: the same in the default memory format;
- ``jit-freeze``: ``torch.jit.trace`` + ``torch.jit.freeze`` (oneDNN fusion
  of convolution, batch norm and activation) + ``optimize_for_inference``;
- ``bf16``: eager under ``torch.autocast('cpu', dtype=torch.bfloat16)`` (the
  CPU's AVX-512 BF16 where it has it), output back to float32;
- ``onnxruntime``: the same levels exported to ONNX and run by ONNX Runtime
  (one intra-op thread).

Each variant is timed interleaved with the others, ``--repeats`` rounds,
median per batch, one thread everywhere; the largest absolute difference of
its feature maps from ``eager`` is reported next to it (the target: within
1e-4 of the float32 maps, or a documented tolerance for an opt-in
lower-precision mode).

Run::

    OMP_NUM_THREADS=1 python benchmarks/backbone_speed.py --batch 8 --repeats 7
"""

import argparse
import io
import statistics
import time

import numpy as np
import torch


def _patch_stage(image_size):
    from skanomaly.features.patches import PatchFeatures

    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (2, 3, image_size, image_size), dtype=np.uint8)
    stage = PatchFeatures(image_size=image_size).fit(images)
    positions = [stage.all_levels_.index(name) for name in stage.levels_]
    return stage.backbone_, positions


class _Levels(torch.nn.Module):
    """The kept levels of a backbone as a plain forward (for tracing/export)."""

    def __init__(self, backbone, positions):
        super().__init__()
        self.backbone = backbone
        self.positions = list(positions)

    def forward(self, x):
        from skanomaly.nn.backbones import level_maps

        return tuple(level_maps(self.backbone, x, keep=self.positions))


def _variants(levels, example):
    variants = {}
    channels_last = levels.to(memory_format=torch.channels_last)

    def eager(x):
        return channels_last(x.contiguous(memory_format=torch.channels_last))

    variants["eager"] = eager
    variants["eager-contiguous"] = levels
    with torch.inference_mode():
        traced = torch.jit.trace(levels, example, check_trace=False)
    frozen = torch.jit.optimize_for_inference(torch.jit.freeze(traced.eval()))
    variants["jit-freeze"] = frozen

    def bf16(x):
        with torch.autocast("cpu", dtype=torch.bfloat16):
            out = channels_last(x.contiguous(memory_format=torch.channels_last))
        return tuple(o.float() for o in out)

    variants["bf16"] = bf16
    try:
        import onnxruntime
    except ImportError:
        return variants
    buffer = io.BytesIO()
    names = [f"level{i}" for i in range(len(levels.positions))]
    torch.onnx.export(
        levels,
        (example,),
        buffer,
        input_names=["images"],
        output_names=names,
        dynamic_axes={"images": {0: "batch"}},
        dynamo=False,
    )
    options = onnxruntime.SessionOptions()
    options.intra_op_num_threads = 1
    options.inter_op_num_threads = 1
    session = onnxruntime.InferenceSession(buffer.getvalue(), options)

    def ort(x):
        out = session.run(None, {"images": x.numpy()})
        return tuple(torch.from_numpy(o) for o in out)

    variants["onnxruntime"] = ort
    return variants


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--image-size", type=int, default=256)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--repeats", type=int, default=7)
    args = parser.parse_args()
    torch.set_num_threads(1)
    torch.manual_seed(0)
    backbone, positions = _patch_stage(args.image_size)
    levels = _Levels(backbone, positions).eval()
    x = torch.randn(args.batch, 3, args.image_size, args.image_size)
    variants = _variants(levels, x)
    with torch.inference_mode():
        reference = [o.float() for o in variants["eager"](x)]
        times = {name: [] for name in variants}
        diffs = {}
        for name, run in variants.items():  # warm-up, and the differences
            out = run(x)
            diffs[name] = max(
                float((o.float() - r).abs().max()) for o, r in zip(out, reference)
            )
        for _ in range(args.repeats):
            for name, run in variants.items():
                start = time.perf_counter()
                run(x)
                times[name].append(time.perf_counter() - start)
    scale = max(float(r.abs().max()) for r in reference)
    print(
        f"Lite0 levels {positions} at {args.image_size} px, batch {args.batch}, "
        f"1 thread, median of {args.repeats}; largest |feature| {scale:.1f}"
    )
    print("| variant | ms / image | vs eager | max abs diff from eager |")
    print("|---|---|---|---|")
    base = statistics.median(times["eager"])
    for name, values in times.items():
        median = statistics.median(values)
        print(
            f"| {name} | {1000 * median / args.batch:.1f} | {base / median:.2f}x "
            f"| {diffs[name]:.2e} |"
        )


if __name__ == "__main__":
    main()
