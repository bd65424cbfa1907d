"""PLY reading/writing: the generic vertex I/O and the 3DGS Gaussian layout."""

import json

import numpy as np
import pytest
import torch

from featgs.cli import main
from featgs.errors import FeatgsError
from featgs.gaussians import Gaussians, LinearDecoder, load_ply, num_sh_bases, save_ply
from featgs.gaussians.ply import decoder_path
from featgs.plyio import read_ply_vertices, write_ply_vertices


def random_gaussians(n=50, sh_degree=3, feature_dim=5, decoder_dim=0, seed=0) -> Gaussians:
    gen = torch.Generator().manual_seed(seed)
    rand = lambda *shape: torch.randn(*shape, generator=gen)  # noqa: E731
    decoder = LinearDecoder(rand(decoder_dim, feature_dim), rand(decoder_dim)) if decoder_dim else None
    return Gaussians(
        means=rand(n, 3),
        scales=rand(n, 3),
        quats=rand(n, 4),
        opacities=rand(n),
        sh0=rand(n, 1, 3),
        shN=rand(n, num_sh_bases(sh_degree) - 1, 3),
        features=rand(n, feature_dim),
        decoder=decoder,
    )


def assert_bits_equal(a: torch.Tensor, b: torch.Tensor) -> None:
    assert a.dtype == b.dtype == torch.float32 and a.shape == b.shape
    assert torch.equal(a.view(torch.int32), b.view(torch.int32))


def standard_3dgs_columns(n, sh_degree, dtype=np.float32, seed=0):
    """Vertex properties in the order the original 3DGS trainer writes them (no feat_*)."""
    rng = np.random.default_rng(seed)
    names = ["x", "y", "z", "nx", "ny", "nz", "f_dc_0", "f_dc_1", "f_dc_2"]
    names += [f"f_rest_{i}" for i in range(3 * (num_sh_bases(sh_degree) - 1))]
    names += ["opacity", "scale_0", "scale_1", "scale_2", "rot_0", "rot_1", "rot_2", "rot_3"]
    return {name: rng.standard_normal(n).astype(dtype) for name in names}


# -- Gaussians <-> PLY ---------------------------------------------------------------------


@pytest.mark.parametrize("sh_degree", [0, 1, 2, 3])
def test_round_trip_is_bit_exact(tmp_path, sh_degree):
    g = random_gaussians(sh_degree=sh_degree, feature_dim=5, decoder_dim=7)
    path = tmp_path / "scene.ply"
    save_ply(path, g)
    assert decoder_path(path) == tmp_path / "scene.decoder.safetensors"
    assert decoder_path(path).exists()
    back = load_ply(path)
    assert back.sh_degree == sh_degree and back.feature_dim == 5
    for name in Gaussians.PARAM_NAMES:
        assert_bits_equal(getattr(back, name), getattr(g, name))
    assert_bits_equal(back.decoder.weight, g.decoder.weight)
    assert_bits_equal(back.decoder.bias, g.decoder.bias)


def test_round_trip_without_features_or_decoder(tmp_path):
    g = random_gaussians(sh_degree=1, feature_dim=0)
    save_ply(tmp_path / "g.ply", g)
    back = load_ply(tmp_path / "g.ply")
    assert back.feature_dim == 0 and back.decoder is None
    assert_bits_equal(back.shN, g.shN)


def test_empty_scene_round_trips(tmp_path):
    save_ply(tmp_path / "empty.ply", random_gaussians(n=0, sh_degree=2, feature_dim=3))
    back = load_ply(tmp_path / "empty.ply")
    assert len(back) == 0 and back.sh_degree == 2 and back.feature_dim == 3


def test_layout_matches_standard_3dgs(tmp_path):
    g = random_gaussians(n=4, sh_degree=2, feature_dim=3)
    save_ply(tmp_path / "g.ply", g)
    props = read_ply_vertices(tmp_path / "g.ply")
    k = g.shN.shape[1]
    expected = ["x", "y", "z", "nx", "ny", "nz", "f_dc_0", "f_dc_1", "f_dc_2"]
    expected += [f"f_rest_{i}" for i in range(3 * k)]
    expected += ["opacity", "scale_0", "scale_1", "scale_2", "rot_0", "rot_1", "rot_2", "rot_3", "feat_0", "feat_1", "feat_2"]
    assert list(props) == expected
    assert all(a.dtype == np.float32 for a in props.values())
    for c in range(3):  # channel-major: f_rest_{c*K + k} is coefficient k of channel c
        for j in range(k):
            np.testing.assert_array_equal(props[f"f_rest_{c * k + j}"], g.shN[:, j, c].numpy())
    np.testing.assert_array_equal(props["rot_0"], g.quats[:, 0].numpy())  # w first


@pytest.mark.parametrize("sh_degree", [0, 3])
def test_loads_a_standard_3dgs_file(tmp_path, sh_degree):
    cols = standard_3dgs_columns(6, sh_degree)
    write_ply_vertices(tmp_path / "point_cloud.ply", cols)
    g = load_ply(tmp_path / "point_cloud.ply")
    assert g.feature_dim == 0 and g.decoder is None and g.sh_degree == sh_degree
    assert g.means.dtype == torch.float32 and g.means.device.type == "cpu"
    np.testing.assert_array_equal(g.means[:, 1].numpy(), cols["y"])
    np.testing.assert_array_equal(g.opacities.numpy(), cols["opacity"])
    k = num_sh_bases(sh_degree) - 1
    if k:
        np.testing.assert_array_equal(g.shN[:, 2, 1].numpy(), cols[f"f_rest_{1 * k + 2}"])


def test_double_precision_file_loads_as_float32(tmp_path):
    write_ply_vertices(tmp_path / "d.ply", standard_3dgs_columns(3, 1, dtype=np.float64))
    assert load_ply(tmp_path / "d.ply").means.dtype == torch.float32


def test_saving_without_decoder_removes_a_stale_one(tmp_path):
    path = tmp_path / "s.ply"
    save_ply(path, random_gaussians(feature_dim=4, decoder_dim=6))
    save_ply(path, random_gaussians(feature_dim=2))
    assert not decoder_path(path).exists()
    assert load_ply(path).decoder is None


def test_decoder_that_does_not_fit_is_an_error(tmp_path):
    path = tmp_path / "s.ply"
    save_ply(path, random_gaussians(feature_dim=4, decoder_dim=6))
    save_ply(tmp_path / "other.ply", random_gaussians(feature_dim=3, decoder_dim=6))
    decoder_path(path).write_bytes(decoder_path(tmp_path / "other.ply").read_bytes())
    with pytest.raises(FeatgsError, match="s.decoder.safetensors"):
        load_ply(path)
    decoder_path(path).write_bytes(b"not safetensors")
    with pytest.raises(FeatgsError, match="s.decoder.safetensors"):
        load_ply(path)


# -- generic vertex I/O --------------------------------------------------------------------


def test_all_scalar_types_round_trip(tmp_path):
    dtypes = [np.int8, np.uint8, np.int16, np.uint16, np.int32, np.uint32, np.float32, np.float64]
    props = {f"p{i}": (np.arange(5) * 7 - 3).astype(dt) if np.dtype(dt).kind != "u" else np.arange(5).astype(dt) for i, dt in enumerate(dtypes)}
    write_ply_vertices(tmp_path / "t.ply", props, comments=["hello"])
    header = (tmp_path / "t.ply").read_bytes().split(b"end_header\n")[0].decode()
    assert "property char p0" in header and "property uchar p1" in header and "property double p7" in header
    assert "comment hello" in header and "binary_little_endian" in header
    back = read_ply_vertices(tmp_path / "t.ply")
    assert list(back) == list(props)
    for name, a in props.items():
        assert back[name].dtype == a.dtype
        np.testing.assert_array_equal(back[name], a)


def test_write_rejects_what_ply_cannot_hold(tmp_path):
    with pytest.raises(ValueError, match="int64"):
        write_ply_vertices(tmp_path / "a.ply", {"x": np.zeros(3, dtype=np.int64)})
    with pytest.raises(ValueError, match="one length"):
        write_ply_vertices(tmp_path / "a.ply", {"x": np.zeros(3, np.float32), "y": np.zeros(4, np.float32)})
    assert not (tmp_path / "a.ply").exists()


def test_ascii_with_comments_and_faces(tmp_path):
    path = tmp_path / "ascii.ply"
    path.write_text(
        "ply\nformat ascii 1.0\ncomment made by hand\nobj_info nothing\n"
        "element face 2\nproperty list uchar int vertex_indices\n"
        "element vertex 3\nproperty float x\nproperty float y\nproperty float z\n"
        "property uchar red\nproperty uchar green\nproperty uchar blue\n"
        "element edge 1\nproperty int vertex1\nproperty int vertex2\n"
        "end_header\n"
        "3 0 1 2\n4 0 1 2 0\n"
        "0.5 1 -2.25 255 0 7\n1e-3 2 3 1 2 3\n-1 -2 -3 0 0 0\n"
        "0 1\n"
    )
    v = read_ply_vertices(path)
    assert list(v) == ["x", "y", "z", "red", "green", "blue"]
    np.testing.assert_array_equal(v["x"], np.array([0.5, 1e-3, -1], np.float32))
    np.testing.assert_array_equal(v["red"], np.array([255, 1, 0], np.uint8))
    assert v["x"].dtype == np.float32 and v["blue"].dtype == np.uint8


def test_big_endian_with_a_list_element_before_vertices(tmp_path):
    path = tmp_path / "be.ply"
    header = (
        "ply\r\nformat binary_big_endian 1.0\r\n"
        "element face 2\r\nproperty uint8 flag\r\nproperty list uint8 int32 vertex_indices\r\n"
        "element vertex 2\r\nproperty float32 x\r\nproperty int16 s\r\nproperty double d\r\n"
        "end_header\r\n"
    )
    faces = bytes([9, 3]) + np.array([0, 1, 2], ">i4").tobytes() + bytes([9, 1]) + np.array([5], ">i4").tobytes()
    verts = np.array([(1.5, -2, 3.25), (-4.0, 300, 1e100)], dtype=[("x", ">f4"), ("s", ">i2"), ("d", ">f8")])
    path.write_bytes(header.encode() + faces + verts.tobytes())
    v = read_ply_vertices(path)
    np.testing.assert_array_equal(v["x"], [1.5, -4.0])
    np.testing.assert_array_equal(v["s"], [-2, 300])
    np.testing.assert_array_equal(v["d"], [3.25, 1e100])
    assert v["s"].dtype == np.int16 and v["s"].dtype.isnative


def test_point_cloud_layout(tmp_path):
    xyz = np.random.default_rng(0).standard_normal((10, 3)).astype(np.float32)
    rgb = np.arange(30, dtype=np.uint8).reshape(10, 3)
    props = {"x": xyz[:, 0], "y": xyz[:, 1], "z": xyz[:, 2], "red": rgb[:, 0], "green": rgb[:, 1], "blue": rgb[:, 2]}
    write_ply_vertices(tmp_path / "points3D.ply", props)
    v = read_ply_vertices(tmp_path / "points3D.ply")
    np.testing.assert_array_equal(np.stack([v["x"], v["y"], v["z"]], 1), xyz)
    np.testing.assert_array_equal(np.stack([v["red"], v["green"], v["blue"]], 1), rgb)


# -- bad files -----------------------------------------------------------------------------


def _header(*lines):
    return ("\n".join(["ply", "format binary_little_endian 1.0", *lines, "end_header"]) + "\n").encode()


BAD_FILES = {
    "garbage": (np.random.default_rng(0).integers(0, 256, 500).astype(np.uint8).tobytes(), "not a PLY"),
    "empty": (b"", "not a PLY"),
    "no_end_header": (b"ply\nformat ascii 1.0\nelement vertex 1\n", "end_header"),
    "bad_format": (b"ply\nformat binary 1.0\nend_header\n", "format"),
    "unknown_type": (_header("element vertex 1", "property float16 x"), "float16"),
    "no_vertex": (_header("element face 0", "property list uchar int vertex_indices"), "vertex"),
    "list_vertex": (_header("element vertex 0", "property list uchar float x"), "'x'"),
    "truncated": (_header("element vertex 4", "property float x") + b"\0" * 15, "truncated"),
    "truncated_ascii": (b"ply\nformat ascii 1.0\nelement vertex 2\nproperty float x\nproperty float y\nend_header\n1 2 3\n", "truncated"),
    "bad_ascii_value": (b"ply\nformat ascii 1.0\nelement vertex 1\nproperty uchar x\nend_header\n1.5\n", "'x'"),
}


@pytest.mark.parametrize("case", sorted(BAD_FILES))
def test_bad_files_raise_one_line_errors_naming_the_file(tmp_path, case):
    data, expected = BAD_FILES[case]
    path = tmp_path / f"{case}.ply"
    path.write_bytes(data)
    with pytest.raises(FeatgsError) as e:
        read_ply_vertices(path)
    message = str(e.value)
    assert message.startswith(str(path)) and "\n" not in message
    assert expected in message


def test_missing_file(tmp_path):
    with pytest.raises(FeatgsError, match="not found"):
        load_ply(tmp_path / "nope.ply")


def test_truncated_gaussian_ply(tmp_path):
    path = tmp_path / "g.ply"
    save_ply(path, random_gaussians())
    path.write_bytes(path.read_bytes()[:-10])
    with pytest.raises(FeatgsError, match="truncated"):
        load_ply(path)


def test_missing_property(tmp_path):
    cols = standard_3dgs_columns(3, 0)
    del cols["opacity"]
    write_ply_vertices(tmp_path / "m.ply", cols)
    with pytest.raises(FeatgsError, match=r"m\.ply.*'opacity'"):
        load_ply(tmp_path / "m.ply")


@pytest.mark.parametrize("value", [np.nan, np.inf])
def test_non_finite_values_are_refused_on_load(tmp_path, value):
    cols = standard_3dgs_columns(4, 1)
    cols["scale_1"][2] = value
    write_ply_vertices(tmp_path / "nan.ply", cols)
    with pytest.raises(FeatgsError, match=r"nan\.ply.*'scale_1'.*vertex 2"):
        load_ply(tmp_path / "nan.ply")


@pytest.mark.parametrize("count", ["10000000000000", "100000000000000000000"])
@pytest.mark.parametrize("fmt", ["ascii", "binary_little_endian"])
def test_counts_beyond_the_file_are_one_line(tmp_path, count, fmt):
    path = tmp_path / "huge.ply"
    path.write_bytes(f"ply\nformat {fmt} 1.0\nelement vertex {count}\nproperty float x\nend_header\n1 2 3\n".encode())
    with pytest.raises(FeatgsError, match=r"huge\.ply: .*(early end-of-file|more data than the file holds)"):
        read_ply_vertices(path)


def test_wrong_property_type(tmp_path):
    cols = standard_3dgs_columns(3, 0)
    cols["x"] = np.zeros(3, np.uint8)
    write_ply_vertices(tmp_path / "t.ply", cols)
    with pytest.raises(FeatgsError, match=r"t\.ply.*'x'.*uint8.*float"):
        load_ply(tmp_path / "t.ply")


def test_x_as_a_list_property(tmp_path):
    path = tmp_path / "l.ply"
    path.write_bytes(_header("element vertex 1", "property list uchar float x", "property float y") + b"\1" + b"\0" * 8)
    with pytest.raises(FeatgsError, match=r"l\.ply.*'x'.*list"):
        load_ply(path)


@pytest.mark.parametrize("n_rest, message", [(15, "15 f_rest"), (-1, "f_rest_4")])
def test_bad_sh_layout(tmp_path, n_rest, message):
    cols = standard_3dgs_columns(2, 2)
    if n_rest == -1:
        del cols["f_rest_4"]  # a gap in the numbering
    else:
        cols = {k: v for k, v in cols.items() if not k.startswith("f_rest_") or int(k[7:]) < n_rest}
    write_ply_vertices(tmp_path / "sh.ply", cols)
    with pytest.raises(FeatgsError, match=message):
        load_ply(tmp_path / "sh.ply")


def test_cli_reports_a_bad_ply_on_one_line(tmp_path, capsys):
    ply = tmp_path / "bad.ply"
    ply.write_bytes(b"this is not a ply file\n")
    cam = tmp_path / "cam.json"
    cam.write_text(json.dumps({"width": 8, "height": 6, "K": [[8, 0, 4], [0, 8, 3], [0, 0, 1]], "camtoworld": np.eye(4).tolist()}))
    out = tmp_path / "out" / "view.png"
    code = main(["render", str(ply), "--camera", str(cam), "--out", str(out)])
    err = capsys.readouterr().err
    assert code == 2
    assert err.count("\n") == 1 and str(ply) in err and "Traceback" not in err
    assert not out.exists() and not out.parent.exists()
