"""What ``featgs process`` did: registration, accuracy, size and time per stage, as text and
as ``DATA/process.json``."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Optional

# Below this share of registered images a reconstruction is refused; below 1 it is a warning.
MIN_REGISTERED_FRACTION = 0.5
STAGES = ("inputs", "features", "matching", "mapping", "undistort", "pyramid")
_SHOWN_NAMES = 10


@dataclass
class ProcessSummary:
    """Attributes:
    source: the input (folder or video), as given.
    kind: "photos" or "video".
    given: images that went into SfM (photos found, or frames sampled).
    registered: images the chosen reconstruction posed.
    left_out: names of the given images it did not pose (staged names: frame_00012.jpg, ...).
    models: reconstructions the mapper made (the largest is kept).
    matcher: the matcher used (exhaustive, sequential or vocab).
    cameras: cameras (intrinsics) in the model; camera_model: the model the mapper fitted.
    undistorted: whether images were undistorted to PINHOLE.
    mean_reprojection_error: pixels, over the model's 3D points (None without points).
    points: 3D points in sparse/0.
    image_size: [width, height] of the first registered image in images/.
    seconds: wall seconds per stage (STAGES) and "total".
    notes / warnings: lines for the user (warnings: a partial registration, a cut video).
    labels: label maps copied to labels/ (those of the registered images; 0 without).
    """

    source: str
    kind: str
    given: int
    registered: int
    left_out: list[str]
    models: int
    matcher: str
    cameras: int
    camera_model: str
    undistorted: bool
    mean_reprojection_error: Optional[float]
    points: int
    image_size: list[int]
    seconds: dict[str, float] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    labels: int = 0

    def to_dict(self) -> dict:
        return asdict(self)


def names_shown(names: list[str]) -> str:
    """A list of names for one line: the first ten, then how many more."""
    more = len(names) - _SHOWN_NAMES
    return ", ".join(names[:_SHOWN_NAMES]) + (f" and {more} more" if more > 0 else "")


def registration_warning(given: int, registered: int, left_out: list[str]) -> Optional[str]:
    """The warning for a partial registration (None when every image was posed)."""
    if registered >= given:
        return None
    return f"registered {registered} of {given} images; left out: {names_shown(left_out)}"


def format_summary(s: ProcessSummary, out: str) -> str:
    """The lines ``featgs process`` prints at the end."""
    error = "n/a" if s.mean_reprojection_error is None else f"{s.mean_reprojection_error:.2f} px"
    lines = [
        f"registered {s.registered} of {s.given} {'frames' if s.kind == 'video' else 'images'}"
        + (f" (left out: {names_shown(s.left_out)})" if s.left_out else ""),
        f"mean reprojection error {error}, {s.points} points, {s.cameras} camera{'s' * (s.cameras != 1)} "
        f"({s.camera_model}{' -> PINHOLE' if s.undistorted else ''}), {s.matcher} matching"
        + (f", largest of {s.models} models" if s.models > 1 else ""),
        "seconds: " + "  ".join(f"{k} {s.seconds[k]:.1f}" for k in (*STAGES, "total") if k in s.seconds),
        f"-> {out} ({s.image_size[0]}x{s.image_size[1]}; images/, sparse/0, images_2/4/8"
        + (f", labels/ ({s.labels} label maps)" if s.labels else "") + ")",
    ]
    return "\n".join(lines)
