"""The reference renderer against a brute-force per-pixel renderer and finite differences."""

from __future__ import annotations

import pytest
import torch

from featgs import Camera, Gaussians
from featgs.camera import intrinsics_from_fov, look_at
from featgs.gaussians.random import orbit_camera, random_gaussians
from featgs.render import render
from featgs.render.blend import BlendSettings
from featgs.render.sh import sh_to_rgb
from featgs.render.torch_backend import render_torch
from reference import brute_force_render, sh_colors

F64 = torch.float64


def _scene(seed, n=60, d=3, sh=1, opacity=(0.1, 0.9), scale=(0.02, 0.25)):
    return random_gaussians(n, feature_dim=d, sh_degree=sh, seed=seed, opacity_range=opacity, scale_range=scale, dtype=F64)


@pytest.mark.parametrize(
    "seed,width,height,sh,background",
    [(0, 37, 29, 0, None), (1, 40, 24, 3, (0.2, 0.5, 0.9)), (2, 23, 41, 1, None), (3, 16, 16, 2, (1.0, 1.0, 1.0))],
)
def test_matches_brute_force(seed, width, height, sh, background):
    # Sizes are not multiples of the tile; opacities up to 0.99 make pixels terminate early.
    g = _scene(seed, n=250, sh=sh, opacity=(0.3, 0.99), scale=(0.05, 0.3))
    cam = orbit_camera(width, height, azimuth_deg=30 * seed, distance=2.5)
    out = render(g, cam, background=background)
    colors = torch.cat([sh_colors(g, cam, sh), g.features], dim=-1)
    acc, alpha, depth, _ = brute_force_render(g, cam, colors, background=None)
    rgb = acc[..., :3]
    if background is not None:
        rgb = rgb + (1 - alpha)[..., None] * torch.tensor(background, dtype=F64)
    assert (alpha > 0.999).float().mean() > 0.05, "the scene should have pixels that terminate"
    torch.testing.assert_close(out.rgb, rgb, atol=1e-5, rtol=0)
    torch.testing.assert_close(out.alpha[..., 0], alpha, atol=1e-5, rtol=0)
    torch.testing.assert_close(out.depth[..., 0], depth, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(out.features, acc[..., 3:], atol=1e-5, rtol=0)


def test_sh_matches_gsplat_torch_implementation():
    from gsplat.cuda._torch_impl import _spherical_harmonics

    gen = torch.Generator().manual_seed(0)
    dirs = torch.randn(50, 3, generator=gen, dtype=F64)
    coeffs = torch.randn(50, 16, 3, generator=gen, dtype=F64)
    for deg in range(4):
        ours = sh_to_rgb(deg, coeffs[:, :1], coeffs[:, 1:], dirs)
        theirs = (_spherical_harmonics(deg, dirs, coeffs) + 0.5).clamp_min(0)
        torch.testing.assert_close(ours, theirs, atol=1e-12, rtol=0)


def test_tiling_and_work_sizes_do_not_change_the_image():
    g = _scene(5, n=300, d=4, scale=(0.01, 0.1))
    cam = orbit_camera(53, 38, distance=2.2)
    ref = render_torch(g, cam, sh_degree=1, tile_size=8)
    for tile, settings in [(16, BlendSettings()), (4, BlendSettings(chunk=5, budget=1)), (8, BlendSettings(chunk=1))]:
        out = render_torch(g, cam, sh_degree=1, tile_size=tile, settings=settings)
        for name in ("rgb", "alpha", "depth", "features"):
            torch.testing.assert_close(getattr(out, name), getattr(ref, name), atol=1e-10, rtol=0)


def test_gaussian_order_does_not_change_the_image():
    g = _scene(6, n=200, d=2)
    cam = orbit_camera(32, 32)
    perm = torch.randperm(len(g), generator=torch.Generator().manual_seed(1))
    a, b = render(g, cam), render(g.select(perm), cam)
    for name in ("rgb", "alpha", "depth", "features"):
        torch.testing.assert_close(getattr(a, name), getattr(b, name), atol=1e-12, rtol=0)


def test_single_gaussian_lands_at_its_projected_pixel():
    cam = Camera(torch.eye(4, dtype=F64), intrinsics_from_fov(64, 48, 1.0), 64, 48)
    point = torch.tensor([[0.31, -0.17, 2.0]], dtype=F64)
    g = Gaussians.create(point, colors=torch.tensor([[1.0, 0.0, 0.0]], dtype=F64), scales=torch.tensor([0.01], dtype=F64), opacity=0.9)
    out = render(g, cam)
    (u, v), _ = cam.project(point[0])
    peak = torch.nonzero(out.alpha[..., 0] == out.alpha.max())[0]
    assert (int(peak[0]), int(peak[1])) == (int(v), int(u))
    assert out.alpha.max() > 0.5 and out.rgb[..., 1:].abs().max() == 0
    assert abs(float(out.depth[int(v), int(u), 0]) - 2.0) < 1e-9


def test_topk_weights_reproduce_the_features():
    g = _scene(7, n=120, d=5)
    cam = orbit_camera(30, 22)
    out = render(g, cam, top_k=200)
    ids, w = out.topk_ids, out.topk_weights
    assert ids.shape == (22, 30, 200) and w.shape == (22, 30, 200)
    gathered = (w[..., None] * g.features[ids.clamp_min(0)] * (ids >= 0)[..., None]).sum(-2)
    torch.testing.assert_close(gathered, out.features, atol=1e-10, rtol=0)
    # weights come sorted and agree with the brute force
    assert (w[..., :-1] >= w[..., 1:]).all()
    _, _, _, ref_w = brute_force_render(g, cam, g.features)
    for (i, j), per in list(ref_w.items())[::37]:
        top = {int(k): float(x) for k, x in zip(ids[i, j], w[i, j]) if k >= 0}
        assert top.keys() == per.keys()
        for k in per:
            assert abs(top[k] - per[k]) < 1e-10
    small = render(g, cam, top_k=2)
    torch.testing.assert_close(small.topk_weights, w[..., :2])


@pytest.mark.slow
def test_gradients_match_finite_differences():
    g = _scene(8, n=14, d=2, sh=1, opacity=(0.2, 0.8), scale=(0.05, 0.3))
    cam = orbit_camera(21, 17, distance=2.0)
    gen = torch.Generator().manual_seed(3)
    probe = {k: torch.randn(17, 21, c, generator=gen, dtype=F64) for k, c in (("rgb", 3), ("alpha", 1), ("depth", 1), ("features", 2))}
    names = list(Gaussians.PARAM_NAMES)

    def loss(*params):
        out = render(Gaussians(**dict(zip(names, params))), cam, background=(0.3, 0.2, 0.1))
        return sum((getattr(out, k) * p).sum() for k, p in probe.items())

    params = [getattr(g, n).clone().requires_grad_(True) for n in names]
    assert torch.autograd.gradcheck(loss, params, eps=1e-6, atol=1e-5, rtol=1e-4, fast_mode=True)


def test_gradients_flow_to_every_parameter_and_means2d():
    g = _scene(9, n=50, d=3).map(lambda t: t.float().requires_grad_(True))
    out = render(g, orbit_camera(24, 24))
    (out.rgb.sum() + out.features.sum() + out.depth.sum()).backward()
    for name in Gaussians.PARAM_NAMES:
        grad = getattr(g, name).grad
        assert grad is not None and torch.isfinite(grad).all() and grad.abs().sum() > 0, name
    assert out.info["means2d"].grad is not None and out.info["means2d"].grad.abs().sum() > 0


def test_decoder_is_applied_to_rendered_features():
    from featgs import LinearDecoder

    g = _scene(10, n=40, d=3)
    dec = LinearDecoder(torch.randn(7, 3, dtype=F64), torch.randn(7, dtype=F64))
    cam = orbit_camera(20, 20)
    raw = render(g, cam).features
    out = render(g.with_features(g.features, dec), cam).features
    torch.testing.assert_close(out, raw @ dec.weight.T + dec.bias)


def test_nothing_visible_gives_background_and_gradients():
    g = _scene(11, n=10).map(lambda t: t.float().requires_grad_(True))
    cam = Camera(look_at([0.0, 0.0, 3.0], [0.0, 0.0, 10.0], up=(0.0, 1.0, 0.0)), intrinsics_from_fov(16, 16, 1.0), 16, 16)
    out = render(g, cam, background=(0.0, 1.0, 0.0))
    assert torch.equal(out.rgb, torch.tensor([0.0, 1.0, 0.0]).expand(16, 16, 3))
    out.rgb.sum().backward()
    assert g.means.grad is not None and g.means.grad.abs().sum() == 0


@pytest.mark.slow
def test_default_strategy_densifies_on_cpu():
    from gsplat.strategy import DefaultStrategy

    g = _scene(12, n=200, d=2).to(torch.float32)
    params = torch.nn.ParameterDict({k: torch.nn.Parameter(v) for k, v in g.params().items()})
    optimizers = {k: torch.optim.Adam([params[k]], lr=1e-3) for k in params}
    strategy = DefaultStrategy(refine_start_iter=1, refine_every=2, grow_grad2d=1e-9, verbose=False)
    strategy.check_sanity(params, optimizers)
    state = strategy.initialize_state()
    cam = orbit_camera(32, 32)
    target = torch.rand(32, 32, 3)
    for step in range(4):
        out = render(Gaussians.from_params(params), cam)
        strategy.step_pre_backward(params, optimizers, state, step, out.info)
        ((out.rgb - target).abs().mean()).backward()
        strategy.step_post_backward(params, optimizers, state, step, out.info)
        for o in optimizers.values():
            o.step()
            o.zero_grad()
    assert len(params["means"]) > 200 and params["features"].shape[1] == 2
