"""``featgs render``: outputs on a small scene, and one-line errors that write nothing."""

import json

import numpy as np
import pytest
import torch
from PIL import Image

from featgs.camera import Camera
from featgs.cli import main
from featgs.gaussians import Gaussians, LinearDecoder, load_ply, save_ply
from featgs.render import render

W, H, N, D = 40, 30, 200, 5
CAMERA = {"width": W, "height": H, "K": [[40.0, 0, W / 2], [0, 40.0, H / 2], [0, 0, 1]], "camtoworld": np.eye(4).tolist()}


def small_scene(feature_dim=D, decoder_dim=0, seed=0) -> Gaussians:
    """N Gaussians in the middle of the view of ``CAMERA``, leaving its corners empty."""
    gen = torch.Generator().manual_seed(seed)
    z = 2.0 + 2.0 * torch.rand(N, generator=gen)
    xy = (torch.rand(N, 2, generator=gen) - 0.5) * 0.5 * z[:, None]
    g = Gaussians.create(
        torch.cat([xy, z[:, None]], dim=1),
        colors=torch.rand(N, 3, generator=gen),
        scales=0.02 + 0.04 * torch.rand(N, generator=gen),
        opacity=0.6,
        sh_degree=1,
    )
    decoder = LinearDecoder(torch.randn(decoder_dim, feature_dim, generator=gen), torch.randn(decoder_dim, generator=gen)) if decoder_dim else None
    return g.with_features(torch.randn(N, feature_dim, generator=gen), decoder)


@pytest.fixture
def scene(tmp_path):
    ply = tmp_path / "scene.ply"
    save_ply(ply, small_scene())
    cam = tmp_path / "cam.json"
    cam.write_text(json.dumps(CAMERA))
    return ply, cam


def run_cli(capsys, *argv):
    try:
        code = main(["render", *map(str, argv)])
    except SystemExit as e:  # argparse's own usage errors
        code = e.code
    out, err = capsys.readouterr()
    return code, out, err


def assert_one_line_error(code, err, *needles):
    assert code == 2
    assert err.count("\n") == 1 and err.startswith("featgs") and "Traceback" not in err
    for needle in needles:
        assert needle in err


# -- rendering (needs the torch backend) -----------------------------------------------


def test_renders_png_features_and_depth(tmp_path, scene, capsys):
    ply, cam = scene
    out = tmp_path / "out" / "view.png"  # a folder that does not exist yet
    feats, depth = tmp_path / "out" / "f.npy", tmp_path / "out" / "d.npy"
    code, stdout, err = run_cli(capsys, ply, "--camera", cam, "--out", out, "--features-out", feats, "--depth-out", depth)
    assert code == 0, err
    assert "40x30" in stdout and str(N) in stdout

    with Image.open(out) as image:
        assert image.size == (W, H) and image.mode == "RGB"
        png = np.asarray(image)
    f = np.load(feats)
    d = np.load(depth)
    assert f.shape == (H, W, D) and f.dtype == np.float32
    assert d.shape == (H, W) and d.dtype == np.float32

    with torch.no_grad():
        ref = render(load_ply(ply), Camera.from_dict(CAMERA))
    np.testing.assert_allclose(f, ref.features.numpy(), rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(d, ref.depth[..., 0].numpy(), rtol=1e-4, atol=1e-4)
    expected_png = (ref.rgb.clamp(0, 1) * 255).round().numpy()
    assert np.abs(png.astype(np.float64) - expected_png).max() <= 1
    assert png.std() > 0  # the scene is actually in view


def test_decoder_is_applied_and_background_used(tmp_path, capsys):
    ply = tmp_path / "dec.ply"
    save_ply(ply, small_scene(decoder_dim=7))
    cam = tmp_path / "cam.json"
    cam.write_text(json.dumps(CAMERA))
    feats, out = tmp_path / "f.npy", tmp_path / "v.png"
    code, _, err = run_cli(capsys, ply, "--camera", cam, "--out", out, "--features-out", feats, "--background", "1,1,1", "--sh-degree", "0")
    assert code == 0, err
    assert np.load(feats).shape == (H, W, 7)
    with Image.open(out) as image:
        assert np.asarray(image)[0, 0].tolist() == [255, 255, 255]  # a corner no Gaussian covers


# -- validation (before anything is rendered or written) -----------------------------------


@pytest.mark.parametrize(
    "content, needle",
    [
        ({k: v for k, v in CAMERA.items() if k != "K"}, "K"),
        ("{not json", "JSON"),
        (None, "not found"),
    ],
    ids=["missing-key", "malformed", "missing-file"],
)
def test_bad_camera_writes_nothing(tmp_path, scene, capsys, content, needle):
    ply, _ = scene
    cam = tmp_path / "bad_cam.json"
    if content is not None:
        cam.write_text(content if isinstance(content, str) else json.dumps(content))
    outs = [tmp_path / "o" / "v.png", tmp_path / "o" / "f.npy", tmp_path / "o" / "d.npy"]
    code, _, err = run_cli(capsys, ply, "--camera", cam, "--out", outs[0], "--features-out", outs[1], "--depth-out", outs[2])
    assert_one_line_error(code, err, str(cam), needle)
    assert not (tmp_path / "o").exists()


def test_features_out_without_features_writes_nothing(tmp_path, scene, capsys):
    _, cam = scene
    ply = tmp_path / "plain.ply"
    save_ply(ply, small_scene(feature_dim=0))
    out, feats = tmp_path / "v.png", tmp_path / "f.npy"
    code, _, err = run_cli(capsys, ply, "--camera", cam, "--out", out, "--features-out", feats)
    assert_one_line_error(code, err, str(ply), "feat")
    assert not out.exists() and not feats.exists()


@pytest.mark.parametrize(
    "extra, needle",
    [
        (["--out", "view.jpg"], ".png"),
        (["--out", "v.png", "--depth-out", "d.txt"], ".npy"),
        (["--out", "v.png", "--features-out", "v.png.npy", "--depth-out", "v.png.npy"], "same file"),
        (["--out", "v.png", "--sh-degree", "3"], "--sh-degree"),
        (["--out", "v.png", "--background", "1,2"], "--background"),
        (["--out", "v.png", "--backend", "nope"], "--backend"),
    ],
    ids=["png-ext", "npy-ext", "same-file", "sh-degree", "background", "backend"],
)
def test_bad_arguments_write_nothing(tmp_path, scene, capsys, monkeypatch, extra, needle):
    ply, cam = scene
    monkeypatch.chdir(tmp_path)
    before = sorted(p.name for p in tmp_path.iterdir())
    code, _, err = run_cli(capsys, ply, "--camera", cam, *extra)
    assert_one_line_error(code, err, needle)
    assert sorted(p.name for p in tmp_path.iterdir()) == before


def test_output_folder_below_a_file(tmp_path, scene, capsys):
    ply, cam = scene
    blocker = tmp_path / "file"
    blocker.write_text("")
    code, _, err = run_cli(capsys, ply, "--camera", cam, "--out", blocker / "sub" / "v.png")
    assert_one_line_error(code, err, "expected a folder")


def test_help_has_an_example(capsys):
    with pytest.raises(SystemExit) as e:
        main(["render", "--help"])
    assert e.value.code == 0
    assert "example:" in capsys.readouterr().out


def test_a_render_larger_than_free_memory_is_refused_before_it_allocates(tmp_path, scene, capsys, monkeypatch):
    ply, _ = scene
    huge = tmp_path / "huge.json"
    side = 1 << 20  # the largest legal side: 2^40 pixels, tens of TB of image buffers
    huge.write_text(json.dumps({**CAMERA, "width": side, "height": side,
                                "K": [[4e5, 0, side / 2], [0, 4e5, side / 2], [0, 0, 1]]}))
    out = tmp_path / "o" / "v.png"
    code, _, err = run_cli(capsys, ply, "--camera", huge, "--out", out, "--features-out", tmp_path / "o" / "f.npy")
    assert_one_line_error(code, err, f"{side}x{side} render of {N} Gaussians with {D} feature channels",
                          "image buffers", "expected a smaller camera")
    assert not (tmp_path / "o").exists()

    # an image that fits, whose tile lists do not: the pairs are counted (not allocated) first
    from featgs.render import budget

    camera = Camera.load_json(scene[1])
    pairs = budget.estimate_pairs(load_ply(ply), camera)
    assert pairs > 10
    room = budget.image_bytes(camera, 0) + (pairs // 2) * budget.BYTES_PER_PAIR
    monkeypatch.setattr(budget, "available_bytes", lambda device: room)
    code, _, err = run_cli(capsys, ply, "--camera", scene[1], "--out", out)
    assert_one_line_error(code, err, f"{pairs:,} (tile, Gaussian) pairs")
    assert not out.exists()
    monkeypatch.setattr(budget, "available_bytes", lambda device: room + pairs * budget.BYTES_PER_PAIR)
    code, _, _ = run_cli(capsys, ply, "--camera", scene[1], "--out", out)
    assert code == 0 and out.exists()
