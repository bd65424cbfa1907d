"""`featgs process`: photos or a video -> a posed COLMAP dataset that training reads.

The scene: the built-in tabletop with its geometry and cameras, but detailed textures
(``textured_tabletop``). The built-in textures are too smooth for SIFT (at 256 px, 40 views,
2 of 40 images register), and its floor, walls and ceiling show one noise field each around
its own point, so SIFT matches one wall to another and the mapper folds the orbit onto itself
(all images registered, 0.1 px reprojection error, rotations wrong by 30-90 degrees). The
variant moves each plane's texture origin (same planes) and sharpens the noise.
"""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from featgs.cli import main
from featgs.data import load_scene
from featgs.data.procedural import MakeConfig, make_scene, resolve_scene
from featgs.errors import FeatgsError
from featgs.process import ProcessConfig, compare_cameras, process_input, umeyama
from featgs.process.inputs import natural_key, stage_inputs
from featgs.process.pyramid import scaled_size

COLMAP_SMALL = Path(__file__).resolve().parents[2] / "shared" / "data" / "colmap_small"

# (original, replacement) lines of scenes/tabletop.txt: see the module docstring.
TEXTURED = [
    ("scene tabletop", "scene tabletop-textured"),
    ("object floor plane point=0,0,0 normal=0,0,1 color=0.55,0.42,0.30 texture=checker scale=0.5 contrast=0.25",
     "object floor plane point=3.7,-5.3,0 normal=0,0,1 color=0.55,0.42,0.30 texture=noise scale=0.15 contrast=0.9"),
    ("object wall plane point=2.5,0,0 normal=-1,0,0 color=0.80,0.78,0.70 texture=noise scale=0.4 contrast=0.3",
     "object wall plane point=2.5,11.1,7.3 normal=-1,0,0 color=0.80,0.78,0.70 texture=noise scale=0.12 contrast=0.9"),
    ("part plane point=-2.5,0,0 normal=1,0,0", "part plane point=-2.5,-23.9,13.7 normal=1,0,0"),
    ("part plane point=0,2.5,0 normal=0,-1,0", "part plane point=31.3,2.5,-19.1 normal=0,-1,0"),
    ("part plane point=0,-2.5,0 normal=0,1,0", "part plane point=-41.7,-2.5,27.9 normal=0,1,0"),
    ("object ceiling plane point=0,0,2.4 normal=0,0,-1 color=0.92,0.92,0.92 texture=noise scale=0.6 contrast=0.1",
     "object ceiling plane point=-17.3,29.9,2.4 normal=0,0,-1 color=0.92,0.92,0.92 texture=noise scale=0.2 contrast=0.8"),
    ("texture=stripes scale=0.03 contrast=0.25 rot=0,90,0", "texture=noise scale=0.04 contrast=0.9 rot=0,90,0"),
]
# 36 views 10 degrees apart at 192 px: median rotation error 0.1 degree; 24 views: 0.7.
VIEWS = MakeConfig(size=192, views=36, test_views=0, points=0)
FAST = ProcessConfig(threads=2)


def textured_tabletop_text() -> str:
    text = resolve_scene("tabletop").read_text(encoding="utf-8")
    for old, new in TEXTURED:
        assert text.count(old) == 1, old
        text = text.replace(old, new)
    return text


def make_textured_tabletop(out: Path, config: MakeConfig = VIEWS) -> Path:
    make_scene(textured_tabletop_text(), "textured-tabletop.txt", out, config)
    return out


def reference_poses(data: Path) -> dict[str, np.ndarray]:
    """Image stem -> OpenCV camtoworld [4, 4] of a dataset, in its own frame."""
    scene = load_scene(data, normalize=False)
    return {v.camera.name: v.camera.camtoworld.numpy() for v in scene.views}


def encode_video(frames: list[Path], path: Path, fps: int, rotation: int = 0) -> None:
    """An H.264 MP4 of the images ``frames`` (near-lossless: crf 12), with PyAV; ``rotation``:
    the display matrix's counter-clockwise degrees (a phone held upright records -90)."""
    import av

    with av.open(str(path), "w") as out:
        first = Image.open(frames[0])
        stream = out.add_stream("libx264", rate=fps, options={"crf": "12"})
        stream.width, stream.height, stream.pix_fmt = first.width, first.height, "yuv420p"
        if rotation:
            stream.set_display_rotation(rotation)
        for f in frames:
            frame = av.VideoFrame.from_ndarray(np.asarray(Image.open(f).convert("RGB")), format="rgb24")
            for packet in stream.encode(frame):
                out.mux(packet)
        for packet in stream.encode():
            out.mux(packet)


@pytest.fixture(scope="module")
def textured(tmp_path_factory) -> Path:
    return make_textured_tabletop(tmp_path_factory.mktemp("textured") / "data")


def _first_photos(dataset: Path, count: int, out: Path) -> Path:
    """A folder ``out`` of copies of the first ``count`` images of ``dataset`` (as photos)."""
    out.mkdir()
    for p in sorted((dataset / "images").iterdir())[:count]:
        shutil.copy(p, out / p.name)
    return out


def _leftovers(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if ".processing-" in p.name or ".old-" in p.name)


# ------------------------------------------------------------------------------- the scenes


@pytest.mark.slow
def test_process_recovers_the_built_in_scenes_cameras(textured, tmp_path):
    photos = tmp_path / "photos"
    shutil.copytree(textured / "images", photos)
    # a blank photo: no SIFT feature, so never registered; 36 of 37 is a warning, not an error
    Image.new("RGB", (192, 192), (128, 128, 128)).save(photos / "blank.png")
    out = tmp_path / "data"
    summary = process_input(photos, out, FAST, progress=False)

    assert summary.given == 37 and summary.registered >= 0.9 * 36 and summary.left_out[-1:] == ["blank.png"]
    assert summary.warnings and "blank.png" in summary.warnings[0]
    assert summary.matcher == "exhaustive" and summary.cameras == 1 and summary.undistorted
    assert summary.mean_reprojection_error < 1.0 and summary.points > 500
    assert set(summary.seconds) == {"inputs", "features", "matching", "mapping", "undistort", "pyramid", "total"}
    errors = compare_cameras(reference_poses(out), reference_poses(textured))
    print(f"textured tabletop: {summary.registered}/{summary.given} registered, median rotation error "
          f"{errors.median_rotation_deg:.3f} deg, median centre error {100 * errors.median_centre_relative:.3f}% "
          f"of the scene size, {summary.seconds['total']:.1f} s")
    assert errors.matched == summary.registered
    assert errors.median_rotation_deg < 1.0
    assert errors.median_centre_relative < 0.02

    # the layout training reads: images/, sparse/0, images_F of the sizes --downscale F asks for
    assert (out / "sparse" / "0" / "cameras.bin").is_file() and not (out / "stereo").exists()
    assert json.loads((out / "process.json").read_text())["summary"]["registered"] == summary.registered
    assert _leftovers(tmp_path) == []
    scene = load_scene(out, downscale=4)
    view = scene.train[0]
    assert view.image_path.parent.name == "images_4"
    big = Image.open(out / "images" / view.image_path.name).size
    assert Image.open(view.image_path).size == scaled_size(*big, 4) == (view.camera.width, view.camera.height)
    assert len(list((out / "images_8").iterdir())) == summary.registered


@pytest.mark.slow
def test_process_a_video(textured, tmp_path):
    frames = sorted((textured / "images").iterdir())  # the orbit, in order
    video = tmp_path / "orbit.mp4"
    encode_video(frames, video, fps=12)
    out = tmp_path / "data"
    code = main(["process", str(video), "--out", str(out), "--fps", "12", "--threads", "2", "--quiet"])
    assert code == 0
    record = json.loads((out / "process.json").read_text())
    summary = record["summary"]
    assert summary["kind"] == "video" and summary["matcher"] == "sequential" and summary["given"] == len(frames)
    assert summary["registered"] >= 0.9 * len(frames)
    # frame k is view k of the orbit
    truth = reference_poses(textured)
    recovered = {f"train_{int(name[6:11]):04d}": pose for name, pose in reference_poses(out).items()}
    errors = compare_cameras(recovered, truth)
    print(f"video: {summary['registered']}/{summary['given']} frames registered, median rotation error "
          f"{errors.median_rotation_deg:.3f} deg, centre {100 * errors.median_centre_relative:.3f}%")
    assert errors.median_rotation_deg < 2.0 and errors.median_centre_relative < 0.03


@pytest.mark.slow
@pytest.mark.skipif(not (COLMAP_SMALL / "images").is_dir(), reason="no ../shared/data/colmap_small")
def test_process_real_photos_agree_with_their_colmap_model(tmp_path):
    out = tmp_path / "data"
    summary = process_input(COLMAP_SMALL / "images", out, FAST, progress=False)
    assert summary.given == 23 and summary.registered >= 22
    errors = compare_cameras(reference_poses(out), reference_poses(COLMAP_SMALL))
    print(f"colmap_small: {summary.registered}/23 registered, median rotation error {errors.median_rotation_deg:.3f} "
          f"deg, median centre error {100 * errors.median_centre_relative:.3f}% of the camera spread, "
          f"{summary.seconds['total']:.1f} s")
    assert errors.median_rotation_deg < 1.0 and errors.median_centre_relative < 0.02


@pytest.mark.slow
def test_too_few_registered_images_is_an_error_and_writes_nothing(textured, tmp_path):
    photos = _first_photos(textured, 5, tmp_path / "photos")
    for i in range(6):  # textures no view shares
        rng = np.random.default_rng(i)
        Image.fromarray(rng.integers(0, 255, (96, 96, 3), dtype=np.uint8)).resize((192, 192)).save(photos / f"z{i}.png")
    out = tmp_path / "nested" / "data"
    with pytest.raises(FeatgsError, match=r"registered only \d of 11 images"):
        process_input(photos, out, FAST, progress=False)
    assert not (tmp_path / "nested").exists()


def build_vocab_tree(images: list[Path], path: Path, work: Path) -> Path:
    """A small COLMAP vocabulary tree (256 visual words) from the SIFT features of ``images``."""
    import pycolmap

    from featgs.process import sfm

    folder = work / "tree-images"
    folder.mkdir()
    for p in images:
        shutil.copy(p, folder / p.name)
    database = work / "tree.db"
    with sfm.colmap_log_silenced():
        sfm.extract_features(database, folder, sorted(p.name for p in images), one_camera=True, config=FAST,
                             progress=False)
        db = pycolmap.Database.open(database)
        try:
            words = np.concatenate([db.read_descriptors(im.image_id).to_float().data for im in db.read_all_images()])
        finally:
            db.close()
        index = pycolmap.VisualIndex.create(128, 64)
        options = pycolmap.VisualIndex.BuildOptions()
        options.num_visual_words, options.num_iterations, options.num_rounds, options.num_threads = 256, 10, 1, 2
        index.build(options, pycolmap.FeatureDescriptorsFloat(pycolmap.FeatureExtractorType.SIFT, words))
        index.write(str(path))
    return path


@pytest.mark.slow
def test_vocab_tree_matching_with_a_tree_given_by_path(textured, tmp_path):
    photos = _first_photos(textured, 14, tmp_path / "photos")
    tree = build_vocab_tree(sorted(photos.iterdir()), tmp_path / "tree.bin", tmp_path)
    summary = process_input(photos, tmp_path / "data", ProcessConfig(matcher="vocab", vocab_tree=str(tree), threads=2),
                            progress=False)
    assert summary.matcher == "vocab" and summary.registered >= 13
    # a file that passes the header check but that pycolmap cannot read: its worker thread
    # aborts the (child) process, which becomes a one-line error here
    broken = tmp_path / "broken.bin"
    broken.write_bytes(tree.read_bytes()[:12] + b"not a faiss index" * 8)
    with pytest.raises(FeatgsError, match=r"broken\.bin: vocab matching with this vocabulary tree failed"):
        process_input(photos, tmp_path / "again", ProcessConfig(matcher="vocab", vocab_tree=str(broken), threads=2),
                      progress=False)
    assert not (tmp_path / "again").exists() and _leftovers(tmp_path) == []


# ------------------------------------------------------------------------- quick checks


def _photo(path: Path, size=(40, 30), orientation: int = 1, color=(200, 30, 30)) -> Path:
    im = Image.new("RGB", size, color)
    im.paste((0, 255, 0), (0, 0, 10, 10))  # marks the top-left corner of the stored pixels
    exif = Image.Exif()
    exif[0x0112] = orientation
    exif[0x010F] = "Camera Co"
    im.save(path, exif=exif.tobytes(), quality=100)
    return path


def test_photos_are_staged_upright_resized_and_in_natural_order(tmp_path):
    src = tmp_path / "photos"
    src.mkdir()
    _photo(src / "IMG_10.jpg")
    _photo(src / "IMG_2.jpg", orientation=6)  # stored sideways: shown rotated 90 degrees clockwise
    Image.new("RGB", (400, 100), (1, 2, 3)).save(src / "IMG_1.png")
    (src / "notes.txt").write_text("not a photo")
    (src / ".DS_Store").write_bytes(b"\0")
    staged_dir = tmp_path / "staged"
    staged_dir.mkdir()
    staged = stage_inputs(src, staged_dir, ProcessConfig(max_size=200), progress=False)
    assert staged.names == ["IMG_1.png", "IMG_2.jpg", "IMG_10.jpg"]
    assert staged.ignored == ["notes.txt"] and not staged.video
    sizes = {im.name: im.size for im in staged.images}
    assert sizes == {"IMG_1.png": (200, 50), "IMG_2.jpg": (30, 40), "IMG_10.jpg": (40, 30)}
    upright = Image.open(staged_dir / "IMG_2.jpg")
    assert upright.size == (30, 40) and upright.getexif().get(0x0112, 1) == 1
    assert upright.getexif().get(0x010F) == "Camera Co"  # the rest of EXIF is kept
    g = upright.convert("RGB").getpixel((25, 4))  # the marked corner is now top-right
    assert g[1] > 150 and g[0] < 120
    # untouched photos are the same bytes
    assert (staged_dir / "IMG_10.jpg").read_bytes() == (src / "IMG_10.jpg").read_bytes()
    assert not staged.one_camera()  # three sizes
    assert natural_key("a2.jpg") < natural_key("a10.jpg")


def test_heic_photos_from_a_phone_are_staged_upright_as_jpeg(tmp_path):
    """HEIC, the iPhone's default, read through pillow-heif (a dependency): staged as JPEG under
    the photo's stem, upright (the rotation stored in the file applied once, not twice)."""
    pillow_heif = pytest.importorskip("pillow_heif")
    pillow_heif.register_heif_opener()
    src = tmp_path / "photos"
    src.mkdir()
    for i in range(3):
        im = Image.new("RGB", (40, 30), (200, 30, 30))
        im.paste((0, 255, 0), (0, 0, 10, 10))
        exif = Image.Exif()
        exif[0x0112] = 6  # shown rotated 90 degrees clockwise
        im.save(src / f"IMG_{i}.HEIC", format="HEIF", exif=exif.tobytes(), quality=95)
    staged_dir = tmp_path / "staged"
    staged_dir.mkdir()
    staged = stage_inputs(src, staged_dir, ProcessConfig(max_size=200), progress=False)
    assert staged.names == ["IMG_0.jpg", "IMG_1.jpg", "IMG_2.jpg"]
    upright = Image.open(staged_dir / "IMG_0.jpg")
    assert upright.format == "JPEG" and upright.size == (30, 40)
    g = upright.convert("RGB").getpixel((25, 4))  # the marked corner is now top-right
    assert g[1] > 150 and g[0] < 120


def test_a_short_video_is_sampled_at_fps(tmp_path):
    frames = []
    for i in range(20):
        p = tmp_path / f"f{i:02d}.png"
        Image.new("RGB", (64, 48), (10 * i, 100, 200 - 5 * i)).save(p)
        frames.append(p)
    video = tmp_path / "clip.mp4"
    encode_video(frames, video, fps=10)  # 2 s
    staged_dir = tmp_path / "staged"
    staged_dir.mkdir()
    staged = stage_inputs(video, staged_dir, ProcessConfig(fps=2.0), progress=False)
    assert staged.video and staged.one_camera()
    assert staged.names == [f"frame_{i:05d}.jpg" for i in range(4)]  # t = 0, 0.5, 1.0, 1.5 s
    assert [im.source.rsplit("@", 1)[1] for im in staged.images] == ["0.000s", "0.500s", "1.000s", "1.500s"]
    assert Image.open(staged_dir / "frame_00001.jpg").size == (64, 48)


def test_a_portrait_phone_video_is_staged_upright(tmp_path):
    """A phone held upright stores landscape frames and a display matrix turning them 90 degrees
    clockwise; the staged frames are the portrait pictures the phone showed."""
    frames = []
    for i in range(6):
        p = tmp_path / f"f{i}.png"
        im = Image.new("RGB", (64, 48), (40, 40, 200))
        im.paste((0, 255, 0), (0, 0, 16, 16))  # the top-left corner of the stored frame
        im.save(p)
        frames.append(p)
    video = tmp_path / "portrait.mp4"
    encode_video(frames, video, fps=6, rotation=-90)
    staged_dir = tmp_path / "staged"
    staged_dir.mkdir()
    staged = stage_inputs(video, staged_dir, ProcessConfig(fps=6.0), progress=False)
    upright = Image.open(staged_dir / staged.names[0]).convert("RGB")
    assert upright.size == (48, 64)
    # turned clockwise, the stored top-left corner is at the top right
    top_right, top_left = upright.getpixel((44, 4)), upright.getpixel((4, 4))
    assert top_right[1] > 200 and top_right[2] < 60, top_right
    assert top_left[2] > 150 and top_left[1] < 80, top_left


@pytest.mark.parametrize("make, message", [
    (lambda d: [_photo(d / f"{i}.jpg") for i in range(2)], "2 usable photos; expected at least 3"),
    (lambda d: [_photo(d / f"{i}.jpg") for i in range(3)] + [(d / "bad.jpg").write_bytes(b"\xff\xd8 garbage")],
     r"bad\.jpg: cannot read image"),
    (lambda d: (d / "x.txt").write_text("hi"), "no photos found"),
])
def test_bad_photo_folders_are_one_line_errors(tmp_path, capsys, make, message):
    src = tmp_path / "photos"
    src.mkdir()
    make(src)
    out = tmp_path / "data"
    assert main(["process", str(src), "--out", str(out), "--quiet"]) == 2
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1 and re.search(message, err), err
    assert not out.exists() and _leftovers(tmp_path) == []


def test_bad_inputs_and_options_are_one_line_errors(tmp_path):
    bad_video = tmp_path / "clip.mp4"
    bad_video.write_bytes(b"\x00\x00\x00\x18ftypmp42 not really a video" * 10)
    out = tmp_path / "data"
    with pytest.raises(FeatgsError, match=r"clip\.mp4: cannot (open as|decode) (a|the) video"):
        process_input(bad_video, out, progress=False)
    one = _photo(tmp_path / "one.jpg")
    with pytest.raises(FeatgsError, match="is a single image"):
        process_input(one, out, progress=False)
    with pytest.raises(FeatgsError, match="not found"):
        process_input(tmp_path / "missing", out, progress=False)
    with pytest.raises(FeatgsError, match="--vocab-tree"):
        ProcessConfig(matcher="vocab").resolve_matcher(10, video=False)
    with pytest.raises(FeatgsError, match="vocabulary tree file not found"):
        ProcessConfig(matcher="vocab", vocab_tree=str(tmp_path / "tree.bin")).resolve_matcher(10, video=False)
    legacy = tmp_path / "vocab_tree_flickr100K_words32K.bin"  # a flann tree starts with its word count
    legacy.write_bytes(np.array([32768, 128, 64], np.int32).tobytes() + b"\0" * 64)
    with pytest.raises(FeatgsError, match="not a COLMAP vocabulary tree of the faiss format"):
        ProcessConfig(matcher="vocab", vocab_tree=str(legacy)).resolve_matcher(10, video=False)
    assert ProcessConfig().resolve_matcher(100, video=False) == "exhaustive"
    assert ProcessConfig().resolve_matcher(101, video=False) == "sequential"
    assert ProcessConfig().resolve_matcher(5, video=True) == "sequential"
    taken = tmp_path / "taken"
    taken.mkdir()
    (taken / "x").write_text("x")
    with pytest.raises(FeatgsError, match="not empty"):
        process_input(tmp_path, taken, progress=False)
    with pytest.raises(FeatgsError, match="holds the input"):
        process_input(taken, tmp_path, force=True, progress=False)
    with pytest.raises(FeatgsError, match="--fps"):
        ProcessConfig(fps=0)
    assert not out.exists() and _leftovers(tmp_path) == []


def test_umeyama_and_camera_errors_undo_a_similarity():
    from scipy.spatial.transform import Rotation

    rng = np.random.default_rng(0)
    R = Rotation.random(random_state=1).as_matrix()
    s, t = 2.5, np.array([1.0, -2.0, 0.5])
    src = rng.normal(size=(10, 3))
    s2, R2, t2 = umeyama(src, s * src @ R.T + t)
    assert abs(s2 - s) < 1e-9 and np.allclose(R2, R) and np.allclose(t2, t)
    reference, recovered = {}, {}
    for i in range(6):
        c2w = np.eye(4)
        c2w[:3, :3] = Rotation.random(random_state=10 + i).as_matrix()
        c2w[:3, 3] = rng.normal(size=3)
        reference[f"v{i}"] = c2w
        seen = np.eye(4)  # the same camera in a frame the similarity maps to the reference's
        seen[:3, :3] = R.T @ c2w[:3, :3]
        seen[:3, 3] = R.T @ (c2w[:3, 3] - t) / s
        recovered[f"v{i}"] = seen
    errors = compare_cameras(recovered, reference)
    assert errors.matched == 6 and errors.median_rotation_deg < 1e-5 and errors.median_centre < 1e-9
    assert abs(errors.scale - s) < 1e-9


# --------------------------------------------------------------------------- label maps


def test_colmap_datasets_carry_label_maps(tabletop_data, tmp_path):
    from data_builders import to_colmap

    from featgs.data.labels import read_label_names

    data = to_colmap(tabletop_data, tmp_path / "colmap", binary=True)
    (data / "labels").mkdir()
    for p in (tabletop_data / "labels").iterdir():
        shutil.copyfile(p, data / "labels" / p.name)
    plain = load_scene(data, normalize=False)  # label maps but no labels.json: not used
    assert plain.label_names is None and all(v.labels_path is None for v in plain.views)
    shutil.copyfile(tabletop_data / "labels.json", data / "labels.json")
    scene = load_scene(data, normalize=False)
    assert scene.label_names == read_label_names(tabletop_data / "labels.json")
    assert all(v.labels_path == data / "labels" / (v.image_path.stem + ".png") for v in scene.views)
    reference = {v.camera.name: v for v in load_scene(tabletop_data, normalize=False).views}
    view = scene.train[0]
    assert (view.labels() == reference[view.camera.name].labels()).all()
    small = load_scene(data, normalize=False, downscale=2).train[0]  # resized, nearest, to the camera
    assert tuple(small.labels().shape) == (small.camera.height, small.camera.width)
    (data / "labels" / (view.image_path.stem + ".png")).unlink()  # a view without one: None
    assert sum(v.labels_path is None for v in load_scene(data, normalize=False).views) == 1


def _labelled_photos(folder: Path, n: int = 3, size=(80, 60)) -> Path:
    (folder / "labels").mkdir(parents=True)
    for i in range(n):
        _photo(folder / f"IMG_{i}.jpg", size=size)
        Image.fromarray(np.full(size[::-1], i % 2, np.uint8)).save(folder / "labels" / f"IMG_{i}.png")
    (folder / "labels.json").write_text('{"0": "floor", "1": "mug"}')
    return folder


def _stage(src: Path, tmp_path: Path, **config):
    staged_dir = tmp_path / "staged"
    shutil.rmtree(staged_dir, ignore_errors=True)
    staged_dir.mkdir()
    return stage_inputs(src, staged_dir, ProcessConfig(**config), progress=False)


def test_label_maps_beside_photos_are_found_and_checked(tmp_path):
    src = _labelled_photos(tmp_path / "photos")
    staged = _stage(src, tmp_path)
    assert staged.labels == {f"IMG_{i}.jpg": src / "labels" / f"IMG_{i}.png" for i in range(3)}
    assert staged.label_names == src / "labels.json" and staged.ignored == []
    assert _stage(src, tmp_path, max_size=40).labels  # photos resized for SIFT: maps at full size still fit
    # 'auto' fits a pinhole camera when there are label maps: no undistortion to move the images
    assert ProcessConfig().resolve_camera_model(labels=True) == "PINHOLE"
    assert ProcessConfig().resolve_camera_model(labels=False) == "SIMPLE_RADIAL"
    assert ProcessConfig(camera_model="OPENCV").resolve_camera_model(labels=True) == "OPENCV"

    Image.fromarray(np.full((60, 80), 7, np.uint8)).save(src / "labels" / "IMG_1.png")
    with pytest.raises(FeatgsError, match=r"IMG_1\.png: label ids 7 are not named in .*labels\.json"):
        _stage(src, tmp_path)
    Image.fromarray(np.zeros((10, 10), np.uint8)).save(src / "labels" / "IMG_1.png")
    with pytest.raises(FeatgsError, match=r"IMG_1\.png: label map is 10x10; expected the size of its photo"):
        _stage(src, tmp_path)
    (src / "labels" / "IMG_1.png").unlink()
    with pytest.raises(FeatgsError, match=r"no label map for 1 of 3 photos \(IMG_1\.png\)"):
        _stage(src, tmp_path)
    (src / "labels.json").unlink()
    with pytest.raises(FeatgsError, match="label maps but no labels.json"):
        _stage(src, tmp_path)


def test_label_maps_and_a_radial_camera_model_is_a_one_line_error(tmp_path, monkeypatch):
    """Label maps cannot be undistorted: if the model still needs undistortion, refuse."""
    from featgs.process import pipeline

    src = _labelled_photos(tmp_path / "photos")

    class Model:
        def reg_image_ids(self):
            return [1, 2, 3]

    def fake_map(database, folder, output, num_images, *, config, progress):
        assert config.camera_model == "SIMPLE_RADIAL"  # as asked, not auto's PINHOLE
        return [Model()]

    monkeypatch.setattr(pipeline.sfm, "extract_features", lambda *a, **k: None)
    monkeypatch.setattr(pipeline.sfm, "match_features", lambda *a, **k: None)
    monkeypatch.setattr(pipeline.sfm, "map_images", fake_map)
    monkeypatch.setattr(pipeline.sfm, "registered_names", lambda model: [f"IMG_{i}.jpg" for i in range(3)])
    monkeypatch.setattr(pipeline, "needs_undistortion", lambda model: True)
    with pytest.raises(FeatgsError, match="label maps cannot follow the undistortion"):
        process_input(src, tmp_path / "data", ProcessConfig(camera_model="SIMPLE_RADIAL", threads=1), progress=False)
    assert not (tmp_path / "data").exists() and _leftovers(tmp_path) == []


def test_scratch_folders_of_killed_runs_are_removed_by_the_next_run(tmp_path):
    """kill -9 leaves `.DATA.processing-*` behind; the next run for DATA removes those whose
    process is gone on this host, and nothing else."""
    import os
    import socket
    import subprocess
    import sys

    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    host = socket.gethostname()
    owners = {"killed": f"{host} {dead.pid}", "alive": f"{host} {os.getppid()}", "elsewhere": f"other-host {dead.pid}",
              "unreadable": "?"}
    for name, owner in owners.items():
        folder = tmp_path / f".data.processing-{name}"
        folder.mkdir()
        (folder / "owner").write_text(owner + "\n")
    photos = tmp_path / "photos"
    photos.mkdir()
    for i in range(2):
        _photo(photos / f"{i}.jpg")
    with pytest.raises(FeatgsError, match="expected at least 3"):
        process_input(photos, tmp_path / "data", progress=False)
    left = sorted(p.name for p in tmp_path.glob(".data.processing-*"))
    assert left == [".data.processing-alive", ".data.processing-elsewhere", ".data.processing-unreadable"]
    assert not (tmp_path / "data").exists()


def test_heic_without_the_plugin_is_a_one_line_error(tmp_path, monkeypatch, capsys):
    import sys

    monkeypatch.setitem(sys.modules, "pillow_heif", None)  # as if it were not installed
    src = tmp_path / "photos"
    src.mkdir()
    for i in range(3):
        (src / f"IMG_{i}.heic").write_bytes(b"\0" * 64)
    out = tmp_path / "data"
    assert main(["process", str(src), "--out", str(out), "--quiet"]) == 2
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1 and "need the pillow-heif plugin" in err, err
    assert not out.exists()
