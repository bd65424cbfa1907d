"""The CUDA backends against the torch reference (skipped without a GPU), and their errors
on machines without one (always run)."""

from __future__ import annotations

import pytest
import torch

from featgs.errors import FeatgsError
from featgs.gaussians.random import orbit_camera, random_gaussians
from featgs.render import render

CUDA = torch.cuda.is_available()
needs_cuda = pytest.mark.skipif(not CUDA, reason="needs a CUDA GPU")


@pytest.mark.skipif(CUDA, reason="checks the CPU-only error")
@pytest.mark.parametrize("backend", ["gsplat", "cuda"])
def test_gpu_backends_refuse_cleanly_without_cuda(backend):
    g = random_gaussians(10)
    with pytest.raises(FeatgsError, match="torch"):
        render(g, orbit_camera(8, 8), backend=backend)


@pytest.mark.skipif(CUDA, reason="checks the CPU-only error")
def test_cuda_extension_is_never_built_without_cuda():
    from featgs.render.cuda_backend import load_extension

    with pytest.raises(FeatgsError, match="CUDA GPU"):
        load_extension()


def _poison():
    """Fill freed GPU memory with NaN so that reads of unwritten outputs show up."""
    x = torch.full((64 << 20,), float("nan"), device="cuda")
    del x


def _sparse_scene(seed: int, d: int):
    # Few, small Gaussians: every pixel has far fewer than 32 contributors, so the top-K
    # feature gather must equal the full blend.
    return random_gaussians(300, feature_dim=d, sh_degree=1, seed=seed, scale_range=(0.01, 0.04),
                            opacity_range=(0.2, 0.9), device="cuda")


def _rel(a, b):
    return float((a - b).abs().max() / b.abs().max().clamp_min(1e-12))


@needs_cuda
@pytest.mark.parametrize("backend", ["gsplat", "cuda"])
@pytest.mark.parametrize("width,height,d", [(37, 29, 3), (100, 75, 64), (257, 130, 130)])
def test_outputs_match_the_reference(backend, width, height, d):
    g = _sparse_scene(1, d)
    cam = orbit_camera(width, height, distance=2.5)
    ref = render(g, cam, backend="torch", top_k=8)
    _poison()
    out = render(g, cam, backend=backend, top_k=8)
    for name in ("rgb", "alpha", "depth", "features"):
        assert _rel(getattr(out, name), getattr(ref, name)) < 1e-4, name
    assert _rel(out.topk_weights, ref.topk_weights) < 1e-4
    same = (out.topk_ids == ref.topk_ids) | (out.topk_weights - ref.topk_weights).abs().lt(1e-6)
    assert same.float().mean() > 0.999


@needs_cuda
@pytest.mark.parametrize("backend", ["gsplat", "cuda"])
def test_gradients_match_the_reference(backend):
    g = _sparse_scene(2, 16)
    cam = orbit_camera(61, 47, distance=2.5)
    gen = torch.Generator(device="cuda").manual_seed(0)
    probes = {k: torch.randn(47, 61, c, device="cuda", generator=gen) for k, c in (("rgb", 3), ("depth", 1), ("features", 16))}
    grads = {}
    for b in ("torch", backend):
        p = g.map(lambda t: t.detach().clone().requires_grad_(True))
        _poison()
        out = render(p, cam, backend=b)
        sum((getattr(out, k) * v).sum() for k, v in probes.items()).backward()
        grads[b] = {n: getattr(p, n).grad for n in ("means", "scales", "quats", "opacities", "sh0", "shN", "features")}
    for n, ref in grads["torch"].items():
        assert _rel(grads[backend][n], ref) < 1e-3, n


@needs_cuda
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_cuda_backend_gathers_low_precision_features(dtype):
    g = _sparse_scene(3, 256)
    cam = orbit_camera(64, 48)
    ref = render(g, cam, backend="cuda").features
    low = render(g.with_features(g.features.to(dtype)), cam, backend="cuda").features.float()
    tol = 1e-2 if dtype == torch.float16 else 3e-2
    assert _rel(low, ref) < tol
