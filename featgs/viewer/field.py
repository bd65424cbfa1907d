"""What the viewer asks of a feature field, in one place.

Queries, prompts, segmentation and edits are :class:`featgs.query.FeatureField`'s job; the
viewer only calls them (through :class:`FieldAdapter`) and draws the results. Where the
package has no FeatureField (or a run has no features), the viewer still shows colour and
depth, and the widgets that need more are disabled.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, List, Optional, Protocol, Sequence, Tuple, runtime_checkable

import numpy as np
from torch import Tensor

from featgs.camera import Camera
from featgs.errors import FeatgsError
from featgs.gaussians import Gaussians


@runtime_checkable
class ViewerField(Protocol):
    """The narrow part of :class:`featgs.query.FeatureField` the viewer uses."""

    @property
    def gaussians(self) -> Gaussians: ...

    def query(self, text: str, *, threshold: Optional[float] = None) -> Any: ...

    def prompt(self, camera: Camera, points: Any = None, point_labels: Any = None, box: Any = None) -> Tuple[Tensor, Any]: ...

    def edit(self, selection: Any, op: str, **kwargs: Any) -> Any: ...

    def save(self, path: Path) -> None: ...


def _feature_field_class():
    try:
        from featgs.query import FeatureField  # type: ignore[attr-defined]
    except ImportError:
        return None
    return FeatureField


class _PlainField:
    """A run's Gaussians when no FeatureField is available: colour, depth and features only."""

    def __init__(self, gaussians: Gaussians) -> None:
        self.gaussians = gaussians

    def save(self, path: Path) -> None:
        from featgs.gaussians import save_ply

        save_ply(path, self.gaussians)


class FieldAdapter:
    """The viewer's calls into the field (one adapter per viewer; stateless)."""

    # -- loading ------------------------------------------------------------------------------
    def load(self, run_dir: Path) -> Any:
        cls = _feature_field_class()
        if cls is not None:
            return cls.load(run_dir)
        from featgs.train.run import load_run_gaussians

        return _PlainField(load_run_gaussians(run_dir))

    def training_cameras(self, run_dir: Path) -> List[Camera]:
        """The run's training cameras (its data folder's train views), or [] if the data is gone."""
        from featgs.train.config import TrainConfig
        from featgs.train.run import read_run

        info = read_run(run_dir)
        data = Path(info.get("data", ""))
        if not info.get("data") or not data.exists():
            return []
        try:
            from featgs.data import load_scene

            config = TrainConfig.from_dict(info["config"])
            scene = load_scene(data, downscale=config.downscale)
        except (FeatgsError, KeyError, TypeError, ValueError):
            return []
        return [v.camera for v in scene.train]

    # -- what the field can do ----------------------------------------------------------------
    def gaussians(self, field: Any) -> Gaussians:
        return field.gaussians

    def label_names(self, field: Any) -> Sequence[str]:
        return list(getattr(field, "label_names", None) or [])

    def can_query(self, field: Any) -> bool:
        return not isinstance(field, _PlainField) and field.gaussians.feature_dim > 0

    def can_prompt(self, field: Any) -> bool:
        return self.can_query(field)

    def can_segment(self, field: Any) -> bool:
        return self.can_query(field) and bool(self.label_names(field))

    def can_edit(self, field: Any) -> bool:
        return not isinstance(field, _PlainField)

    # -- calls ---------------------------------------------------------------------------------
    def query(self, field: Any, text: str, threshold: float) -> Tuple[Any, Tensor, Tuple[float, float]]:
        """(selection, per-Gaussian relevancy [N], (lo, hi) range for the heat ramp)."""
        raise FeatgsError("language queries need featgs.query.FeatureField")

    def prompt(self, field: Any, camera: Camera, *, point=None, box=None) -> Tuple[np.ndarray, Any]:
        """(mask [H, W] bool at ``camera``, selection) of a point (x, y) or a box (x0, y0, x1, y1) in pixels."""
        raise FeatgsError("prompts need featgs.query.FeatureField")

    def segment(self, field: Any, camera: Camera) -> Tensor:
        """[H, W] int64 index into :meth:`label_names` (-1: none)."""
        raise FeatgsError("segmentation needs featgs.query.FeatureField")

    def edit(self, field: Any, selection: Any, op: str, **kwargs) -> Any:
        raise FeatgsError("edits need featgs.query.FeatureField")

    def save(self, field: Any, path: Path) -> None:
        field.save(path)
