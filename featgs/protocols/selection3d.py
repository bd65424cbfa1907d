"""Selection in 3D, as OpenGaussian (Wu et al., NeurIPS 2024; ``scripts/compute_lerf_iou.py``)
and Occam's LGS score it: the text picks Gaussians in 3D, only those are rendered, and the
rendered silhouette is compared with the object's mask.

Per query (frame, category text, mask): the Gaussians that :meth:`FeatureField.query` selects
for the text (featgs's own rule: on runs with label names the text must beat every other
label name; cleaned of floaters and completed with what they hide), rendered alone at the
frame's camera; the silhouette is ``round(255 alpha) > 10`` (OpenGaussian writes it as an
8-bit image and reads it back with ``> 10``). IoU = |silhouette & mask| / |silhouette | mask|
(0 for an empty union). mIoU = the mean over queries; Acc@0.25 and Acc@0.5 = the share of
queries with IoU *above* 0.25 and 0.5 (strictly, as there).

A 2D protocol asks each pixel of a rendered feature map; this one asks the 3D field itself,
which is what an edit or a robot acts on: relevancy that is right on most pixels can still
select the wrong Gaussians, and the two scores often differ by a lot.

Annotations: a LERF-OVS frame folder (:mod:`featgs.protocols.lerf_ovs`; every category of a
frame is a query) or a 3D-OVS scene (:mod:`featgs.protocols.ovs3d`; every class with a
non-empty mask in a view is a query).
"""

from __future__ import annotations

from pathlib import Path
from typing import Iterable, Tuple

import numpy as np
from tqdm.auto import tqdm

from featgs.camera import Camera
from featgs.errors import FeatgsError
from featgs.protocols.common import ProtocolRun, iou, mean, per_category, selection_mask

NAME = "selection-3d"
KEYS = ("miou", "acc@0.25", "acc@0.5")


def evaluate_queries(pr: ProtocolRun, queries: Iterable[Tuple[str, Camera, str, np.ndarray]], *,
                     clean: bool = True, progress: bool = True) -> dict:
    """Scores of (frame name, camera, category, mask [H, W] bool) queries."""
    records = []
    for frame, cam, category, mask in tqdm(list(queries), desc=NAME, unit="query", disable=not progress, leave=False):
        silhouette, count = selection_mask(pr.field, cam, category, clean=clean)
        x = iou(silhouette.numpy(), mask)
        records.append({"frame": frame, "category": category, "miou": x, "acc@0.25": float(x > 0.25),
                        "acc@0.5": float(x > 0.5), "selected_gaussians": count})
    return {"protocol": NAME, "scene": pr.name, "num_queries": len(records),
            **{k: mean(r[k] for r in records) for k in KEYS},
            "per_category": per_category(records, KEYS), "queries": records}


def evaluate(pr: ProtocolRun, labels: Path, *, progress: bool = True) -> dict:
    """3D-selection scores on LERF-OVS or 3D-OVS annotations (told apart by their layout)."""
    from featgs.protocols import lerf_ovs, ovs3d

    labels = Path(labels)
    if ovs3d.find_segmentations(labels) is not None:
        queries = ovs3d.selection_queries(pr, ovs3d.read_annotations(labels))
    elif labels.is_dir() and any(labels.glob("*.json")):
        queries = lerf_ovs.lerf_queries(pr, lerf_ovs.read_frames(labels))
    else:
        raise FeatgsError(f"{labels}: neither LERF-OVS frame annotations (*.json) nor a 3D-OVS scene "
                          "(segmentations/classes.txt); expected one of them")
    return evaluate_queries(pr, queries, progress=progress)
