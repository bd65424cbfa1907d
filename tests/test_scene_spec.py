"""The scene description format and the ray caster's geometry."""

from __future__ import annotations

import math

import numpy as np
import pytest

from featgs.cli import main
from featgs.data.procedural import parse_scene_spec
from featgs.data.procedural.raycast import intersect, shade
from featgs.errors import FeatgsError

HEADER = "scene test\nrig target=0,0,0 radius=2:3 height=1:2 fov=50\n"


def _spec(body: str):
    return parse_scene_spec(HEADER + body, "t.txt")


def test_parse_objects_parts_and_defaults():
    spec = _spec(
        """
        ambient 0.2
        light dir=0,0,2 intensity=0.5 shadow=0.4   # normalised
        object "red ball" sphere center=0,0,1 radius=0.5 color=1,0,0 texture=noise scale=0.2
        part box center=1,0,1 size=0.2,0.4,0.6 rot=0,0,90
        object floor plane point=0,0,0 normal=0,0,2 color=0.5,0.5,0.5
        object "red ball" ellipsoid center=3,0,1 radii=0.1,0.2,0.3 color=0.9,0,0
        """
    )
    assert spec.labels == ("red ball", "floor") and spec.ambient == 0.2
    assert np.allclose(spec.lights[0].direction, [0, 0, 1])
    assert spec.instances_per_label() == {"red ball": 2, "floor": 1}
    ball, box, floor, _ = spec.primitives
    assert box.material == ball.material and box.label_id == ball.label_id == 0 and box.instance_id == 0
    assert np.allclose(box.extent, [0.1, 0.2, 0.3]) and np.allclose(box.rotation @ [1, 0, 0], [0, 1, 0])
    assert np.allclose(floor.rotation[:, 2], [0, 0, 1])
    assert spec.rig.radius == (2.0, 3.0) and spec.rig.fov_deg == 50.0


@pytest.mark.parametrize(
    "body, message",
    [
        ("object a cone center=0,0,0 color=1,1,1", "t.txt:3: unknown shape 'cone'; expected one of sphere"),
        ("object a sphere center=0,0 radius=1 color=1,1,1", "t.txt:3: center: expected three comma-separated numbers"),
        ("object a sphere center=0,0,0 radius=-1 color=1,1,1", "t.txt:3: radius: expected a positive number"),
        ("object a sphere center=0,0,0 radius=1", "t.txt:3: sphere: missing color=R,G,B"),
        ("object a sphere center=0,0,0 color=1,1,1", "t.txt:3: sphere: missing radius="),
        ("object a sphere center=0,0,0 radius=1 color=2,0,0", "t.txt:3: color: expected numbers in 0..1"),
        ("object a sphere center=0,0,0 radius=1 color=1,1,1 size=1", "t.txt:3: unknown key 'size' for sphere"),
        ("object a sphere center=0,0,0 radius=1 color=1,1,1 texture=wood", "unknown texture 'wood'"),
        ("object a plane point=0,0,0 normal=0,0,1 color=1,1,1 rot=0,0,1", "unknown key 'rot'"),
        ("part sphere center=0,0,0 radius=1", "t.txt:3: part before any object"),
        ("lamp on", "t.txt:3: unknown statement 'lamp'"),
        ('object "a sphere', "t.txt:3: No closing quotation"),
    ],
)
def test_parse_errors_name_file_and_line(body, message):
    with pytest.raises(FeatgsError) as e:
        _spec(body)
    assert message in str(e.value) and "\n" not in str(e.value)


def test_missing_statements():
    with pytest.raises(FeatgsError, match="missing rig, object statement"):
        parse_scene_spec("scene x\n", "t.txt")


def test_bad_scene_file_from_the_cli(tmp_path, capsys):
    path = tmp_path / "bad.txt"
    path.write_text(HEADER + "object a sphere center=0,0,0 radius=1 color=1,1\n")
    assert main(["scene", "make", str(path), "--out", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and f"{path}:3: color" in err[0]


def test_scene_without_walls_is_refused(tmp_path, capsys):
    path = tmp_path / "open.txt"
    path.write_text(HEADER + "object a sphere center=0,0,0 radius=0.3 color=1,1,1\n")
    assert main(["scene", "make", str(path), "--out", str(tmp_path / "out"), "--size", "8", "--views", "1"]) == 2
    assert "empty background" in capsys.readouterr().err


def _hit(body: str, origin, direction):
    spec = _spec(body)
    hits = intersect(spec.primitives, np.asarray([origin], float), np.asarray([direction], float))
    return spec, hits


@pytest.mark.parametrize(
    "body, t, normal",
    [
        ("object a sphere center=0,0,0 radius=1 color=1,1,1", 4.0, [0, 0, 1]),
        ("object a ellipsoid center=0,0,0 radii=3,3,0.5 color=1,1,1", 4.5, [0, 0, 1]),
        ("object a box center=0,0,0 size=2,2,4 color=1,1,1", 3.0, [0, 0, 1]),
        ("object a box center=0,0,0 size=2,2,4 rot=90,0,0 color=1,1,1", 4.0, [0, 0, 1]),
        ("object a cylinder center=0,0,0 radius=1 height=3 color=1,1,1", 3.5, [0, 0, 1]),
        ("object a cylinder center=0,0,0 radius=1 height=3 rot=90,0,0 color=1,1,1", 4.0, [0, 0, 1]),
        ("object a plane point=0,0,1 normal=0,0,-1 color=1,1,1", 4.0, [0, 0, 1]),
    ],
)
def test_ray_hits_analytic_distance(body, t, normal):
    _, hits = _hit(body, [0, 0, 5], [0, 0, -1])
    assert hits.index[0] == 0 and math.isclose(hits.t[0], t, abs_tol=1e-9)
    assert np.allclose(hits.normal[0], normal)  # faces the ray, even for a back-facing plane


def test_cylinder_side_and_miss():
    body = "object a cylinder center=0,0,0 radius=1 height=2 color=1,1,1"
    _, hits = _hit(body, [5, 0, 0.5], [-2, 0, 0])  # unnormalised direction: t in its units
    assert math.isclose(hits.t[0], 2.0) and np.allclose(hits.normal[0], [1, 0, 0])
    _, hits = _hit(body, [5, 0, 1.5], [-1, 0, 0])
    assert hits.index[0] == -1 and np.isinf(hits.t[0])


def test_shading_is_lambert_with_ambient_and_shadows():
    body = "ambient 0.2\nlight dir=0,0,1 intensity=0.6 shadow=0.5\n"
    body += "object floor plane point=0,0,0 normal=0,0,1 color=0.5,0.5,0.5\n"
    body += "object blocker sphere center=0,0,2 radius=0.5 color=1,1,1\n"
    spec = _spec(body)
    origins = np.array([[5.0, 0.0, 1.0], [3.0, 0.0, 10.0], [1.0, 0.0, 5.0]])
    dirs = np.array([[-5.0, 0.0, -1.0], [0.0, 0.0, -1.0], [1.0, 0.0, 0.0]])
    hits = intersect(spec.primitives, origins, dirs)
    rgb = shade(spec, hits, origins + np.where(hits.index >= 0, hits.t, 0.0)[:, None] * dirs)
    # floor in the sphere's shadow, floor in the light, nothing
    assert hits.index.tolist() == [0, 0, -1]
    assert np.allclose(rgb[0], 0.5 * (0.2 + 0.6 * 0.5)) and np.allclose(rgb[1], 0.5 * (0.2 + 0.6)) and np.allclose(rgb[2], 0)
