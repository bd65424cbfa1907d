"""What the foundation teachers need from the user (checkpoints, architectures), as one config.

``featgs train`` and ``featgs features extract`` surface every field as a flag
(``--sam-checkpoint``, ``--clip-model``, ...); a run stores it in run.json so that evaluation
and queries rebuild the same teachers.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Mapping, Optional

from featgs.errors import FeatgsError

NAMES = ("labels", "sam", "clip")


def _f(default, help: str, **kw):
    return field(default=default, metadata={"help": help, **kw})


@dataclass(frozen=True)
class TeacherOptions:
    sam_checkpoint: Optional[str] = _f(None, "SAM checkpoint: the released .pth state dict or a .safetensors file")
    sam_model: Optional[str] = _f(None, "SAM size: vit_b, vit_l or vit_h (default: read off the checkpoint)")
    clip_model: Optional[str] = _f(None, "CLIP architecture: an open_clip model name (ViT-B-16, ViT-L-14, "
                                   "convnext_base_w, ...; -quickgelu for OpenAI's weights), an open_clip JSON model "
                                   "config file, or a folder with an open_clip_config.json")
    clip_checkpoint: Optional[str] = _f(None, "CLIP checkpoint: an open_clip state dict (.pt, .bin or .safetensors)")
    clip_tokenizer: Optional[str] = _f(None, "CLIP tokenizer for text queries: a local Hugging Face tokenizer folder "
                                       "or a BPE vocabulary .txt.gz (default: open_clip's for the model)")
    clip_size: int = _f(448, "longest image side that CLIP sees, in pixels (larger: sliding windows)")
    clip_sharpen: Optional[str] = _f(None, "'sam': average the CLIP features inside SAM's automatic masks "
                                     "(needs --sam-checkpoint)", choices=["sam"])
    clip_sharpen_points: int = _f(16, "SAM's automatic masks click an N x N grid (one mask-decoder pass per "
                                  "click: fast on a GPU, about a second each on a CPU)")
    teacher_device: str = _f("auto", "where teachers run: auto (the GPU if there is one), cpu, cuda, cuda:1, ...")

    def resolved(self) -> "TeacherOptions":
        """The same options with file paths made absolute, so a run can be used from anywhere."""
        def absolute(path: Optional[str]) -> Optional[str]:
            # clip_model may be a name rather than a file: only existing paths change.
            return str(Path(path).resolve()) if path is not None and Path(path).exists() else path

        return dataclasses.replace(
            self,
            sam_checkpoint=absolute(self.sam_checkpoint),
            clip_checkpoint=absolute(self.clip_checkpoint),
            clip_tokenizer=absolute(self.clip_tokenizer),
            clip_model=absolute(self.clip_model),
        )

    @classmethod
    def from_dict(cls, d: Mapping) -> "TeacherOptions":
        return cls(**{k: v for k, v in d.items() if k in {f.name for f in dataclasses.fields(cls)}})


def teacher_names(spec: str) -> list[str]:
    """"sam,clip" -> ["sam", "clip"]; "none" -> []."""
    names = [n.strip() for n in spec.split(",") if n.strip()]
    if names == ["none"]:
        return []
    unknown = [n for n in names if n not in NAMES]
    if unknown or not names or len(set(names)) != len(names):
        raise FeatgsError(f"--teacher: expected 'none' or distinct names from {', '.join(NAMES)} joined by "
                          f"commas (e.g. sam,clip), got {spec!r}")
    return names
