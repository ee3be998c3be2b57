"""Hub weights: timm's pretrained weights from the Hugging Face hub or its cache."""

import os
import socket
import threading
from contextlib import contextmanager
from pathlib import Path
from urllib.parse import urlparse

import torch

from ._timm import create_timm_model
from .packaged import packaged_backbones

__all__ = ["create_pretrained", "in_hub_cache", "missing_weights_error"]

_PROXY_VARIABLES = ("HTTPS_PROXY", "https_proxy", "ALL_PROXY", "all_proxy")
# held while the hub client is switched to its cache (see _cache_only)
_OFFLINE_LOCK = threading.Lock()


@contextmanager
def _cache_only():
    """The hub client reads its cache only, for the ``with`` block alone.

    timm downloads with ``huggingface_hub.hf_hub_download`` and passes it no
    ``local_files_only``, so the client's one switch is its module constant
    ``huggingface_hub.constants.HF_HUB_OFFLINE``. It is set here around the
    one call that reads the cache, and its previous value is restored on the
    way out, whatever happens; the lock keeps two threads loading at once from
    restoring each other's value (which would leave it on). The environment
    (``os.environ``) is never touched. While the block runs, a download that
    another thread starts through the hub client is refused as offline.

    Yields
    ------
    offline : bool
        The value before the block: whether the user asked for offline mode.
    """
    from huggingface_hub import constants

    with _OFFLINE_LOCK:
        before = constants.HF_HUB_OFFLINE
        constants.HF_HUB_OFFLINE = True
        try:
            yield before
        finally:
            constants.HF_HUB_OFFLINE = before


def _hub_resolvable():
    """Whether the hub's host name resolves (a proxy is assumed to reach it)."""
    from huggingface_hub import constants

    if any(os.environ.get(variable) for variable in _PROXY_VARIABLES):
        return True
    host = urlparse(constants.ENDPOINT).hostname
    try:
        socket.getaddrinfo(host, 443)
    except OSError:
        return False
    return True


def missing_weights_error(name, reason):
    """The ``OSError`` for hub weights that cannot be had, naming the remedies."""
    return OSError(
        f"Pretrained ImageNet weights for backbone {name!r} are not available: "
        f"{reason}. Either choose a backbone whose weights come in a pip package "
        f"and work offline ({', '.join(packaged_backbones())}), or pass "
        "weights=<path> to a local .safetensors or .pth state dict of this "
        "backbone (on a machine "
        "with internet: safetensors.torch.save_file(timm.create_model("
        f"{name!r}, pretrained=True).state_dict(), 'weights.safetensors')), or "
        "weights=None for a randomly initialised backbone (much weaker features)."
    )


def create_pretrained(name):
    """A timm model without classifier, with timm's pretrained weights of ``name``.

    The hub cache is read first, without network (when offline, the hub
    client would otherwise retry for about a minute before falling back to
    it); then, unless ``HF_HUB_OFFLINE`` is set or the hub's host does not
    resolve, the weights are downloaded.

    Raises
    ------
    OSError
        If the weights cannot be had: the message names the backbone and the
        remedies (a packaged backbone, a local file, ``weights=None``).
    """
    import timm
    from huggingface_hub import constants

    if not timm.is_model_pretrained(name):
        create_timm_model(name, pretrained=False)  # unknown names fail here, clearly
        raise missing_weights_error(name, "timm has no pretrained weights for it")
    # The cache first: when offline, the hub client would otherwise retry
    # for about a minute before falling back to it.
    try:
        with _cache_only() as offline:
            return create_timm_model(name, pretrained=True, num_classes=0)
    except (OSError, RuntimeError) as exc:
        cache_miss = exc
    if offline:
        raise missing_weights_error(
            name, "they are not in the local cache and HF_HUB_OFFLINE is set"
        ) from cache_miss
    if not _hub_resolvable():
        raise missing_weights_error(
            name,
            "they are not in the local cache and the Hugging Face hub "
            f"({constants.ENDPOINT}) cannot be reached",
        ) from cache_miss
    try:
        return create_timm_model(name, pretrained=True, num_classes=0)
    except (OSError, RuntimeError) as exc:
        raise missing_weights_error(name, f"the download failed ({exc})") from exc


def in_hub_cache(name):
    """Whether timm's pretrained weights of ``name`` are in a local cache.

    Looked up in the Hugging Face hub cache (or timm's file or torch hub
    checkpoint folder), without network.
    """
    from huggingface_hub import try_to_load_from_cache
    from timm.models import get_pretrained_cfg

    try:
        config = get_pretrained_cfg(name)
    except RuntimeError:  # an unknown pretrained tag
        return False
    if config is None:
        return False
    if config.file:
        return Path(config.file).is_file()
    if config.hf_hub_id:
        repo, _, revision = config.hf_hub_id.partition("@")
        filenames = (
            [config.hf_hub_filename]
            if config.hf_hub_filename
            else ["model.safetensors", "pytorch_model.bin"]
        )
        return any(
            isinstance(
                try_to_load_from_cache(repo, filename, revision=revision or None), str
            )
            for filename in filenames
        )
    if config.url:
        checkpoints = Path(torch.hub.get_dir()) / "checkpoints"
        return (checkpoints / Path(urlparse(config.url).path).name).is_file()
    return False
