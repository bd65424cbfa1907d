"""Teacher ``labels``: each pixel gets the sentence embedding of its object's name.

For scenes with per-pixel labels (the built-in ones) it stands in for LSeg: the maps are
language-aligned, so a query like "cup" finds the object labelled "mug".

Names are embedded as they are (underscores read as spaces), with no prompt template: for a
sentence encoder, a shared prefix such as "a photo of a {}" only pulls all labels together
(mean cosine between ten room-object names rose from 0.34 to 0.50 and the best-vs-second
margin of queries shrank from 0.24 to 0.19-0.22). Queries go through the same normalisation,
so a query equal to a label name gets exactly that label's vector.
"""

from __future__ import annotations

import functools
import hashlib
import json
import numbers
from typing import Mapping, Optional

import torch
from torch import Tensor

from featgs.errors import FeatgsError
from featgs.teachers import minilm
from featgs.teachers.base import Teacher


def phrase(text: str) -> str:
    """What the encoder reads for a label name or query: "coffee_table" -> "coffee table"."""
    return " ".join(text.replace("_", " ").split())


class LabelsTeacher(Teacher):
    """Label maps to text-embedding maps, at the full image resolution.

    Args:
        label_names: object id -> name, as the scene gives it; needed by :meth:`encode_view`,
            not by :meth:`encode_text` (a query-only teacher can leave it out).
        device: where the encoder runs and the label-embedding table lives.
    """

    name = "labels"
    dim = minilm.DIM
    language_aligned = True

    def __init__(self, label_names: Optional[Mapping[int, str]] = None, device: str | torch.device = "cpu"):
        self.label_names = None if label_names is None else _checked(label_names)
        self.device = torch.device(device)
        self._folder = minilm.model_folder()
        self._encoder: Optional[minilm.MiniLM] = None
        self._table: Optional[tuple[Tensor, Tensor]] = None

    @functools.cached_property
    def model_id(self) -> str:
        return minilm.model_id(self._folder)

    def cache_key(self) -> str:
        names = json.dumps(sorted((self.label_names or {}).items()))
        return f"{self.model_id} label_names:sha256:{hashlib.sha256(names.encode()).hexdigest()[:16]}"

    def resolution_for(self, width: int, height: int) -> tuple[int, int]:
        return height, width

    def encode_text(self, texts: list[str]) -> Tensor:
        """[n, 384] float32 on the teacher's device, unit-norm rows."""
        if isinstance(texts, str) or not all(isinstance(t, str) and t.strip() for t in texts):
            raise FeatgsError(f"text queries must be a list of non-empty strings, got {texts!r}")
        if self._encoder is None:
            self._encoder = minilm.MiniLM(self._folder, self.device)
        return self._encoder.encode([phrase(t) for t in texts])

    def encode_view(self, image: Tensor, labels: Optional[Tensor] = None) -> Tensor:
        """[384, H, W] float32 on ``labels``' device: the embedding of each pixel's label name.

        Args:
            image: [H, W, 3]; only its size is used.
            labels: [H, W] integer object ids, each of which must have a name.
        """
        if labels is None:
            raise FeatgsError("the labels teacher needs per-pixel labels, and this view has none")
        if labels.dtype.is_floating_point or labels.dtype == torch.bool or labels.dim() != 2:
            raise FeatgsError(
                f"labels must be an [H, W] integer map, got {labels.dtype} of shape {tuple(labels.shape)}"
            )
        if tuple(image.shape[:2]) != tuple(labels.shape):
            raise FeatgsError(f"labels of size {tuple(labels.shape)} do not match the image's {tuple(image.shape[:2])}")
        ids, table = self._label_table()
        ids, table = ids.to(labels.device), table.to(labels.device)
        flat = labels.reshape(-1).long()
        row = torch.searchsorted(ids, flat).clamp_(max=len(ids) - 1)
        unnamed = ids[row] != flat
        if unnamed.any():
            missing = torch.unique(flat[unnamed]).tolist()
            raise FeatgsError(f"label ids {missing[:10]} have no name in label_names (named ids: {ids.tolist()[:20]})")
        # Gather from the [D, n] table along its columns: the result is [D, H*W] contiguous,
        # with no [H*W, D] intermediate to transpose.
        return table.index_select(1, row).view(self.dim, *labels.shape)

    def _label_table(self) -> tuple[Tensor, Tensor]:
        """(ids [n] sorted int64, embeddings [D, n]): each distinct name is embedded once."""
        if self._table is None:
            if not self.label_names:
                raise FeatgsError("the labels teacher needs label_names (object id -> name) to encode views")
            ids = sorted(self.label_names)
            names = sorted({self.label_names[i] for i in ids})
            vectors = self.encode_text(names)
            row_of = {name: row for row, name in enumerate(names)}
            rows = torch.tensor([row_of[self.label_names[i]] for i in ids], device=vectors.device)
            self._table = (torch.tensor(ids, dtype=torch.int64), vectors[rows].T.contiguous())
        return self._table


def _checked(label_names: Mapping[int, str]) -> dict[int, str]:
    for key, value in label_names.items():
        if (
            isinstance(key, bool)
            or not isinstance(key, numbers.Integral)
            or not isinstance(value, str)
            or not value.strip()
        ):
            raise FeatgsError(f"label_names must map integer ids to non-empty names, got {key!r}: {value!r}")
    return {int(key): value for key, value in label_names.items()}
