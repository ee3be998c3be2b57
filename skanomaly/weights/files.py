"""Local weights files: a state dict read without running code."""

import pickle
from pathlib import Path

import torch

from ._timm import is_classifier

__all__ = ["load_weights_file"]


def load_weights_file(model, path, *, name=None):
    """Load a local state dict into ``model`` strictly, without running code.

    ``.safetensors`` files are read with safetensors; anything else with
    ``torch.load(weights_only=True)``, which refuses pickled code. A
    checkpoint that wraps the weights under ``'state_dict'``, ``'model'`` or
    ``'model_state_dict'`` is unwrapped, a ``'module.'`` prefix (from
    ``DataParallel``) is removed, and classifier weights are dropped (the
    backbone has none). Every other key must match.

    Parameters
    ----------
    model : torch.nn.Module
        A timm model built with ``num_classes=0``.
    path : str or os.PathLike
    name : str, default=None
        Backbone name for the error messages.
    """
    path = Path(path)
    name = name or type(model).__name__
    if path.is_dir():
        raise IsADirectoryError(
            f"Weights path {str(path)!r} for backbone {name!r} is a folder; give "
            "the .safetensors or .pth file."
        )
    if not path.is_file():
        raise FileNotFoundError(
            f"Weights file {str(path)!r} for backbone {name!r} does not exist."
        )
    state = _read_state(path, name)
    for key in ("state_dict", "model", "model_state_dict"):
        if isinstance(state, dict) and isinstance(state.get(key), dict):
            state = state[key]
            break
    if not isinstance(state, dict):
        raise ValueError(
            f"{str(path)!r} holds a {type(state).__name__}, not a state dict."
        )
    state = {k.removeprefix("module."): v for k, v in state.items()}
    state = {k: v for k, v in state.items() if not is_classifier(model, k)}
    expected = set(model.state_dict())
    missing, unexpected = expected - set(state), set(state) - expected
    if missing or unexpected:
        raise ValueError(
            f"Weights file {str(path)!r} does not fit backbone {name!r}: "
            f"{len(missing)} missing key(s) {sorted(missing)[:4]}, "
            f"{len(unexpected)} unexpected key(s) {sorted(unexpected)[:4]}. Was it "
            "saved from another architecture?"
        )
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as exc:  # same keys, other shapes
        raise ValueError(
            f"Weights file {str(path)!r} does not fit backbone {name!r}: {exc}"
        ) from exc
    return model


def _read_state(path, name):
    """The object a weights file holds, read without running pickled code."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    def invalid(reason):
        if isinstance(reason, BaseException):
            reason = " ".join(f"{type(reason).__name__}: {reason}".split())
        return ValueError(
            f"Weights file {str(path)!r} for backbone {name!r} is not a valid state "
            f"dict file ({reason[:120].rstrip(': ')}); expected a .safetensors file "
            "or a torch.save-d state dict."
        )

    if path.suffix == ".safetensors":
        try:
            return load_file(path, device="cpu")
        except SafetensorError as exc:
            raise invalid(exc) from exc
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        # torch names the global (a function or class) that a pickle calls
        if "global" not in str(exc).lower():
            raise invalid("it is not a torch.save file") from exc
        raise ValueError(
            f"{str(path)!r} is not a plain state dict: loading it would run "
            "pickled code, which is refused. Save model.state_dict() with "
            "torch.save or safetensors.torch.save_file."
        ) from exc
    except (RuntimeError, EOFError, KeyError, ValueError) as exc:
        raise invalid(exc) from exc
