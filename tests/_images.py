"""Small synthetic image sets shared by the detector tests."""

import numpy as np


def uniform_images(n=40, shape=(1, 8, 8), seed=0):
    """``n`` images of uniform noise in [0, 1), float32."""
    return np.random.default_rng(seed).random((n, *shape), dtype=np.float32)


def bar_images(n, vertical=False, size=16, seed=0):
    """Noisy images with a central bar of random brightness.

    Horizontal bars are the normal class, vertical ones the anomalies.
    """
    rng = np.random.default_rng(seed)
    images = rng.uniform(0, 0.2, size=(n, 1, size, size)).astype(np.float32)
    brightness = rng.uniform(0.6, 1.0, size=n)
    bar = slice(size // 2 - 2, size // 2 + 2)
    for image, value in zip(images, brightness):
        if vertical:
            image[0, :, bar] = value
        else:
            image[0, bar, :] = value
    return images
