"""The on-disk cache of teacher feature maps: one fp16 safetensors file per image.

Layout, under a scene's data folder::

    features/<teacher>/<image name>.safetensors   key "features": [D, h, w] float16
    features/<teacher>/meta.json                  written last: the cache is complete

Each map file also carries the teacher's identity (name, model id, cache key, dim) in its
safetensors header, so files can be judged one by one without the meta: an interrupted
build (no meta) resumes by keeping the files that match the teacher and are complete, and a
change of teacher removes the files that do not. Every write is atomic. One job writes a
cache folder at a time: one process, or the ranks of one ``torchrun`` launch, each writing
only its own share of the maps (:meth:`FeatureCache.ensure`).
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterable, Optional, Sequence

import torch
from safetensors import safe_open
from safetensors.torch import save
from torch import Tensor
from tqdm import tqdm

from featgs.atomic import atomic_write_bytes, atomic_write_text
from featgs.distributed import SINGLE, Ranks
from featgs.data.jsonfile import loads_strict
from featgs.errors import FeatgsError
from featgs.teachers.base import Teacher

FORMAT = 1
KEY = "features"
META = "meta.json"
SUFFIX = ".safetensors"


def _no_labels() -> Optional[Tensor]:
    return None


@dataclass(frozen=True)
class CacheItem:
    """One image to extract, independent of how the data package stores it.

    Attributes:
        name: unique among the scene's images; the file name of its map (e.g. the image stem).
        load_image: returns the image, [H, W, 3] float32 in [0, 1]; called only if the map
            must be computed.
        load_labels: returns [H, W] int64 object ids, or None.
    """

    name: str
    load_image: Callable[[], Tensor]
    load_labels: Callable[[], Optional[Tensor]] = _no_labels


class FeatureCache:
    """The maps of one teacher for the images of one data folder.

    Args:
        root: the scene's data folder; the cache lives in ``root/features/<folder>``.
        teacher_name: the registry name of the teacher whose maps these are.
        folder: the cache folder's name (default: ``teacher_name``; e.g. "labels@2x" for maps
            of images downscaled by 2).
    """

    def __init__(self, root: str | Path, teacher_name: str, folder: Optional[str] = None):
        self.teacher_name = teacher_name
        self.folder = Path(root) / "features" / (folder or teacher_name)

    @property
    def meta(self) -> Optional[dict[str, Any]]:
        """The parsed meta.json, or None while the cache is absent, incomplete or unreadable.

        Keys: format, teacher, model_id, key, dim, dtype, and images (name -> [h, w]).
        """
        try:
            meta = loads_strict((self.folder / META).read_text())
        except (OSError, ValueError, RecursionError):  # a hand-edited or torn file: rebuild the cache
            return None
        return meta if isinstance(meta, dict) else None

    def path(self, name: str) -> Path:
        return self.folder / f"{name}{SUFFIX}"

    def ensure(self, teacher: Teacher, items: Sequence[CacheItem], progress: bool = True,
               ranks: Ranks = SINGLE) -> int:
        """Make the cache hold ``teacher``'s map of every item; returns how many were computed.

        Maps already on disk for this teacher are reused; maps of another teacher (or model,
        label names, dimension) are removed, once the teacher has loaded its model
        (:meth:`Teacher.prepare`): a checkpoint that does not load leaves the cache as it was.

        With several ``ranks`` (every rank calls this with the same items), item i is
        computed and written by rank ``i % world_size`` only; rank 0 alone scans the folder,
        removes stale files and, once every rank's maps are written, writes meta.json. A rank
        that dies leaves whole maps and no meta.json: the next call resumes.

        Raises:
            FeatgsError: duplicate or unusable item names, a model that does not load, or a map
                with NaN/Inf values (on any rank: every rank raises).
        """
        if teacher.name != self.teacher_name:
            raise ValueError(f"cache of teacher {self.teacher_name!r} was given teacher {teacher.name!r}")
        _check_names([item.name for item in items])
        identity = _identity(teacher)

        def plan() -> Optional[tuple[dict[str, list[int]], list[Path], list[str]]]:
            meta = self.meta
            meta_ok = meta is not None and _identity_of(meta) == identity
            done, stale = self._scan(identity)
            todo = [item.name for item in items if item.name not in done]
            if not todo and not stale and meta_ok and meta.get("images") == done:
                return None
            return done, stale, todo

        planned = ranks.on_main(plan, share=True)
        if planned is None:
            return 0
        done, stale, todo = planned
        wanted = set(todo)
        mine = [item for i, item in enumerate(items) if item.name in wanted and ranks.owns(i)]
        ranks.settle(lambda: teacher.prepare() if mine else None)

        def clear() -> None:
            for path in stale:
                path.unlink()
            # No meta while maps are being written: an interruption leaves the cache incomplete.
            (self.folder / META).unlink(missing_ok=True)
            self.folder.mkdir(parents=True, exist_ok=True)

        ranks.on_main(clear)  # the others wait: nobody writes before the stale files are gone

        def extract() -> dict[str, list[int]]:
            shapes = {}
            for item in tqdm(mine, desc=f"{teacher.name} features", unit="image",
                             disable=not (progress and ranks.is_main)):
                features = _extract(teacher, item)
                atomic_write_bytes(self.path(item.name), save({KEY: features}, metadata=_as_strings(identity)))
                shapes[item.name] = list(features.shape[1:])
            return shapes

        for shapes in ranks.all_gather_objects(ranks.settle(extract)):
            done.update(shapes)

        def write_meta() -> None:
            meta = {**identity, "images": dict(sorted(done.items()))}
            atomic_write_text(self.folder / META, json.dumps(meta, indent=1) + "\n")

        ranks.on_main(write_meta)  # the others return once meta.json is there
        return len(todo)

    def check(self, teacher: Teacher, names: Iterable[str] = ()) -> None:
        """Raise a one-line :class:`FeatgsError` unless the cache is complete for ``teacher``
        and holds every one of ``names``: for a caller that must reuse it as it is."""
        where = self.folder / META
        meta = self.meta
        if meta is None:
            raise FeatgsError(f"{where}: no complete {teacher.name!r} feature cache (missing or unreadable meta.json)")
        cached, wanted = _identity_of(meta), _identity(teacher)
        diffs = [f"{k} {cached[k]!r} in the cache vs {wanted[k]!r}" for k in wanted if cached[k] != wanted[k]]
        if diffs:
            raise FeatgsError(
                f"{where}: cached features do not match the teacher: {'; '.join(diffs)}; rebuild the cache"
            )
        missing = [name for name in names if name not in meta.get("images", {})]
        if missing:
            raise FeatgsError(f"{where}: no cached features for {len(missing)} image(s), e.g. {missing[0]!r}")

    def load(self, name: str) -> Tensor:
        """[D, h, w] float16 map of one image, read from disk on each call."""
        path = self.path(name)
        try:
            with safe_open(str(path), framework="pt") as f:
                return f.get_tensor(KEY)
        except FileNotFoundError:
            raise FeatgsError(f"{path}: no cached {self.teacher_name!r} features for image {name!r}") from None

    def _scan(self, identity: dict[str, Any]) -> tuple[dict[str, list[int]], list[Path]]:
        """(name -> [h, w] of the complete maps of this identity, the other files to remove:
        maps of other identities, incomplete maps, temporary files of killed writes)."""
        kept, stale = {}, list(self.folder.glob(".*.tmp"))
        for path in sorted(self.folder.glob(f"*{SUFFIX}")):
            shape = _complete_map_shape(path, _as_strings(identity))
            if shape is None:
                stale.append(path)
            else:
                kept[path.name[: -len(SUFFIX)]] = shape
        return kept, stale


def _identity(teacher: Teacher) -> dict[str, Any]:
    return {
        "format": FORMAT,
        "teacher": teacher.name,
        "model_id": teacher.model_id,
        "key": teacher.cache_key(),
        "dim": teacher.dim,
        "dtype": "float16",
    }


def _identity_of(meta: dict[str, Any]) -> dict[str, Any]:
    return {k: meta.get(k) for k in ("format", "teacher", "model_id", "key", "dim", "dtype")}


def _as_strings(identity: dict[str, Any]) -> dict[str, str]:
    return {k: str(v) for k, v in identity.items()}  # safetensors metadata holds strings only


def _check_names(names: list[str]) -> None:
    for name in names:
        if not name or name.startswith(".") or "/" in name or "\\" in name:
            raise FeatgsError(f"image name {name!r} cannot name a feature file (empty, hidden or a path)")
    if len(set(names)) != len(names):
        dupes = sorted({n for n in names if names.count(n) > 1})
        raise FeatgsError(f"image names must be unique to share a feature cache; repeated: {dupes[:5]}")


def _extract(teacher: Teacher, item: CacheItem) -> Tensor:
    """The teacher's map of one item as a CPU [D, h, w] float16 tensor, checked."""
    image = item.load_image()
    try:
        features = teacher.encode_view(image, item.load_labels())
    except FeatgsError as e:
        raise FeatgsError(f"image {item.name!r}: {e}") from e
    expected = (teacher.dim, *teacher.resolution_for(image.shape[1], image.shape[0]))
    if tuple(features.shape) != expected:
        raise ValueError(
            f"teacher {teacher.name!r} returned {tuple(features.shape)} for image {item.name!r}, expected {expected}"
        )
    if not torch.isfinite(features).all():
        raise FeatgsError(f"image {item.name!r}: teacher {teacher.name!r} produced NaN or Inf features")
    half = features.detach().to("cpu", torch.float16).contiguous()
    if not torch.isfinite(half).all():
        raise FeatgsError(f"image {item.name!r}: teacher {teacher.name!r} produced features beyond the float16 range")
    return half


def _complete_map_shape(path: Path, identity: dict[str, str]) -> Optional[list[int]]:
    """[h, w] if ``path`` is a whole fp16 map written for ``identity``, else None.

    Reads the safetensors header only: an 8-byte little-endian length, then JSON.
    """
    try:
        size = path.stat().st_size
        with open(path, "rb") as f:
            n = int.from_bytes(f.read(8), "little")
            if not 0 < n <= size - 8:
                return None
            header = json.loads(f.read(n))
        entry = header[KEY]
        shape, (begin, end) = entry["shape"], entry["data_offsets"]
        whole = end == size - 8 - n and end - begin == 2 * math.prod(shape)
        if header.get("__metadata__") != identity or entry["dtype"] != "F16" or not whole:
            return None
        if len(shape) != 3 or str(shape[0]) != identity["dim"]:
            return None
        return [int(shape[1]), int(shape[2])]
    except (OSError, ValueError, KeyError, TypeError):
        return None
