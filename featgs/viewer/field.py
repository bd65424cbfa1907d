"""The viewer's calls into :class:`featgs.query.FeatureField`, in one place.

Queries, prompts, segmentation, edits and saving are the field's job; the viewer only calls
them and draws the results. A FeatureField runs its operations one at a time under its own
lock, so browsers that query or prompt at the same moment take turns. Plain colour renders
do not go through the field and run in parallel.
"""

from __future__ import annotations

from pathlib import Path
from typing import List, Optional, Sequence, Tuple

import numpy as np
from torch import Tensor

from featgs.camera import Camera
from featgs.errors import FeatgsError
from featgs.gaussians import Gaussians
from featgs.query import FeatureField, QueryConfig, Selection
from featgs.query.edit import make_edit

EDITS = ("delete", "extract", "recolour")  # the GUI's buttons ("recolour" is the field's "recolor")

# A text query's answer: (selection, per-Gaussian relevancy [N], (lo, hi) of the heat ramp).
QueryAnswer = Tuple[Selection, Tensor, Tuple[float, float]]


class FieldAdapter:
    """What the viewer asks of a field (one adapter per viewer)."""

    # -- loading and facts --------------------------------------------------------------------
    def load(self, run_dir: Path) -> FeatureField:
        return FeatureField.load(run_dir)

    def training_cameras(self, field: FeatureField) -> List[Camera]:
        """The run's training cameras ([] when its data folder is gone)."""
        return list(field.train_cameras)

    def gaussians(self, field: FeatureField) -> Gaussians:
        return field.gaussians

    def label_names(self, field: FeatureField) -> Sequence[str]:
        return list(field.label_names)

    def can_query(self, field: FeatureField) -> bool:
        return field.encoder is not None and field.gaussians.feature_dim > 0

    def can_prompt(self, field: FeatureField) -> bool:
        return field.gaussians.feature_dim > 0

    def can_segment(self, field: FeatureField) -> bool:
        return self.can_query(field) and bool(field.label_names)

    def can_edit(self, field: FeatureField) -> bool:
        return True

    # -- calls ---------------------------------------------------------------------------------
    def query(self, field: FeatureField, text: str, threshold: float) -> QueryAnswer:
        """(selection, per-Gaussian relevancy [N], (lo, hi) of the heat ramp).

        The ramp is the field's own: 0.5 (no better than the negative phrases) to 1.
        """
        selection = field.query(text, config=QueryConfig(threshold=threshold))
        relevancy = field.relevancy(text)
        return selection, relevancy, (0.5, 1.0)

    def prompt(self, field: FeatureField, camera: Camera, *, point: Optional[Sequence[float]] = None,
               box: Optional[Sequence[float]] = None) -> Tuple[np.ndarray, Selection]:
        """(mask [H, W] bool at ``camera``, selection) of a point (x, y) or a box (x0, y0, x1, y1) in pixels."""
        points = None
        if point is not None:  # a click on the canvas's last pixel row/column is still inside the view
            points = [[min(float(point[0]), camera.width - 1e-3), min(float(point[1]), camera.height - 1e-3)]]
        mask, selection = field.prompt(camera, points=points, box=None if box is None else list(box))
        return np.asarray(mask.cpu().numpy(), dtype=bool), selection

    def segment(self, field: FeatureField, camera: Camera) -> Tensor:
        """[H, W] int64 index into :meth:`label_names`."""
        return field.segment(camera)

    def edit(self, field: FeatureField, selection: Selection, op: str,
             colour: Optional[Tuple[float, float, float]] = None) -> FeatureField:
        if op not in EDITS:
            raise FeatgsError(f"unknown edit {op!r}; expected one of {', '.join(EDITS)}")
        rgb = (colour if colour is not None else (1.0, 0.5, 0.0)) if op == "recolour" else None
        edit = make_edit("recolor" if op == "recolour" else op, rgb=rgb)
        return field.edit(selection, edit)

    def save(self, field: FeatureField, path: Path) -> None:
        field.save(path)
