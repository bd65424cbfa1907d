"""Queries on a trained feature field: language queries, segmentation, prompts, lifting, edits.

- :class:`FeatureField` the entry point (``FeatureField.load(RUN)``); :class:`RenderTooLarge`
  what it raises for a view over its ``max_render_pairs``
- :class:`Selection` a set of Gaussians with its bounding box and centroid
- edits :class:`Delete`, :class:`Extract`, :class:`Recolor`, :class:`Translate`
- :class:`QueryConfig`, :class:`PromptConfig`, :class:`CleanConfig` their parameters
- :class:`MaskDecoder` the hook for a SAM-style decoder on rendered feature maps, and
  :class:`SamMaskDecoder` SAM's (used by runs with SAM features when the weights are there)
- :func:`segment_features` pixels labelled by the closest text (from :mod:`featgs.segmentation`)
"""

from featgs.query.clean import CleanConfig
from featgs.query.edit import Delete, EditOp, Extract, Recolor, Translate
from featgs.query.field import FeatureField, RenderTooLarge
from featgs.query.modes import RENDER_MODES, RenderMode
from featgs.query.prompt import MaskDecoder, PromptConfig, SamMaskDecoder
from featgs.query.relevancy import DEFAULT_NEGATIVES, QueryConfig
from featgs.segmentation import segment_features
from featgs.query.selection import Selection

__all__ = [
    "DEFAULT_NEGATIVES", "RENDER_MODES", "RenderMode", "CleanConfig", "Delete", "EditOp", "Extract", "FeatureField", "MaskDecoder",
    "PromptConfig", "QueryConfig", "Recolor", "RenderTooLarge", "SamMaskDecoder", "Selection", "Translate", "segment_features",
]
