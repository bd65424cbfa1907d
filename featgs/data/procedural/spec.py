"""The plain-text description of a built-in procedural scene, and its parser.

A scene file (``scenes/NAME.txt``) is a list of statements, one per line. ``#`` starts a
comment; values with spaces are quoted (``"red mug"``); vectors are comma-separated with no
spaces (``0.1,0.2,0.3``); ranges are ``MIN:MAX``. Units are metres, the world's z axis is up,
colours are linear RGB in 0..1. Statements::

    scene NAME
    ambient A                                       # light reaching every surface, 0..1 (default 0.3)
    light dir=X,Y,Z intensity=I [shadow=S]          # directional light coming from (X,Y,Z);
                                                    # S: how much shadows darken, 0..1
    rig [orbit] target=X,Y,Z radius=MIN:MAX height=MIN:MAX fov=DEG [jitter=J]
        # cameras on an orbit around `target` (horizontal distance `radius`, camera height
        # above the floor `height`), horizontal field of view DEG, look-at point jittered by J
    rig sphere target=X,Y,Z distance=MIN:MAX elevation=MIN:MAX fov=DEG [jitter=J]
        # cameras spread evenly over a band of the sphere around `target` (NeRF-synthetic
        # style): distance from `target`, elevation in degrees above its horizontal plane
        # (-90 < MIN <= MAX < 90, so no camera looks straight down or up)
    background none|transparent                     # none (default): every camera ray must hit a
        # surface (enclose the scene); transparent: rays that hit nothing are empty, alpha 0,
        # label 0 "background", and the scene is written in NeRF-synthetic layout
    defaults KEY=N...                               # make settings for this scene, overridden by
        # command-line flags: size, views, test_views, points, supersample (integers)
    object LABEL SHAPE key=value...                 # a new object (one instance of LABEL)
    part SHAPE key=value...                         # one more primitive of the last object

Shapes and their keys (all lengths in metres):

    sphere     center=X,Y,Z radius=R
    ellipsoid  center=X,Y,Z radii=RX,RY,RZ
    box        center=X,Y,Z size=SX,SY,SZ           # full edge lengths
    cylinder   center=X,Y,Z radius=R height=H       # axis along local z, centre mid-height
    plane      point=X,Y,Z normal=NX,NY,NZ          # infinite, two-sided

Material and placement keys, for every shape (``part`` lines inherit the material keys of
their ``object`` line unless they set them):

    color=R,G,B            albedo (required on `object` lines)
    texture=KIND           none | checker | stripes | noise (default none)
    scale=S                texture period in metres (default 0.1)
    contrast=C             how strongly the texture darkens the albedo, 0..1 (default 0.3)
    rot=RX,RY,RZ           rotation in degrees about x, then y, then z (not for planes)

Label ids are given in order of each label's first appearance, from 0; in a transparent
scene from 1, as 0 is "background" (pixels that see nothing; no object may use that label).
Every object line is one instance of its label, so a label written on two ``object`` lines
has two instances.
"""

from __future__ import annotations

import math
import shlex
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np

from featgs.errors import FeatgsError

SHAPES = ("sphere", "ellipsoid", "box", "cylinder", "plane")
TEXTURES = ("none", "checker", "stripes", "noise")
_SHAPE_KEYS = {
    "sphere": ("center", "radius"),
    "ellipsoid": ("center", "radii"),
    "box": ("center", "size"),
    "cylinder": ("center", "radius", "height"),
    "plane": ("point", "normal"),
}
_MATERIAL_KEYS = ("color", "texture", "scale", "contrast")
RIGS = ("orbit", "sphere")
BACKGROUNDS = ("none", "transparent")
BACKGROUND_LABEL = "background"  # label 0 of transparent scenes: pixels that see nothing
# the keys of the `defaults` statement (MakeConfig fields) and their smallest values
CONFIG_MINIMUMS = {"size": 8, "views": 1, "test_views": 0, "points": 0, "supersample": 1}


@dataclass(frozen=True)
class Material:
    """Albedo [3] in 0..1 and a procedural texture evaluated in the primitive's local frame."""

    color: tuple[float, float, float]
    texture: str = "none"
    scale: float = 0.1
    contrast: float = 0.3


@dataclass(frozen=True, eq=False)  # holds arrays: compare fields, not objects
class Primitive:
    """One analytic surface.

    Attributes:
        shape: one of :data:`SHAPES`.
        center: [3] world position of the local origin (a plane's ``point``).
        rotation: [3, 3] local-to-world rotation (columns are the local axes in world
            coordinates); a plane's normal is its local z axis.
        extent: [3] shape size in the local frame: sphere (r, r, r), ellipsoid radii, box
            half edge lengths, cylinder (r, r, half height); unused for planes.
        material: how it looks.
        label_id: the label of the object it belongs to.
        instance_id: the object (0-based, file order) it belongs to.
    """

    shape: str
    center: np.ndarray
    rotation: np.ndarray
    extent: np.ndarray
    material: Material
    label_id: int
    instance_id: int


@dataclass(frozen=True, eq=False)  # holds arrays: compare fields, not objects
class Light:
    direction: np.ndarray  # [3] unit vector pointing towards the light
    intensity: float
    shadow: float  # 0: no shadows, 1: shadowed surfaces get ambient light only


@dataclass(frozen=True, eq=False)  # holds arrays: compare fields, not objects
class Rig:
    """``rig [orbit]``: cameras on a horizontal ring around the target."""

    target: np.ndarray  # [3]
    radius: tuple[float, float]  # horizontal distance from target, metres
    height: tuple[float, float]  # camera height above the floor (z), metres
    fov_deg: float  # horizontal field of view
    jitter: float  # std of the look-at point's random offset, metres


@dataclass(frozen=True, eq=False)  # holds arrays: compare fields, not objects
class SphereRig:
    """``rig sphere``: cameras on a band of the sphere around the target."""

    target: np.ndarray  # [3]
    distance: tuple[float, float]  # from the target, metres
    elevation_deg: tuple[float, float]  # above the target's horizontal plane, degrees, inside (-90, 90)
    fov_deg: float  # horizontal field of view
    jitter: float  # std of the look-at point's random offset, metres


@dataclass(frozen=True, eq=False)  # holds arrays: compare fields, not objects
class SceneSpec:
    name: str
    labels: tuple[str, ...]  # label id -> name
    primitives: tuple[Primitive, ...]
    ambient: float
    lights: tuple[Light, ...]
    rig: Rig | SphereRig
    transparent: bool = False  # `background transparent`: label 0 is "background"
    defaults: dict[str, int] = field(default_factory=dict)  # `defaults` statement: MakeConfig field -> value

    def instances_per_label(self) -> dict[str, int]:
        """How many objects carry each label."""
        seen: dict[int, set[int]] = {}
        for p in self.primitives:
            seen.setdefault(p.label_id, set()).add(p.instance_id)
        return {self.labels[i]: len(s) for i, s in sorted(seen.items())}


def rotation_xyz(degrees: tuple[float, float, float]) -> np.ndarray:
    """[3, 3] rotation about x, then y, then z (angles in degrees)."""
    ax, ay, az = (math.radians(a) for a in degrees)
    rx = np.array([[1, 0, 0], [0, math.cos(ax), -math.sin(ax)], [0, math.sin(ax), math.cos(ax)]])
    ry = np.array([[math.cos(ay), 0, math.sin(ay)], [0, 1, 0], [-math.sin(ay), 0, math.cos(ay)]])
    rz = np.array([[math.cos(az), -math.sin(az), 0], [math.sin(az), math.cos(az), 0], [0, 0, 1]])
    return rz @ ry @ rx


def _frame_with_z(normal: np.ndarray) -> np.ndarray:
    """[3, 3] rotation whose third column is ``normal`` (unit)."""
    helper = np.array([1.0, 0.0, 0.0]) if abs(normal[0]) < 0.9 else np.array([0.0, 1.0, 0.0])
    x = np.cross(helper, normal)
    x /= np.linalg.norm(x)
    return np.stack([x, np.cross(normal, x), normal], axis=1)


class _Line:
    """One statement's words, with errors that name the file and line."""

    def __init__(self, source: str, lineno: int, words: list[str]):
        self.where = f"{source}:{lineno}"
        self.keyword = words[0]
        self.what = words[0]  # the statement, or the shape once known: names what a key belongs to
        self.words = words[1:]

    def fail(self, message: str) -> FeatgsError:
        return FeatgsError(f"{self.where}: {message}")

    def keyvalues(self, words: list[str], allowed: tuple[str, ...]) -> dict[str, str]:
        out: dict[str, str] = {}
        for w in words:
            key, eq, value = w.partition("=")
            if not eq or not value:
                raise self.fail(f"expected key=value, got {w!r}")
            if key not in allowed:
                raise self.fail(f"unknown key {key!r} for {self.what}; expected one of {', '.join(allowed)}")
            if key in out:
                raise self.fail(f"key {key!r} given twice")
            out[key] = value
        return out

    def number(self, kv: dict, key: str, *, positive: bool = False, unit: bool = False) -> float:
        try:
            x = float(kv[key])
        except KeyError:
            raise self.fail(f"{self.what}: missing {key}=") from None
        except ValueError:
            raise self.fail(f"{key}: expected a number, got {kv[key]!r}") from None
        if not math.isfinite(x) or (positive and x <= 0) or (unit and not 0 <= x <= 1):
            expected = "a number in 0..1" if unit else "a positive number" if positive else "a finite number"
            raise self.fail(f"{key}: expected {expected}, got {kv[key]!r}")
        return x

    def vector(self, kv: dict, key: str, *, positive: bool = False, unit: bool = False) -> np.ndarray:
        if key not in kv:
            raise self.fail(f"{self.what}: missing {key}=")
        parts = kv[key].split(",")
        try:
            v = np.array([float(p) for p in parts])
        except ValueError:
            raise self.fail(f"{key}: expected three comma-separated numbers, got {kv[key]!r}") from None
        if v.shape != (3,) or not np.isfinite(v).all():
            raise self.fail(f"{key}: expected three comma-separated numbers, got {kv[key]!r}")
        if positive and (v <= 0).any():
            raise self.fail(f"{key}: expected positive numbers, got {kv[key]!r}")
        if unit and ((v < 0) | (v > 1)).any():
            raise self.fail(f"{key}: expected numbers in 0..1, got {kv[key]!r}")
        return v

    def _min_max(self, kv: dict, key: str, unit: str = "") -> tuple[float, float]:
        """``MIN:MAX`` (or one value for both) as two floats."""
        if key not in kv:
            raise self.fail(f"{self.what}: missing {key}=")
        lo, colon, hi = kv[key].partition(":")
        try:
            return float(lo), float(hi if colon else lo)
        except ValueError:
            raise self.fail(f"{key}: expected MIN:MAX{unit}, got {kv[key]!r}") from None

    def interval(self, kv: dict, key: str) -> tuple[float, float]:
        a, b = self._min_max(kv, key)
        if not (math.isfinite(a) and math.isfinite(b) and 0 < a <= b):
            raise self.fail(f"{key}: expected 0 < MIN <= MAX, got {kv[key]!r}")
        return a, b

    def elevations(self, kv: dict, key: str) -> tuple[float, float]:
        """Degrees ``MIN:MAX`` (or one value) with -90 < MIN <= MAX < 90."""
        a, b = self._min_max(kv, key, " in degrees")
        if not (-90 < a <= b < 90):
            raise self.fail(f"{key}: expected degrees -90 < MIN <= MAX < 90, got {kv[key]!r}")
        return a, b

    def integer(self, kv: dict, key: str, low: int) -> int:
        try:
            n = int(kv[key])
        except ValueError:
            raise self.fail(f"{key}: expected an integer, got {kv[key]!r}") from None
        if n < low:
            raise self.fail(f"{key}: expected an integer >= {low}, got {kv[key]!r}")
        return n


def _material(line: _Line, kv: dict, inherit: Material | None) -> Material:
    if "color" not in kv and inherit is None:
        raise line.fail(f"{line.what}: missing color=R,G,B")
    base = inherit or Material(color=(0.0, 0.0, 0.0))
    texture = kv.get("texture", base.texture)
    if texture not in TEXTURES:
        raise line.fail(f"unknown texture {texture!r}; expected one of {', '.join(TEXTURES)}")
    return Material(
        color=tuple(line.vector(kv, "color", unit=True)) if "color" in kv else base.color,
        texture=texture,
        scale=line.number(kv, "scale", positive=True) if "scale" in kv else base.scale,
        contrast=line.number(kv, "contrast", unit=True) if "contrast" in kv else base.contrast,
    )


def _primitive(line: _Line, words: list[str], label_id: int, instance_id: int, inherit: Material | None) -> Primitive:
    if not words:
        raise line.fail(f"{line.keyword}: missing shape; expected one of {', '.join(SHAPES)}")
    shape = words[0]
    if shape not in SHAPES:
        raise line.fail(f"unknown shape {shape!r}; expected one of {', '.join(SHAPES)}")
    line.what = shape
    allowed = _SHAPE_KEYS[shape] + _MATERIAL_KEYS + (() if shape == "plane" else ("rot",))
    kv = line.keyvalues(words[1:], allowed)
    material = _material(line, kv, inherit)
    if shape == "plane":
        normal = line.vector(kv, "normal")
        if np.linalg.norm(normal) == 0:
            raise line.fail("normal: expected a non-zero vector")
        rotation = _frame_with_z(normal / np.linalg.norm(normal))
        return Primitive(shape, line.vector(kv, "point"), rotation, np.zeros(3), material, label_id, instance_id)
    rotation = rotation_xyz(tuple(line.vector(kv, "rot"))) if "rot" in kv else np.eye(3)
    if shape == "sphere":
        extent = np.full(3, line.number(kv, "radius", positive=True))
    elif shape == "ellipsoid":
        extent = line.vector(kv, "radii", positive=True)
    elif shape == "box":
        extent = 0.5 * line.vector(kv, "size", positive=True)
    else:
        r = line.number(kv, "radius", positive=True)
        extent = np.array([r, r, 0.5 * line.number(kv, "height", positive=True)])
    return Primitive(shape, line.vector(kv, "center"), rotation, extent, material, label_id, instance_id)


def _rig(line: _Line) -> Rig | SphereRig:
    """``rig [orbit] ...`` or ``rig sphere ...``."""
    words = line.words
    kind = "orbit"
    if words and "=" not in words[0]:
        kind, words = words[0], words[1:]
        if kind not in RIGS:
            raise line.fail(f"unknown rig {kind!r}; expected {' or '.join(RIGS)} (or key=value pairs of an orbit)")
        line.what = f"rig {kind}"
    if kind == "orbit":
        kv = line.keyvalues(words, ("target", "radius", "height", "fov", "jitter"))
    else:
        kv = line.keyvalues(words, ("target", "distance", "elevation", "fov", "jitter"))
    fov = line.number(kv, "fov", positive=True)
    if fov >= 170:
        raise line.fail(f"fov: expected degrees below 170, got {fov:g}")
    jitter = line.number(kv, "jitter") if "jitter" in kv else 0.0
    if kind == "orbit":
        return Rig(line.vector(kv, "target"), line.interval(kv, "radius"), line.interval(kv, "height"), fov, abs(jitter))
    return SphereRig(line.vector(kv, "target"), line.interval(kv, "distance"), line.elevations(kv, "elevation"), fov, abs(jitter))


def _with_background_label(spec: SceneSpec, source: str, label_lines: dict[str, int]) -> SceneSpec:
    """A transparent scene: label 0 becomes "background", the scene's labels move up by one."""
    if BACKGROUND_LABEL in label_lines:
        raise FeatgsError(
            f"{source}:{label_lines[BACKGROUND_LABEL]}: label {BACKGROUND_LABEL!r} is reserved in a transparent scene "
            "(pixels that see nothing); choose another label"
        )
    primitives = tuple(replace(p, label_id=p.label_id + 1) for p in spec.primitives)
    return replace(spec, labels=(BACKGROUND_LABEL,) + spec.labels, primitives=primitives)


def parse_scene_spec(text: str, source: str = "<scene>") -> SceneSpec:
    """Parse a scene description (format in the module docstring); errors name ``source:line``."""
    name = None
    ambient = None
    lights: list[Light] = []
    rig = None
    transparent = False
    defaults: dict[str, int] = {}
    labels: list[str] = []
    label_lines: dict[str, int] = {}  # label -> line of its first appearance
    primitives: list[Primitive] = []
    num_objects = 0
    object_material: Material | None = None
    for lineno, raw in enumerate(text.splitlines(), start=1):
        try:
            words = shlex.split(raw, comments=True)
        except ValueError as e:
            raise FeatgsError(f"{source}:{lineno}: {e}") from None
        if not words:
            continue
        line = _Line(source, lineno, words)
        if line.keyword == "scene":
            if len(line.words) != 1:
                raise line.fail("expected: scene NAME")
            name = line.words[0]
        elif line.keyword == "ambient":
            if len(line.words) != 1:
                raise line.fail("expected: ambient A")
            ambient = line.number({"ambient": line.words[0]}, "ambient", unit=True)
        elif line.keyword == "light":
            kv = line.keyvalues(line.words, ("dir", "intensity", "shadow"))
            direction = line.vector(kv, "dir")
            if np.linalg.norm(direction) == 0:
                raise line.fail("dir: expected a non-zero vector")
            shadow = line.number(kv, "shadow", unit=True) if "shadow" in kv else 0.0
            lights.append(Light(direction / np.linalg.norm(direction), line.number(kv, "intensity", unit=True), shadow))
        elif line.keyword == "rig":
            rig = _rig(line)
        elif line.keyword == "background":
            if len(line.words) != 1:
                raise line.fail(f"expected: background {'|'.join(BACKGROUNDS)}")
            if line.words[0] not in BACKGROUNDS:
                raise line.fail(f"unknown background {line.words[0]!r}; expected {' or '.join(BACKGROUNDS)}")
            transparent = line.words[0] == "transparent"
        elif line.keyword == "defaults":
            if not line.words:
                raise line.fail(f"expected: defaults KEY=N... with keys {', '.join(CONFIG_MINIMUMS)}")
            kv = line.keyvalues(line.words, tuple(CONFIG_MINIMUMS))
            defaults.update({key: line.integer(kv, key, CONFIG_MINIMUMS[key]) for key in kv})
        elif line.keyword == "object":
            if len(line.words) < 2:
                raise line.fail("expected: object LABEL SHAPE key=value...")
            label = line.words[0]
            if label not in labels:
                labels.append(label)
                label_lines[label] = lineno
            num_objects += 1
            prim = _primitive(line, line.words[1:], labels.index(label), num_objects - 1, None)
            object_material = prim.material
            primitives.append(prim)
        elif line.keyword == "part":
            if not primitives:
                raise line.fail("part before any object; expected an `object` line first")
            last = primitives[-1]
            primitives.append(_primitive(line, line.words, last.label_id, last.instance_id, object_material))
        else:
            raise line.fail(f"unknown statement {line.keyword!r}; expected scene, ambient, light, rig, background, defaults, object or part")
    missing = [k for k, v in (("scene", name), ("rig", rig), ("object", primitives or None)) if v is None]
    if missing:
        raise FeatgsError(f"{source}: missing {', '.join(missing)} statement(s)")
    if len(labels) + transparent > 255:
        raise FeatgsError(f"{source}: {len(labels) + transparent} labels; at most 255 fit an 8-bit label map")
    spec = SceneSpec(name, tuple(labels), tuple(primitives), 0.3 if ambient is None else ambient, tuple(lights), rig, transparent, defaults)
    return _with_background_label(spec, source, label_lines) if transparent else spec


def load_scene_spec(path: str | Path) -> SceneSpec:
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise FeatgsError(f"{path}: scene file not found") from None
    except (OSError, UnicodeDecodeError) as e:
        raise FeatgsError(f"{path}: not a readable UTF-8 scene file ({e.__class__.__name__})") from None
    return parse_scene_spec(text, str(path))
