"""featgs.teachers.pca: the streamed principal basis of teacher maps."""

from __future__ import annotations

import pytest
import torch

from featgs.errors import FeatgsError
from featgs.teachers.pca import flat_map, teacher_pca

F64 = torch.float64


def _views(rows: torch.Tensor, shapes) -> list:
    """Split [P, D] feature rows into teacher-map loaders of [D, h, w] (row-major pixels)."""
    loaders, start = [], 0
    for h, w in shapes:
        block = rows[start:start + h * w]
        start += h * w
        m = block.T.reshape(rows.shape[1], h, w).contiguous()
        loaders.append(lambda m=m: m)
    assert start == rows.shape[0]
    return loaders


def _low_rank(n: int, D: int, rank: int, seed: int, noise: float = 0.0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    spread = torch.linspace(3.0, 1.0, rank, dtype=F64)  # distinct variances: a unique basis
    x = torch.randn(n, rank, generator=g, dtype=F64) * spread
    q, _ = torch.linalg.qr(torch.randn(D, rank, generator=g, dtype=F64))
    offset = torch.randn(D, generator=g, dtype=F64) * 2.0
    rows = x @ q.T + offset
    if noise:
        rows = rows + noise * torch.randn(n, D, generator=g, dtype=F64)
    return rows.float()


SHAPES = [(6, 5), (4, 7), (5, 5), (3, 9)]  # 30 + 28 + 25 + 27 = 110 pixels, uneven views
N = sum(h * w for h, w in SHAPES)


def test_flat_map_is_pixels_by_channels_and_refuses_nan():
    m = torch.arange(2 * 3 * 4, dtype=torch.float16).reshape(2, 3, 4)
    flat = flat_map(m)
    assert flat.shape == (12, 2) and flat.dtype == torch.float32
    assert torch.equal(flat[5], torch.tensor([5.0, 17.0]))  # pixel (y=1, x=1): both channels
    for bad in (float("nan"), float("inf")):
        m2 = m.float().clone()
        m2[1, 2, 3] = bad
        with pytest.raises(FeatgsError, match="NaN or Inf"):
            flat_map(m2)


def test_basis_is_orthonormal_and_the_mean_is_the_pixel_mean():
    rows = _low_rank(N, 12, 12, seed=1)
    basis, mean, kept = teacher_pca(_views(rows, SHAPES), 5, progress=False)
    assert basis.shape == (12, 5) and mean.shape == (12,)
    torch.testing.assert_close(basis.T @ basis, torch.eye(5), atol=1e-5, rtol=0)
    torch.testing.assert_close(mean, rows.mean(0), atol=1e-5, rtol=1e-5)
    assert 0.0 < kept < 1.0


def test_matches_the_svd_of_the_centred_data():
    rows = _low_rank(N, 10, 10, seed=2).double()
    basis, mean, kept = teacher_pca(_views(rows.float(), SHAPES), 4, progress=False)
    centred = rows - rows.mean(0)
    _, s, vh = torch.linalg.svd(centred, full_matrices=False)
    ref = vh[:4].T
    # the same subspace (signs of single vectors are arbitrary): equal projectors, and each
    # column is +- the SVD's column, in order of decreasing variance
    torch.testing.assert_close(basis.double() @ basis.double().T, ref @ ref.T, atol=1e-4, rtol=0)
    cos = (basis.double() * ref).sum(0).abs()
    torch.testing.assert_close(cos, torch.ones(4, dtype=F64), atol=1e-4, rtol=0)
    var = s**2 / rows.shape[0]
    assert kept == pytest.approx(float(var[:4].sum() / var.sum()), rel=1e-5)


def test_agrees_with_torch_pca_lowrank_on_a_low_rank_matrix():
    rank = 3
    rows = _low_rank(N, 16, rank, seed=3)
    basis, mean, kept = teacher_pca(_views(rows, SHAPES), rank, progress=False)
    _, _, v = torch.pca_lowrank(rows.double(), q=rank, center=True, niter=6)
    torch.testing.assert_close(basis.double() @ basis.double().T, v @ v.T, atol=1e-4, rtol=0)
    assert kept == pytest.approx(1.0, abs=1e-6)
    # rank-3 data: the 3-dim basis reconstructs every pixel
    recon = (rows - mean) @ basis @ basis.T + mean
    torch.testing.assert_close(recon, rows, atol=1e-4, rtol=0)


@pytest.mark.parametrize("dim", [1, 3, 6])
def test_reconstruction_error_equals_the_discarded_variance(dim):
    D = 9
    rows = _low_rank(N, D, D, seed=4, noise=0.05)
    basis, mean, kept = teacher_pca(_views(rows, SHAPES), dim, progress=False)
    x = rows.double() - mean.double()
    recon = x @ basis.double() @ basis.double().T
    err = float(((x - recon) ** 2).sum(1).mean())  # mean squared error per pixel
    total = float((x**2).sum(1).mean())  # total variance
    evals = torch.linalg.eigvalsh(torch.cov(rows.double().T, correction=0))
    discarded = float(evals.sort(descending=True).values[dim:].sum())
    assert err == pytest.approx(discarded, rel=1e-4)
    assert 1.0 - kept == pytest.approx(err / total, rel=1e-4, abs=1e-7)


def test_more_components_keep_more_variance_and_all_keep_everything():
    D = 7
    rows = _low_rank(N, D, D, seed=5)
    loaders = _views(rows, SHAPES)
    kept = [teacher_pca(loaders, d, progress=False)[2] for d in range(1, D + 1)]
    assert all(a < b for a, b in zip(kept, kept[1:]))
    assert kept[-1] == pytest.approx(1.0, abs=1e-9)


def test_the_split_into_views_does_not_matter():
    rows = _low_rank(N, 8, 8, seed=6)
    a = teacher_pca(_views(rows, SHAPES), 3, progress=False)
    b = teacher_pca(_views(rows, [(10, 11)]), 3, progress=False)
    torch.testing.assert_close(a[0] @ a[0].T, b[0] @ b[0].T, atol=1e-5, rtol=0)
    torch.testing.assert_close(a[1], b[1], atol=1e-6, rtol=1e-6)
    assert a[2] == pytest.approx(b[2], rel=1e-9)


def test_nan_in_a_view_is_refused():
    rows = _low_rank(N, 4, 4, seed=7)
    rows[N - 1, 2] = float("nan")
    with pytest.raises(FeatgsError, match="NaN"):
        teacher_pca(_views(rows, SHAPES), 2, progress=False)
