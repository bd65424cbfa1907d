"""The SAM and CLIP teachers, the SAM prompter and automatic masks, on tiny random-weight
checkpoints loaded as a user's are (tests/foundation.py)."""

from __future__ import annotations

import json

import numpy as np
import open_clip
import pytest
import segment_anything
import torch

from featgs.errors import FeatgsError
from featgs.teachers import TeacherOptions, make_teacher, sam_model
from featgs.teachers.clip import TEMPLATES, ClipTeacher, pool_in_masks, window_starts
from featgs.teachers.clip_model import dense_features
from featgs.teachers.sam import SamTeacher
from featgs.teachers.sam_prompter import SamPrompter, laid_out


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
    x = sam_teacher.sam.preprocess(sam_model.resize(image))
    assert x.shape == (1, 3, 1024, 1024) and (x[..., 614:, :] == 0).all() and (x[..., 613, :] != 0).any()


@pytest.mark.slow
def test_prompter_is_sams_own_pipeline(sam_teacher, square):
    image, features = square
    prompter = SamPrompter(sam_teacher.sam)
    points = torch.tensor([[5.0, 7.0], [20.0, 26.0]])
    # segment-anything's SamPredictor end to end on the same image, through its numpy API
    reference = segment_anything.SamPredictor(sam_teacher.sam)
    reference.set_torch_image(sam_model.resize(image), (32, 32))
    logits = []
    for point in points:
        masks, scores, low_res = reference.predict(point[None].numpy(), np.array([1]), multimask_output=True)
        got = prompter.predict(features, (32, 32), point[None], torch.tensor([1]))
        assert got.masks.shape == (3, 32, 32) and got.masks.dtype == torch.bool and got.scores.shape == (3,)
        assert np.array_equal(got.masks.numpy(), masks)
        torch.testing.assert_close(got.scores, torch.from_numpy(scores))
        torch.testing.assert_close(got.logits, torch.from_numpy(low_res))
        logits.append(got.logits)
    # moving the point moves the mask (how, random weights cannot tell: trained SAM follows it)
    assert not torch.equal(logits[0], logits[1])


@pytest.mark.slow
def test_prompter_boxes_and_rendered_maps(sam_teacher, square):
    _, features = square
    prompter = SamPrompter(sam_teacher.sam)
    boxes = torch.tensor([[2.0, 2.0, 20.0, 18.0], [10.0, 4.0, 30.0, 30.0]])
    out = prompter.predict(features, (48, 48), boxes=boxes, multimask=False)
    assert out.masks.shape == (2, 48, 48) and out.scores.shape == (2,) and out.logits.shape == (2, 256, 256)
    # each box is the prompt SamPredictor.predict makes of it on the same map
    masks, scores, _ = laid_out(sam_teacher.sam, features, (48, 48)).predict(box=boxes[1].numpy(),
                                                                             multimask_output=False)
    assert np.array_equal(out.masks[1:].numpy(), masks)
    torch.testing.assert_close(out.scores[1:], torch.from_numpy(scores))
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


def test_sam_automatic_masks_are_sams_generator_resized_by_area(sam_teacher, monkeypatch):
    image = torch.zeros(32, 48, 3)  # two flat squares on black
    image[4:16, 4:20] = torch.tensor([1.0, 0.2, 0.1])
    image[14:30, 26:44] = torch.tensor([0.1, 0.3, 1.0])
    generate, generated = segment_anything.SamAutomaticMaskGenerator.generate, []
    monkeypatch.setattr(segment_anything.SamAutomaticMaskGenerator, "generate",
                        lambda gen, pixels: generated.append((gen, pixels, generate(gen, pixels))) or generated[-1][2])
    # random weights predict low IoUs and speckled, unstable masks: keep all 12, to see them resized
    masks = sam_teacher.automatic_masks(image, (8, 12), 2, pred_iou_thresh=0.0, stability_score_thresh=0.0,
                                        box_nms_thresh=1.0)
    (generator, pixels, records), = generated
    assert len(generator.point_grids[0]) == 4 and generator.points_per_batch == 16  # a 2 x 2 grid, CPU batches
    assert pixels.dtype == np.uint8 and np.array_equal(pixels, (image * 255).round().byte().numpy())
    assert masks.dtype == torch.bool and masks.device.type == "cpu" and masks.shape[1:] == (8, 12)
    # a cell of the 8 x 12 grid is 4 x 4 pixels: in the mask when at least half of them are
    expected = [torch.from_numpy(r["segmentation"]).view(8, 4, 12, 4).float().mean((1, 3)) >= 0.5 for r in records]
    expected = [m for m in expected if m.any()]
    assert 0 < len(masks) <= 12 and torch.equal(masks, torch.stack(expected))
    # SAM's own thresholds keep fewer (maybe none) of them, at the size asked for
    assert sam_teacher.automatic_masks(image, (5, 7), 2).shape[1:] == (5, 7)


def test_sam_size_is_read_off_a_released_checkpoint(tmp_path):
    path = tmp_path / "sam_vit_b.pth"  # random weights, as segment-anything's registry builds vit_b
    torch.save(segment_anything.sam_model_registry["vit_b"](checkpoint=None).state_dict(), path)
    assert SamTeacher(path, device="cpu").sam_model_name == "vit_b"


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
    alone = dense_features(clip_teacher.model.visual, x[..., :64, :64])[0]
    torch.testing.assert_close(features[:, :, :2], alone[:, :, :2])
    # an image within the native size is one pass, positional embeddings resized to its grid
    small = clip_teacher.encode_view(torch.rand(20, 40, 3))
    assert small.shape == (32, clip_teacher.resolution_for(40, 20)[0], 8)
    text = clip_teacher.encode_text(["mug", "table", "cup"])
    assert text.shape == (3, 32)
    torch.testing.assert_close(text.norm(dim=1), torch.ones(3))
    assert not torch.allclose(text[0], text[1])
    torch.testing.assert_close(clip_teacher.encode_text(["table"])[0], text[1])  # deterministic, row by row
    assert clip_teacher.model_id.startswith("clip-tiny-clip@sha256:") and "size:128" in clip_teacher.cache_key()


def test_clip_tokenizer_follows_clip(clip_teacher):
    # open_clip's own tokenizer of the model (its bundled BPE vocabulary: no file, no download)
    tokens = open_clip.get_tokenizer("tiny-clip")(["A photo of the MUG."])
    start, end = 49406, 49407  # CLIP's ids: a, photo, of, the, mug, "."
    assert tokens[0, :8].tolist() == [start, 320, 1125, 539, 518, 9722, 269, end]
    assert tokens.shape == (1, 77) and tokens[0, 8:].eq(0).all()
    # the teacher's text embedding: open_clip's encode_text of every template, normalised, averaged
    model = clip_teacher.model
    prompts = [template.format("mug") for template in TEMPLATES]
    with torch.no_grad():
        expected = model.encode_text(open_clip.get_tokenizer("tiny-clip")(prompts), normalize=True).mean(0)
    torch.testing.assert_close(clip_teacher.encode_text(["mug"])[0], expected / expected.norm())


@pytest.mark.slow
def test_sharpened_clip_pools_inside_sams_automatic_masks(checkpoints, monkeypatch):
    teacher = ClipTeacher(str(checkpoints.clip_config), checkpoints.clip, size=64, sharpen="sam", sharpen_points=2,
                          sam_checkpoint=checkpoints.sam, device="cpu")
    assert "sharpen:sam-vit_tiny" in teacher.cache_key() and "automatic-masks:2" in teacher.cache_key()
    generate, seen = teacher.sharpener.automatic_masks, []

    def every_mask(image, size, points_per_side):
        # random weights predict low IoUs and unstable masks: keep them all
        seen.append(generate(image, size, points_per_side, pred_iou_thresh=0.0, stability_score_thresh=0.0))
        return seen[-1]

    monkeypatch.setattr(teacher.sharpener, "automatic_masks", every_mask)
    image = torch.rand(32, 32, 3)
    features = teacher.encode_view(image)
    (masks,) = seen
    assert features.shape == (32, 4, 4) and masks.dtype == torch.bool and masks.shape[1:] == (4, 4)
    assert 0 < len(masks) <= 12  # a 2 x 2 grid of clicks, 3 masks each, duplicates suppressed
    torch.testing.assert_close(features, pool_in_masks(teacher._dense(teacher._normalised(image, 4, 4)), masks))


def test_checkpoint_that_does_not_fit_is_one_line(checkpoints, tmp_path):
    with pytest.raises(FeatgsError) as raised:
        SamTeacher(checkpoints.sam, model="vit_b", device="cpu").encode_view(torch.rand(8, 8, 3))
    message = str(raised.value)
    assert "\n" not in message and str(checkpoints.sam) in message and "not a SAM vit_b checkpoint" in message
    assert "shape mismatches" in message or "missing" in message
    with pytest.raises(FeatgsError, match="not a CLIP ViT-S-32 checkpoint") as raised:
        ClipTeacher("ViT-S-32", checkpoints.clip, device="cpu").prepare()
    assert "\n" not in str(raised.value) and str(checkpoints.clip) in str(raised.value)
    junk = tmp_path / "junk.pth"
    junk.write_bytes(b"not a checkpoint at all")
    with pytest.raises(FeatgsError, match="junk.pth"):
        SamTeacher(junk, device="cpu").prepare()
    with pytest.raises(FeatgsError, match="no such SAM checkpoint"):
        SamTeacher(tmp_path / "absent.pth")
    with pytest.raises(FeatgsError, match=r"unknown open_clip model 'ViT-Q-7' \(.*list_models\(\)") as raised:
        ClipTeacher("ViT-Q-7", checkpoints.clip)
    assert "\n" not in str(raised.value)
    odd = tmp_path / "odd.json"
    odd.write_text(json.dumps({"vision_cfg": {}}))
    with pytest.raises(FeatgsError, match="odd.json: not an open_clip model config"):
        ClipTeacher(str(odd), checkpoints.clip)
    with pytest.raises(FeatgsError, match="needs --sam-checkpoint"):
        make_teacher("sam", TeacherOptions())
