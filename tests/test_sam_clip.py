"""The SAM and CLIP teachers, the SAM prompter and automatic masks, on tiny random-weight
checkpoints loaded as a user's are (tests/foundation.py)."""

from __future__ import annotations

import json

import pytest
import torch
import torch.nn.functional as F

from featgs.errors import FeatgsError
from featgs.teachers import TeacherOptions, make_teacher, sam_model
from featgs.teachers.clip import ClipTeacher, pool_in_masks, window_starts
from featgs.teachers.clip_model import clip_arch
from featgs.teachers.clip_tokenizer import ClipTokenizer
from featgs.teachers.sam import SamTeacher
from featgs.teachers.sam_masks import MaskConfig, automatic_masks, box_nms
from featgs.teachers.sam_prompter import SamPrompter


@pytest.fixture(scope="module")
def sam_teacher(checkpoints) -> SamTeacher:
    return SamTeacher(checkpoints.sam, device="cpu")


@pytest.fixture(scope="module")
def square(sam_teacher):
    """A 32 x 32 image and its SAM map (square: no padding cells)."""
    gen = torch.Generator().manual_seed(1)
    image = torch.rand(32, 32, 3, generator=gen)
    return image, sam_teacher.encode_view(image)


def test_sam_map_is_the_embedding_cropped_to_the_image(sam_teacher):
    image = torch.rand(24, 40, 3)  # 3:5 -> resized to 614 x 1024 -> 39 x 64 cells
    features = sam_teacher.encode_view(image)
    assert sam_teacher.resolution_for(40, 24) == (39, 64) and features.shape == (256, 39, 64)
    assert sam_teacher.sam_model_name == "vit_tiny"  # read off the checkpoint
    assert sam_teacher.model_id.startswith("sam-vit_tiny@sha256:") and len(sam_teacher.model_id) == 36
    # SAM's own layout: the 614 x 1024 image, padded at the bottom
    x = sam_model.preprocess(image)
    assert x.shape == (1, 3, 1024, 1024) and (x[..., 614:, :] == 0).all() and (x[..., 613, :] != 0).any()


@pytest.mark.slow
def test_prompter_is_sams_own_pipeline(sam_teacher, square):
    image, features = square
    prompter = SamPrompter(sam_teacher.sam)
    points = torch.tensor([[5.0, 7.0], [20.0, 26.0]])
    # segment-anything's Sam.forward on the same image, points moved to its 1024 frame by hand
    resized = F.interpolate(image.permute(2, 0, 1)[None] * 255, size=(1024, 1024), mode="bilinear",
                            align_corners=False, antialias=True)[0]
    ref = sam_teacher.sam([{"image": resized, "original_size": (32, 32), "point_coords": points[:, None] * 32,
                            "point_labels": torch.ones(2, 1, dtype=torch.int64)}], multimask_output=True)[0]
    for k, point in enumerate(points):
        got = prompter.predict(features, (32, 32), point[None], torch.tensor([1]))
        assert got.masks.shape == (3, 32, 32) and got.masks.dtype == torch.bool and got.scores.shape == (3,)
        assert torch.equal(got.masks, ref["masks"][k])
        torch.testing.assert_close(got.scores, ref["iou_predictions"][k])
        torch.testing.assert_close(got.logits, ref["low_res_logits"][k])
    # moving the point moves the mask (how, random weights cannot tell: trained SAM follows it)
    assert not torch.equal(ref["low_res_logits"][0], ref["low_res_logits"][1])


@pytest.mark.slow
def test_prompter_boxes_and_rendered_maps(sam_teacher, square):
    _, features = square
    prompter = SamPrompter(sam_teacher.sam)
    boxes = torch.tensor([[2.0, 2.0, 20.0, 18.0], [10.0, 4.0, 30.0, 30.0]])
    out = prompter.predict(features, (48, 48), boxes=boxes, multimask=False)
    assert out.masks.shape == (2, 48, 48) and out.scores.shape == (2,) and out.logits.shape == (2, 256, 256)
    # a map rendered at another resolution (and a non-square image) is laid out on SAM's grid
    wide = prompter.predict(features[:, :20, :], (30, 48), torch.tensor([[40.0, 3.0]]), torch.tensor([0]),
                            boxes=boxes[:1])
    assert wide.masks.shape == (3, 30, 48)
    laid = sam_model.pad_embedding(features[:, :20, :], 30, 48)
    assert laid.shape == (1, 256, 64, 64) and (laid[..., 40:, :] == 0).all() and (laid[..., :40, :] != 0).any()
    with pytest.raises(FeatgsError, match="at least one point or box"):
        prompter.predict(features, (32, 32))
    with pytest.raises(FeatgsError, match=r"\[256, h, w\]"):
        prompter.predict(features[:8], (32, 32), torch.tensor([[1.0, 1.0]]), torch.tensor([1]))


def test_box_nms_keeps_the_best_of_overlapping_boxes():
    boxes = torch.tensor([[0, 0, 9, 9], [1, 1, 10, 10], [20, 20, 25, 25]])
    assert box_nms(boxes, torch.tensor([0.5, 0.9, 0.8]), 0.5).tolist() == [1, 2]
    assert box_nms(boxes, torch.tensor([0.5, 0.9, 0.8]), 0.9).tolist() == [1, 2, 0]


def test_pooling_in_masks_takes_the_smallest_covering_mask():
    features = torch.arange(2 * 3 * 4, dtype=torch.float32).view(2, 3, 4)
    big = torch.zeros(3, 4, dtype=torch.bool)
    big[:, :2] = True
    small = torch.zeros(3, 4, dtype=torch.bool)
    small[0, 0] = small[0, 1] = True
    out = pool_in_masks(features, torch.stack([big, small]))
    torch.testing.assert_close(out[:, 0, 0], features[:, 0, :2].mean(1))
    torch.testing.assert_close(out[:, 2, 1], features[:, :, :2].mean((1, 2)))
    torch.testing.assert_close(out[:, :, 2:], features[:, :, 2:])  # in no mask: unchanged


@pytest.fixture(scope="module")
def clip_teacher(checkpoints) -> ClipTeacher:
    return ClipTeacher(str(checkpoints.clip_config), checkpoints.clip, size=128, device="cpu")


def test_clip_dense_features_windows_and_text(clip_teacher):
    image = torch.rand(48, 96, 3)  # longest side 128 -> 4 x 8 patches of 16 px; native window 4 x 4
    assert window_starts(8, 4) == [0, 2, 4] and window_starts(3, 4) == [0]
    features = clip_teacher.encode_view(image)
    assert clip_teacher.resolution_for(96, 48) == (4, 8) and features.shape == (32, 4, 8)
    # the first window alone sees the left 4 x 4 patches; cells seen by one window equal it
    x = clip_teacher._normalised(image, 4, 8)
    alone = clip_teacher.model.dense_features(x[..., :64, :64])[0]
    torch.testing.assert_close(features[:, :, :2], alone[:, :, :2])
    # an image within the native size is one pass, positional embeddings resized to its grid
    small = clip_teacher.encode_view(torch.rand(20, 40, 3))
    assert small.shape == (32, clip_teacher.resolution_for(40, 20)[0], 8)
    text = clip_teacher.encode_text(["mug", "table", "cup"])
    assert text.shape == (3, 32)
    torch.testing.assert_close(text.norm(dim=1), torch.ones(3))
    assert not torch.allclose(text[0], text[1])
    assert clip_teacher.model_id.startswith("clip-tiny-clip@sha256:") and "size:128" in clip_teacher.cache_key()


def test_clip_tokenizer_follows_clip(checkpoints):
    tokens = ClipTokenizer(checkpoints.clip.parent / "merges.txt", 534, 16)(["A photo of the MUG", "x" * 40])
    start, end = 532, 533
    # "a" is a single byte symbol + </w>; photo, of, the, mug are whole merged words
    assert tokens[0, :7].tolist() == [start, 256 + ord("a") - 33, 512 + 3, 512 + 4, 512 + 6, 512 + 8, end]
    assert tokens[0, 7:].eq(0).all() and tokens[1, -1] == end and tokens.shape == (2, 16)


@pytest.mark.slow
def test_sharpened_clip_pools_inside_sams_automatic_masks(checkpoints, monkeypatch):
    import featgs.teachers.clip as clip

    teacher = ClipTeacher(str(checkpoints.clip_config), checkpoints.clip, size=64, sharpen="sam", sharpen_points=2,
                          sam_checkpoint=checkpoints.sam, device="cpu")
    assert "sharpen:sam-vit_tiny" in teacher.cache_key() and "points:2" in teacher.cache_key()
    # random weights predict low IoUs: keep every mask of the 2 x 2 grid of clicks (3 each)
    teacher.masks = MaskConfig(points_per_side=2, pred_iou_thresh=-1.0, stability_thresh=0.0, nms_thresh=1.0)
    seen = []
    monkeypatch.setattr(clip, "automatic_masks", lambda *a: seen.append(automatic_masks(*a)) or seen[-1])
    image = torch.rand(32, 32, 3)
    features = teacher.encode_view(image)
    masks, scores = seen[0]
    assert features.shape == (32, 4, 4) and masks.dtype == torch.bool and masks.shape[1:] == (4, 4)
    assert 0 < len(masks) <= 12 and len(scores) == len(masks) and torch.all(scores[:-1] >= scores[1:])
    torch.testing.assert_close(features, pool_in_masks(teacher._dense(teacher._normalised(image, 4, 4)), masks))


def test_checkpoint_that_does_not_fit_is_one_line(checkpoints, tmp_path):
    with pytest.raises(FeatgsError) as raised:
        SamTeacher(checkpoints.sam, model="vit_b", device="cpu").encode_view(torch.rand(8, 8, 3))
    message = str(raised.value)
    assert "\n" not in message and str(checkpoints.sam) in message and "not a SAM vit_b checkpoint" in message
    assert "shape mismatches" in message or "missing" in message
    with pytest.raises(FeatgsError, match="not a CLIP ViT-B-16 checkpoint"):
        ClipTeacher("ViT-B-16", checkpoints.clip, device="cpu").prepare()
    junk = tmp_path / "junk.pth"
    junk.write_bytes(b"not a checkpoint at all")
    with pytest.raises(FeatgsError, match="junk.pth"):
        SamTeacher(junk, device="cpu").prepare()
    with pytest.raises(FeatgsError, match="no such SAM checkpoint"):
        SamTeacher(tmp_path / "absent.pth")
    with pytest.raises(FeatgsError, match="unknown CLIP model 'ViT-Q-7'"):
        ClipTeacher("ViT-Q-7", checkpoints.clip)
    config = json.loads(checkpoints.clip_config.read_text())
    config["vision_cfg"]["timm_model_name"] = "vit_base_patch16_224"
    odd = tmp_path / "odd.json"
    odd.write_text(json.dumps(config))
    with pytest.raises(FeatgsError, match="'timm_model_name' is not supported"):
        clip_arch(str(odd))
    with pytest.raises(FeatgsError, match="needs --sam-checkpoint"):
        make_teacher("sam", TeacherOptions())
