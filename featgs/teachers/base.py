"""The teacher interface: an image becomes a dense feature map, a text (maybe) a vector.

A teacher is cheap to construct: it loads its model lazily, on the first call that needs it,
so that a command which only checks a cache or reads ``dim`` never pays for the weights.
"""

from __future__ import annotations

import abc
from typing import Optional

import torch
from torch import Tensor

from featgs.device import resolve_device as _resolve_device
from featgs.errors import FeatgsError


class Teacher(abc.ABC):
    """A 2D foundation model whose dense features are distilled into the Gaussians.

    Attributes every teacher sets:
        name: the registry name ("labels", "sam", "clip"); also the cache folder's name.
        dim: D, the number of channels of its feature maps.
        language_aligned: whether :meth:`encode_text` maps texts into the same space.
    """

    name: str
    dim: int
    language_aligned: bool

    @property
    @abc.abstractmethod
    def model_id(self) -> str:
        """Identifies the weights and everything else that fixes the embedding space
        (e.g. "all-MiniLM-L6-v2@sha256:53aa51172d142c89"); the query side compares it."""

    def cache_key(self) -> str:
        """Identifies everything besides the image that determines a view's map.

        Cached maps are reused only while this is unchanged. The default is :attr:`model_id`;
        a teacher whose maps also depend on other inputs (the labels teacher's label names)
        adds them here, not to ``model_id``, which the query side compares across scenes.
        """
        return self.model_id

    def prepare(self) -> None:
        """Load the model now, so that a checkpoint that does not fit fails before any work
        (the feature cache calls it before replacing maps). Teachers without weights to load
        need not override it."""

    @abc.abstractmethod
    def resolution_for(self, width: int, height: int) -> tuple[int, int]:
        """(h, w) of the map :meth:`encode_view` returns for an image of this size."""

    @abc.abstractmethod
    def encode_view(self, image: Tensor, labels: Optional[Tensor] = None) -> Tensor:
        """Dense features of one view.

        Args:
            image: [H, W, 3] float32 in [0, 1].
            labels: [H, W] int64 per-pixel object ids, or None where the scene has none.

        Returns:
            [D, h, w] float32 with (h, w) = ``resolution_for(W, H)``.
        """

    def encode_text(self, texts: list[str]) -> Tensor:
        """[n, D] float32, L2-normalised embeddings of ``texts`` in the feature space.

        Only language-aligned teachers implement it; the others raise :class:`FeatgsError`.
        """
        raise FeatgsError(f"teacher {self.name!r} is not language-aligned: it cannot embed text queries")


def resolve_device(device: str | torch.device) -> torch.device:
    """Where a teacher's model runs (``--teacher-device``): see :func:`featgs.device.resolve_device`."""
    return _resolve_device(device, option="--teacher-device")
