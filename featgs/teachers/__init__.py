"""Teachers: the 2D models whose dense features are distilled, and the cache of their maps.

- :class:`Teacher` the interface (image -> [D, h, w] map; text -> [D] vector if language-aligned)
- ``labels`` per-pixel sentence embeddings of object names (:class:`LabelsTeacher`)
- :class:`FeatureCache` one fp16 safetensors map per image, built once and read lazily
"""

from __future__ import annotations

from typing import Any, Callable

from featgs.errors import FeatgsError
from featgs.teachers.base import Teacher
from featgs.teachers.cache import CacheItem, FeatureCache
from featgs.teachers.labels import LabelsTeacher

TEACHERS: dict[str, Callable[..., Teacher]] = {
    "labels": LabelsTeacher,
}


def make_teacher(name: str, **options: Any) -> Teacher:
    """The teacher registered as ``name``, built with ``options`` (its constructor's arguments).

    Construction is cheap: model weights load on first use.
    """
    if name not in TEACHERS:
        raise FeatgsError(f"--teacher: unknown teacher {name!r}; expected one of {', '.join(TEACHERS)}")
    return TEACHERS[name](**options)


__all__ = ["TEACHERS", "CacheItem", "FeatureCache", "LabelsTeacher", "Teacher", "make_teacher"]
