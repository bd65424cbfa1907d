"""Datasets: loaders for transforms.json (nerfstudio, instant-ngp), NeRF-synthetic and COLMAP
folders, all giving one :class:`Scene`; and built-in procedural scenes
(:mod:`featgs.data.procedural`)."""

from featgs.data.load import FORMATS, detect_format, load_scene
from featgs.data.points import initial_points
from featgs.data.scene import Scene, View

__all__ = ["FORMATS", "Scene", "View", "detect_format", "initial_points", "load_scene"]
