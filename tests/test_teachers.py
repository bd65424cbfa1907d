"""Teachers and the feature cache: the labels teacher with the real MiniLM encoder (offline,
from the installed package), the cache with a fast fake teacher."""

from __future__ import annotations

import socket
from typing import Optional

import pytest
import torch
from safetensors import safe_open
from torch import Tensor

from featgs.errors import FeatgsError
from featgs.teachers import CacheItem, FeatureCache, LabelsTeacher, Teacher, make_teacher
from featgs.teachers.labels import phrase

NAMES = {0: "floor", 1: "wall", 2: "mug", 3: "coffee_table", 7: "mug"}


def refuse_network(*args, **kwargs):
    raise AssertionError(f"network access attempted: {args}")


@pytest.fixture(scope="module")
def labels_teacher() -> LabelsTeacher:
    """Loaded once for the module, with sockets refused: the encoder must load offline."""
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(socket.socket, "connect", refuse_network)
        patch.setattr(socket, "getaddrinfo", refuse_network)
        teacher = LabelsTeacher(NAMES)
        teacher.encode_text(["warm-up"])
    return teacher


@pytest.fixture
def no_network(monkeypatch):
    monkeypatch.setattr(socket.socket, "connect", refuse_network)
    monkeypatch.setattr(socket, "getaddrinfo", refuse_network)


def label_map() -> Tensor:
    labels = torch.zeros(6, 5, dtype=torch.int64)
    labels[0] = 1
    labels[2:4, 1:3] = 2
    labels[5, 4] = 3
    labels[4, 0] = 7
    return labels


# --- labels teacher -----------------------------------------------------------------------


def test_labels_teacher_gives_each_pixel_its_name_embedding(labels_teacher):
    labels = label_map()
    features = labels_teacher.encode_view(torch.rand(6, 5, 3), labels)
    assert features.shape == (384, 6, 5) and features.dtype == torch.float32
    assert labels_teacher.resolution_for(5, 6) == (6, 5)
    for i, name in NAMES.items():
        expected = labels_teacher.encode_text([phrase(name)])[0]
        pixels = features.permute(1, 2, 0)[labels == i]
        torch.testing.assert_close(pixels, expected.expand_as(pixels), atol=1e-5, rtol=0)
    torch.testing.assert_close(features.norm(dim=0), torch.ones(6, 5))
    # ids 2 and 7 share the name "mug": the same vector
    assert torch.equal(features[:, 2, 1], features[:, 4, 0])


def test_encode_text_is_real_language(labels_teacher):
    mug, cup, banana = labels_teacher.encode_text(["mug", "cup", "banana"])
    assert mug @ cup > mug @ banana + 0.2
    torch.testing.assert_close(torch.stack([mug, cup, banana]).norm(dim=1), torch.ones(3))
    # a query equal to a label name gets exactly that label's vector
    torch.testing.assert_close(
        labels_teacher.encode_text(["coffee table"]), labels_teacher.encode_text(["coffee_table"])
    )


@pytest.mark.slow
def test_encoder_matches_sentence_transformers(labels_teacher, no_network):
    sentence_transformers = pytest.importorskip("sentence_transformers")
    from featgs.teachers.minilm import model_folder

    reference = sentence_transformers.SentenceTransformer(str(model_folder()), device="cpu", local_files_only=True)
    texts = ["mug", "a wooden table next to the window", "floor"]
    expected = reference.encode(texts, convert_to_tensor=True, normalize_embeddings=True)
    torch.testing.assert_close(labels_teacher.encode_text(texts), expected, atol=1e-5, rtol=0)


def test_labels_teacher_errors(labels_teacher):
    labels = label_map()
    labels[1, 1] = 42
    with pytest.raises(FeatgsError, match=r"label ids \[42\] have no name"):
        labels_teacher.encode_view(torch.zeros(6, 5, 3), labels)
    with pytest.raises(FeatgsError, match="needs per-pixel labels"):
        labels_teacher.encode_view(torch.zeros(6, 5, 3), None)
    with pytest.raises(FeatgsError, match="do not match"):
        labels_teacher.encode_view(torch.zeros(5, 5, 3), label_map())
    with pytest.raises(FeatgsError, match="needs label_names"):
        LabelsTeacher().encode_view(torch.zeros(6, 5, 3), label_map())
    with pytest.raises(FeatgsError, match="non-empty names"):
        LabelsTeacher({0: ""})
    with pytest.raises(FeatgsError, match="list of non-empty strings"):
        labels_teacher.encode_text("mug")


def test_cache_key_follows_label_names_but_model_id_does_not():
    a, b = LabelsTeacher({0: "mug"}), LabelsTeacher({0: "cup"})
    assert a.model_id == b.model_id and a.model_id.startswith("all-MiniLM-L6-v2@sha256:")
    assert a.cache_key() != b.cache_key()


def test_make_teacher():
    assert isinstance(make_teacher("labels", label_names={0: "mug"}), LabelsTeacher)
    with pytest.raises(FeatgsError, match="unknown teacher 'dino'.*labels"):
        make_teacher("dino")


def test_teacher_without_language_refuses_text():
    with pytest.raises(FeatgsError, match="not language-aligned"):
        FakeTeacher().encode_text(["mug"])


# --- feature cache ------------------------------------------------------------------------


class FakeTeacher(Teacher):
    """Half-resolution maps derived from the image; counts the views it encodes."""

    name = "fake"
    language_aligned = False

    def __init__(self, dim: int = 4, model_id: str = "fake@1", poison: Optional[str] = None, stop_after: int = -1):
        self.dim, self._model_id, self.poison, self.stop_after = dim, model_id, poison, stop_after
        self.calls = 0

    @property
    def model_id(self) -> str:
        return self._model_id

    def resolution_for(self, width: int, height: int) -> tuple[int, int]:
        return height // 2, width // 2

    def encode_view(self, image: Tensor, labels: Optional[Tensor] = None) -> Tensor:
        if self.calls == self.stop_after:
            raise KeyboardInterrupt
        self.calls += 1
        pooled = torch.nn.functional.avg_pool2d(image.permute(2, 0, 1)[None], 2)[0].mean(0)
        features = torch.stack([pooled * (k + 1) for k in range(self.dim)])
        if self.poison is not None and image[0, 0, 0] == float(self.poison):
            features[0, 0, 0] = float("nan")
        return features


def items(n: int = 3) -> list[CacheItem]:
    def loader(i: int):
        return lambda: torch.full((8, 6, 3), i / 10)

    return [CacheItem(f"view_{i:03d}", loader(i)) for i in range(n)]


def mtimes(cache: FeatureCache) -> dict[str, int]:
    return {p.name: p.stat().st_mtime_ns for p in cache.folder.iterdir()}


def test_cache_builds_once_then_reuses(tmp_path):
    cache, teacher = FeatureCache(tmp_path, "fake"), FakeTeacher()
    assert cache.meta is None
    assert cache.ensure(teacher, items(), progress=False) == 3
    assert cache.folder == tmp_path / "features" / "fake"
    before = mtimes(cache)
    assert cache.ensure(teacher, items(), progress=False) == 0
    assert teacher.calls == 3 and mtimes(cache) == before

    meta = cache.meta
    assert meta["teacher"] == "fake" and meta["model_id"] == "fake@1" and meta["dim"] == 4
    assert meta["dtype"] == "float16" and meta["images"] == {f"view_{i:03d}": [4, 3] for i in range(3)}
    features = cache.load("view_002")
    assert features.shape == (4, 4, 3) and features.dtype == torch.float16
    torch.testing.assert_close(features[1], torch.full((4, 3), 0.4, dtype=torch.float16))
    with safe_open(str(cache.path("view_002")), framework="pt") as f:  # fp16 on disk
        assert f.get_slice("features").get_dtype() == "F16"
    cache.check(teacher, ["view_000", "view_002"])


def test_cache_adds_new_images_only(tmp_path):
    cache, teacher = FeatureCache(tmp_path, "fake"), FakeTeacher()
    cache.ensure(teacher, items(2), progress=False)
    assert cache.ensure(teacher, items(4), progress=False) == 2 and teacher.calls == 4
    assert sorted(cache.meta["images"]) == [f"view_{i:03d}" for i in range(4)]


@pytest.mark.parametrize("changed", [FakeTeacher(dim=6), FakeTeacher(model_id="fake@2")])
def test_cache_rebuilds_when_teacher_changes(tmp_path, changed):
    cache = FeatureCache(tmp_path, "fake")
    cache.ensure(FakeTeacher(), items(), progress=False)
    with pytest.raises(FeatgsError) as raised:
        cache.check(changed)
    message = str(raised.value)
    assert "\n" not in message and "meta.json" in message and ("dim 4" in message or "'fake@1'" in message)
    assert cache.ensure(changed, items(), progress=False) == 3
    assert cache.load("view_000").shape[0] == changed.dim and cache.meta["model_id"] == changed.model_id
    cache.check(changed)


def test_cache_resumes_an_interrupted_build(tmp_path):
    cache = FeatureCache(tmp_path, "fake")
    with pytest.raises(KeyboardInterrupt):
        cache.ensure(FakeTeacher(stop_after=2), items(4), progress=False)
    assert cache.meta is None and len(list(cache.folder.glob("*.safetensors"))) == 2
    with pytest.raises(FeatgsError, match="no complete 'fake' feature cache"):
        cache.check(FakeTeacher())
    cache.path("view_001").write_bytes(cache.path("view_001").read_bytes()[:-10])  # truncated
    teacher = FakeTeacher()
    assert cache.ensure(teacher, items(4), progress=False) == 3 and teacher.calls == 3
    assert len(cache.meta["images"]) == 4


def test_cache_removes_maps_of_another_teacher_without_meta(tmp_path):
    cache = FeatureCache(tmp_path, "fake")
    cache.ensure(FakeTeacher(dim=6), items(2), progress=False)
    (cache.folder / "meta.json").unlink()
    teacher = FakeTeacher()
    assert cache.ensure(teacher, items(2), progress=False) == 2
    assert cache.load("view_001").shape[0] == 4


def test_cache_rejects_nan_maps(tmp_path):
    cache = FeatureCache(tmp_path, "fake")
    with pytest.raises(FeatgsError, match="image 'view_001'.*NaN or Inf"):
        cache.ensure(FakeTeacher(poison="0.1"), items(), progress=False)
    assert not cache.path("view_001").exists() and cache.meta is None


def test_cache_rejects_bad_names_and_missing_maps(tmp_path):
    cache = FeatureCache(tmp_path, "fake")
    twice = items(2) + items(1)
    with pytest.raises(FeatgsError, match="repeated: \\['view_000'\\]"):
        cache.ensure(FakeTeacher(), twice, progress=False)
    with pytest.raises(FeatgsError, match="cannot name a feature file"):
        cache.ensure(FakeTeacher(), [CacheItem("a/b", lambda: torch.zeros(2, 2, 3))], progress=False)
    cache.ensure(FakeTeacher(), items(1), progress=False)
    with pytest.raises(FeatgsError, match="no cached 'fake' features for image 'view_009'"):
        cache.load("view_009")
    with pytest.raises(FeatgsError, match="1 image"):
        cache.check(FakeTeacher(), ["view_000", "view_009"])


def test_cache_of_labels_teacher_wraps_errors_with_the_image(tmp_path, labels_teacher):
    cache = FeatureCache(tmp_path, "labels")
    good = CacheItem("r_0", lambda: torch.zeros(6, 5, 3), label_map)
    cache.ensure(labels_teacher, [good], progress=False)
    expected = labels_teacher.encode_view(torch.zeros(6, 5, 3), label_map()).half()
    assert torch.equal(cache.load("r_0"), expected)
    unnamed = CacheItem("r_1", lambda: torch.zeros(2, 2, 3), lambda: torch.full((2, 2), 9))
    with pytest.raises(FeatgsError, match=r"image 'r_1': label ids \[9\]"):
        cache.ensure(labels_teacher, [good, unnamed], progress=False)
    assert cache.meta is None and cache.path("r_0").exists()  # incomplete, resumable


def test_too_few_feature_dims_for_the_label_names_warns_and_merges_the_rarest(labels_teacher):
    """4 distinct names span 3 dims: PCA to 3 keeps every name apart, PCA to 2 loses the rarest
    (coffee_table, one pixel), whose map then reads as another name; training warns below 3."""
    from featgs.teachers.pca import teacher_pca
    from featgs.train.blocks import TeacherBlock, too_few_dims

    labels = label_map()
    features = labels_teacher.encode_view(torch.rand(6, 5, 3), labels)
    names = ["floor", "wall", "mug", "coffee_table"]
    table = torch.nn.functional.normalize(labels_teacher.encode_text([phrase(n) for n in names]), dim=1)
    rare = features[:, 5, 4]  # the one coffee_table pixel
    for dim, keeps_it in ((3, True), (2, False)):
        basis, mean, _ = teacher_pca([lambda: features], dim, progress=False)
        back = basis @ (basis.T @ (rare - mean)) + mean
        assert (int((table @ back).argmax()) == 3) == keeps_it, dim
    block = TeacherBlock(labels_teacher, cache=None, channels=(0, 384))
    assert too_few_dims([block], None) == [] and too_few_dims([block], 3) == []
    (warning,) = too_few_dims([block], 2)
    assert "--feature-dim 2 is below the 3 dims" in warning and "4 distinct names" in warning
