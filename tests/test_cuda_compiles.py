"""Our CUDA sources compile (nvcc for sm_90, and the torch glue with the host compiler) even
on machines without a GPU, so a broken kernel is caught before a GPU session."""

from __future__ import annotations

import shutil
import subprocess
import sys
import sysconfig
from pathlib import Path

import pytest

CUDA_DIR = Path(__file__).resolve().parents[1] / "cuda"
NVCC = shutil.which("nvcc")


def _cuda_include() -> Path:
    # nvcc may be a wrapper outside the toolkit: look for the headers where toolkits live.
    candidates = [Path(NVCC).resolve().parents[1] / "include", Path("/usr/local/cuda/include")]
    candidates += sorted(Path("/usr/local").glob("cuda-*/include"), reverse=True)
    for c in candidates:
        if (c / "cuda_bf16.h").exists():
            return c
    pytest.skip("CUDA headers not found next to nvcc")


@pytest.mark.slow
@pytest.mark.skipif(NVCC is None, reason="nvcc not installed")
def test_kernels_compile_for_sm90(tmp_path):
    cmd = [NVCC, "-std=c++17", "-O3", "-arch=sm_90", "-Xptxas", "-v", "-c", str(CUDA_DIR / "topk_raster.cu"),
           "-o", str(tmp_path / "k.o")]
    res = subprocess.run(cmd, capture_output=True, text=True)
    assert res.returncode == 0, res.stderr[-3000:]
    for kernel in ("topk_raster_fwd_kernel", "topk_raster_bwd_kernel", "feature_gather_fwd_kernel", "feature_gather_bwd_kernel"):
        assert kernel in res.stderr, kernel  # ptxas reports every kernel it compiled


@pytest.mark.slow
@pytest.mark.skipif(NVCC is None or shutil.which("g++") is None, reason="nvcc or g++ not installed")
def test_torch_bindings_compile(tmp_path):
    from torch.utils.cpp_extension import include_paths

    # torch's headers need the standard torch itself was built with (torch 2.14: C++20).
    cmd = ["g++", "-std=c++20", "-O0", "-fsyntax-only", str(CUDA_DIR / "bindings.cpp"),
           f"-I{_cuda_include()}", f"-I{sysconfig.get_paths()['include']}", "-DTORCH_EXTENSION_NAME=featgs_cuda"]
    cmd += [f"-I{p}" for p in include_paths()]
    res = subprocess.run(cmd, capture_output=True, text=True)
    assert res.returncode == 0, res.stderr[-3000:]


def test_sources_are_where_the_backend_looks():
    from featgs.render.cuda_backend import cuda_sources

    assert cuda_sources() == CUDA_DIR
    assert sys.modules.get("featgs_cuda") is None  # importing featgs never builds the extension
