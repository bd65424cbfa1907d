"""How the viewer serves and renders (the settings of ``featgs view``)."""

from __future__ import annotations

from dataclasses import dataclass

from featgs.errors import FeatgsError


@dataclass(frozen=True)
class ViewerConfig:
    """How the viewer serves and renders.

    Attributes:
        host, port: where to listen (port 0: any free port; a taken port moves to the next).
        still_size: long side in pixels of the view drawn once the camera rests.
        moving_size: long side while the camera moves.
        still_delay: seconds without camera motion before the still view is drawn.
        max_renders: renders running at once over all browsers (the rest wait their turn).
        threshold: initial query threshold (the slider).
        frustums: show the training cameras (click one to jump to it).
        jpeg_quality: of the moving frames (still frames go as PNG).
    """

    host: str = "127.0.0.1"
    port: int = 8080
    still_size: int = 256
    moving_size: int = 128
    still_delay: float = 0.3
    max_renders: int = 2
    threshold: float = 0.5
    frustums: bool = True
    jpeg_quality: int = 85

    def __post_init__(self) -> None:
        if not 0 <= self.port <= 65535:
            raise FeatgsError(f"--port must be in 0..65535, got {self.port}")
        for name in ("still_size", "moving_size"):
            if not 16 <= getattr(self, name) <= 4096:
                raise FeatgsError(f"--{name.replace('_', '-')} must be in 16..4096 pixels, got {getattr(self, name)}")
        if self.max_renders < 1:
            raise FeatgsError(f"max_renders must be >= 1, got {self.max_renders}")
        if not 0.0 < self.threshold < 1.0:
            raise FeatgsError(f"--threshold must be in (0, 1), got {self.threshold}")
