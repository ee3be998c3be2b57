"""FastFlow: the flow blocks (skanomaly.nn.flows) and the detector."""

import numpy as np
import pytest
import torch
from scipy.ndimage import gaussian_filter
from sklearn.utils._param_validation import InvalidParameterError

import skanomaly
from skanomaly import FastFlow
from skanomaly.nn.flows import (
    ActNorm,
    AffineCoupling,
    FastFlowModule,
    FlowStep,
    LevelFlows,
    LevelLikelihoodMap,
    soft_clamp,
)

SMALL = dict(
    backbone="test_efficientnet",
    weights=None,
    image_size=32,
    strides=(4, 8),
    n_steps=2,
    hidden_ratio=0.5,
    min_steps=30,
    random_state=0,
)


def _perturbed(module, seed=0, scale=0.3):
    """``module`` with every parameter random, so that no block is the identity."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for parameter in module.parameters():
            parameter.copy_(scale * torch.randn(parameter.shape, generator=generator))
    return module


def _textures(n, size=32, seed=0, channels=1):
    """Smooth random textures (uint8): the normal class."""
    rng = np.random.default_rng(seed)
    noise = rng.normal(size=(n, channels, size, size))
    smooth = gaussian_filter(noise, (0, 0, 1.5, 1.5))
    smooth = (smooth - smooth.mean()) / smooth.std()
    return np.clip(128 + 40 * smooth, 0, 255).astype(np.uint8)


# ------------------------------------------------------------------ blocks


def test_soft_clamp_is_bounded_and_linear_near_zero():
    s = torch.tensor([-1e9, -0.01, 0.0, 0.01, 1e9])
    out = soft_clamp(s, 2.0)
    assert out.abs().max() <= 2.0
    np.testing.assert_allclose(out[1:4], 2 / np.pi * s[1:4], atol=1e-6)


@pytest.mark.parametrize("kernel_size", [1, 3])
def test_coupling_and_flow_are_invertible(kernel_size):
    torch.manual_seed(0)
    x = torch.randn(2, 5, 6, 7)
    coupling = _perturbed(AffineCoupling(5, 4, kernel_size, clamp=2.0))
    y, _ = coupling(x)
    assert not torch.allclose(y, x)
    torch.testing.assert_close(coupling.inverse(y), x, atol=1e-5, rtol=0)
    # the whole flow, in float32 (each step rounds) and float64
    flow = _perturbed(FastFlowModule(5, 3, 1.0, 2.0, conv3x3_only=False), scale=0.1)
    flow.set_standardisation(torch.linspace(-1, 1, 5), torch.linspace(0.5, 2, 5))
    z, _ = flow.transform(x)
    assert not torch.allclose(z, x)
    torch.testing.assert_close(flow.inverse(z), x, atol=1e-5, rtol=0)
    flow = _perturbed(flow.double(), scale=0.5)
    x = x.double()
    torch.testing.assert_close(
        flow.inverse(flow.transform(x)[0]), x, atol=1e-10, rtol=0
    )


@pytest.mark.parametrize(
    "block",
    [
        lambda: AffineCoupling(4, 3, 3, clamp=1.5),
        lambda: FlowStep(4, 3, 3, clamp=1.5),
        lambda: ActNorm(4),
    ],
    ids=["coupling", "step", "actnorm"],
)
def test_log_det_is_the_log_det_of_autograd_jacobian(block):
    torch.manual_seed(0)
    module = _perturbed(block(), scale=0.5).double()
    x = torch.randn(1, 4, 3, 3, dtype=torch.float64)

    def flat(v):
        return module(v.view_as(x))[0].reshape(-1)

    jacobian = torch.autograd.functional.jacobian(flat, x.reshape(-1))
    sign, expected = torch.linalg.slogdet(jacobian)
    logdet = module(x)[1]
    assert logdet.shape == (1, 3, 3)  # one term per position
    assert sign != 0  # a permutation may flip it; densities need |det|
    torch.testing.assert_close(logdet.sum(), expected, atol=1e-8, rtol=1e-8)


def test_module_output_is_the_per_position_negative_log_likelihood():
    torch.manual_seed(0)
    flow = _perturbed(FastFlowModule(4, 2, 1.0, 2.0, conv3x3_only=True)).double()
    x = torch.randn(2, 4, 3, 3, dtype=torch.float64)
    z, logdet = flow.transform(x)
    normal = torch.distributions.Normal(0.0, 1.0)
    expected = -(normal.log_prob(z).sum(dim=1) + logdet) / 4
    torch.testing.assert_close(flow(x), expected)


def test_fresh_flow_only_standardises_and_permutes():
    # zero-initialised subnets and identity ActNorm: a stable start
    flow = FastFlowModule(6, 4, 1.0, 2.0, conv3x3_only=False)
    flow.set_standardisation(torch.full((6,), 3.0), torch.full((6,), 2.0))
    x = torch.randn(2, 6, 4, 4)
    z, logdet = flow.transform(x)
    expected = (x - 3.0) / 2.0
    torch.testing.assert_close(z.sort(dim=1).values, expected.sort(dim=1).values)
    assert torch.all(logdet == 0)


def test_level_flows_train_one_flow_per_level_slice():
    flow = LevelFlows([2, 4], 2, 1.0, 2.0, conv3x3_only=False)
    flow.set_standardisation(np.arange(6.0), np.full(6, 2.0))
    assert [f.channels for f in flow.flows] == [2, 4]
    torch.testing.assert_close(flow.flows[1].center.flatten(), torch.arange(2.0, 6.0))
    x = torch.randn(3, 6, 5, 5)
    nll = flow(x)
    assert nll.shape == (3, 2, 5, 5)
    # each level's flow sees only its own channels
    torch.testing.assert_close(nll[:, 0], flow.flows[0](x[:, :2]))
    torch.testing.assert_close(nll[:, 1], flow.flows[1](x[:, 2:]))


def test_level_likelihood_map_averages_likelihoods_not_nll():
    nll = torch.tensor([[[[1.0]], [[1.0]]], [[[1.0]], [[30.0]]], [[[-200.0]], [[0.0]]]])
    out = LevelLikelihoodMap()(nll)
    assert out.shape == (3, 1, 1)
    torch.testing.assert_close(out[0], -torch.exp(torch.tensor([[-1.0]])))
    # one level far off pulls the map up by at most half the likelihood
    torch.testing.assert_close(out[1], -(torch.exp(torch.tensor([[-1.0]])) / 2))
    assert torch.isfinite(out).all()  # no overflow from a very likely position


# ---------------------------------------------------------------- detector


def test_fastflow_localises_a_defect():
    normal = _textures(40)
    good = _textures(6, seed=1)
    bad = good.copy()
    bad[:, :, 8:16, 16:24] = 255
    det = FastFlow(**SMALL).fit(normal)
    maps = det.anomaly_map(bad)
    assert maps.shape == (6, 32, 32) and maps.dtype == np.float32
    peaks = np.unravel_index(maps.reshape(6, -1).argmax(axis=1), (32, 32))
    # on the defect, or within 2 px of it: the likelihood map saturates on a
    # defect this strong, and the smoothing decides where in it the peak is
    assert np.all((peaks[0] >= 6) & (peaks[0] < 18))
    assert np.all((peaks[1] >= 14) & (peaks[1] < 26))
    assert det.score_samples(bad).max() < det.score_samples(good).min()
    # the image score is the smoothed map's maximum (at the backbone's size)
    np.testing.assert_allclose(
        -det.score_samples(bad), maps.max(axis=(1, 2)), rtol=1e-5
    )
    # trained through skorch for the planned steps, calibrated on held-out images
    assert det.calibration_ == "split" and det.calibration_scores_.size == 8
    assert det.n_epochs_ * int(np.ceil(32 / det.batch_size_)) >= 30
    losses = det.net_.history[:, "train_loss"]
    assert losses[-1] < losses[0]


def test_fastflow_separate_levels_and_the_single_flow_layout(tmp_path):
    images = _textures(16)
    det = FastFlow(**SMALL).fit(images)
    levels = det.feature_extractor_.level_channels_
    assert det.flow_level_channels_ == tuple(levels) and len(levels) == 2
    assert det.net_.module_.level_channels == list(levels)
    single = FastFlow(**SMALL, separate_levels=False).fit(images)
    assert single.flow_level_channels_ is None
    assert single.net_.module_.channels == sum(levels)
    assert not np.allclose(single.score_samples(images), det.score_samples(images))
    # a file saved before separate_levels has no flow_level_channels_: it
    # loads as the one flow it was, and scores as before
    del single.flow_level_channels_
    skanomaly.save(single, tmp_path / "old.ska")
    loaded = skanomaly.load(tmp_path / "old.ska")
    np.testing.assert_array_equal(
        loaded.score_samples(images), single.score_samples(images)
    )


def test_fastflow_is_deterministic_under_random_state_on_rgb():
    images = _textures(16, channels=3)
    first = FastFlow(**SMALL).fit(images).score_samples(images)
    again = FastFlow(**SMALL).fit(images).score_samples(images)
    np.testing.assert_array_equal(first, again)
    other = FastFlow(**{**SMALL, "random_state": 1}).fit(images)
    assert not np.array_equal(other.score_samples(images), first)


def test_fastflow_early_stopping_holds_out_images():
    det = FastFlow(**SMALL, early_stopping=True, n_iter_no_change=2).fit(_textures(30))
    assert "valid_loss" in det.net_.history[-1]
    assert det.n_epochs_ >= len(det.net_.history)


def test_fastflow_saves_and_loads_identically(tmp_path):
    images = _textures(12)
    det = FastFlow(**SMALL).fit(images)
    skanomaly.save(det, tmp_path / "flow.ska")
    loaded = skanomaly.load(tmp_path / "flow.ska")
    np.testing.assert_array_equal(
        loaded.score_samples(images), det.score_samples(images)
    )
    np.testing.assert_array_equal(loaded.anomaly_map(images), det.anomaly_map(images))


def test_fastflow_refuses_bad_input_and_parameters():
    images = _textures(8)
    with pytest.raises(ValueError, match="at least 2 channels"):
        FastFlow(**SMALL, n_channels=1, separate_levels=False).fit(images)
    # a channel reduction mixes the levels that separate flows keep apart
    mixed = FastFlow(**SMALL, n_channels=8)
    with pytest.raises(ValueError, match="separate_levels"):
        mixed.fit(images)
    assert not hasattr(mixed, "feature_extractor_")  # nothing half-fitted
    with pytest.raises(ValueError, match="max_memory_bytes"):
        FastFlow(**SMALL, max_memory_bytes=1000).fit(images)
    for bad in ({"n_steps": 0}, {"clamp": 0.0}, {"hidden_ratio": -1.0}):
        with pytest.raises(InvalidParameterError):
            FastFlow(**{**SMALL, **bad}).fit(images)
    with pytest.raises(ValueError, match="images"):
        FastFlow(**SMALL).fit(np.zeros((8, 5)))
    det = FastFlow(**SMALL).fit(images)
    with pytest.raises(ValueError):
        det.score_samples(_textures(2, size=24))


def test_fastflow_tiles_find_a_defect_at_full_resolution(tmp_path):
    params = {**SMALL, "image_size": None, "tile_size": 32, "tile_overlap": 8}
    det = FastFlow(**params).fit(_textures(12, size=64))
    assert det.feature_extractor_.n_tiles_ == 9
    bad = _textures(2, size=64, seed=1)
    bad[:, :, 40:48, 10:18] = 255
    maps = det.anomaly_map(bad)
    assert maps.shape == (2, 64, 64)
    rows, cols = np.unravel_index(maps.reshape(2, -1).argmax(axis=1), (64, 64))
    assert np.all((rows >= 38) & (rows < 50) & (cols >= 8) & (cols < 20))
    skanomaly.save(det, tmp_path / "tiled.ska")
    loaded = skanomaly.load(tmp_path / "tiled.ska")
    np.testing.assert_array_equal(loaded.score_samples(bad), det.score_samples(bad))


def test_fastflow_tiled_onnx_graph_equals_score_samples(tmp_path):
    pytest.importorskip("onnxruntime")
    pytest.importorskip("onnxscript")
    from _export import check_export

    params = {**SMALL, "image_size": None, "tile_size": 32, "tile_overlap": 8}
    det = FastFlow(**params).fit(_textures(12, size=48, channels=3))
    check_export(det, _textures(4, size=48, seed=1, channels=3), tmp_path / "m.onnx")
