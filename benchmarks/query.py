"""Query, prompt and edit benchmark on a run of the built-in tabletop scene.

    python benchmarks/query.py [RUN] [--views N]        (RUN default: /tmp/q/demo/run)

Make the run with ``featgs demo --out /tmp/q/demo``. For every object label of the scene
(label names other than floor, wall and ceiling), on the run's test views where the object
covers at least 20 pixels:

- query IoU: the label name queried as text; the selection's rendered mask (pixels where it
  holds at least half the blend weight) against the ground-truth label mask, per view;
- point / box: a click at the most interior pixel of the object's instance, and the
  instance's bounding box, through the feature-affinity path; IoU against the instance (the
  whole label mask, or for a label of several objects, its largest connected region);
- delete: PSNR against the ground truth of the pixels outside the object, before minus after
  deleting the query's selection ("drop"; "drop 1px": the 1-pixel anti-aliased border of
  the object left out too); "ideal": the drop of a perfect deletion, the renders changed by
  exactly what removing the object from the scene description changes in its ray-cast images
  (shadows off: a deleted Gaussian casts none) - the anti-aliased border pixels mix the object
  in, so even a perfect deletion loses PSNR there; "gone": share of the object's pixels whose
  colour changed by more than 0.1 (nothing can show the surface the object hid, but the
  object must not stay);
- extract: "kept", the mean alpha of the extracted object over its ground-truth pixels;
  "spill", its alpha on floor, wall and ceiling pixels (beyond the object's 1-pixel border)
  relative to its alpha on its own pixels (pixels of other objects are not counted: the
  extracted object rightly shows what they hid of it);
- recolour: hue error (degrees) of the recoloured object's saturated pixels against the
  target hue, and PSNR of the pixels outside it between the original and recoloured renders.

Then synonyms: a text, its intended object, and the rank of that object among all label
names by mean rendered relevancy inside each label's ground-truth pixels. Then latency.
Writes benchmarks/results/query-<cpu|cuda>.{txt,json}.
"""

from __future__ import annotations

import argparse
import colorsys
import dataclasses
import math
import sys
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from scipy import ndimage

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _util import device_name, print_table, save_results, time_it  # noqa: E402

from featgs.data import load_scene  # noqa: E402
from featgs.data.procedural.make import render_view  # noqa: E402
from featgs.data.procedural.spec import parse_scene_spec  # noqa: E402
from featgs.query import Delete, Extract, FeatureField, QueryConfig, Recolor  # noqa: E402
from featgs.render import render  # noqa: E402
from featgs.run import read_run  # noqa: E402

STUFF = ("floor", "wall", "ceiling")
SYNONYMS = [("cup", "red mug"), ("coffee cup", "red mug"), ("mug", "red mug"), ("fruit", "green apple"),
            ("apple", "green apple"), ("novel", "blue book"), ("dish", "white plate"), ("light", "lamp"),
            ("desk lamp", "lamp"), ("vegetable", "tomato")]
MIN_PIXELS = 20


def iou(a: np.ndarray, b: np.ndarray) -> float:
    union = (a | b).sum()
    return float((a & b).sum() / union) if union else float("nan")


def psnr(a: torch.Tensor, b: torch.Tensor, where: torch.Tensor) -> float:
    mse = float(((a - b) ** 2)[where].mean())
    return -10 * math.log10(max(mse, 1e-12))


def hue_deg(rgb: np.ndarray) -> np.ndarray:
    """Hues in degrees of [M, 3] colours."""
    return np.array([colorsys.rgb_to_hsv(*c)[0] * 360 for c in rgb])


def target_colour(mean_rgb: np.ndarray) -> tuple:
    """A saturated colour whose hue is opposite the object's."""
    h = (colorsys.rgb_to_hsv(*mean_rgb)[0] + 0.5) % 1.0
    return colorsys.hsv_to_rgb(h, 0.8, 0.8)


def instance(gt: np.ndarray) -> np.ndarray:
    """The largest connected region of a mask."""
    lab, n = ndimage.label(gt)
    sizes = ndimage.sum(gt, lab, range(1, n + 1))
    return lab == int(np.argmax(sizes)) + 1


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("run", nargs="?", type=Path, default=Path("/tmp/q/demo/run"))
    ap.add_argument("--views", type=int, default=0, help="use the first N test views (default: all)")
    args = ap.parse_args()
    torch.manual_seed(0)
    info = read_run(args.run)
    field = FeatureField.load(args.run)
    scene = load_scene(info["data"])
    views = scene.test[: args.views or None]
    ids_of = {}
    for k, name in scene.label_names.items():
        ids_of.setdefault(name, []).append(k)
    objects = [n for n in field.label_names if n not in STUFF]
    spec = parse_scene_spec((Path(info["data"]) / "scene.txt").read_text())
    instances = spec.instances_per_label()
    unlit = dataclasses.replace(spec, lights=tuple(dataclasses.replace(light, shadow=0.0) for light in spec.lights))
    input_cameras = [v.camera for v in load_scene(info["data"], normalize=False).test[: len(views)]]
    unlit_images = [torch.from_numpy(render_view(unlit, c, 2).rgb).float() for c in input_cameras]
    stuff_ids = [k for n in STUFF for k in ids_of.get(n, [])]
    gts = [(v, v.image(), v.labels().numpy()) for v in views]
    with torch.no_grad():
        originals = [render(field.gaussians, v.camera, features=False).rgb.clamp(0, 1).cpu() for v in views]

    rows, per_object = [], {}
    for name in objects:
        t0 = time.perf_counter()
        sel = field.query(name)
        q_seconds = time.perf_counter() - t0
        deleted = field.edit(sel, Delete())
        extracted = field.edit(sel, Extract())
        without = dataclasses.replace(unlit, primitives=tuple(p for p in unlit.primitives
                                                            if spec.labels[p.label_id] != name))
        rec = {"query_iou": [], "point_iou": [], "box_iou": [], "drop": [], "drop_1px": [], "ideal": [], "gone": [],
               "extract_kept": [], "extract_spill": [], "hue_error": [], "recolour_outside_psnr": [], "pixels": []}
        target = None
        recoloured = None
        for (v, image, labels), before, cam_in, unlit_image in zip(gts, originals, input_cameras, unlit_images):
            gt = np.isin(labels, ids_of[name])
            if gt.sum() < MIN_PIXELS:
                continue
            rec["pixels"].append(int(gt.sum()))
            rec["query_iou"].append(iou(field.mask(v.camera, sel).numpy(), gt))
            inst = instance(gt) if instances.get(name, 1) > 1 else gt
            dist = ndimage.distance_transform_edt(inst)
            y, x = np.unravel_index(dist.argmax(), dist.shape)
            rec["point_iou"].append(iou(field.prompt(v.camera, points=[[x + 0.5, y + 0.5]])[0].numpy(), inst))
            ys, xs = np.nonzero(inst)
            box = [xs.min(), ys.min(), xs.max() + 1, ys.max() + 1]
            rec["box_iou"].append(iou(field.prompt(v.camera, box=box)[0].numpy(), inst))
            gt_t = torch.from_numpy(gt)
            band = F.max_pool2d(gt_t[None, None].float(), 3, 1, 1)[0, 0] > 0
            with torch.no_grad():
                after = render(deleted.gaussians, v.camera, features=False).rgb.clamp(0, 1).cpu()
                alone = render(extracted.gaussians, v.camera, features=False)
            rec["drop"].append(psnr(before, image, ~gt_t) - psnr(after, image, ~gt_t))
            rec["drop_1px"].append(psnr(before, image, ~band) - psnr(after, image, ~band))
            ideal = (before + torch.from_numpy(render_view(without, cam_in, 2).rgb).float() - unlit_image).clamp(0, 1)
            rec["ideal"].append(psnr(before, image, ~gt_t) - psnr(ideal, image, ~gt_t))
            rec["gone"].append(float(((after - before).abs().amax(-1) > 0.1)[gt_t].float().mean()))
            alpha = alone.alpha[..., 0].cpu()
            stuff = torch.from_numpy(np.isin(labels, stuff_ids)) & ~band
            rec["extract_kept"].append(float(alpha[gt_t].mean()))
            rec["extract_spill"].append(float(alpha[stuff].sum() / alpha[gt_t].sum().clamp_min(1e-9)))
            if target is None:
                target = target_colour(before[gt_t].mean(0).numpy())
                recoloured = field.edit(sel, Recolor(target))
            with torch.no_grad():
                rc = render(recoloured.gaussians, v.camera, features=False).rgb.clamp(0, 1).cpu()
            inside = rc[gt_t].numpy()
            sat = inside.max(1) - inside.min(1) > 0.15
            if sat.any():
                err = np.abs((hue_deg(inside[sat]) - hue_deg(np.array([target]))[0] + 180) % 360 - 180)
                rec["hue_error"].append(float(np.median(err)))
            rec["recolour_outside_psnr"].append(psnr(rc, before, ~band))
        summary = {k: (float(np.mean(vals)) if vals else float("nan")) for k, vals in rec.items()}
        summary.update(min_query_iou=float(np.min(rec["query_iou"])), views=len(rec["query_iou"]),
                       num_selected=len(sel), query_seconds=q_seconds)
        per_object[name] = summary
        rows.append([name, summary["views"], f"{summary['pixels']:.0f}", len(sel),
                     f"{summary['query_iou']:.3f}", f"{summary['min_query_iou']:.3f}",
                     f"{summary['point_iou']:.3f}", f"{summary['box_iou']:.3f}",
                     f"{summary['drop']:.2f}", f"{summary['ideal']:.2f}", f"{summary['drop_1px']:.2f}",
                     f"{summary['gone']:.2f}",
                     f"{summary['extract_kept']:.3f}", f"{summary['extract_spill']:.3f}", f"{summary['hue_error']:.1f}",
                     f"{summary['recolour_outside_psnr']:.1f}"])
        print(f"  {name}: done", flush=True)

    header = (f"query / prompt / edit on {args.run} ({field.num_gaussians} Gaussians, {len(views)} test views "
              f"of {views[0].camera.width}x{views[0].camera.height}); {device_name(field.gaussians.device)}")
    print(header)
    table = print_table(["object", "views", "px", "selected", "query IoU", "min", "point IoU", "box IoU",
                         "del drop dB", "ideal", "drop 1px", "gone", "extr kept", "spill", "hue err", "recol out dB"], rows)

    # synonyms: rank of the intended object by mean rendered relevancy inside each label's pixels
    syn_rows, synonyms = [], []
    for text, want in SYNONYMS:
        sums = {n: 0.0 for n in field.label_names}
        counts = {n: 0 for n in field.label_names}
        for v, _, labels in gts:
            heat = field.relevancy_map(v.camera, text).numpy()
            for n in field.label_names:
                m = np.isin(labels, ids_of[n])
                sums[n] += float(heat[m].sum())
                counts[n] += int(m.sum())
        score = {n: sums[n] / counts[n] for n in field.label_names if counts[n]}
        ranked = sorted(score, key=score.get, reverse=True)
        rank = ranked.index(want) + 1
        runner = ranked[1] if ranked[0] == want else ranked[0]
        synonyms.append({"text": text, "object": want, "rank": rank, "top": ranked[0], "score": score[want],
                         "runner_up": runner, "runner_up_score": score[runner]})
        syn_rows.append([text, want, rank, ranked[0], f"{score[want]:.3f}", f"{runner} {score[runner]:.3f}"])
    syn_table = print_table(["text", "object", "rank", "ranked first", "relevancy", "best other"], syn_rows)

    # latency, at the first test view that shows the probe object
    probe = "red mug" if "red mug" in objects else objects[0]
    k = next(i for i, (_, _, labels) in enumerate(gts) if np.isin(labels, ids_of[probe]).sum() >= MIN_PIXELS)
    cam = views[k].camera
    gt0 = np.isin(gts[k][2], ids_of[probe])
    y, x = np.unravel_index(ndimage.distance_transform_edt(instance(gt0)).argmax(), gt0.shape)

    def timed(fn) -> float:
        return time_it(fn, field.gaussians.device, repeats=5)

    latency = {
        "query, new text (embedding, threshold, cleaning)": timed(
            lambda: field.query(f"the {probe} {time.perf_counter_ns()}")),
        "query, new text, raw threshold (no cleaning)": timed(
            lambda: field.query(f"the {probe} {time.perf_counter_ns()}", config=QueryConfig(clean=False))),
        "query, a text asked before (kept selection)": timed(lambda: field.query(probe)),
        "relevancy map (1 view)": timed(lambda: field.relevancy_map(cam, probe)),
        "point prompt": timed(lambda: field.prompt(cam, points=[[x + 0.5, y + 0.5]])),
        "segment (1 view)": timed(lambda: field.segment(cam)),
        "rgb render (reference)": timed(lambda: field.render(cam)),
    }
    lat_rows = [[k, f"{1000 * s:.0f}"] for k, s in latency.items()]
    lat_table = print_table(["operation", "ms (median of 5)"], lat_rows)
    save_results("query", {"device_kind": field.gaussians.device.type, "device": device_name(field.gaussians.device),
                           "run": str(args.run), "num_gaussians": field.num_gaussians, "views": len(views),
                           "objects": per_object, "synonyms": synonyms, "latency_seconds": latency},
                 "\n\n".join([header, table, syn_table, lat_table]))


if __name__ == "__main__":
    main()
