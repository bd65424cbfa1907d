"""Language queries, prompts, lifting and edits on the tiny trained tabletop run
(``tabletop_run``, tests/conftest.py).

The run (32 x 32 images) is coarse: the mug covers 2-4 pixels of a test view, the wall
hundreds. So masks are scored where there are pixels to score (wall, floor, table) and small
objects by where their selection lies in 3D, against the scene description's positions.
"""

from __future__ import annotations

import dataclasses
import json
import math
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from scipy import ndimage

from featgs.camera import Camera, intrinsics_from_fov, look_at
from featgs.cli import main
from featgs.data import load_scene
from featgs.errors import FeatgsError
from featgs.gaussians import Gaussians, LinearDecoder, load_ply, save_ply
from featgs.pictures import palette
from featgs.query import (
    CleanConfig,
    Delete,
    Extract,
    FeatureField,
    PromptConfig,
    QueryConfig,
    Recolor,
    Selection,
    Translate,
    segment_features,
)
from featgs.query.clean import clean_selection
from featgs.query.prompt import SamMaskDecoder
from featgs.render import render

# centres in the scene description (scenes/tabletop.txt), metres
WHERE = {"blue book": (0.33, 0.20, 0.765), "red mug": (-0.17, -0.22, 0.79), "tomato": (0.42, -0.22, 0.775),
         "white plate": (0.15, -0.10, 0.75)}


@pytest.fixture(scope="module")
def run(tabletop_run) -> Path:
    """The shared tiny run (read-only; tests that write into a run copy it)."""
    return tabletop_run


@pytest.fixture(scope="module")
def field(run) -> FeatureField:
    return FeatureField.load(run)


@pytest.fixture(scope="module")
def views(run):
    return load_scene(json.loads((run / "run.json").read_text())["data"]).test


def truth(view, field: FeatureField, name: str) -> np.ndarray:
    names = {int(k): v for k, v in json.loads((field.root / "run.json").read_text())["label_names"].items()}
    return np.isin(view.labels().numpy(), [k for k, v in names.items() if v == name])


def iou(a: np.ndarray, b: np.ndarray) -> float:
    return float((a & b).sum() / max((a | b).sum(), 1))


def test_query_masks_match_the_ground_truth(field, views):
    for name, least in (("wall", 0.7), ("floor", 0.5), ("table", 0.45)):
        sel = field.query(name)
        scores = [iou(field.mask(v.camera, sel).numpy(), truth(v, field, name)) for v in views]
        assert np.mean(scores) >= least, (name, scores)
    # the selection is the object, not everything: the wall's mask leaves the table out
    wall = field.query("wall")
    assert not (field.mask(views[0].camera, wall).numpy() & truth(views[0], field, "table")).mean() > 0.01


def test_query_finds_small_objects_where_they_are(field):
    for name, centre in WHERE.items():
        sel = field.query(name)
        assert 3 <= len(sel) < 0.05 * field.num_gaussians, (name, len(sel))
        lo, hi = sel.bbox
        assert bool((lo <= sel.centroid).all() and (sel.centroid <= hi).all())
        ids = sel.ids
        assert torch.equal(ids, torch.unique(ids)) and sel.to_dict()["num_selected"] == len(ids)
        # the scene description's frame is the dataset's: a program asking "where?" gets metres there
        where = field.describe(sel)["dataset_frame"]
        assert math.dist(where["centroid"], centre) < 0.12, (name, where)
        assert all(a <= c <= b for a, c, b in zip(*where["bbox"][:1], where["centroid"], where["bbox"][1]))


def test_synonyms_find_the_same_object(field):
    cup, mug = field.query("cup"), field.query("red mug")
    shared = len(set(cup.ids.tolist()) & set(mug.ids.tolist()))
    assert len(cup) and shared >= 0.5 * len(cup), (len(cup), len(mug), shared)
    # rank the run's objects by mean relevancy over the Gaussians that clearly carry each label
    labels = field.embed(field.label_names)
    cos = field.space.cosine(labels)
    best, clear = cos.argmax(1), cos.amax(1) > 0.9
    for text, want in (("cup", "red mug"), ("fruit", "green apple"), ("novel", "blue book")):
        r = field.relevancy(text)
        means = {n: float(r[clear & (best == k)].mean()) for k, n in enumerate(field.label_names)
                 if (clear & (best == k)).any()}
        assert max(means, key=means.get) == want, (text, means)


def test_threshold_rules(field):
    labels = field.query("blue book")
    strict = field.query("blue book", config=QueryConfig(threshold=0.99, clean=False))
    loose = field.query("blue book", config=QueryConfig(threshold=0.2, clean=False))
    assert len(strict) <= len(field.query("blue book", config=QueryConfig(clean=False))) <= len(loose)
    relative = field.query("blue book", config=QueryConfig(rule="relative"))
    assert relative.rule == "relative" and labels.rule == "labels" and len(relative) > 0
    r = field.relevancy("blue book")
    absolute = field.query("blue book", config=QueryConfig(rule="absolute", threshold=0.9, clean=False))
    assert torch.equal(absolute.mask(), (r >= 0.9).cpu())
    cosine = field.relevancy("blue book", negatives=[])
    assert float(cosine.max()) <= 1.0 + 1e-5 and float(cosine.min()) >= -1.0 - 1e-5
    assert float(r.min()) >= 0 and float(r.max()) <= 1
    for bad in (dict(rule="nope"), dict(rule="absolute"), dict(rule="labels", threshold=1.5)):
        with pytest.raises(FeatgsError):
            QueryConfig(**bad)
    for text in ("", "   ", "x" * 600):
        with pytest.raises(FeatgsError):
            field.query(text)
    with pytest.raises(FeatgsError, match="list of phrases"):
        field.query("mug", negatives="object")


def test_repeated_queries_give_the_same_selection_and_edits_start_afresh(field):
    first, again = field.query("blue book"), field.query("blue book")
    assert torch.equal(first.ids, again.ids) and torch.equal(first.bbox, again.bbox) and again.text == "blue book"
    assert len(field.query("blue book", config=QueryConfig(threshold=0.999, clean=False))) < len(first)
    # an edited field has other Gaussians: its queries are its own
    without = field.edit(first, Delete())
    assert without.num_gaussians == field.num_gaussians - len(first)
    assert len(without.query("blue book")) < len(first) / 4


def test_text_embeddings_survive_a_full_cache(field, monkeypatch):
    """More texts than the cache holds: every query still embeds what it needs (its
    negatives were once evicted in the middle of a query and it failed)."""
    import featgs.query.field as field_module

    reference = {t: field.embed([t])[0] for t in ("cup", "lamp", "fruit")}
    small = dataclasses.replace(field, _texts={})
    monkeypatch.setattr(field_module, "_TEXT_CACHE", 3)
    for text in ("cup", "lamp", "fruit", "cup"):
        assert len(small.query(text, config=QueryConfig(clean=False))) > 0
        torch.testing.assert_close(small.embed([text])[0], reference[text])
    assert len(small._texts) <= 3


def test_cleaning_adds_hidden_and_drops_floaters():
    """A ball of Gaussians: what it hides from every camera joins it, strays leave, what is
    in front of it or beside it stays out."""
    gen = torch.Generator().manual_seed(0)
    shell = torch.nn.functional.normalize(torch.randn(300, 3, generator=gen), dim=1) * 0.1
    inside, beside, floaters = torch.zeros(1, 3), torch.tensor([[0.2, 0.0, 0.0]]), torch.tensor([[1.0, 1.0, 1.0]] * 2)
    means = torch.cat([shell, inside, beside, floaters])
    scales = torch.cat([torch.full((300,), 0.02), torch.full((4,), 0.01)])
    g = Gaussians.create(means, scales=scales, opacity=0.95)
    cams = [Camera(look_at((math.cos(a), math.sin(a), 0.3), (0, 0, 0)), intrinsics_from_fov(32, 32, 1.0), 32, 32)
            for a in np.linspace(0, 2 * math.pi, 8, endpoint=False)]
    keep = torch.zeros(len(g), dtype=torch.bool)
    keep[:300] = True
    keep[302:] = True
    out = clean_selection(g, keep, cams, CleanConfig())
    assert out[:300].all() and out[300] and not out[301] and not out[302:].any()
    assert not clean_selection(g, keep, [], CleanConfig())[300]  # no cameras: nothing to carve with


def test_relevancy_map_and_render_modes(field, views):
    cam = views[1].camera
    heat = field.relevancy_map(cam, "wall")
    wall = truth(views[1], field, "wall")
    assert heat.shape == (cam.height, cam.width) and 0 <= float(heat.min()) and float(heat.max()) <= 1
    assert float(heat[wall].mean()) > float(heat[~wall].mean()) + 0.3
    sel = field.query("table")
    for mode in ("rgb", "depth", "features", "relevancy", "segmentation", "selection"):
        img = field.render(cam, mode, text="wall", selection=sel)
        assert img.shape == (cam.height, cam.width, 3) and float(img.min()) >= 0 and float(img.max()) <= 1, mode
    seg = field.render(cam, "segmentation")
    colours = torch.from_numpy(palette(len(field.label_names))).float() / 255
    assert torch.allclose(seg, colours[field.segment(cam)])
    with pytest.raises(FeatgsError, match="render mode"):
        field.render(cam, "x-ray")
    with pytest.raises(FeatgsError, match="needs a text"):
        field.render(cam, "relevancy")


def test_segment_equals_the_argmax_of_decoded_features(field, views):
    cam = views[0].camera
    labels = ["table", "wall", "floor", "cup"]
    out = render(field.gaussians, cam)
    assert torch.equal(field.segment(cam, labels), segment_features(out.features, field.embed(labels)))
    default = field.segment(cam)
    assert int(default.max()) < len(field.label_names)
    assert iou(default.numpy() == field.label_names.index("wall"), truth(views[0], field, "wall")) > 0.7
    with pytest.raises(FeatgsError, match="distinct"):
        field.segment(cam, ["a", "a"])


def test_cosines_in_the_stored_dimension_equal_decoded_ones(field):
    space = field.space
    f = field.gaussians.features[:50]
    texts = field.embed(["table", "cup"])
    decoded = torch.nn.functional.normalize(space.decode(f), dim=-1) @ texts.T
    torch.testing.assert_close(space.cosine_of(f, texts), decoded, atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(space.cosine(texts)[:50], decoded, atol=1e-5, rtol=1e-4)


def _interior(mask: np.ndarray) -> tuple[list, list]:
    """Most interior pixel of the largest region (as a click) and the region's box."""
    lab, n = ndimage.label(mask)
    region = lab == int(np.argmax(ndimage.sum(mask, lab, range(1, n + 1)))) + 1
    y, x = np.unravel_index(ndimage.distance_transform_edt(region).argmax(), mask.shape)
    ys, xs = np.nonzero(region)
    return [[x + 0.5, y + 0.5]], [int(xs.min()), int(ys.min()), int(xs.max()) + 1, int(ys.max()) + 1]


def test_point_and_box_prompts(field, views):
    for v in views:
        wall = truth(v, field, "wall")
        point, box = _interior(wall)
        mask, sel = field.prompt(v.camera, points=point)
        assert mask.dtype == torch.bool and iou(mask.numpy(), wall) >= 0.75, v.name
        assert sel.rule == "point" and len(sel) > 0
        boxed, _ = field.prompt(v.camera, box=box)
        assert iou(boxed.numpy(), wall) >= 0.75, v.name
        x0, y0, x1, y1 = box
        assert not boxed.numpy()[:y0].any() and not boxed.numpy()[:, x1:].any()  # nothing outside the box
        # a background click on the same object takes it away again
        none, empty = field.prompt(v.camera, points=point + point, point_labels=[1, 0])
        assert not none.any() and len(empty) == 0
    table = truth(views[0], field, "table")
    point, _ = _interior(table)
    assert iou(field.prompt(views[0].camera, points=point)[0].numpy(), table) >= 0.4


def test_prompt_input_is_checked(field, views):
    cam = views[0].camera
    bad = [dict(), dict(points=[[40.0, 3.0]]), dict(points=[[1.0, 1.0]], point_labels=[2]),
           dict(points=[[1.0, 1.0]], point_labels=[1, 1]), dict(box=[5, 5, 5, 9]), dict(box=[1, 2, 3]),
           dict(points=[[float("nan"), 1.0]]), dict(points=[[1.0, 1.0]], point_labels=[0])]
    for kwargs in bad:
        with pytest.raises(FeatgsError, match="prompt"):
            field.prompt(cam, **kwargs)
    with pytest.raises(FeatgsError):
        PromptConfig(affinity=1.5)


def test_lift_takes_the_gaussians_inside_a_mask(field, views):
    cam = views[1].camera
    wall = torch.from_numpy(truth(views[1], field, "wall"))
    lifted = field.lift(cam, wall)
    assert lifted.rule == "mask" and len(lifted) > 0
    # what the lifted Gaussians render is the mask they came from
    assert iou(field.mask(cam, lifted).numpy(), wall.numpy()) >= 0.8
    assert len(field.lift(cam, torch.zeros_like(wall))) == 0
    everything = field.lift(cam, torch.ones_like(wall))
    assert len(everything) > len(lifted)
    with pytest.raises(FeatgsError, match="bool"):
        field.lift(cam, wall[:5])


def test_edits(field, views, tmp_path):
    book = field.query("blue book")
    v = max(views, key=lambda v: truth(v, field, "blue book").sum())
    inside = torch.from_numpy(truth(v, field, "blue book"))
    before = render(field.gaussians, v.camera).rgb

    deleted = field.edit(book, Delete())
    assert deleted.num_gaussians == field.num_gaussians - len(book)
    after = render(deleted.gaussians, v.camera).rgb
    assert float((after - before).abs().amax(-1)[inside].mean()) > 0.1  # the book's pixels changed
    far = ~torch.from_numpy(ndimage.binary_dilation(inside.numpy(), iterations=2))
    assert float((after - before).abs()[far].mean()) < 0.01  # the rest did not

    extracted = field.edit(book, Extract())
    assert extracted.num_gaussians == len(book)
    alpha = render(extracted.gaussians, v.camera).alpha[..., 0]
    assert float(alpha[far].mean()) < 0.02 and float(alpha[inside].mean()) > 0.3

    blue = field.edit(book, Recolor((1.0, 0.5, 0.0)))
    rc = render(blue.gaussians, v.camera).rgb
    assert float(rc[inside][:, 0].mean()) > float(rc[inside][:, 2].mean()) + 0.2  # orange now, not blue
    assert float(before[inside][:, 2].mean()) > float(before[inside][:, 0].mean())
    assert float((rc - before).abs()[far].mean()) < 0.01

    moved = field.edit(book, Translate((0.0, 0.0, 0.1)))
    assert torch.allclose(moved.gaussians.means[book.ids], field.gaussians.means[book.ids] + torch.tensor([0, 0, 0.1]))
    untouched = torch.ones(field.num_gaussians, dtype=torch.bool)
    untouched[book.ids] = False
    assert torch.equal(moved.gaussians.means[untouched], field.gaussians.means[untouched])

    path = deleted.save(tmp_path / "no_book.ply")
    back = load_ply(path)
    assert len(back) == deleted.num_gaussians and back.decoder is not None
    assert torch.equal(back.features, deleted.gaussians.features.cpu())
    with pytest.raises(FeatgsError, match="another field"):
        deleted.edit(book, Delete())
    with pytest.raises(FeatgsError, match="0..1"):
        Recolor((2.0, 0.0, 0.0))
    with pytest.raises(FeatgsError, match=".ply"):
        deleted.save(tmp_path / "x.txt")
    with pytest.raises(FeatgsError, match="ids must lie"):
        Selection.from_ids(field.gaussians.means, torch.tensor([field.num_gaussians]))


class _BoxDecoder:
    """A stand-in SAM decoder: the prompt's box as the mask; records what it was given."""

    teacher = "labels"

    def __init__(self) -> None:
        self.seen = None

    def __call__(self, features, *, points, point_labels, box):
        self.seen = (features.shape, points, box)
        mask = torch.zeros(features.shape[:2], dtype=torch.bool)
        x0, y0, x1, y1 = (int(v) for v in box)
        mask[y0:y1, x0:x1] = True
        return mask


def test_mask_decoder_hook(run, field, views):
    decoder = _BoxDecoder()
    hooked = FeatureField.load(run, mask_decoder=decoder)
    cam = views[0].camera
    mask, sel = hooked.prompt(cam, box=[0, 0, 32, 10])
    assert decoder.seen[0] == (cam.height, cam.width, 384) and decoder.seen[1] is None
    assert mask[:10].all() and not mask[10:].any() and sel.rule == "decoder"
    assert torch.equal(sel.ids, hooked.clean(hooked.lift(cam, mask)).ids)
    decoder.teacher = "sam"
    with pytest.raises(FeatgsError, match="sam"):
        FeatureField.load(run, mask_decoder=decoder)


def test_sam_decoder_adapter_runs_sams_decoder(checkpoints):
    decoder = SamMaskDecoder(checkpoints.sam, device="cpu")
    features = torch.randn(24, 40, 256)
    one = decoder(features, points=torch.tensor([[10.0, 5.0]]), point_labels=torch.tensor([1]), box=None)
    boxed = decoder(features, points=None, point_labels=None, box=torch.tensor([2.0, 2.0, 30.0, 20.0]))
    assert one.shape == boxed.shape == (24, 40) and one.dtype == boxed.dtype == torch.bool


def _one_line_error(capsys) -> str:
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and err.startswith("featgs: error:"), err
    return err


def test_cli(run, tmp_path, capsys):
    assert main(["query", str(run), "blue book", "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["num_selected"] > 0 and len(out["bbox"]) == 2 and len(out["bbox"][0]) == 3 and len(out["centroid"]) == 3
    assert math.dist(out["dataset_frame"]["centroid"], WHERE["blue book"]) < 0.12
    assert main(["query", str(run), "wall", "--view", "2", "--out", str(tmp_path / "heat.png")]) == 0
    assert "wall" in capsys.readouterr().out and (tmp_path / "heat.png").read_bytes()[:4] == b"\x89PNG"
    assert main(["segment", str(run), "--labels", "wall,floor,table", "--view", "1", "--out", str(tmp_path / "s.png")]) == 0
    assert "wall" in capsys.readouterr().out and (tmp_path / "s.png").exists()
    assert main(["edit", str(run), "--delete", "blue book", "--out", str(tmp_path / "e.ply")]) == 0
    capsys.readouterr()
    assert len(load_ply(tmp_path / "e.ply")) < len(load_ply(run / "point_cloud.ply"))
    assert main(["edit", str(run), "--recolor", "1,0,0", "table", "--out", str(tmp_path / "r.ply")]) == 0
    capsys.readouterr()
    bad = [
        ["query", str(tmp_path), "mug"],  # not a run
        ["query", str(run), "mug", "--view", "7", "--out", str(tmp_path / "h.png")],  # no such view
        ["query", str(run), "mug", "--view", "0"],  # --view without --out
        ["query", str(run), "mug", "--out", str(tmp_path / "h.jpg")],
        ["query", str(run), "   "],
        ["query", str(run), "mug", "--rule", "absolute"],  # no threshold
        ["segment", str(run), "--labels", "a,a", "--out", str(tmp_path / "s.png")],
        ["edit", str(run), "--delete", "mug", "--out", str(tmp_path / "e.txt")],
        ["edit", str(run), "--delete", "mug", "--out", str(run / "point_cloud.ply")],
    ]
    for argv in bad:
        assert main(argv) == 2, argv
        _one_line_error(capsys)
    for argv in (["edit", str(run), "--recolor", "2,0,0", "mug", "--out", "x.ply"],
                 ["edit", str(run), "--delete", "--extract", "mug", "--out", "x.ply"]):
        with pytest.raises(SystemExit) as e:
            main(argv)
        assert e.value.code == 2
        capsys.readouterr()
    for command in ("query", "segment", "edit", "serve"):
        with pytest.raises(SystemExit):
            main([command, "--help"])
        assert "example" in capsys.readouterr().out


def test_runs_of_several_teachers_use_each_teachers_channels(run, field, views, checkpoints, tmp_path):
    """A run of SAM + labels features: text queries read the labels block, prompts go through
    SAM's decoder on the SAM block (random tiny SAM weights: only shapes can be checked)."""
    g = field.gaussians
    multi = tmp_path / "multi"
    shutil.copytree(run, multi, ignore=shutil.ignore_patterns("edits", "checkpoint.pt"))
    info = json.loads((multi / "run.json").read_text())
    sam_dim = 256
    info["teachers"] = [{"name": "sam", "model_id": "sam-test", "dim": sam_dim, "channels": [0, sam_dim]},
                        {"name": "labels", "model_id": info["teacher"]["model_id"], "dim": 384,
                         "channels": [sam_dim, sam_dim + 384]}]
    info["config"]["teacher"] = "sam,labels"
    info["config"]["teacher_options"] = {"sam_checkpoint": str(checkpoints.sam), "teacher_device": "cpu"}
    (multi / "run.json").write_text(json.dumps(info))
    sam_part = torch.randn(len(g), 8, generator=torch.Generator().manual_seed(0))
    decoder = LinearDecoder(torch.block_diag(torch.randn(sam_dim, 8), g.decoder.weight),
                            torch.cat([torch.zeros(sam_dim), g.decoder.bias]))
    save_ply(multi / "point_cloud.ply", g.with_features(torch.cat([sam_part, g.features], 1), decoder))

    both = FeatureField.load(multi)
    assert both.text_channels == (sam_dim, sam_dim + 384) and both.decoder_channels == (0, sam_dim)
    assert isinstance(both.mask_decoder, SamMaskDecoder)
    assert torch.equal(both.query("table").ids, field.query("table").ids)
    torch.testing.assert_close(both.relevancy("cup"), field.relevancy("cup"), atol=1e-5, rtol=1e-4)
    mask, sel = both.prompt(views[0].camera, points=[[16.5, 1.5]])
    assert mask.shape == (32, 32) and mask.dtype == torch.bool and sel.rule == "decoder"
    # without SAM's weights, prompts fall back to feature affinity on the labels block
    affinity = FeatureField.load(multi, device="cpu")
    affinity = dataclasses.replace(affinity, mask_decoder=None)
    _, sel = affinity.prompt(views[0].camera, points=[[16.5, 1.5]])
    assert sel.rule == "point" and len(sel) > 0
    with pytest.raises(FeatgsError, match="no SAM features"):
        FeatureField.load(run, sam_checkpoint=checkpoints.sam)
