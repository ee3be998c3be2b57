"""Where a feature stage's backbone runs: torch, or ONNX Runtime on the CPU.

ONNX Runtime ran EfficientNet-Lite0's patch levels 2.6x faster than torch
on one CPU thread (24 against 63 ms per 256 px image), within 6.3e-5 of
torch's features (``benchmarks/backbone_speed.py``). The batch module a
feature stage runs (preprocessing + backbone + pooling or grid, the module
its ONNX export holds too) is exported once per fitted stage, after its
preprocessing (which stays in torch), and kept in a cache outside the
stage's ``__dict__``: it is derived, so it is neither pickled nor saved,
and a loaded model rebuilds it on first use.
"""

import io
import warnings
import weakref
from functools import partial

import torch

__all__ = ["RUNTIMES", "check_runtime", "runtime_module"]

RUNTIMES = ("torch", "onnxruntime")

# stage -> {id of its fitted backbone: session runner}
_SESSIONS = weakref.WeakKeyDictionary()


def check_runtime(runtime, device):
    """Refuse what cannot run, before any work: the package, the device."""
    if runtime == "torch":
        return
    try:
        import onnxruntime  # noqa: F401
    except ImportError as exc:
        raise ImportError(
            "runtime='onnxruntime' needs the onnxruntime package: pip install "
            "'skanomaly[onnx]', or use runtime='torch'."
        ) from exc
    if torch.device(device).type != "cpu":
        raise ValueError(
            f"runtime='onnxruntime' runs on the CPU; got device={device!r}. Use "
            "runtime='torch' on an accelerator."
        )


class _AfterPreprocessing(torch.nn.Module):
    """The batch module without its preprocessing (what is exported).

    Preprocessing (an antialiased resize the TorchScript exporter cannot
    express) stays in torch; the backbone, the bulk of the work, runs in
    ONNX Runtime.
    """

    def __init__(self, module):
        super().__init__()
        self.module = module

    def forward(self, x):
        return self.module.features(x)


class _SessionModule:
    """Call the batch module with its backbone part in an ONNX Runtime session."""

    def __init__(self, module, model_bytes):
        import onnxruntime

        from ..nn.backbones import preprocess_images

        options = onnxruntime.SessionOptions()
        # the caller's torch thread count: one knob for both runtimes
        options.intra_op_num_threads = max(1, torch.get_num_threads())
        options.inter_op_num_threads = 1
        self.session = onnxruntime.InferenceSession(
            model_bytes, options, providers=["CPUExecutionProvider"]
        )
        self.preprocess = partial(preprocess_images, **module.preprocessing)

    def __call__(self, batch):
        x = self.preprocess(batch).contiguous()
        (out,) = self.session.run(None, {"images": x.numpy()})
        return torch.from_numpy(out)


def _export(module, example):
    from ..nn.backbones import preprocess_images

    x = preprocess_images(example, **module.preprocessing).contiguous()
    buffer = io.BytesIO()
    with warnings.catch_warnings():
        # the TorchScript exporter: seconds, where the dynamo one takes
        # 30-50 s, for a graph that never leaves this process
        warnings.simplefilter("ignore")
        torch.onnx.export(
            _AfterPreprocessing(module).eval(),
            (x,),
            buffer,
            input_names=["images"],
            output_names=["features"],
            dynamic_axes={"images": {0: "batch"}},
            dynamo=False,
        )
    return _SessionModule(module, buffer.getvalue())


def runtime_module(stage, module, batch):
    """``module`` itself (runtime 'torch') or its ONNX Runtime twin.

    Parameters
    ----------
    stage : TimmFeatures
        The feature stage (its ``runtime`` and fitted ``backbone_``).
    module : torch.nn.Module
        The batch module on the CPU: raw image batch -> features.
    batch : torch.Tensor
        A batch of the input it will get (the example the export traces).

    Returns
    -------
    callable
        Batch -> what ``module`` returns.
    """
    if getattr(stage, "runtime", "torch") == "torch":
        return module
    sessions = _SESSIONS.setdefault(stage, {})
    # preprocessing (in torch) makes every batch the same shape and dtype
    key = id(stage.backbone_)
    if key not in sessions:
        sessions.clear()  # a refit replaced the backbone: drop the old graphs
        sessions[key] = _export(module, batch[:1].cpu())
    return sessions[key]
