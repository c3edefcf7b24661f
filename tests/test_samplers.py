"""Samplers (Algorithm 1, Algorithm 3, Appendix B): supports, distributions, dtype/device."""

import math

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given
from hypothesis import strategies as st

from lyapunov_plugin import (
    HypercubeSampler,
    HypersphereSampler,
    MixtureSampler,
    SamplingContext,
    StratifiedTimeSampler,
    TrajectorySampler,
    UniformTimeSampler,
    appendix_b_half_width,
)

from .problems import DTYPES

SHAPES = st.sampled_from([(3,), (1,), (10,), (2, 3, 3)])


def _ks_uniform(samples: torch.Tensor, lo: float, hi: float) -> float:
    """Kolmogorov-Smirnov distance of ``samples`` to U(lo, hi)."""
    x = torch.sort(samples.flatten().double()).values
    n = x.numel()
    cdf = ((x - lo) / (hi - lo)).clamp(0, 1)
    i = torch.arange(1, n + 1, dtype=torch.float64)
    return float(torch.maximum(i / n - cdf, cdf - (i - 1) / n).max())


@given(st.integers(1, 4), st.integers(1, 16), SHAPES, DTYPES, st.floats(0.1, 20.0), st.booleans())
def test_hypercube_support_shape_dtype(batch, samples, shape, dtype, s, initial):
    eta0 = torch.randn(batch, *shape, dtype=dtype)
    ctx = SamplingContext(eta0=eta0)
    sampler = HypercubeSampler(half_width=s, center="initial" if initial else "origin")
    out = sampler.sample(ctx, samples, generator=torch.Generator().manual_seed(0))
    assert out.shape == (batch, samples, *shape) and out.dtype == dtype and out.device == eta0.device
    center = eta0[:, None] if initial else torch.zeros_like(eta0)[:, None]
    assert bool(((out - center).abs() <= s * (1 + 1e-6)).all())
    assert not out.requires_grad


def test_hypercube_is_uniform_per_coordinate():
    ctx = SamplingContext(eta0=torch.zeros(2, 4, dtype=torch.float64))
    out = HypercubeSampler(half_width=2.0).sample(ctx, 5000, generator=torch.Generator().manual_seed(1))
    assert _ks_uniform(out, -2.0, 2.0) < 1.63 / math.sqrt(out.numel()) * 2


@given(st.integers(1, 3), SHAPES, DTYPES, st.floats(0.1, 50.0))
def test_hypersphere_support(batch, shape, dtype, r):
    eta0 = torch.randn(batch, *shape, dtype=dtype)
    out = HypersphereSampler(radius=r).sample(SamplingContext(eta0=eta0), 64)
    assert out.shape == (batch, 64, *shape) and out.dtype == dtype
    assert bool((out.flatten(2).norm(dim=-1) <= r * (1 + 1e-5)).all())


def test_hypersphere_radius_is_uniform_and_direction_isotropic():
    """Algorithm 3: ||eta|| ~ U(0, r_max) (biased towards the origin), direction uniform."""
    ctx = SamplingContext(eta0=torch.zeros(4, 8, dtype=torch.float64))
    out = HypersphereSampler(radius=3.0).sample(ctx, 4000, generator=torch.Generator().manual_seed(2))
    norms = out.flatten(2).norm(dim=-1)
    assert _ks_uniform(norms, 0.0, 3.0) < 1.63 / math.sqrt(norms.numel())
    directions = F.normalize(out.reshape(-1, 8), dim=-1)
    assert float(directions.mean(0).abs().max()) < 0.05
    # Uniform on the sphere: each squared coordinate has mean 1/k.
    assert abs(float(directions.pow(2).mean()) - 1 / 8) < 0.005


def test_hypersphere_around_hypercube_radius():
    sampler = HypersphereSampler.around_hypercube(2.0, 9)
    assert math.isclose(sampler.radius, 6.0)


def test_trajectory_sampler_draws_rollout_states_and_adds_noise():
    traj = torch.arange(5 * 3 * 2, dtype=torch.float64).reshape(5, 3, 2)
    ctx = SamplingContext(eta0=traj[0], trajectory=traj)
    out = TrajectorySampler(noise_std=0.0).sample(ctx, 200, generator=torch.Generator().manual_seed(0))
    for b in range(3):
        states = {tuple(s.tolist()) for s in traj[:, b]}
        assert all(tuple(s.tolist()) in states for s in out[b])
        assert len({tuple(s.tolist()) for s in out[b]}) == 5  # every time point is used
    noisy = TrajectorySampler(noise_std=0.5).sample(ctx, 4000, generator=torch.Generator().manual_seed(0))
    nearest = torch.stack([(noisy[b][:, None] - traj[:, b][None]).norm(dim=-1).min(-1).values for b in range(3)])
    assert 0.3 < float(nearest.mean()) < 0.8  # mean of a Rayleigh(0.5) norm is 0.63


def test_trajectory_sampler_requires_trajectory():
    with pytest.raises(ValueError, match="TrajectorySampler needs SamplingContext.trajectory"):
        TrajectorySampler().sample(SamplingContext(eta0=torch.zeros(2, 3)), 4)
    assert TrajectorySampler().requires_trajectory


@given(st.lists(st.floats(0.0, 5.0), min_size=1, max_size=4).filter(lambda w: sum(w) > 0), st.integers(1, 50))
def test_mixture_allocation_is_exact_and_proportional(weights, total):
    mix = MixtureSampler(tuple(HypercubeSampler(half_width=1.0) for _ in weights), tuple(weights))
    counts = mix.allocation(total)
    assert sum(counts) == total
    for c, w in zip(counts, weights, strict=False):
        assert abs(c - total * w / sum(weights)) < 1.0 + 1e-9


def test_mixture_concatenates_components():
    traj = torch.full((3, 2, 4), 100.0)
    ctx = SamplingContext(eta0=torch.zeros(2, 4), trajectory=traj)
    mix = MixtureSampler((HypercubeSampler(half_width=1.0), TrajectorySampler()), (3.0, 1.0))
    out = mix.sample(ctx, 8)
    assert out.shape == (2, 8, 4)
    assert bool((out[:, :6].abs() <= 1).all()) and bool((out[:, 6:] == 100).all())
    assert mix.requires_trajectory
    assert not MixtureSampler((HypercubeSampler(half_width=1.0), TrajectorySampler()), (1.0, 0.0)).requires_trajectory


@given(st.integers(1, 4), st.integers(1, 20), DTYPES, st.floats(-2, 2), st.floats(0.1, 3))
def test_time_samplers_support(batch, samples, dtype, start, length):
    like = torch.zeros(1, dtype=dtype)
    for cls in (UniformTimeSampler, StratifiedTimeSampler):
        t = cls(t_start=start, t_end=start + length).sample((batch, samples), like=like)
        assert t.shape == (batch, samples) and t.dtype == dtype
        assert bool((t >= start - 1e-6).all()) and bool((t <= start + length + 1e-6).all())


def test_stratified_times_cover_every_stratum():
    t = StratifiedTimeSampler().sample((3, 10), like=torch.zeros(1, dtype=torch.float64))
    strata = (t * 10).floor()
    assert torch.equal(strata, torch.arange(10, dtype=torch.float64).expand(3, 10))


def test_generator_makes_draws_reproducible():
    ctx = SamplingContext(eta0=torch.zeros(2, 3))
    a = HypersphereSampler(radius=1.0).sample(ctx, 5, generator=torch.Generator().manual_seed(7))
    b = HypersphereSampler(radius=1.0).sample(ctx, 5, generator=torch.Generator().manual_seed(7))
    assert torch.equal(a, b)


@given(st.floats(0.05, 10.0), st.integers(2, 100))
def test_appendix_b_half_width_gives_loss_exp_minus_kappa(kappa, classes):
    s = appendix_b_half_width(kappa, classes)
    corner = torch.full((1, classes), -s, dtype=torch.float64)
    corner[0, 0] = s
    ce = F.cross_entropy(corner, torch.tensor([0]))
    assert math.isclose(float(ce), math.exp(-kappa), rel_tol=1e-9)


class TestValidation:
    def test_half_width(self):
        with pytest.raises(ValueError, match="half_width must be > 0, got 0.0"):
            HypercubeSampler(half_width=0.0)

    def test_center_choices(self):
        with pytest.raises(ValueError, match=r"center must be one of \['origin', 'initial'\], got 'middle'"):
            HypercubeSampler(half_width=1.0, center="middle")

    def test_mixture_weights(self):
        with pytest.raises(ValueError, match="weights must have one entry per sampler"):
            MixtureSampler((HypercubeSampler(half_width=1.0),), (1.0, 2.0))
        with pytest.raises(ValueError, match="weights must not all be zero"):
            MixtureSampler((HypercubeSampler(half_width=1.0),), (0.0,))
        with pytest.raises(TypeError, match="samplers\\[0\\] must be a StateSampler, got str"):
            MixtureSampler(("cube",), (1.0,))

    def test_time_interval(self):
        with pytest.raises(ValueError, match="t_end must be greater than t_start=1.0, got 0.5"):
            UniformTimeSampler(t_start=1.0, t_end=0.5)

    def test_context_shapes(self):
        with pytest.raises(ValueError, match=r"trajectory must have shape \(T, \*eta0.shape\)"):
            SamplingContext(eta0=torch.zeros(2, 3), trajectory=torch.zeros(4, 3, 3))
        with pytest.raises(TypeError, match="eta0 must have a floating-point dtype"):
            SamplingContext(eta0=torch.zeros(2, 3, dtype=torch.long))

    def test_appendix_b_classes(self):
        with pytest.raises(ValueError, match="num_classes must be >= 2, got 1"):
            appendix_b_half_width(1.0, 1)
