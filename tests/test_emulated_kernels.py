"""Our CUDA kernels (cuda/) against the torch reference, on every machine.

``cuda-emulated`` is the very kernel source compiled for the CPU through cuda/emulation.h
(CUDA threads as fibers, real barriers, warp collectives, atomics); ``cuda`` is the nvcc build
on a GPU and runs the same tests where one is present. Kernel-level tests feed both the
kernels and the reference the same projected Gaussians (float32 values; the reference computes
in float64) and compare:

- forward (rgb + depth, transmittance, gathered features) to 1e-5 of the largest value,
  top-K ids identical wherever two weights are not tied within 1e-5 (relative), weights to 1e-5;
- gradients of means2d, conics, colours, opacities and features to 1e-4 relative;
- every output buffer filled with NaN beforehand (cuda_backend.POISON), so a pixel or slot a
  kernel does not write shows.

The reference is the torch renderer's compositing (featgs.render.blend, on its own 8x8 tiling)
and, for gradients through truncated top-K lists (which the torch renderer does not
differentiate), a dense float64 autograd transcription of the same rules.
"""

from __future__ import annotations

import ctypes
import math

import pytest
import torch

from featgs.gaussians.random import orbit_camera, random_gaussians
from featgs.render import cuda_backend
from featgs.render.blend import BlendSettings, blend, pair_coefficients
from featgs.render.cuda_backend import K_CHOICES, TILE_SIZE, gather, rasterize
from featgs.render.emulated_backend import compiler
from featgs.render.projection import project
from featgs.render.sh import sh_to_rgb
from featgs.render.tiles import bin_gaussians, tile_origins, tiles_to_image

CUDA = torch.cuda.is_available()
BACKENDS = [
    pytest.param("cuda-emulated", marks=pytest.mark.skipif(compiler() is None, reason="needs a C++ compiler")),
    pytest.param("cuda", marks=pytest.mark.skipif(not CUDA, reason="needs a CUDA GPU")),
]
F64 = torch.float64


@pytest.fixture(autouse=True)
def poisoned_outputs(monkeypatch):
    monkeypatch.setattr(cuda_backend, "POISON", True)


def _extension(backend):
    if backend == "cuda-emulated":
        from featgs.render.emulated_backend import load_emulated_extension

        return load_emulated_extension(), torch.device("cpu")
    return cuda_backend.load_extension(), torch.device("cuda")


def _rel(a, b) -> float:
    a, b = a.detach().cpu().double(), b.detach().cpu().double()
    return float((a - b).abs().max() / b.abs().max().clamp_min(1e-12)) if b.numel() else 0.0


# --------------------------------------------------------------------------------------------
# Scenes: projected Gaussians (float32), the inputs of both the kernels and the reference.

def _scene(kind: str, seed: int, d: int, width: int, height: int, dtype=torch.float32):
    cam = orbit_camera(width, height, distance=2.5, azimuth_deg=17.0 * seed)
    if kind == "sparse":  # few small Gaussians: every pixel has far fewer than 32 contributors
        g = random_gaussians(150, feature_dim=d, sh_degree=1, seed=seed, scale_range=(0.01, 0.04),
                             opacity_range=(0.2, 0.9))
    elif kind == "dense":  # overlapping: lists longer than K, so the top-K truncates
        g = random_gaussians(160, feature_dim=d, sh_degree=1, seed=seed, scale_range=(0.04, 0.12),
                             opacity_range=(0.2, 0.8))
    elif kind == "crowded":  # many faint Gaussians: more than 32 contributors per pixel
        g = random_gaussians(400, feature_dim=d, seed=seed, radius=0.6, scale_range=(0.05, 0.15),
                             opacity_range=(0.05, 0.25))
    elif kind == "saturating":  # opaque and large: pixels stop before their lists end
        g = random_gaussians(500, feature_dim=d, seed=seed, scale_range=(0.08, 0.2), opacity_range=(0.9, 0.99))
    elif kind == "corner":  # a small cluster in one corner: most tiles are empty
        g = random_gaussians(60, feature_dim=d, seed=seed, radius=0.12, scale_range=(0.005, 0.02))
        g.means = g.means + torch.tensor([-0.75, 0.0, 0.45], dtype=g.means.dtype)
    elif kind == "offscreen":  # close and narrow: many Gaussians culled or straddling the border
        cam = orbit_camera(width, height, distance=1.2, fov_deg=35.0, azimuth_deg=30.0)
        g = random_gaussians(250, feature_dim=d, seed=seed, scale_range=(0.01, 0.06))
    else:
        raise ValueError(kind)
    proj = project(g.means, g.quats, g.scales, g.opacities, cam)
    vis = proj.visible
    rgb = sh_to_rgb(g.sh_degree, g.sh0[vis], g.shN[vis], g.means[vis] - cam.center.float())
    m2 = proj.means2d[vis].detach()
    outside = ((m2 < 0) | (m2 > torch.tensor([width, height]))).any(-1)
    return {
        "means2d": proj.means2d[vis].detach().float(),
        "conics": proj.conics[vis].detach().float(),
        "colors": torch.cat([rgb, proj.depths[vis, None]], -1).detach().float(),
        "opacities": proj.opacities[vis].detach().float(),
        "features": g.features[vis].detach().to(dtype),
        "extents": proj.extents[vis].detach(),
        "depths": proj.depths[vis].detach(),
        "n_offscreen": int(outside.sum()),  # drawn, centre off the image
    }


def _plan(s, width, height, tile):
    return bin_gaussians(s["means2d"], s["extents"], s["depths"], width, height, tile)


def _kernels(backend, s, width, height, K, *, features=True, grad=False):
    """Our kernels on scene ``s``: (outputs, leaves). Leaves are on the backend's device."""
    ext, dev = _extension(backend)
    plan = _plan(s, width, height, TILE_SIZE)
    names = ["means2d", "conics", "colors", "opacities"] + (["features"] if features else [])
    leaves = {n: s[n].detach().to(dev).clone().requires_grad_(grad) for n in names}
    out = rasterize(ext, leaves["means2d"], leaves["conics"], leaves["colors"], leaves["opacities"],
                    leaves.get("features"), plan.tile_start.int().to(dev), plan.pair_gauss.int().to(dev),
                    width, height, K)
    return dict(zip(("acc", "T", "top_w", "top_id", "features"), out)), leaves, plan


def _torch_reference(s, width, height, K, *, grad=False):
    """The torch renderer's compositing (8x8 tiles) in float64, features fully blended."""
    plan = _plan(s, width, height, 8)
    leaves = {n: s[n].detach().to(F64).requires_grad_(grad)
              for n in ("means2d", "conics", "colors", "opacities", "features")}
    q = pair_coefficients(leaves["means2d"], leaves["conics"], leaves["opacities"], plan,
                          tile_origins(plan, F64, torch.device("cpu")))
    colors = torch.cat([leaves["colors"], leaves["features"]], -1)
    acc, t, top_w, top_id = blend(q, colors, plan, BlendSettings(), top_k=K + 1)
    flat = lambda x: tiles_to_image(x, plan, width, height).reshape(width * height, -1)  # noqa: E731
    acc, T = flat(acc), flat(t[..., None])[:, 0]
    top_w, top_id = flat(top_w), flat(top_id)
    F = leaves["features"].detach()
    gathered = (top_w[:, :K, None] * F[top_id[:, :K].clamp_min(0)] * (top_id[:, :K, None] >= 0)).sum(1)
    return {"acc": acc[:, :4], "T": T, "full_features": acc[:, 4:], "top_w": top_w, "top_id": top_id,
            "features": gathered}, leaves


def _dense_reference(s, width, height, K):
    """The kernels' rules written densely with float64 autograd: every Gaussian at every pixel,
    differentiable through the top-K weights too."""
    order = torch.argsort(s["depths"])
    leaves = {n: s[n].detach().to(F64).requires_grad_(True)
              for n in ("means2d", "conics", "colors", "opacities", "features")}
    m2, con, col, op, F = (leaves[n][order] for n in ("means2d", "conics", "colors", "opacities", "features"))
    ys, xs = torch.meshgrid(torch.arange(height, dtype=F64) + 0.5, torch.arange(width, dtype=F64) + 0.5, indexing="ij")
    pix = torch.stack([xs, ys], -1).reshape(-1, 2)
    d = m2[:, None, :] - pix[None]
    a, b, c = (x[:, None] for x in con.unbind(-1))
    sigma = 0.5 * (a * d[..., 0] ** 2 + c * d[..., 1] ** 2) + b * d[..., 0] * d[..., 1]
    alpha = torch.clamp(op[:, None] * torch.exp(-sigma), max=0.999)
    valid = (sigma >= 0) & (alpha >= 1.0 / 255.0)
    alpha = torch.where(valid, alpha, torch.zeros_like(alpha))
    with torch.no_grad():
        keep = valid & (torch.cumprod(1.0 - alpha, 0) > 1e-4)  # a prefix: T only falls
    alpha = torch.where(keep, alpha, torch.zeros_like(alpha))
    t_incl = torch.cumprod(1.0 - alpha, 0)
    w = alpha * torch.cat([torch.ones_like(t_incl[:1]), t_incl[:-1]])  # [M, P]
    acc = w.T @ col
    vals, idx = w.T.topk(K + 1, dim=1)  # one more, to tell ties at the list's end
    feats = (vals[:, :K, None] * F[idx[:, :K]]).sum(1)
    ids = torch.where(vals > 0, order[idx], torch.full_like(idx, -1))
    return {"acc": acc, "T": t_incl[-1], "top_w": vals, "top_id": ids, "features": feats}, leaves


def _check_topk(out, ref, K):
    """Weights to 1e-5; ids identical except where the reference's neighbouring weights (the
    (K+1)-th included) are within 1e-5 of each other (relative), where float32 may order them
    either way."""
    w, ids = out["top_w"].cpu(), out["top_id"].cpu().long()
    rw, rid = ref["top_w"].detach(), ref["top_id"]  # K + 1 entries
    assert rw.shape[1] == K + 1
    assert _rel(w, rw[:, :K]) < 1e-5
    above = torch.cat([torch.full_like(rw[:, :1], math.inf), rw[:, :K - 1]], 1) - rw[:, :K]
    below = rw[:, :K] - rw[:, 1:]
    tie = (torch.minimum(above, below) < 1e-5 * rw[:, :K]) & (rw[:, :K] > 0)
    assert ((ids == rid[:, :K]) | tie).all(), f"{int(((ids != rid[:, :K]) & ~tie).sum())} top-K ids differ"
    assert tie.sum() <= 0.01 * (rw[:, :K] > 0).sum()


def _check_written(out):
    for name, t in out.items():
        if t is None:
            continue
        if t.is_floating_point():
            assert torch.isfinite(t).all(), f"{name}: elements the kernels did not write (NaN poison)"
        else:
            assert (t >= -1).all(), f"{name}: elements the kernels did not write (poison)"


FORWARD_CASES = {
    # name: (width, height, K, D, feature dtype, scene)
    "odd-k1": (37, 29, 1, 3, torch.float32, "sparse"),
    "k4-fp16": (33, 47, 4, 16, torch.float16, "dense"),
    "k8-bf16": (50, 31, 8, 64, torch.bfloat16, "dense"),
    "k16-d130": (45, 23, 16, 130, torch.float32, "dense"),
    "k32-d512": (21, 19, 32, 512, torch.float32, "crowded"),
    "terminating": (40, 30, 32, 8, torch.float32, "saturating"),
    "empty-tiles": (70, 52, 8, 4, torch.float32, "corner"),
    "off-screen": (47, 35, 16, 16, torch.float32, "offscreen"),
}
FEATURE_TOL = {torch.float32: 1e-5, torch.float16: 1e-3, torch.bfloat16: 8e-3}  # the output dtype's rounding


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("case", list(FORWARD_CASES))
def test_forward_matches_the_reference(backend, case):
    W, H, K, D, dtype, kind = FORWARD_CASES[case]
    s = _scene(kind, seed=len(case), d=D, width=W, height=H, dtype=dtype)
    out, _, plan = _kernels(backend, s, W, H, K)
    ref, _ = _torch_reference(s, W, H, K)
    _check_written(out)
    assert _rel(out["acc"], ref["acc"]) < 1e-5  # rgb + depth
    assert _rel(out["T"], ref["T"]) < 1e-5
    _check_topk(out, ref, K)
    assert out["features"].dtype == dtype
    assert _rel(out["features"], ref["features"]) < FEATURE_TOL[dtype]
    # where a pixel has at most K contributors, its top-K gather is the full blend
    whole = ref["top_w"][:, K] == 0
    assert _rel(out["features"][whole.to(out["features"].device)], ref["full_features"][whole]) < FEATURE_TOL[dtype]
    # the scene is what the case says
    if kind in ("dense", "crowded"):
        assert (~whole).any()  # lists truncated
    if kind == "saturating":
        assert (ref["T"] < 1e-3).float().mean() > 0.2  # many pixels stopped
    if kind == "corner":
        assert (plan.tile_count == 0).float().mean() > 0.5 and (plan.tile_count > 0).any()
    if kind == "offscreen":
        assert s["n_offscreen"] > 0


@pytest.mark.parametrize("backend", BACKENDS)
def test_gradients_match_the_torch_reference(backend):
    """Sparse scene, K = 32: the gathered features are the full blend, so the torch renderer's
    hand-written backward is the reference for every input."""
    W, H = 31, 27
    s = _scene("sparse", seed=5, d=24, width=W, height=H)
    out, leaves, _ = _kernels(backend, s, W, H, 32, grad=True)
    ref, ref_leaves = _torch_reference(s, W, H, 32, grad=True)
    assert int((ref["top_w"] > 0).sum(1).max()) <= 32
    gen = torch.Generator().manual_seed(0)
    pa, pt, pf = (torch.randn(W * H, c, generator=gen, dtype=F64) for c in (4, 1, 24))
    loss = (out["acc"].cpu() * pa).sum() + (out["T"].cpu() * pt[:, 0]).sum() + (out["features"].cpu() * pf).sum()
    loss.backward()
    ((ref["acc"] * pa).sum() + (ref["T"] * pt[:, 0]).sum() + (ref["full_features"] * pf).sum()).backward()
    for name in ("means2d", "conics", "colors", "opacities", "features"):
        assert _rel(leaves[name].grad, ref_leaves[name].grad) < 1e-4, name


GRADIENT_CASES = {
    # K: (width, height, scene); crowded and saturating tiles list more than one block
    # (256) of Gaussians, so the backward walks several batches, and saturating pixels stop.
    1: (26, 22, "dense"),
    4: (21, 19, "crowded"),
    8: (23, 17, "saturating"),
    16: (26, 22, "dense"),
    32: (21, 19, "crowded"),
}


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("K", K_CHOICES)
def test_topk_gradients_match_the_dense_reference(backend, K):
    """Lists longer than K: gradients through the truncated top-K weights and the gathered
    features, with a loss on every output, top_w included."""
    W, H, kind = GRADIENT_CASES[K]
    D = 40
    s = _scene(kind, seed=K, d=D, width=W, height=H)
    out, leaves, _ = _kernels(backend, s, W, H, K, grad=True)
    ref, ref_leaves = _dense_reference(s, W, H, K)
    assert _rel(out["acc"], ref["acc"]) < 1e-5 and _rel(out["features"], ref["features"]) < 1e-5
    _check_topk(out, ref, K)
    gen = torch.Generator().manual_seed(K)
    probes = [torch.randn(W * H, c, generator=gen, dtype=F64) for c in (4, 1, K, D)]
    for o, l in ((out, leaves), (ref, ref_leaves)):
        outs = [o["acc"], o["T"][:, None], o["top_w"][:, :K], o["features"]]
        sum((x.cpu().double() * p).sum() for x, p in zip(outs, probes)).backward()
    for name in ("means2d", "conics", "colors", "opacities", "features"):
        assert _rel(leaves[name].grad, ref_leaves[name].grad) < 1e-4, name


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
@pytest.mark.parametrize("K,D", [(1, 3), (4, 512), (8, 33), (16, 64), (32, 130)])
def test_gather_kernels(backend, dtype, K, D):
    """The gather and its transpose alone: 333 pixels (not a multiple of a warp or block), ids
    from 40 Gaussians so that a warp's pixels share many, lists ending in -1 at random."""
    ext, dev = _extension(backend)
    gen = torch.Generator().manual_seed(K * 1000 + D)
    P, N = 333, 40
    ids = torch.argsort(torch.rand(P, N, generator=gen), 1)[:, :K].int()
    w = torch.sort(torch.rand(P, K, generator=gen), 1, descending=True).values
    length = torch.randint(0, K + 1, (P, 1), generator=gen)
    empty = torch.arange(K)[None] >= length
    ids[empty], w[empty] = -1, 0.0
    F = torch.randn(N, D, generator=gen).to(dtype)
    g_out = torch.randn(P, D, generator=gen).to(dtype)
    g_w_in = torch.randn(P, K, generator=gen)
    w_leaf = w.to(dev).requires_grad_(True)
    F_leaf = F.to(dev).requires_grad_(True)
    out = gather(ext, w_leaf, ids.to(dev), F_leaf)
    assert torch.isfinite(out.float()).all()
    ref = (w[..., None].double() * F.double()[ids.long().clamp_min(0)]).sum(1)
    assert out.dtype == dtype and _rel(out, ref) < FEATURE_TOL[dtype]
    gF, gw = ext.gather_backward(w.to(dev), ids.to(dev), F.to(dev), g_out.to(dev), g_w_in.to(dev), True,
                                 0 if dev.type == "cpu" else torch.cuda.current_stream().cuda_stream)
    gw_ref = (g_out.double()[:, None, :] * F.double()[ids.long().clamp_min(0)]).sum(-1) * ~empty + g_w_in
    gF_ref = torch.zeros(N, D, dtype=F64).index_add_(
        0, ids.long().clamp_min(0).flatten(), (w.double()[..., None] * g_out.double()[:, None, :]).reshape(-1, D))
    assert _rel(gw, gw_ref) < 1e-5 and _rel(gF, gF_ref) < 1e-5
    out.float().mul(g_out.to(dev).float()).sum().backward()  # through autograd: the same kernels
    assert _rel(F_leaf.grad.float(), gF_ref) < FEATURE_TOL[dtype]


def test_emulation_has_cuda_semantics():
    """Shuffles (down/up/xor/idx, segment widths), ballots, __syncthreads_count, shared memory,
    atomics across concurrent blocks, early-returning threads; deadlocks, collectives naming
    returned lanes and invalid launch configurations fail the launch."""
    if compiler() is None:
        pytest.skip("needs a C++ compiler")
    from featgs.render.emulated_backend import load_emulated_extension

    lib = ctypes.CDLL(load_emulated_extension().__file__)
    buf = ctypes.create_string_buffer(1 << 14)
    failures = lib.featgs_emulation_selftest(buf, len(buf))
    assert failures == 0, buf.value.decode()


@pytest.mark.parametrize("backend", BACKENDS)
def test_kernels_reject_what_they_do_not_support(backend):
    ext, dev = _extension(backend)
    s = _scene("sparse", seed=1, d=4, width=20, height=20)
    with pytest.raises(Exception, match="top-K length"):
        _kernels(backend, s, 20, 20, 3)
    bad = torch.zeros(0, 2, dtype=torch.float64, device=dev)
    with pytest.raises(RuntimeError, match="means2d must be Float"):
        ext.forward(bad, bad, bad, bad, 20, 20, TILE_SIZE, torch.zeros(4, dtype=torch.int32, device=dev),
                    torch.zeros(0, dtype=torch.int32, device=dev), 4, None, False, 0)
    other = torch.zeros(0, 2)
    if dev.type == "cpu" and CUDA:
        other = other.cuda()
    if other.device != dev:
        with pytest.raises(RuntimeError, match="means2d must be a"):
            ext.forward(other, other, other, other, 20, 20, TILE_SIZE, other.int(), other.int(), 4, None, False, 0)
