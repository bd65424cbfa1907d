"""Feature distillation as a sparse linear least-squares solve (design.md, "solve").

With geometry frozen, a rendered feature is linear in the per-Gaussian features: ``f = W F``,
W the [pixels, N] matrix of blend weights. Minimising ``||W F - T||^2 + lam ||F - F0||^2`` over
every training pixel is ``(W^T W + lam I) F = W^T T + lam F0``: one symmetric positive definite
system shared by all feature channels. The prior F0 is 0 (``prior="zero"``) or the
blend-weighted average of the teacher features, the back-projection (``prior="average"``).
We keep each pixel's K largest weights (W is sparse), start from the weight-averaged teacher
features and run Jacobi-preconditioned conjugate gradients,
all channels at once, in float64 (``PRECISION``). Teacher maps are streamed view by view; only
W is held.

Because the solution is linear in T, solving against the teacher projected on its top-d PCA
basis gives exactly the projection of the full solution: the d-dim features plus the linear
decoder (basis, mean) replace a D-dim solve at d/D of the cost.
"""

from __future__ import annotations

import time
import warnings
from dataclasses import dataclass, field
from typing import Callable, Optional, Sequence, Tuple

import torch
from torch import Tensor
from tqdm.auto import tqdm

from featgs.camera import Camera
from featgs.configargs import check_ranges
from featgs.distributed import SINGLE, Ranks
from featgs.errors import FeatgsError
from featgs.gaussians import Gaussians, LinearDecoder
from featgs.render import render
from featgs.teachers.pca import flat_map, teacher_pca

TeacherMap = Callable[[], Tensor]  # () -> [D, h, w]

# The solve's arithmetic. Unconverged CG in float32 amplifies round-off: summing the same
# products in another order (views reordered, or split over ranks) moved the features of a
# 24-view scene by 2e-3 (relative); in float64 by under 1e-9, so a distributed solve equals
# the single-process one.
PRECISION = torch.float64
PRIORS = ("zero", "average")  # SolveConfig.prior


@dataclass(frozen=True)
class SolveConfig:
    """Attributes:
    top_k: blend weights kept per pixel (more: closer to the exact problem, slower).
    cg_iters: conjugate-gradient iterations at most.
    reg: lambda as a fraction of the mean diagonal of W^T W (keeps barely-seen Gaussians sane).
    tol: stop when every channel's relative residual is below this.
    prior: what the ridge pulls each feature toward: "zero", or "average", the blend-weighted
        average of the teacher features that back-projection stores. The least-squares fit
        matches rendered maps, but single Gaussians may take features no object has if their
        blends still match; text selection in 3D (the selection-3d protocol, what
        ``featgs query`` and its edits select) then suffers. Tabletop 64 px, 300 steps:
        selection-3d mIoU 0.300 (zero, reg 0.01), 0.379 (average, reg 0.1), 0.392 (average,
        reg 0.3), 0.394 (back-projection), while the rendered maps' mIoU is 0.859, 0.858,
        0.854 and 0.802. On the object scene it gains nothing in 3D and costs 2D mIoU (README,
        "What single Gaussians carry"), so "zero" stays the default.
    match_alpha: scale each pixel's kept weights so that they sum to the pixel's alpha. The
        renderer blends every Gaussian, not only the top K; on trained scenes the top 16 hold
        only ~80% of the weight (``topk_mass_kept``), and a solve of the truncated model
        inflates features to make up the dropped tail. Scaled, the tail is modelled as
        carrying the kept Gaussians' mix (benchmarks/distill.py, K = 16, 20 CG: test mIoU
        +0.0035 on tabletop, +0.0037 on object, at no extra cost).
    """

    top_k: int = field(default=16, metadata={"min": 1, "help": "blend weights kept per pixel: more is closer "
                                              "to the exact problem; the solve's memory grows with K"})
    cg_iters: int = field(default=20, metadata={"min": 0, "help": "conjugate-gradient iterations at most"})
    reg: float = field(default=1e-2, metadata={"min": 0.0, "help": "ridge weight, as a fraction of the mean "
                                               "diagonal of W^T W (keeps barely-seen Gaussians sane)"})
    tol: float = field(default=1e-3, metadata={"above": 0.0, "help": "stop when every channel's relative "
                                               "residual is below this"})
    match_alpha: bool = field(default=True, metadata={"help": "scale each pixel's kept weights to sum to its "
                                                      "alpha (models the weight beyond the top K)"})
    prior: str = field(default="zero", metadata={
        "help": "what the ridge pulls features toward: zero, or average (the back-projected features: with "
                "--reg 0.1 to 0.3, Gaussians keep their objects' features, for text selection in 3D)",
        "choices": PRIORS})

    def __post_init__(self) -> None:
        check_ranges(self)
        if self.prior not in PRIORS:
            raise FeatgsError(f"--prior: expected one of {', '.join(PRIORS)}, got {self.prior!r}")


@dataclass
class WeightMatrix:
    """The sparse top-K blend weights of all training pixels.

    Attributes:
        W: [P, N] sparse CSR, P the number of pixels of all views.
        Wt: [N, P] its transpose, also CSR (both products are row-major SpMMs).
        view_rows: (start, end) row range of each view.
        view_blocks: per view, its rows of W transposed, [N, P_v] sparse CSR (for W^T T).
        mass_kept: share of the total blend weight (alpha) that the top-K entries hold.
        empty_views: indices of the views that see no Gaussian (all their rows are zero: they
            constrain nothing, and their teacher maps need not be read).
        weight_kept, alpha_total: the sums behind ``mass_kept`` (for adding up over ranks).
    """

    W: Tensor
    Wt: Tensor
    view_rows: list
    view_blocks: list
    mass_kept: float
    empty_views: list = field(default_factory=list)
    weight_kept: float = 0.0
    alpha_total: float = 0.0

    @property
    def num_gaussians(self) -> int:
        return self.W.shape[1]


@dataclass
class SolveResult:
    features: Tensor  # [N, d]
    decoder: Optional[LinearDecoder]
    stats: dict


def teacher_resolution_camera(camera: Camera, teacher_map_shape: Sequence[int]) -> Camera:
    """The camera rendering at a teacher map's own (h, w)."""
    h, w = int(teacher_map_shape[-2]), int(teacher_map_shape[-1])
    return camera if (w, h) == (camera.width, camera.height) else camera.resized(w, h)


@torch.no_grad()
def collect_weights(gaussians: Gaussians, cameras: Sequence[Camera], top_k: int, *, progress: bool = True,
                    dtype: torch.dtype = torch.float32, match_alpha: bool = False) -> WeightMatrix:
    """Render every camera's top-K blend weights into one sparse matrix (values of ``dtype``);
    with ``match_alpha`` each pixel's kept weights are scaled to sum to its alpha
    (:class:`SolveConfig`). ``mass_kept`` is the share before scaling."""
    g = gaussians.detach()
    n = len(g)
    rows, cols, vals, view_rows, blocks, empty = [], [], [], [], [], []
    kept = total = 0.0
    offset = 0
    for i, cam in enumerate(tqdm(cameras, desc="blend weights", unit="view", disable=not progress, leave=False)):
        out = render(g, cam, features=False, top_k=top_k)
        p = cam.width * cam.height
        if out.topk_ids is None or out.topk_ids.numel() == 0 or not bool((out.topk_ids >= 0).any()):
            # A view that sees no Gaussian (it looks away, or every Gaussian is culled): its rows
            # of W are zero. Nothing of it is indexed, so no backend's empty top-K can trip here.
            empty.append(i)
            blocks.append(_csr(torch.zeros(2, 0, dtype=torch.long, device=g.device),
                               torch.zeros(0, device=g.device, dtype=dtype), (n, p)))
            view_rows.append((offset, offset + p))
            offset += p
            continue
        ids = out.topk_ids.reshape(-1, top_k)
        w = out.topk_weights.reshape(-1, top_k).to(dtype)
        valid = ids >= 0
        kept += float(w.sum())
        total += float(out.alpha.sum())
        if match_alpha:
            row = w.sum(1, keepdim=True)
            w = torch.where(row > 0, w * (out.alpha.reshape(-1, 1).to(dtype) / row.clamp_min(1e-30)), w)
        r = torch.arange(p, device=ids.device)[:, None].expand_as(ids)[valid]
        c, v = ids[valid], w[valid]
        rows.append(r + offset)
        cols.append(c)
        vals.append(v)
        blocks.append(_csr(torch.stack([c, r]), v, (n, p)))
        view_rows.append((offset, offset + p))
        offset += p
    if rows:
        idx = torch.stack([torch.cat(rows), torch.cat(cols)])
        val = torch.cat(vals)
    else:  # no view sees anything
        idx = torch.zeros(2, 0, dtype=torch.long, device=g.device)
        val = torch.zeros(0, device=g.device, dtype=dtype)
    W = _csr(idx, val, (offset, n))
    Wt = _csr(idx.flip(0), val, (n, offset))
    return WeightMatrix(W=W, Wt=Wt, view_rows=view_rows, view_blocks=blocks, mass_kept=kept / max(total, 1e-12),
                        empty_views=empty, weight_kept=kept, alpha_total=total)


@torch.no_grad()
def solve_features(
    gaussians: Gaussians,
    cameras: Sequence[Camera],
    maps: Sequence[TeacherMap],
    sizes: Sequence[Tuple[int, int]],
    config: SolveConfig = SolveConfig(),
    *,
    feature_dim: Optional[int] = None,
    progress: bool = True,
    ranks: Ranks = SINGLE,
) -> SolveResult:
    """Per-Gaussian features that best reproduce the teacher maps through the frozen geometry.

    Args:
        gaussians: trained geometry (its features are ignored).
        cameras: training cameras; ``maps[i]()`` loads view i's teacher map [D, h, w], and
            ``sizes[i]`` is its (h, w): the blend weights are rendered at that resolution.
        feature_dim: d < D stores d-dim features and a PCA decoder d -> D.
        ranks: several ranks share the work (every rank calls this with the same arguments
            and the same geometry): rank r renders and holds the rows of W of its own views
            (i % world == r) and reads only their maps; the right-hand side W^T T, the
            diagonal, the PCA sums and, in every CG iteration, the product W^T (W p) are
            summed over the ranks (all-reduce), so every rank holds the same iterate, computes
            the same dot products from it and ends with the single-process solution (up to
            float round-off).
    Returns:
        features [N, d], the decoder (or None), and stats: mass_kept, iterations,
        relative residual, seconds.
    """
    if not (len(cameras) == len(maps) == len(sizes)) or not cameras:
        raise FeatgsError("solve: need one teacher map and size per training camera, and at least one")
    t0 = time.perf_counter()
    own = ranks.indices(len(cameras))  # every view when alone
    D = maps[own[0]]().shape[0] if own else 0
    if ranks.many:  # a rank without views (more ranks than views) learns D from the others
        dims = torch.tensor([D], dtype=torch.long)
        ranks.all_reduce_([dims], op="max")
        D = int(dims)
    d = D if feature_dim is None or feature_dim >= D else int(feature_dim)
    basis = mean = None
    pca_kept = 1.0
    if d < D:
        basis, mean, pca_kept = _teacher_pca([maps[i] for i in own], d, ranks, progress)
    cams = [teacher_resolution_camera(cameras[i], sizes[i]) for i in own]
    Wm = collect_weights(gaussians, cams, config.top_k, progress=progress, dtype=PRECISION,
                         match_alpha=config.match_alpha)
    W, Wt = Wm.W.to(PRECISION), Wm.Wt.to(PRECISION)  # no copies: already so

    def target(k: int) -> Tensor:  # k: the k-th of this rank's views
        i = own[k]
        t = flat_map(maps[i]()).to(dev, PRECISION)
        if t.shape[0] != Wm.view_rows[k][1] - Wm.view_rows[k][0] or t.shape[1] != D:
            raise FeatgsError(f"solve: teacher map {i} is not [{D}, {sizes[i][0]}, {sizes[i][1]}]")
        return t if basis is None else (t - mean.to(dev, PRECISION)) @ basis.to(dev, PRECISION)

    n = Wm.num_gaussians
    dev = Wm.W.device
    b = torch.zeros(n, d, device=dev, dtype=PRECISION)
    empty = set(Wm.empty_views)

    def right_hand_side() -> None:
        for k, block in enumerate(tqdm(Wm.view_blocks, desc="W^T T", unit="view", disable=not progress, leave=False)):
            if k not in empty:  # an empty view's block is zero: its teacher map is not even read
                b.add_(block.to(PRECISION) @ target(k))

    ranks.settle(right_hand_side)  # a bad map on one rank stops every rank
    ones = torch.ones(W.shape[0], 1, device=dev, dtype=PRECISION)
    seen = (Wt @ ones).squeeze(1)  # sum_p w_i(p)
    diag = (_square(Wt) @ ones).squeeze(1)  # sum_p w_i(p)^2
    counts = torch.tensor([Wm.weight_kept, Wm.alpha_total, len(Wm.empty_views)], dtype=torch.float64, device=dev)
    ranks.all_reduce_([b, seen, diag, counts])
    lam = config.reg * float(diag[diag > 0].mean()) if (diag > 0).any() else 1.0

    def apply_A(x: Tensor) -> Tensor:
        y = Wt @ (W @ x)
        ranks.all_reduce_([y])  # the partial products of every rank's pixel rows
        return y + lam * x

    # Weighted average of the teacher features: a fair answer on its own, and CG's start.
    x = torch.where(seen[:, None] > 0, b / seen.clamp_min(1e-12)[:, None], torch.zeros_like(b))
    precond = 1.0 / (diag + lam)
    if config.prior == "average":  # the ridge pulls toward x0: (W^T W + lam I) x = W^T T + lam x0
        b = b + lam * x
    r = b - apply_A(x)
    z = precond[:, None] * r
    p = z.clone()
    rz = (r * z).sum(0)
    b_norm = b.norm(dim=0).clamp_min(1e-12)
    it = 0
    rel = float((r.norm(dim=0) / b_norm).max())
    bar = tqdm(range(config.cg_iters), desc="conjugate gradients", disable=not progress, leave=False)
    for it in bar:
        if rel < config.tol:
            break
        Ap = apply_A(p)
        alpha = rz / (p * Ap).sum(0).clamp_min(1e-30)
        x += alpha * p
        r -= alpha * Ap
        rel = float((r.norm(dim=0) / b_norm).max())
        bar.set_postfix(residual=f"{rel:.2e}")
        z = precond[:, None] * r
        rz_new = (r * z).sum(0)
        p = z + (rz_new / rz.clamp_min(1e-30)) * p
        rz = rz_new
    else:
        it = config.cg_iters
    decoder = None if basis is None else LinearDecoder(weight=basis.contiguous().to(dev), bias=mean.to(dev))
    kept, total, views_empty = counts.tolist()
    stats = {
        "feature_dim": d,
        "teacher_dim": D,
        "pca_variance_kept": pca_kept,
        "top_k": config.top_k,
        "prior": config.prior,
        "topk_mass_kept": kept / max(total, 1e-12) if ranks.many else Wm.mass_kept,
        "cg_iterations": it,
        "relative_residual": rel,
        "unseen_gaussians": int((seen == 0).sum()),
        "views_seeing_nothing": int(views_empty),
        "seconds": time.perf_counter() - t0,
    }
    if ranks.many:
        stats["ranks"] = ranks.world_size
    return SolveResult(features=x.float(), decoder=decoder, stats=stats)


def _teacher_pca(maps: Sequence[TeacherMap], dim: int, ranks: Ranks, progress: bool) -> Tuple[Tensor, Tensor, float]:
    """:func:`teacher_pca` over every rank's ``maps`` (its own views): the sums of the features
    and of their outer products are all-reduced, then every rank takes the same eigenvectors."""
    if not ranks.many:
        return teacher_pca(maps, dim, progress=progress)
    s = ss = None
    count = 0
    D = None
    for load in tqdm(maps, desc="teacher PCA", unit="view", disable=not progress, leave=False):
        t = flat_map(load()).double()
        s = t.sum(0) if s is None else s + t.sum(0)
        ss = t.T @ t if ss is None else ss + t.T @ t
        count += t.shape[0]
        D = t.shape[1]
    dims = torch.tensor([D or 0], dtype=torch.long)
    ranks.all_reduce_([dims], op="max")
    D = int(dims)
    s = torch.zeros(D, dtype=torch.float64) if s is None else s
    ss = torch.zeros(D, D, dtype=torch.float64) if ss is None else ss
    n = torch.tensor([float(count)], dtype=torch.float64, device=s.device)
    ranks.all_reduce_([s, ss, n])
    mean = s / n
    cov = ss / n - torch.outer(mean, mean)
    evals, evecs = torch.linalg.eigh(cov)  # the same matrix on every rank: the same basis
    order = torch.argsort(evals, descending=True)[:dim]
    kept = float(evals[order].clamp_min(0).sum() / evals.clamp_min(0).sum().clamp_min(1e-30))
    return evecs[:, order].float(), mean.float(), kept


def _square(csr: Tensor) -> Tensor:
    """The same sparsity pattern with squared values."""
    return torch.sparse_csr_tensor(csr.crow_indices(), csr.col_indices(), csr.values() ** 2, csr.shape,
                                   check_invariants=False)


def _csr(indices: Tensor, values: Tensor, size: Tuple[int, int]) -> Tensor:
    """A CSR matrix from COO triplets (duplicates summed)."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="Sparse CSR tensor support is in beta")
        coo = torch.sparse_coo_tensor(indices, values, size, check_invariants=False)
        return coo.coalesce().to_sparse_csr()
