"""``skanomaly score --maps``: anomaly maps as 16-bit grayscale PNG files."""

import os
import sys
from pathlib import Path

from .outputs import _atomic_file, _escaped

# Maps are 16-bit grayscale PNGs: 0 .. 65535 spans 0 .. the largest map value
# of the run, which each file records in its 'skanomaly_map_max' text chunk.
_MAP_LEVELS = 65535


def _map_paths(files, data, folder):
    """One PNG per input, named after it; subfolders of a data folder mirrored."""
    data, folder = Path(data), Path(folder)
    paths = []
    for i, name in enumerate(files):
        if data.is_dir():
            relative = os.path.relpath(os.path.abspath(name), os.path.abspath(data))
            paths.append(folder / Path(relative).with_suffix(".png"))
        else:  # rows of a .npy file
            paths.append(folder / f"{data.stem}_{i:05d}.png")
    return paths


def _check_maps_folder(detector, folder, files):
    from ...detectors.base import get_detector_tags

    if getattr(detector, "image_shape_", None) is None:
        raise ValueError(
            f"--maps needs a model fitted on images; this {type(detector).__name__} "
            "was fitted on tabular rows, which have no maps."
        )
    if not get_detector_tags(detector).anomaly_maps:
        raise ValueError(
            f"{type(detector).__name__} has no anomaly maps; --maps needs a detector "
            "that makes them (e.g. padim, patchcore, autoencoder)."
        )
    if Path(folder).exists() and not Path(folder).is_dir():
        raise ValueError(f"--maps {str(folder)!r} exists and is not a folder.")


def _write_maps(detector, X, files, data, folder):
    """Write ``detector.anomaly_map`` of each input as a 16-bit PNG."""
    import numpy as np
    from PIL import Image
    from PIL.PngImagePlugin import PngInfo

    paths = _map_paths(files, data, folder)  # checked by outputs._check_outputs
    maps = np.concatenate(
        [
            detector.anomaly_map(X[start : start + 256])
            for start in range(0, len(X), 256)
        ]
    )
    top = float(maps.max()) if maps.size else 0.0
    scale = _MAP_LEVELS / top if top > 0 else 0.0
    info = PngInfo()
    info.add_text("skanomaly_map_max", repr(top))
    for path, image in zip(paths, maps):
        path.parent.mkdir(parents=True, exist_ok=True)
        levels = np.clip(np.round(image * scale), 0, _MAP_LEVELS).astype(np.uint16)
        with _atomic_file(path, "wb") as file:
            Image.fromarray(levels).save(file, format="PNG", pnginfo=info)
    print(
        f"Wrote {len(paths)} anomaly maps to {_escaped(folder)} (16-bit PNG; 65535 = "
        f"{top:.6g}, the largest value).",
        file=sys.stderr,
    )
