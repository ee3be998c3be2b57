"""Torch building blocks, kept apart from the scikit-learn layer."""

from .dcgan import ConvDecoder, ConvEncoder, dcgan_init, downsampling_plan
from .mlp import MLP

__all__ = ["MLP", "ConvDecoder", "ConvEncoder", "dcgan_init", "downsampling_plan"]
