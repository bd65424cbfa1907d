"""Back-projection: each Gaussian's feature is the blend-weight-weighted average of the teacher
features of the pixels it contributes to, with no solve (``featgs train --mode backproject``).

    F_i = sum_p w_i(p) T(p) / sum_p w_i(p)        (0 for a Gaussian no pixel sees)

over every training pixel p, with w_i(p) the pixel's top-K blend weights (``--top-k``) of the
frozen geometry: the training-free baseline of Occam's LGS and similar "lift 2D features to 3D"
methods. It is the start of the least-squares solve of :mod:`featgs.train.solve`
(``x0 = (W^T T) / (W^T 1)``) with the plain blend weights (the solve scales each pixel's to its
alpha: ``match_alpha``), so it is that solve with zero conjugate-gradient iterations; the
same building blocks (blend weights, teacher PCA for ``--feature-dim``, per-teacher blocks)
apply, and the solve's stats (``cg_iterations`` 0, the least-squares residual of the average)
describe it. Its cost is rendering the weights and one pass over the teacher maps; each CG
iteration of the solve adds two sparse products.
"""

from __future__ import annotations

from dataclasses import replace
from typing import Optional, Sequence

from featgs.camera import Camera
from featgs.gaussians import Gaussians
from featgs.train.solve import SolveConfig, SolveResult, TeacherMap, solve_features

METHOD = "backproject"


def _averaging(config: SolveConfig) -> SolveConfig:
    return replace(config, cg_iters=0, match_alpha=False)  # the plain blend weights, as published


def _marked(result: SolveResult) -> SolveResult:
    return replace(result, stats={**result.stats, "method": METHOD})


def backproject_features(gaussians: Gaussians, cameras: Sequence[Camera], maps: Sequence[TeacherMap],
                         sizes, config: SolveConfig = SolveConfig(), *, feature_dim: Optional[int] = None,
                         progress: bool = True, **kwargs) -> SolveResult:
    """The weight-averaged teacher features of one teacher (arguments as :func:`solve_features`,
    whose ``cg_iters`` and ``match_alpha`` are ignored)."""
    return _marked(solve_features(gaussians, cameras, maps, sizes, _averaging(config), feature_dim=feature_dim,
                                  progress=progress, **kwargs))


def backproject_blocks(g: Gaussians, cameras: Sequence[Camera], names: Sequence[str], blocks, config: SolveConfig,
                       feature_dim: Optional[int], progress: bool, *args, **kwargs) -> SolveResult:
    """:func:`featgs.train.blocks.solve_blocks` with the weighted average in place of each solve
    (further arguments, such as the ranks of a distributed run, are passed on to it)."""
    from featgs.train.blocks import solve_blocks

    return _marked(solve_blocks(g, cameras, names, blocks, _averaging(config), feature_dim, progress, *args, **kwargs))
