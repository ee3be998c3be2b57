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


def check_separates_bar_orientation(detector_class):
    """Fit a small ``detector_class`` on horizontal bars; vertical ones must
    rank as anomalies.

    Both by score (higher ``score_samples`` = more normal) and by the mean
    of the anomaly map (vertical bars are reconstructed worse).
    """
    from sklearn.metrics import roc_auc_score

    normal = bar_images(256, seed=0)
    test = np.concatenate([bar_images(64, seed=1), bar_images(64, True, seed=2)])
    is_anomaly = np.r_[np.zeros(64), np.ones(64)]
    detector = detector_class(
        latent_dim=8,
        base_channels=8,
        lr=5e-4,
        max_epochs=4,
        batch_size=8,
        random_state=0,
    )
    detector.fit(normal)
    scores = detector.score_samples(test)
    assert scores.shape == (128,) and np.all(np.isfinite(scores))
    assert roc_auc_score(is_anomaly, -scores) > 0.9
    maps = detector.anomaly_map(test)
    assert maps.shape == (128, 16, 16)
    assert roc_auc_score(is_anomaly, maps.mean(axis=(1, 2))) > 0.9
