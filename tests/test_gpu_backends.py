"""The renderer backends built on CUDA code against the torch reference, through
``featgs.render.render``: gsplat and our ``cuda`` kernels on a GPU (skipped without one), and
the same kernels emulated on the CPU (``cuda-emulated``, always run where a C++ compiler is),
so the very same tests check our kernel source on every machine; plus the errors on machines
without a GPU. Kernel-level checks (top-K, every K, dtypes, gradients of the 2D inputs) are in
tests/test_emulated_kernels.py."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest
import torch

from featgs.errors import FeatgsError
from featgs.gaussians.random import orbit_camera, random_gaussians
from featgs.render import cuda_backend, render
from featgs.render.emulated_backend import compiler

CUDA = torch.cuda.is_available()
needs_cuda = pytest.mark.skipif(not CUDA, reason="needs a CUDA GPU")
needs_cxx = pytest.mark.skipif(compiler() is None, reason="needs a C++ compiler")
GSPLAT = pytest.param("gsplat", marks=needs_cuda)
OURS = pytest.param("cuda", marks=needs_cuda)
EMULATED = pytest.param("cuda-emulated", marks=needs_cxx)


def _device(backend: str) -> str:
    return "cpu" if backend == "cuda-emulated" else "cuda"


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


def test_emulated_backend_refuses_what_it_cannot_do(monkeypatch):
    from featgs.render import emulated_backend

    g = random_gaussians(10)
    with pytest.raises(FeatgsError, match="at most 32"):
        render(g, orbit_camera(8, 8), backend="cuda-emulated", top_k=33)
    monkeypatch.setattr(emulated_backend, "_extension", None)
    monkeypatch.setenv("CXX", "no-such-compiler-here")
    with pytest.raises(FeatgsError, match="C\\+\\+ compiler"):
        render(g, orbit_camera(8, 8), backend="cuda-emulated")


@pytest.fixture
def poisoned(monkeypatch):
    """Outputs filled with NaN before the kernels run (and, on a GPU, freed memory too), so that
    reads of unwritten elements show up."""
    monkeypatch.setattr(cuda_backend, "POISON", True)

    def poison():
        if CUDA:
            x = torch.full((64 << 20,), float("nan"), device="cuda")
            del x

    return poison


def _sparse_scene(seed: int, d: int, device: str):
    # Few, small Gaussians: every pixel has far fewer than 32 contributors, so the top-K
    # feature gather must equal the full blend.
    return random_gaussians(300, feature_dim=d, sh_degree=1, seed=seed, scale_range=(0.01, 0.04),
                            opacity_range=(0.2, 0.9), device=device)


def _rel(a, b):
    a, b = a.detach().cpu().double(), b.detach().cpu().double()
    return float((a - b).abs().max() / b.abs().max().clamp_min(1e-12))


@pytest.mark.parametrize("backend", [GSPLAT, OURS, EMULATED])
@pytest.mark.parametrize("width,height,d", [(37, 29, 3), (100, 75, 64), (257, 130, 130)])
def test_outputs_match_the_reference(backend, width, height, d, poisoned):
    g = _sparse_scene(1, d, _device(backend))
    cam = orbit_camera(width, height, distance=2.5)
    ref = render(g, cam, backend="torch", top_k=8)
    poisoned()
    out = render(g, cam, backend=backend, top_k=8)
    for name in ("rgb", "alpha", "depth", "features"):
        assert _rel(getattr(out, name), getattr(ref, name)) < 1e-4, name
    assert _rel(out.topk_weights, ref.topk_weights) < 1e-4
    same = (out.topk_ids == ref.topk_ids) | (out.topk_weights - ref.topk_weights).abs().lt(1e-6)
    assert same.float().mean() > 0.999


@pytest.mark.parametrize("backend", [GSPLAT, OURS, EMULATED])
def test_gradients_match_the_reference(backend, poisoned):
    dev = _device(backend)
    g = _sparse_scene(2, 16, dev)
    cam = orbit_camera(61, 47, distance=2.5)
    gen = torch.Generator(device=dev).manual_seed(0)
    probes = {k: torch.randn(47, 61, c, device=dev, generator=gen) for k, c in (("rgb", 3), ("depth", 1), ("features", 16))}
    grads = {}
    for b in ("torch", backend):
        p = g.map(lambda t: t.detach().clone().requires_grad_(True))
        poisoned()
        out = render(p, cam, backend=b, background=(0.2, 0.3, 0.4))
        sum((getattr(out, k) * v).sum() for k, v in probes.items()).backward()
        grads[b] = {n: getattr(p, n).grad for n in ("means", "scales", "quats", "opacities", "sh0", "shN", "features")}
        if backend != "gsplat":  # gsplat's means2d keeps no grad unless asked
            grads[b]["means2d"] = out.info["means2d"].grad
    for n, ref in grads["torch"].items():
        assert _rel(grads[backend][n], ref) < 1e-3, n


@pytest.mark.parametrize("backend", [OURS, EMULATED])
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_our_kernels_gather_low_precision_features(backend, dtype, poisoned):
    g = _sparse_scene(3, 256, _device(backend))
    cam = orbit_camera(64, 48)
    ref = render(g, cam, backend=backend).features
    low = render(g.with_features(g.features.to(dtype)), cam, backend=backend).features
    assert low.dtype == dtype
    tol = 1e-2 if dtype == torch.float16 else 3e-2
    assert _rel(low.float(), ref) < tol


@pytest.mark.slow
@pytest.mark.skipif(shutil.which("nvcc") is None, reason="nvcc not installed")
def test_kernels_compile_with_torchs_nvcc_flags(tmp_path):
    """What torch.utils.cpp_extension.load passes nvcc on a GPU machine: it defines
    __CUDA_NO_HALF_CONVERSIONS__ and friends, so half/bfloat16 must convert explicitly."""
    from torch.utils.cpp_extension import COMMON_NVCC_FLAGS

    src = Path(cuda_backend.cuda_sources()) / "topk_raster.cu"
    cmd = ["nvcc", "-std=c++20", "-O3", "-arch=sm_90", *COMMON_NVCC_FLAGS, "-c", str(src), "-o", str(tmp_path / "k.o")]
    res = subprocess.run(cmd, capture_output=True, text=True)
    assert res.returncode == 0, res.stderr[-3000:]
