"""featgs.train.solve: features by regularised sparse least squares, checked against dense
linear algebra on problems small enough to write down."""

from __future__ import annotations

import math

import pytest
import torch

import featgs.train.solve as solve_module
from featgs.camera import Camera, intrinsics_from_fov
from featgs.errors import FeatgsError
from featgs.gaussians import Gaussians
from featgs.render import render
from featgs.train.solve import SolveConfig, WeightMatrix, collect_weights, solve_features
from builders import small_solve_scene

F64 = torch.float64
EXACT = dict(cg_iters=400, tol=1e-6)  # run CG to convergence (N unknowns: N steps in exact arithmetic)


# -- a tiny rendered scene -----------------------------------------------------------------------
def _teacher(cams, D: int, seed: int = 1) -> list:
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(D, c.height, c.width, generator=g) for c in cams]


def _loaders(maps):
    return [lambda m=m: m for m in maps]


def _dense_weights(gaussians: Gaussians, cams) -> torch.Tensor:
    """[P, N] blend weights of every contributor, read off the renderer independently of the
    solve's top-K bookkeeping: render one-hot features (feature i = e_i) and each pixel's
    feature vector is its row of W."""
    n = len(gaussians)
    onehot = gaussians.with_features(torch.eye(n))
    rows = [render(onehot, c, backend="torch").features.reshape(-1, n) for c in cams]
    return torch.cat(rows).double()


def _flat(maps) -> torch.Tensor:
    return torch.cat([m.reshape(m.shape[0], -1).T for m in maps]).double()


def _lam(W: torch.Tensor, reg: float) -> float:
    """SolveConfig.reg: lambda as a fraction of the mean diagonal of W^T W (seen Gaussians)."""
    diag = (W**2).sum(0)
    return reg * float(diag[diag > 0].mean())


def _normal_equations(W: torch.Tensor, T: torch.Tensor, lam: float) -> torch.Tensor:
    n = W.shape[1]
    return torch.linalg.solve(W.T @ W + lam * torch.eye(n, dtype=F64), W.T @ T)


# -- a hand-built sparse W -----------------------------------------------------------------------
def _hand_built(view_sizes=((3, 4), (2, 5))):
    """W for 5 Gaussians over two views: 0..2 well seen, 3 seen by one pixel with a tiny weight,
    4 never seen."""
    P = sum(h * w for h, w in view_sizes)
    g = torch.Generator().manual_seed(3)
    W = torch.zeros(P, 5, dtype=F64)
    for p in range(P):
        ids = torch.randperm(3, generator=g)[: 1 + p % 3]
        W[p, ids] = torch.rand(len(ids), generator=g, dtype=F64) * 0.5 + 0.1
    W[P - 1, 3] = 0.02
    return W, view_sizes


def _weight_matrix(W: torch.Tensor, view_sizes) -> WeightMatrix:
    Wf = W.float()
    rows, blocks, start = [], [], 0
    for h, w in view_sizes:
        rows.append((start, start + h * w))
        blocks.append(Wf[start:start + h * w].T.contiguous().to_sparse_csr())
        start += h * w
    return WeightMatrix(W=Wf.to_sparse_csr(), Wt=Wf.T.contiguous().to_sparse_csr(), view_rows=rows,
                        view_blocks=blocks, mass_kept=1.0)


def _cameras_of(view_sizes):
    return [Camera(torch.eye(4), intrinsics_from_fov(w, h, 1.0), w, h) for h, w in view_sizes]


@pytest.fixture
def hand_built(monkeypatch):
    """(W [P, 5] float64, cameras, sizes): solve_features sees exactly this W."""
    W, sizes = _hand_built()
    monkeypatch.setattr(solve_module, "collect_weights", lambda *a, **k: _weight_matrix(W, sizes))
    dummy = Gaussians.create(torch.zeros(5, 3))
    return W, dummy, _cameras_of(sizes), list(sizes)


# -- against dense linear algebra ----------------------------------------------------------------
@pytest.mark.parametrize("reg", [1e-2, 0.3])
def test_rendered_problem_matches_the_dense_normal_equations(reg):
    gaussians, cams = small_solve_scene()
    D = 5
    maps = _teacher(cams, D)
    sizes = [(c.height, c.width) for c in cams]
    out = solve_features(gaussians, cams, _loaders(maps), sizes, SolveConfig(top_k=len(gaussians), reg=reg, **EXACT),
                         progress=False)
    W, T = _dense_weights(gaussians, cams), _flat(maps)
    assert (W[:, -1] == 0).all() and (W[:, :-1].sum(0) > 0).all(), "the scene should have one unseen Gaussian"
    ref = _normal_equations(W, T, _lam(W, reg))
    assert out.features.shape == (len(gaussians), D) and out.decoder is None
    torch.testing.assert_close(out.features.double(), ref, atol=2e-4, rtol=2e-4)
    assert out.stats["unseen_gaussians"] == 1
    assert out.stats["topk_mass_kept"] == pytest.approx(1.0, abs=1e-5)
    assert out.stats["relative_residual"] < 1e-6 and out.stats["cg_iterations"] < 400
    assert out.stats["feature_dim"] == out.stats["teacher_dim"] == D


def test_tiny_reg_is_the_least_squares_solution(hand_built):
    W, dummy, cams, sizes = hand_built
    maps = _teacher(cams, 4, seed=5)
    T = _flat(maps)
    out = solve_features(dummy, cams, _loaders(maps), sizes, SolveConfig(reg=1e-9, **EXACT), progress=False)
    seen = W.sum(0) > 0
    lstsq = torch.linalg.lstsq(W[:, seen], T).solution
    # the barely seen Gaussian 3 makes the problem ill-conditioned: compare what W sees, and
    # the well-seen Gaussians' features directly
    torch.testing.assert_close(W[:, seen] @ out.features.double()[seen], W[:, seen] @ lstsq, atol=1e-3, rtol=1e-3)
    torch.testing.assert_close(out.features.double()[:3], lstsq[:3], atol=2e-3, rtol=2e-3)
    assert torch.equal(out.features[4], torch.zeros(4))


@pytest.mark.parametrize("reg", [1e-3, 1e-1, 10.0])
def test_hand_built_w_matches_the_normal_equations(hand_built, reg):
    W, dummy, cams, sizes = hand_built
    maps = _teacher(cams, 3, seed=6)
    out = solve_features(dummy, cams, _loaders(maps), sizes, SolveConfig(reg=reg, **EXACT), progress=False)
    ref = _normal_equations(W, _flat(maps), _lam(W, reg))
    torch.testing.assert_close(out.features.double(), ref, atol=1e-4, rtol=1e-3)
    assert out.stats["unseen_gaussians"] == 1


def test_zero_iterations_give_the_weight_averaged_teacher(hand_built):
    W, dummy, cams, sizes = hand_built
    maps = _teacher(cams, 3, seed=7)
    out = solve_features(dummy, cams, _loaders(maps), sizes, SolveConfig(cg_iters=0), progress=False)
    T = _flat(maps)
    seen = W.sum(0)
    avg = (W.T @ T)[:4] / seen[:4, None]
    torch.testing.assert_close(out.features.double()[:4], avg, atol=1e-5, rtol=1e-5)
    assert torch.equal(out.features[4], torch.zeros(3))
    assert out.stats["cg_iterations"] == 0


# -- PCA: solving in the top-d basis is the projection of the full solve -------------------------
@pytest.mark.parametrize("d", [2, 4])
def test_pca_solve_is_the_projection_of_the_full_solve(hand_built, d):
    """The solve is linear in the teacher, so solving against the centred teacher projected on the
    top-d basis gives the full-D solve of the centred teacher, projected on that basis."""
    W, dummy, cams, sizes = hand_built
    D = 6
    maps = _teacher(cams, D, seed=8)
    config = SolveConfig(reg=1e-2, **EXACT)
    low = solve_features(dummy, cams, _loaders(maps), sizes, config, feature_dim=d, progress=False)
    assert low.features.shape == (5, d) and low.decoder is not None
    assert low.decoder.weight.shape == (D, d) and low.decoder.bias.shape == (D,)
    basis, mean = low.decoder.weight.double(), low.decoder.bias.double()
    torch.testing.assert_close(basis.T @ basis, torch.eye(d, dtype=F64), atol=1e-5, rtol=0)
    torch.testing.assert_close(mean, _flat(maps).mean(0), atol=1e-5, rtol=1e-5)
    centred = [m - low.decoder.bias[:, None, None] for m in maps]
    full = solve_features(dummy, cams, _loaders(centred), sizes, config, progress=False)
    assert full.features.shape == (5, D) and full.decoder is None
    torch.testing.assert_close(low.features.double(), full.features.double() @ basis, atol=1e-4, rtol=1e-3)
    # and the same against the dense solve
    ref = _normal_equations(W, _flat(centred), _lam(W, 1e-2)) @ basis
    torch.testing.assert_close(low.features.double(), ref, atol=1e-4, rtol=1e-3)
    assert low.stats["feature_dim"] == d and low.stats["teacher_dim"] == D
    assert 0.0 < low.stats["pca_variance_kept"] < 1.0


def test_pca_of_a_low_rank_teacher_decodes_to_the_full_solve(hand_built):
    """A teacher whose maps lie in a d-dim affine subspace: the d-dim features, decoded, are the
    full-D solve of the centred teacher plus the mean, with no loss."""
    W, dummy, cams, sizes = hand_built
    D, d = 8, 3
    g = torch.Generator().manual_seed(9)
    mix, offset = torch.randn(d, D, generator=g), torch.randn(D, generator=g)
    maps = [(torch.randn(h, w, d, generator=g) @ mix + offset).permute(2, 0, 1).contiguous() for h, w in sizes]
    config = SolveConfig(reg=1e-2, **EXACT)
    low = solve_features(dummy, cams, _loaders(maps), sizes, config, feature_dim=d, progress=False)
    assert low.stats["pca_variance_kept"] == pytest.approx(1.0, abs=1e-5)
    mean = low.decoder.bias
    full = solve_features(dummy, cams, _loaders([m - mean[:, None, None] for m in maps]), sizes, config, progress=False)
    torch.testing.assert_close(low.decoder(low.features) - mean, full.features, atol=1e-4, rtol=1e-3)


def test_feature_dim_at_or_above_the_teachers_is_a_full_solve(hand_built):
    W, dummy, cams, sizes = hand_built
    maps = _teacher(cams, 3, seed=10)
    a = solve_features(dummy, cams, _loaders(maps), sizes, SolveConfig(**EXACT), feature_dim=3, progress=False)
    b = solve_features(dummy, cams, _loaders(maps), sizes, SolveConfig(**EXACT), feature_dim=50, progress=False)
    assert a.decoder is None and b.decoder is None
    assert torch.equal(a.features, b.features)


# -- regularisation -------------------------------------------------------------------------------
def test_larger_reg_shrinks_the_barely_seen_gaussian_toward_zero(hand_built):
    W, dummy, cams, sizes = hand_built
    maps = _teacher(cams, 3, seed=11)
    norms = {}
    for reg in (1e-4, 1e-2, 1.0, 100.0):
        out = solve_features(dummy, cams, _loaders(maps), sizes, SolveConfig(reg=reg, **EXACT), progress=False)
        assert torch.isfinite(out.features).all()
        assert torch.equal(out.features[4], torch.zeros(3)), "a never-seen Gaussian gets no feature"
        norms[reg] = out.features.double().norm(dim=1)
    barely = [float(norms[r][3]) for r in sorted(norms)]
    assert all(a > b for a, b in zip(barely, barely[1:])), barely
    assert barely[-1] < 0.05 * barely[0]
    # the barely seen Gaussian shrinks much faster than the well-seen ones
    assert float(norms[1.0][3] / norms[1e-4][3]) < 0.5 * float((norms[1.0][:3] / norms[1e-4][:3]).min())


@pytest.mark.parametrize("reg", [1e-2, 1.0])
def test_average_prior_matches_the_normal_equations_with_that_prior(hand_built, reg):
    """prior "average": (W^T W + lam I) F = W^T T + lam F0, F0 the blend-weighted average."""
    W, dummy, cams, sizes = hand_built
    maps = _teacher(cams, 3, seed=13)
    T, seen = _flat(maps), W.sum(0)
    avg = torch.where(seen[:, None] > 0, (W.T @ T) / seen.clamp_min(1e-300)[:, None], torch.zeros(1, dtype=F64))
    lam = _lam(W, reg)
    ref = torch.linalg.solve(W.T @ W + lam * torch.eye(W.shape[1], dtype=F64), W.T @ T + lam * avg)
    out = solve_features(dummy, cams, _loaders(maps), sizes, SolveConfig(reg=reg, prior="average", **EXACT),
                         progress=False)
    torch.testing.assert_close(out.features.double(), ref, atol=1e-4, rtol=1e-3)
    assert out.stats["prior"] == "average"
    zero = solve_features(dummy, cams, _loaders(maps), sizes, SolveConfig(reg=reg, **EXACT), progress=False)
    assert not torch.allclose(zero.features, out.features, atol=1e-3)  # the prior matters at this reg


def test_a_larger_reg_pulls_features_to_the_average_under_that_prior(hand_built):
    """From the least-squares fit (reg -> 0) to back-projection (reg -> inf), and never to zero:
    the barely seen Gaussian keeps its average where the zero prior shrinks it away."""
    W, dummy, cams, sizes = hand_built
    maps = _teacher(cams, 3, seed=14)
    avg = solve_features(dummy, cams, _loaders(maps), sizes, SolveConfig(cg_iters=0), progress=False).features
    gaps = []
    for reg in (1e-4, 1e-2, 1.0, 100.0):
        out = solve_features(dummy, cams, _loaders(maps), sizes, SolveConfig(reg=reg, prior="average", **EXACT),
                             progress=False)
        gaps.append(float((out.features - avg).norm()))
    assert all(a > b for a, b in zip(gaps, gaps[1:])), gaps
    assert gaps[-1] < 0.02 * gaps[0]
    assert float(out.features[3].norm()) > 0.9 * float(avg[3].norm()) > 0
    with pytest.raises(FeatgsError, match="--prior: expected one of zero, average"):
        SolveConfig(prior="mean")


def test_nothing_seen_gives_finite_zeros(monkeypatch):
    sizes = [(2, 3), (3, 2)]
    W = torch.zeros(12, 4, dtype=F64)
    monkeypatch.setattr(solve_module, "collect_weights", lambda *a, **k: _weight_matrix(W, sizes))
    cams = _cameras_of(sizes)
    maps = _teacher(cams, 5, seed=12)
    out = solve_features(Gaussians.create(torch.zeros(4, 3)), cams, _loaders(maps), sizes, SolveConfig(), progress=False)
    assert torch.equal(out.features, torch.zeros(4, 5))
    assert out.stats["unseen_gaussians"] == 4
    assert math.isfinite(out.stats["relative_residual"])


# -- the top-K weights ----------------------------------------------------------------------------
def test_topk_mass_is_a_share_and_all_of_it_when_k_covers_every_contributor():
    gaussians, cams = small_solve_scene()
    n = len(gaussians)
    full = collect_weights(gaussians, cams, n, progress=False)
    one = collect_weights(gaussians, cams, 1, progress=False)
    two = collect_weights(gaussians, cams, 2, progress=False)
    assert full.mass_kept == pytest.approx(1.0, abs=1e-5)
    assert 0.0 < one.mass_kept < two.mass_kept < 1.0
    # with every contributor kept, W is the renderer's blend weights, and each row sums to alpha
    W = _dense_weights(gaussians, cams)
    torch.testing.assert_close(full.W.to_dense().double(), W, atol=1e-6, rtol=1e-5)
    torch.testing.assert_close(full.Wt.to_dense().double(), W.T, atol=1e-6, rtol=1e-5)
    alpha = torch.cat([render(gaussians, c, features=False).alpha.reshape(-1) for c in cams]).double()
    torch.testing.assert_close(W.sum(1), alpha, atol=1e-5, rtol=1e-5)
    # each view's block is its rows of W, transposed
    assert [r for r in full.view_rows] == [(0, 80), (80, 160), (160, 240)]
    for (s, e), block in zip(full.view_rows, full.view_blocks):
        torch.testing.assert_close(block.to_dense().double(), W[s:e].T, atol=1e-6, rtol=1e-5)
    # top-1 keeps each pixel's largest weight
    torch.testing.assert_close(one.W.to_dense().double().amax(1), W.amax(1), atol=1e-6, rtol=1e-5)
    assert (one.W.to_dense() > 0).sum(1).max() <= 1


def test_match_alpha_scales_each_pixels_kept_weights_to_its_alpha():
    """The renderer blends every contributor; the scaled top-K rows carry the whole alpha, in
    the kept weights' proportions, and change nothing when K keeps every contributor."""
    gaussians, cams = small_solve_scene()
    alpha = torch.cat([render(gaussians, c, features=False).alpha.reshape(-1) for c in cams]).double()
    plain = collect_weights(gaussians, cams, 2, progress=False, dtype=torch.float64)
    scaled = collect_weights(gaussians, cams, 2, progress=False, dtype=torch.float64, match_alpha=True)
    P, S = plain.W.to_dense(), scaled.W.to_dense()
    assert (P.sum(1) < alpha - 1e-3).any()  # two weights per pixel do leave a tail here
    torch.testing.assert_close(S.sum(1), alpha, atol=1e-6, rtol=1e-6)
    ratio = S[P > 0] / P[P > 0]
    rows = (P > 0).nonzero()[:, 0]
    torch.testing.assert_close(ratio, (alpha / P.sum(1))[rows])
    assert scaled.mass_kept == pytest.approx(plain.mass_kept)  # the share before scaling
    torch.testing.assert_close(scaled.Wt.to_dense(), S.T)
    for (s, e), block in zip(scaled.view_rows, scaled.view_blocks):
        torch.testing.assert_close(block.to_dense(), S[s:e].T)
    everyone = len(gaussians)
    torch.testing.assert_close(collect_weights(gaussians, cams, everyone, progress=False, match_alpha=True).W.to_dense(),
                               collect_weights(gaussians, cams, everyone, progress=False).W.to_dense(), rtol=1e-5, atol=1e-6)


def test_blend_weights_are_rendered_at_the_teacher_maps_resolution():
    gaussians, cams = small_solve_scene(size=(12, 8))
    D = 3
    small = [(4, 6)] * len(cams)
    maps = [torch.randn(D, h, w) for h, w in small]
    out = solve_features(gaussians, cams, _loaders(maps), small, SolveConfig(top_k=len(gaussians), **EXACT),
                         progress=False)
    W = _dense_weights(gaussians, [c.resized(6, 4) for c in cams])
    ref = _normal_equations(W, _flat(maps), _lam(W, SolveConfig().reg))
    torch.testing.assert_close(out.features.double(), ref, atol=2e-4, rtol=2e-4)


def test_bad_input_is_refused():
    gaussians, cams = small_solve_scene()
    sizes = [(c.height, c.width) for c in cams]
    maps = _teacher(cams, 2)
    with pytest.raises(FeatgsError, match="one teacher map"):
        solve_features(gaussians, cams, _loaders(maps[:2]), sizes, progress=False)
    with pytest.raises(FeatgsError, match="at least one"):
        solve_features(gaussians, [], [], [], progress=False)
    wrong = [torch.randn(2, c.height + 1, c.width) for c in cams]
    with pytest.raises(FeatgsError, match="teacher map 0"):
        solve_features(gaussians, cams, _loaders(wrong), sizes, progress=False)
    nan = [m.clone() for m in maps]
    nan[1][0, 0, 0] = float("nan")
    with pytest.raises(FeatgsError, match="NaN"):
        solve_features(gaussians, cams, _loaders(nan), sizes, progress=False)
