"""The benchmarks' protocols (featgs.protocols, `featgs eval --protocol`) and `featgs scene
export`: the original scripts' arithmetic on cases small enough to compute by hand, and the
protocols on the built-in tabletop scene exported to each format, where their numbers must
equal `featgs eval`'s wherever the protocols coincide."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from builders import copy_run
from featgs.cli import main
from featgs.errors import FeatgsError
from featgs.protocols import common, evaluate as evaluate_protocol, format_result, lerf_ovs, ovs3d
from featgs.protocols.lerf_ovs import LerfOvsConfig, read_frames, score_frames


# -- the scripts' image arithmetic -----------------------------------------------------------------
def _filter2d_reference(x: np.ndarray, k: int) -> np.ndarray:
    """cv2.filter2D(x, -1, ones((k, k)) / k**2) written out: anchor (k // 2, k // 2), border
    reflected without the edge (gfedcb|abcdefgh|gfedcba)."""
    h, w = x.shape

    def reflect(i, n):
        while i < 0 or i >= n:
            i = -i if i < 0 else 2 * (n - 1) - i
        return i

    out = np.zeros((h, w))
    for r in range(h):
        for c in range(w):
            out[r, c] = np.mean([x[reflect(r + a - k // 2, h), reflect(c + b - k // 2, w)]
                                 for a in range(k) for b in range(k)])
    return out


def test_box_filter_is_opencvs_filter2d():
    x = np.arange(9.0).reshape(3, 3)
    # k = 2: the window is offsets -1..0, and index -1 reflects to 1: at (0, 0) rows and columns
    # {1, 0}: (4 + 3 + 1 + 0) / 4; at (2, 2) rows and columns {1, 2}: (4 + 5 + 7 + 8) / 4
    assert common.box_filter(x, 2).tolist() == [[2.0, 2.0, 3.0], [2.0, 2.0, 3.0], [5.0, 5.0, 6.0]]
    rng = np.random.default_rng(0)
    for k, shape in ((3, (5, 7)), (4, (6, 5)), (30, (40, 33))):
        img = rng.random(shape)
        np.testing.assert_allclose(common.box_filter(img, k), _filter2d_reference(img, k), atol=1e-12)


def test_majority_smooth_follows_langsplats_window():
    """LangSplat's window is rows max(0, i-s) : min(i+s+1, h-1): it never reaches the last row
    or column, so a mask on the last row alone vanishes and a last row of zeros under ones fills."""
    last = np.zeros((5, 5), np.uint8)
    last[4] = 1
    assert common.majority_smooth(last, 1).sum() == 0
    under = np.ones((5, 5), np.uint8)
    under[4] = 0
    assert common.majority_smooth(under, 1)[4].tolist() == [1, 1, 1, 1, 1]
    tie = np.array([[1, 0, 0], [1, 0, 0], [0, 0, 0]], np.uint8)  # (0, 0): window rows 0:2, cols 0:2 -> 2 of 4: tie -> 0
    assert common.majority_smooth(tie, 1)[0, 0] == 0


def test_polygons_fill_with_their_outline_and_contours_round_trip():
    assert common.polygon_to_mask(5, 6, [[1, 1], [3, 1], [3, 3], [1, 3]]).sum() == 9  # 3 x 3, edges included
    yy, xx = np.mgrid[:30, :40]
    blob = ((yy - 15) ** 2 / 80 + (xx - 20) ** 2 / 200) < 1
    hole = blob.copy()
    hole[13:17, 18:22] = False
    for m in (blob, hole):
        back = common.polygon_to_mask(30, 40, common.outer_contour(m))
        assert np.array_equal(back, blob)  # holes are filled, as in a drawn outline
    pieces = common.components(np.array([[1, 0, 0, 1], [0, 1, 0, 1]], bool))  # diagonal: one 8-connected piece
    assert len(pieces) == 2 and [common.box_of(p) for p in pieces] == [[0, 0, 1, 1], [3, 0, 3, 1]]


# -- LERF-OVS on a case computed by hand -----------------------------------------------------------
def _write_frame(folder: Path, name: str, w: int, h: int, objects) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / f"{name}.json").write_text(json.dumps(
        {"info": {"name": f"{name}.jpg", "width": w, "height": h},
         "objects": [{"category": c, "bbox": box, "segmentation": poly} for c, box, poly in objects]}))


def _rect(x1, y1, x2, y2):
    return [x1, y1, x2, y2], [[x1, y1], [x2, y1], [x2, y2], [x1, y2]]


@pytest.fixture
def tiny_lerf(tmp_path) -> Path:
    """Frame a (8 x 6): two "mug" objects (3 x 3 at x 1..3, y 1..3, and 2 x 2 at x 6..7, y 4..5:
    one query, 13 pixels, two boxes) and an "apple" (3 x 2 at x 5..7, y 0..1); frame b (8 x 6):
    an "apple" (3 x 3 at x 0..2, y 3..5)."""
    _write_frame(tmp_path, "frame_a", 8, 6, [("mug", *_rect(1, 1, 3, 3)), ("apple", *_rect(5, 0, 7, 1)),
                                             ("mug", *_rect(6, 4, 7, 5))])
    _write_frame(tmp_path, "frame_b", 8, 6, [("apple", *_rect(0, 3, 2, 5))])
    return tmp_path


def _hand_maps(frame, texts):
    """Relevancy maps chosen so every number is known (see the test)."""
    out = []
    for t in texts:
        r = np.zeros((6, 8))
        if frame.name == "frame_a.jpg" and t == "mug":
            r[1:3, 1:4] = 1.0  # 6 pixels inside the 3 x 3 mug
            r[0, 0] = 1.0  # one outside
        elif frame.name == "frame_a.jpg":
            r[:] = 0.2
            r[0:2, 5:8] = 0.8  # the apple, 6 pixels
            r[5, 0] = 0.9  # the peak, outside the apple's box
        else:
            r[3:6, 0:2] = 1.0  # 6 of the apple's 9 pixels
        out.append(r)
    return np.stack(out)


def test_lerf_ovs_scores_a_hand_computed_case(tiny_lerf):
    frames = read_frames(tiny_lerf)
    mug = frames[0].queries["mug"]
    assert mug.mask.sum() == 13 and len(mug.boxes) == 2 and list(frames[0].queries) == ["mug", "apple"]
    # no window (kernel 1), no smoothing: mask = relevancy rescaled to 0..1 above 0.7
    res = score_frames(frames, _hand_maps, LerfOvsConfig(kernel=1, smooth=0))
    # mug (a): peak (1, 1) in its first box: hit; predicted 7 px, 6 of them in the 13-px mask: 6 / 14
    # apple (a): peak (0, 5) outside its box: miss; (0.8 - 0.2) / 0.7 > 0.7: 6 px + the peak: 6 / 7
    # apple (b): peak inside: hit; 6 of 9 px: 6 / 9
    assert [q["localization_accuracy"] for q in res["queries"]] == [1.0, 0.0, 1.0]
    np.testing.assert_allclose([q["miou"] for q in res["queries"]], [6 / 14, 6 / 7, 6 / 9])
    assert res["num_queries"] == 3 and res["localization_accuracy"] == pytest.approx(2 / 3)
    assert res["miou"] == pytest.approx((6 / 14 + 6 / 7 + 6 / 9) / 3)
    assert res["per_category"]["apple"] == {"localization_accuracy": 0.5, "miou": pytest.approx((6 / 7 + 6 / 9) / 2),
                                            "queries": 2}


def test_lerf_ovs_localisation_looks_at_the_box_filtered_relevancy():
    """A one-pixel spike beats a 3 x 3 blob of half its height, until the 3 x 3 window averages
    them: the spike to 1/9, the blob's centre (and, reflected at the border, its corner) to 0.5."""
    r = np.zeros((7, 7))
    r[1, 1] = 1.0
    r[4:7, 4:7] = 0.5
    q = lerf_ovs.Query("blob", r > 0.4, [[4, 4, 6, 6]])
    assert lerf_ovs.score_query(r, q, LerfOvsConfig(kernel=1))["localization_accuracy"] == 0.0
    hit = lerf_ovs.score_query(r, q, LerfOvsConfig(kernel=3))
    assert hit["localization_accuracy"] == 1.0 and hit["peak"] == [5, 5]


def test_lerf_ovs_annotation_errors_are_one_line(tmp_path):
    (tmp_path / "frame_1.json").write_text(json.dumps({"info": {"name": "x.jpg", "width": 4, "height": 4},
                                                       "objects": [{"category": "cup", "bbox": [0, 0, 1]}]}))
    with pytest.raises(FeatgsError, match=r"frame_1.json: objects\[0\]: 'bbox' must be"):
        read_frames(tmp_path)
    (tmp_path / "empty").mkdir()
    with pytest.raises(FeatgsError, match="no \\*.json frame annotations"):
        read_frames(tmp_path / "empty")


# -- 3D-OVS's arithmetic against sklearn, which its script calls -----------------------------------------
def test_3d_ovs_view_scores_match_its_sklearn_calls():
    masks = np.zeros((4, 2, 3), bool)  # categories a, b, c, d
    masks[0, 0, :2] = True
    masks[1, 0, 2] = masks[1, 1, 0] = masks[1, 1, 1] = True  # pixel (1, 2) is in no mask; d is nowhere
    pred = np.array([[0, 1, 1], [1, 1, 2]])
    s = ovs3d.score_view(pred, masks)
    # a: 1 / 2; b: 3 / 4; c: predicted once, never true: 0; d: empty union: 0 (sklearn's zero_division)
    assert s["iou"] == [0.5, 0.75, 0.0, 0.0] and s["miou"] == pytest.approx(1.25 / 4) and s["present"] == 3
    assert s["accuracy"] == pytest.approx(4 / 6)  # (0, 1) mislabelled; (1, 2) is in no mask
    metrics = pytest.importorskip("sklearn.metrics")
    gt = masks.reshape(4, -1).T.astype(np.int8)
    onehot = np.eye(4, dtype=np.int8)[pred.reshape(-1)]
    with np.errstate(all="ignore"):
        assert metrics.jaccard_score(gt, onehot, average=None, zero_division=0).tolist() == s["iou"]
    assert metrics.accuracy_score(gt, onehot) == s["accuracy"]


# -- on the built-in scene, exported -------------------------------------------------------------------
@pytest.fixture(scope="module")
def exported(tabletop_run, tabletop_data, tmp_path_factory):
    """A private copy of the tiny tabletop run, its `featgs eval` metrics, and its test views
    exported as LERF-OVS and 3D-OVS annotations by `featgs scene export`."""
    from featgs.train.evaluate import evaluate_run

    root = tmp_path_factory.mktemp("protocols")
    run = copy_run(tabletop_run, root / "run")
    for fmt in ("lerf-ovs", "3d-ovs"):
        assert main(["scene", "export", str(tabletop_data), "--format", fmt, "--out", str(root / fmt)]) == 0
    return {"root": root, "run": run, "data": tabletop_data, "eval": evaluate_run(run, pictures=False, progress=False)}


def _cli_json(capsys, *args) -> dict:
    capsys.readouterr()
    assert main(["eval", *map(str, args), "--json", "--quiet"]) == 0
    return json.loads(capsys.readouterr().out)


def test_export_writes_each_objects_box_and_outline(exported):
    from featgs.data import load_scene

    scene = load_scene(exported["data"])
    view = scene.test[0]
    ids = view.labels().numpy()
    doc = json.loads((exported["root"] / "lerf-ovs" / f"{view.name}.json").read_text())
    assert doc["info"] == {"name": view.image_path.name, "width": ids.shape[1], "height": ids.shape[0]}
    by_name = {n: i for i, n in scene.label_names.items()}
    for obj in doc["objects"]:
        region = common.polygon_to_mask(ids.shape[0], ids.shape[1], obj["segmentation"])
        x1, y1, x2, y2 = obj["bbox"]
        inside = np.zeros_like(region)
        inside[y1:y2 + 1, x1:x2 + 1] = True
        assert region.any() and not (region & ~inside).any()  # the outline stays in its box
        assert (ids[region] == by_name[obj["category"]]).mean() > 0.5
    seg = exported["root"] / "3d-ovs" / "segmentations"
    classes = (seg / "classes.txt").read_text().split("\n")[:-1]
    assert sorted(classes) == sorted(scene.label_names.values())
    index = sorted(v.name for v in scene.views).index(view.name)
    for c in classes:  # each mask is exactly its label's pixels
        png = np.asarray(__import__("PIL.Image").Image.open(seg / f"{index:03d}" / f"{c}.png"))
        assert np.array_equal(png == 255, ids == by_name[c])


@pytest.mark.slow
def test_3d_ovs_and_replica_seg_equal_featgs_eval_where_they_coincide(exported, capsys, tmp_path):
    run, m = exported["run"], exported["eval"]
    res = _cli_json(capsys, run, "--protocol", "3d-ovs", "--labels", exported["root"] / "3d-ovs")
    s = res["scenes"][run.name]
    assert s["num_views"] == len(m["views"]) == 3
    # one confusion matrix over the views: featgs eval's mIoU and accuracy, exactly
    assert s["miou_pooled"] == pytest.approx(m["miou"], abs=1e-12)
    assert s["accuracy_pooled"] == pytest.approx(m["accuracy"], abs=1e-12)
    # per view: 3D-OVS averages over all C categories, featgs eval over those present; the
    # IoUs are the same, and the exported masks cover each pixel once, so the accuracies agree
    per_view = {v["view"]: v for v in m["views"]}
    for v in s["views"]:
        mine = per_view[v["camera"]]
        assert v["miou"] * s["num_classes"] == pytest.approx(mine["miou"] * v["present"], abs=1e-9)
        assert v["accuracy"] == pytest.approx(mine["accuracy"], abs=1e-12)
    assert s["miou"] == pytest.approx(np.mean([v["miou"] for v in s["views"]]))
    assert res["miou"] == s["miou"] and res["per_query"]["miou"] == res["per_scene"]["miou"] == s["miou"]
    # the 3D-selection block of the same queries is the selection-3d protocol on the same annotations
    sel = _cli_json(capsys, run, "--protocol", "selection-3d", "--labels", exported["root"] / "3d-ovs")
    for key in ("miou", "acc@0.25", "acc@0.5"):
        assert sel[key] == pytest.approx(s["selection_3d"][key])
    assert sel["scenes"][run.name]["num_queries"] == s["selection_3d"]["num_queries"] > 0

    # replica-seg: the dataset's own label maps, and the same maps handed over as a folder
    rep = _cli_json(capsys, run, "--protocol", "replica-seg")
    assert rep["miou"] == pytest.approx(m["miou"], abs=1e-12) and rep["accuracy"] == pytest.approx(m["accuracy"], abs=1e-12)
    folder = tmp_path / "replica"
    folder.mkdir()
    shutil.copy(exported["data"] / "labels.json", folder / "labels.json")
    for v in m["views"]:
        shutil.copy(exported["data"] / "labels" / f"{v['view']}.png", folder / f"{v['view']}.png")
    rep2 = _cli_json(capsys, run, "--protocol", "replica-seg", "--labels", folder)
    assert rep2["miou"] == rep["miou"] and rep2["accuracy"] == rep["accuracy"]


@pytest.mark.slow
def test_lerf_ovs_on_the_exported_scene(exported, capsys):
    run = exported["run"]
    res = _cli_json(capsys, run, "--protocol", "lerf-ovs", "--labels", exported["root"] / "lerf-ovs")
    s = res["scenes"][run.name]
    queries = s["queries"]
    frames = read_frames(exported["root"] / "lerf-ovs")
    assert s["num_frames"] == 3 and len(queries) == sum(len(f.queries) for f in frames) == s["num_queries"]
    for key in ("localization_accuracy", "miou"):
        assert 0.0 <= res[key] <= 1.0
        assert res[key] == pytest.approx(np.mean([q[key] for q in queries]))  # one scene: the mean per query
        assert res["per_scene"][key] == pytest.approx(res[key])
    assert json.loads((run / "metrics-lerf-ovs.json").read_text())["miou"] == s["miou"]
    # the per-pixel relevancy, recomputed from the fully decoded render
    pr = common.ProtocolRun.open(run)
    fr = frames[0]
    cam = pr.camera(fr.name, fr.width, fr.height, source="test")
    texts = list(fr.queries)
    fast = common.pixel_relevancy(pr.field, common.rendered_features(pr.field, cam), texts)
    from featgs.render import render

    decoded = F.normalize(render(pr.field.gaussians, cam, features=True).features, dim=-1)
    vecs = F.normalize(pr.field.embed([*texts, "object", "things", "stuff", "texture"]), dim=-1)
    cos = decoded @ vecs.T
    slow = torch.sigmoid((cos[..., :len(texts), None] - cos[..., None, len(texts):]) / 0.1).amin(-1).permute(2, 0, 1)
    torch.testing.assert_close(fast, slow, rtol=1e-4, atol=1e-5)
    again = lerf_ovs.score_query(fast[0].numpy(), fr.queries[texts[0]])
    first = next(q for q in queries if q["frame"] == fr.name and q["category"] == texts[0])
    assert again["miou"] == pytest.approx(first["miou"], abs=1e-6)
    assert again["localization_accuracy"] == first["localization_accuracy"]
    sel = s["selection_3d"]
    assert sel["num_queries"] == len(queries) and 0.0 <= sel["miou"] <= 1.0
    assert sel["acc@0.5"] <= sel["acc@0.25"]
    text = format_result(res)
    assert "localization_accuracy" in text and "mean per query" in text and "mean per scene (1 scenes)" in text


@pytest.mark.slow
def test_several_scenes_average_per_view_and_per_scene(exported, tmp_path):
    """RUN a folder of runs and --labels a folder of scenes: each scene present in both, and
    both averages (replica-seg on label-map folders, the quickest protocol)."""
    runs, labels = tmp_path / "runs", tmp_path / "labels"
    names = ("alpha", "beta")
    for i, name in enumerate(names):
        copy_run(exported["run"], runs / name)
        (labels / name).mkdir(parents=True)
        shutil.copy(exported["data"] / "labels.json", labels / name / "labels.json")
        for v in exported["eval"]["views"][: i + 1]:  # alpha: one view, beta: two
            shutil.copy(exported["data"] / "labels" / f"{v['view']}.png", labels / name / f"{v['view']}.png")
    res = evaluate_protocol("replica-seg", runs, labels, progress=False)
    a, b = res["scenes"]["alpha"], res["scenes"]["beta"]
    assert (a["num_views"], b["num_views"]) == (1, 2) and res["per_query"]["num_queries"] == 3
    assert res["per_scene"]["miou"] == pytest.approx((a["miou"] + b["miou"]) / 2)
    assert res["per_query"]["miou"] == pytest.approx((a["miou"] + 2 * b["miou"]) / 3) == res["miou"]


def test_protocol_arguments_are_checked(tmp_path, capsys):
    with pytest.raises(FeatgsError, match="needs --labels"):
        evaluate_protocol("lerf-ovs", tmp_path, None)
    with pytest.raises(FeatgsError, match="no such file"):
        evaluate_protocol("3d-ovs", tmp_path, tmp_path / "missing")
    assert main(["eval", str(tmp_path), "--labels", str(tmp_path)]) == 2
    assert "--labels needs --protocol" in capsys.readouterr().err
