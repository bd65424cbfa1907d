"""Evaluation of a run on its test views: image quality, feature fidelity, segmentation, speed."""

from __future__ import annotations

import json
import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import List, Optional, Tuple

import torch
import torch.nn.functional as F
from torch import Tensor
from tqdm.auto import tqdm

from featgs.atomic import atomic_open, atomic_write_text
from featgs.errors import FeatgsError
from featgs.gaussians import Gaussians
from featgs.pictures import FeaturePCA, colorize_labels, contact_sheet, palette, to_uint8
from featgs.render import render
from featgs.run import Run
from featgs.segmentation import confusion_matrix, miou_and_accuracy, segment_features
from featgs.data.images import over
from featgs.distributed import SINGLE, Ranks
from featgs.train.background import eval_background
from featgs.train.config import TrainConfig
from featgs.train.losses import psnr, ssim
from featgs.teachers import TeacherOptions, teacher_names
from featgs.train.blocks import TeacherBlock, make_blocks

METRIC_KEYS = ("psnr", "ssim", "feature_cosine", "miou", "accuracy", "fps")


def _mean(xs) -> Optional[float]:
    xs = [x for x in xs if x is not None and not math.isnan(x)]
    return sum(xs) / len(xs) if xs else None


@dataclass
class Judge:
    """What scoring needs besides the Gaussians: the teachers' cached maps and the label texts.

    Attributes:
        blocks: the run's teachers, their caches and channels (empty: no features to score).
        speaker: the first language-aligned teacher, if the scene has label names to segment by.
        names: label names, in the order of ``text`` rows; ``text`` [L, D_t] their embeddings
            by ``speaker``.
        lut: label id -> row of ``text`` (-1 for ids without a name).
    """

    blocks: List[TeacherBlock] = field(default_factory=list)
    speaker: Optional[TeacherBlock] = None
    names: List[str] = field(default_factory=list)
    text: Optional[Tensor] = None
    lut: Optional[Tensor] = None


def make_judge(scene, teachers: Optional[str], downscale: float, views,
               options: TeacherOptions = TeacherOptions()) -> Judge:
    """The teachers ("labels", "sam,clip", ...), their caches (checked for ``views``) and the
    label text embeddings of the first language-aligned one."""
    if not teachers:
        return Judge()
    judge = Judge(blocks=make_blocks(scene, teacher_names(teachers), options, downscale))
    for b in judge.blocks:
        b.cache.check(b.teacher, [v.name for v in views])
    speaker = next((b for b in judge.blocks if b.teacher.language_aligned), None)
    if scene.label_names and speaker is not None:
        ids = sorted(scene.label_names)
        judge.names = [scene.label_names[i] for i in ids]
        judge.text = speaker.teacher.encode_text(judge.names)
        judge.speaker = speaker
        judge.lut = torch.full((max(ids) + 1,), -1, dtype=torch.long)
        judge.lut[torch.tensor(ids)] = torch.arange(len(ids))
    return judge


def _cosine(features: Tensor, target: Tensor, channels: Tuple[int, int]) -> float:
    """Mean cosine between a teacher's channels of rendered features [H, W, C] and its map
    [D_t, h, w], the rendering resized (bilinear) to the map's resolution."""
    pred = features[..., channels[0]:channels[1]].permute(2, 0, 1)[None]
    target = target.float().to(pred.device)
    if pred.shape[-2:] != target.shape[-2:]:
        pred = F.interpolate(pred, size=target.shape[-2:], mode="bilinear", align_corners=False)
    return float(F.cosine_similarity(pred[0], target, dim=0).mean())


@torch.no_grad()
def evaluate_gaussians(g: Gaussians, views, judge: Judge, *, pictures: Optional[Path] = None,
                       title: str = "", progress: bool = True, background=(0.0, 0.0, 0.0),
                       ranks: Ranks = SINGLE) -> dict:
    """Score ``g`` on ``views``; write a contact sheet per view into ``pictures`` if given.
    With several ``ranks``, each renders its share of the views and every rank gets the metrics
    of all (per-view records gathered, confusion matrices and render times summed).

    Segmentation labels each pixel with the label name whose text embedding is closest to
    the rendered feature, and scores it against the ground-truth label maps (or, for scenes
    without them, against the same argmax of the teacher's own maps, as Feature 3DGS does).
    """
    text, names = judge.text, judge.names
    pca = FeaturePCA.fit_gaussians(g) if pictures is not None and g.feature_dim else None
    colors = palette(max(len(names), 1))
    bg = torch.tensor(background, dtype=torch.float32)
    per_view, conf = [], None
    render_seconds = 0.0
    for v in tqdm(ranks.shard(views), desc="evaluate", unit="view", disable=not progress, leave=False):
        gt = over(v.rgba(), bg)
        t0 = time.perf_counter()
        out = render(g, v.camera, features=bool(judge.blocks), background=bg)
        render_seconds += time.perf_counter() - t0
        rec = {"view": v.name, "psnr": psnr(out.rgb, gt), "ssim": float(ssim(out.rgb.clamp(0, 1), gt))}
        seg = None
        if judge.blocks:
            cosines = {b.teacher.name: _cosine(out.features, b.cache.load(v.name), b.channels) for b in judge.blocks}
            rec["feature_cosine"] = sum(cosines.values()) / len(cosines)
            if len(cosines) > 1:
                rec["feature_cosine_per_teacher"] = cosines
            if text is not None:
                start, end = judge.speaker.channels
                seg = segment_features(out.features[..., start:end], text)
                truth_ids = v.labels()
                if truth_ids is not None:
                    lut = judge.lut
                    truth = lut[truth_ids.clamp(0, len(lut) - 1)]
                    truth[(truth_ids < 0) | (truth_ids >= len(lut))] = -1
                else:
                    truth = segment_features(judge.speaker.cache.load(v.name).float().permute(1, 2, 0), text)
                    if truth.shape != seg.shape:
                        truth = F.interpolate(truth[None, None].float(), size=seg.shape, mode="nearest")[0, 0].long()
                c = confusion_matrix(seg, truth, len(names))
                conf = c if conf is None else conf + c
                rec["miou"], rec["accuracy"], _ = miou_and_accuracy(c)
        per_view.append(rec)
        if pictures is not None:
            panels, titles = [to_uint8(gt), to_uint8(out.rgb)], ["ground truth", f"render {rec['psnr']:.1f} dB"]
            if pca is not None and out.features is not None:
                panels.append(to_uint8(pca(out.features)))
                titles.append("features (PCA)")
            if seg is not None:
                panels.append(colorize_labels(seg, colors))
                titles.append(f"segmentation acc {rec['accuracy']:.3f}")
            legend = {n: colors[k] for k, n in enumerate(names)} if seg is not None else None
            sheet = contact_sheet(panels, titles, legend=legend, footer=f"{title} / {v.name}")
            pictures.mkdir(parents=True, exist_ok=True)
            with atomic_open(pictures / f"{v.name}.png", "wb") as f:
                sheet.save(f, format="PNG")
    per_view, conf, render_seconds = ranks.unshard(per_view), ranks.sum_objects(conf), ranks.sum_objects(render_seconds)
    metrics = {
        "psnr": _mean(r["psnr"] for r in per_view),
        "ssim": _mean(r["ssim"] for r in per_view),
        "feature_cosine": _mean(r.get("feature_cosine") for r in per_view),
        "miou": None,
        "accuracy": None,
        "fps": len(views) / render_seconds if render_seconds > 0 else None,
    }
    if len(judge.blocks) > 1:
        metrics["feature_cosine_per_teacher"] = {
            b.teacher.name: _mean(r["feature_cosine_per_teacher"][b.teacher.name] for r in per_view)
            for b in judge.blocks}
    if conf is not None:
        miou, acc, iou = miou_and_accuracy(conf)
        metrics["miou"], metrics["accuracy"] = miou, acc
        metrics["per_label_iou"] = {n: (None if math.isnan(x) else float(x)) for n, x in zip(names, iou.tolist())}
    metrics.update(num_views=len(views), num_gaussians=len(g), views=per_view)
    return metrics


def evaluate_run(root: Path, *, pictures: bool = True, progress: bool = True, ranks: Ranks = SINGLE) -> dict:
    """Metrics of a run over its scene's test views (the train views if it has none), written
    to RUN/metrics.json (by rank 0), with a contact sheet per view under RUN/eval/."""
    from featgs.data import load_scene

    run = Run.open(root)
    info = run.info
    config = TrainConfig.from_dict(info["config"])
    g = run.gaussians()
    data = run.data
    if not data.exists():
        raise FeatgsError(f"{run.root}: its data folder {data} is gone; expected the folder the run was trained on")
    scene = load_scene(data, downscale=config.downscale)
    views = scene.test or scene.train
    teacher_info = info.get("teacher")
    judge = make_judge(scene, teacher_info["name"] if teacher_info else None, config.downscale, views,
                       config.teacher_options)
    total = sum(b.dim for b in judge.blocks)
    if judge.blocks and (total != teacher_info["dim"] or g.output_feature_dim != total):
        raise FeatgsError(f"{run.root}: run renders {g.output_feature_dim}-dim features, teacher "
                          f"{teacher_info['name']!r} gives {total}")
    background = eval_background(config.background, scene.has_alpha())
    metrics = evaluate_gaussians(g, views, judge, pictures=(run.root / "eval") if pictures else None,
                                 title=run.root.name, progress=progress and ranks.is_main, background=background,
                                 ranks=ranks)
    metrics.update(split="test" if scene.test else "train",
                   fps_note="rgb + features, renderer 'torch', this machine")
    ranks.on_main(lambda: atomic_write_text(run.paths.metrics, json.dumps(metrics, indent=2)))
    return metrics
