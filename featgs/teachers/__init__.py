"""Teachers: the 2D models whose dense features are distilled, and the cache of their maps.

- :class:`Teacher` the interface (image -> [D, h, w] map; text -> [D] vector if language-aligned)
- ``labels`` per-pixel sentence embeddings of object names (:class:`LabelsTeacher`)
- ``sam`` Segment Anything's image embedding (:class:`~featgs.teachers.sam.SamTeacher`); its
  prompt encoder and mask decoder on rendered maps: :class:`~featgs.teachers.sam_prompter.SamPrompter`
- ``clip`` dense MaskCLIP features of an open_clip ViT (:class:`~featgs.teachers.clip.ClipTeacher`)
- :class:`TeacherOptions` the checkpoints and architectures the foundation teachers load
- :class:`FeatureCache` one fp16 safetensors map per image, built once and read lazily

The SAM and CLIP modules load torch models and are imported on first use.
"""

from __future__ import annotations

from typing import Any, Callable

from featgs.errors import FeatgsError
from featgs.teachers.base import Teacher
from featgs.teachers.cache import CacheItem, FeatureCache
from featgs.teachers.labels import LabelsTeacher
from featgs.teachers.options import TeacherOptions, make_teacher_from_options, teacher_names


def _sam(**options: Any) -> Teacher:
    from featgs.teachers.sam import SamTeacher

    return SamTeacher(**options)


def _clip(**options: Any) -> Teacher:
    from featgs.teachers.clip import ClipTeacher

    return ClipTeacher(**options)


TEACHERS: dict[str, Callable[..., Teacher]] = {
    "labels": LabelsTeacher,
    "sam": _sam,
    "clip": _clip,
}


def make_teacher(name: str, **options: Any) -> Teacher:
    """The teacher registered as ``name``, built with ``options`` (its constructor's arguments).

    Construction is cheap: model weights load on first use.
    """
    if name not in TEACHERS:
        raise FeatgsError(f"--teacher: unknown teacher {name!r}; expected one of {', '.join(TEACHERS)}")
    return TEACHERS[name](**options)


__all__ = ["TEACHERS", "CacheItem", "FeatureCache", "LabelsTeacher", "Teacher", "TeacherOptions", "make_teacher",
           "make_teacher_from_options", "teacher_names"]
