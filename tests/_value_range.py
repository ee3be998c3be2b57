"""Shared by the value-range tests: the same digit pixels in four input types."""

import numpy as np

# The same 0..255 pixels as each input type a user may have: uint8 (read as
# value / 255), int64 (np.array of a list) and float32 0..255 (read as their
# values), and float32 divided by 255.
AS = {
    "uint8": lambda pixels: pixels.astype(np.uint8),
    "int64": lambda pixels: pixels.astype(np.int64),
    "float32_255": lambda pixels: pixels.astype(np.float32),
    "float32_unit": lambda pixels: (pixels / 255).astype(np.float32),
}


def digit_pixels():
    """(train, test): 0..255 float64 digit images, (n, 1, 8, 8).

    Training: 60 zeros; test: 20 other zeros and 20 other digits.
    """
    from sklearn.datasets import load_digits

    images, digit = load_digits(return_X_y=True)
    pixels = np.rint(images.reshape(-1, 1, 8, 8) * (255 / 16))
    zeros, others = pixels[digit == 0], pixels[digit != 0]
    return zeros[:60], np.concatenate([zeros[60:80], others[:20]])
