"""Pretrained weights of timm backbones: where they come from, how they are checked.

A backbone's weights come from one of three places (``weights=`` of
:func:`create_model`, and of the detectors and feature stages on backbones).
*Packaged* backbones (:func:`packaged_backbones`: timm's
``tf_efficientnet_lite0/1/2``) read the ImageNet weights that a pip package
installs next to the code, so they work offline on a fresh install (lite0's
package is a dependency of skanomaly, lite1's and lite2's come with ``pip
install 'skanomaly[weights]'``); see :mod:`skanomaly.weights.packaged`. Every
other name reads timm's weights from the Hugging Face hub cache, or downloads
them (:mod:`skanomaly.weights.hub`). A local state dict file is the third
(:func:`load_weights_file`, :mod:`skanomaly.weights.files`).

The torch side, building a frozen backbone and reading its levels, is
:mod:`skanomaly.nn.backbones`.
"""

from .files import load_weights_file
from .packaged import (
    create_packaged_model,
    load_packaged_weights,
    packaged_backbones,
    packaged_weights_path,
)
from .sources import (
    create_model,
    native_input_size,
    offline_architecture,
    weights_available,
)

__all__ = [
    "create_model",
    "create_packaged_model",
    "load_packaged_weights",
    "load_weights_file",
    "native_input_size",
    "offline_architecture",
    "packaged_backbones",
    "packaged_weights_path",
    "weights_available",
]
