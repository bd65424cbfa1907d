"""The one way to build a teacher by name: :func:`make_teacher`."""

from __future__ import annotations

from typing import Mapping, Optional

from featgs.errors import FeatgsError
from featgs.teachers.base import Teacher
from featgs.teachers.labels import LabelsTeacher
from featgs.teachers.options import NAMES, TeacherOptions


def make_teacher(name: str, options: TeacherOptions = TeacherOptions(), *,
                 label_names: Optional[Mapping[int, str]] = None) -> Teacher:
    """Teacher ``name`` ("labels", "sam" or "clip") built from the user's ``options``.

    Construction is cheap: model weights load on first use (the SAM and CLIP modules are
    imported only then). ``label_names`` (label id -> name) are the labels teacher's.
    """
    o = options
    if name == "labels":
        return LabelsTeacher(label_names=label_names)
    if name == "sam":
        from featgs.teachers.sam import SamTeacher

        return SamTeacher(checkpoint=o.sam_checkpoint, model=o.sam_model, device=o.teacher_device)
    if name == "clip":
        from featgs.teachers.clip import ClipTeacher

        return ClipTeacher(model=o.clip_model, checkpoint=o.clip_checkpoint, size=o.clip_size, tokenizer=o.clip_tokenizer,
                           sharpen=o.clip_sharpen, sharpen_points=o.clip_sharpen_points, sam_checkpoint=o.sam_checkpoint,
                           sam_model=o.sam_model, device=o.teacher_device)
    raise FeatgsError(f"--teacher: unknown teacher {name!r}; expected one of {', '.join(NAMES)}")
