"""Several teachers in one run: each owns a block of channels of the rendered features.

A run trained on teachers t1..tk renders ``D = D1 + ... + Dk`` channels (after the decoder):
channels ``[start_t, end_t)`` reproduce teacher t's maps, in the order the teachers were
given (``--teacher sam,clip``: SAM's 256 first, then CLIP's). run.json records the layout
(``teachers``: name, model id, dim, cache folder and channels of each), so that evaluation,
queries and the viewer slice out the teacher they need; ``render()`` is unchanged.

How the stored features relate to the blocks depends on the mode:

- solve: one least-squares solve per teacher, at its own map resolution, each with its own
  PCA decoder when ``--feature-dim d`` asks for fewer than its ``D_t`` dims. The stored
  features are the teachers' solved features side by side and the decoder is block-diagonal
  (identity blocks for teachers stored at full dimension). Blocks cost nothing extra: each
  solve is exactly the single-teacher solve, and none can pull another's features.
- joint: one shared feature of ``sum_t min(d, D_t)`` dims (all ``D`` without
  ``--feature-dim``) with a linear head per teacher (the decoder's row blocks), trained by
  the sum over teachers of each one's mean L1 loss, as Feature 3DGS trains its one head.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, List, Optional, Sequence, Tuple

import torch
from torch import Tensor

from featgs import usercache
from featgs.camera import Camera
from featgs.distributed import SINGLE, Ranks
from featgs.errors import FeatgsError
from featgs.gaussians import Gaussians, LinearDecoder
from featgs.teachers import CacheItem, FeatureCache, LabelsTeacher, Teacher, TeacherOptions, make_teacher
from featgs.train.solve import SolveConfig, SolveResult, solve_features

Channels = Tuple[int, int]


@dataclass(frozen=True)
class TeacherBlock:
    """One teacher of a run, its cached maps, and the channels ``[start, end)`` it owns."""

    teacher: Teacher
    cache: FeatureCache
    channels: Channels

    @property
    def dim(self) -> int:
        return self.teacher.dim


def teacher_for_scene(name: str, scene, options: TeacherOptions = TeacherOptions()) -> Teacher:
    """Teacher ``name`` for ``scene`` (the labels teacher takes the scene's label names)."""
    if name == "labels" and not scene.label_names:
        raise FeatgsError(f"{scene.root}: --teacher labels needs per-pixel label maps and labels.json; "
                          f"this scene has none (use --teacher none, sam or clip)")
    return make_teacher(name, options, label_names=scene.label_names)


def feature_cache(scene, teacher: Teacher, downscale: float) -> FeatureCache:
    """The cache of ``teacher``'s maps for ``scene`` at this downscale: ``DATA/features/`` when
    it already holds the cache or can be written, else the per-user cache (a read-only dataset)."""
    folder = teacher.name if downscale == 1.0 else f"{teacher.name}@{downscale:g}x"
    beside = FeatureCache(scene.root, teacher.name, folder)
    if beside.meta is not None or usercache.writable_folder(beside.folder):
        return beside
    return FeatureCache(usercache.user_cache_dir("features") / usercache.dataset_key(scene.root), teacher.name, folder)


def make_blocks(scene, names: Sequence[str], options: TeacherOptions, downscale: float) -> List[TeacherBlock]:
    """Teachers and caches (not yet built) in the given order, channels laid out one after another."""
    blocks, start = [], 0
    for name in names:
        teacher = teacher_for_scene(name, scene, options)
        blocks.append(TeacherBlock(teacher, feature_cache(scene, teacher, downscale), (start, start + teacher.dim)))
        start += teacher.dim
    return blocks


def build_caches(blocks: Sequence[TeacherBlock], views, progress: bool, ranks: Ranks = SINGLE) -> List[int]:
    """Every teacher's map of every view, computed once and reused (an interrupted build
    resumes); returns how many maps each teacher computed. With several ``ranks``, view i is
    extracted and written by rank ``i % world_size`` alone (:meth:`FeatureCache.ensure`)."""
    items = [CacheItem(v.name, v.image, v.labels) for v in views]
    return [block.cache.ensure(block.teacher, items, progress=progress, ranks=ranks) for block in blocks]


def blocks_info(blocks: Sequence[TeacherBlock]) -> List[dict]:
    """The run.json record of the teachers: name, model id, cache key, dim, cache folder, channels."""
    return [{"name": b.teacher.name, "model_id": b.teacher.model_id, "key": b.teacher.cache_key(), "dim": b.dim,
             "cache": str(b.cache.folder), "channels": list(b.channels)} for b in blocks]


def stored_dims(blocks: Sequence[TeacherBlock], feature_dim: Optional[int]) -> List[int]:
    """d_t = min(feature_dim, D_t) per teacher (D_t without ``--feature-dim``)."""
    if feature_dim is not None and feature_dim < 1:
        raise FeatgsError(f"--feature-dim must be >= 1, got {feature_dim}")
    return [b.dim if feature_dim is None else min(feature_dim, b.dim) for b in blocks]


def too_few_dims(blocks: Sequence[TeacherBlock], feature_dim: Optional[int]) -> List[str]:
    """Warnings for teachers whose maps ``--feature-dim`` cannot hold without merging labels.

    The labels teacher's maps take one vector per distinct name: n names span an (n-1)-dim
    affine space, all of which the PCA keeps when d >= n - 1. With fewer dims it drops the
    directions of least pixel variance, which are those that tell the rarest (smallest)
    objects apart: the variance kept still reads 99.6% while a query no longer finds them.
    """
    out = []
    for b in blocks:
        names = b.teacher.label_names if isinstance(b.teacher, LabelsTeacher) else None
        need = len(set(names.values())) - 1 if names else 0
        if feature_dim is not None and feature_dim < need:
            out.append(f"--feature-dim {feature_dim} is below the {need} dims that the labels teacher's "
                       f"{need + 1} distinct names span: the PCA merges the rarest labels (small objects may "
                       f"not be found by a query); use --feature-dim {need} or more")
    return out


def joint_targets(blocks: Sequence[TeacherBlock],
                  names: Sequence[str]) -> Callable[[int], List[Tuple[Channels, Tensor]]]:
    """View index -> [(channels, teacher map [D_t, h_t, w_t])] for the joint feature loss."""
    return lambda i: [(b.channels, b.cache.load(names[i])) for b in blocks]


def solve_blocks(g: Gaussians, cameras: Sequence[Camera], names: Sequence[str], blocks: Sequence[TeacherBlock],
                 config: SolveConfig, feature_dim: Optional[int], progress: bool,
                 ranks: Ranks = SINGLE) -> SolveResult:
    """One solve per teacher; features side by side and a block-diagonal decoder (see module doc).
    With several ``ranks`` each solve is distributed over them (:func:`solve_features`): every
    rank reads only the maps of its own views and ends with the same features.

    Stats: the single solve's for one teacher; for several, the worst of each (most CG
    iterations, largest residual, least top-K mass, most unseen Gaussians), summed seconds
    and dims, and each teacher's own under ``per_teacher``.
    """
    results = []
    for b in blocks:
        shapes = b.cache.meta["images"]  # (h, w) of every map: the cache is complete here
        sizes = [tuple(shapes[n]) for n in names]
        maps = [lambda n=n, c=b.cache: c.load(n) for n in names]
        results.append(solve_features(g, cameras, maps, sizes, config, feature_dim=feature_dim, progress=progress,
                                      ranks=ranks))
    if len(results) == 1:
        return results[0]
    features = torch.cat([r.features for r in results], dim=1)
    decoder = None
    if any(r.decoder is not None for r in results):
        weights, biases = [], []
        for r, b in zip(results, blocks):
            d = r.features.shape[1]
            eye = torch.eye(b.dim, d, device=features.device)
            weights.append(eye if r.decoder is None else r.decoder.weight.to(features.device))
            biases.append(torch.zeros(b.dim, device=features.device) if r.decoder is None
                          else r.decoder.bias.to(features.device))
        decoder = LinearDecoder(weight=torch.block_diag(*weights), bias=torch.cat(biases))
    stats = [r.stats for r in results]
    summary = {
        "feature_dim": sum(s["feature_dim"] for s in stats),
        "teacher_dim": sum(s["teacher_dim"] for s in stats),
        "pca_variance_kept": min(s["pca_variance_kept"] for s in stats),
        "top_k": config.top_k,
        "topk_mass_kept": min(s["topk_mass_kept"] for s in stats),
        "cg_iterations": max(s["cg_iterations"] for s in stats),
        "relative_residual": max(s["relative_residual"] for s in stats),
        "unseen_gaussians": max(s["unseen_gaussians"] for s in stats),
        "seconds": sum(s["seconds"] for s in stats),
        "per_teacher": {b.teacher.name: s for b, s in zip(blocks, stats)},
    }
    return SolveResult(features=features, decoder=decoder, stats=summary)
