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

from featgs.teachers.base import Teacher
from featgs.teachers.cache import CacheItem, FeatureCache
from featgs.teachers.labels import LabelsTeacher
from featgs.teachers.options import NAMES, TeacherOptions, teacher_names
from featgs.teachers.registry import make_teacher

__all__ = ["NAMES", "CacheItem", "FeatureCache", "LabelsTeacher", "Teacher", "TeacherOptions", "make_teacher",
           "teacher_names"]
