"""Built-in procedural scenes: a plain-text description (:mod:`.spec`), ray-cast in numpy
(:mod:`.raycast`), from an orbit or a sphere of cameras (:mod:`.rig`), written as a dataset
folder (:mod:`.make`: nerfstudio layout, or NeRF-synthetic for transparent scenes) that
:func:`featgs.data.load_scene` reads."""

from featgs.data.procedural.builtin import builtin_scene_names, resolve_scene
from featgs.data.procedural.make import MakeConfig, make_scene
from featgs.data.procedural.spec import SceneSpec, load_scene_spec, parse_scene_spec

__all__ = ["MakeConfig", "SceneSpec", "builtin_scene_names", "load_scene_spec", "make_scene", "parse_scene_spec", "resolve_scene"]
