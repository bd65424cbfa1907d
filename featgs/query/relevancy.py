"""Text relevancy of Gaussians and the threshold rules that turn it into a selection.

Relevancy (LERF): the query competes against canonical negative phrases, pairwise:
``r = min_j softmax(cos_q / T, cos_neg_j / T)[0] = min_j sigmoid((cos_q - cos_neg_j) / T)``,
in 0..1, 0.5 where the query is no better than the best negative. With no negatives it is the
plain cosine. The pairwise form ranks objects by how *specifically* they match the query: on
the tabletop, "fruit" has cosine 0.650 to both "green apple" and "tomato", but the apple's
margin over "object" is wider, so the apple ranks first.

Selection rules (``QueryConfig.rule``):

- ``labels`` (the default when the run knows its label names): the query must also beat every
  competing label name pairwise by ``threshold`` (a probability, default 0.5: a cosine margin
  of 0). Competitors are the label names except the ones the query itself names: those whose
  text is within ``label_slack`` of the query's most similar label name. A Gaussian of the
  mug is picked by "cup" because "cup" beats "tomato", "table", ... on it, while "red mug"
  does not compete.
- ``relative`` (the default otherwise): ``r >= lo + threshold * (hi - lo)`` with ``hi`` the
  99.9th percentile and ``lo`` the median of r over all Gaussians (default threshold 0.5):
  scale-free, and not moved by a few outliers.
- ``absolute``: ``r >= threshold``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable, Optional, Sequence

import torch
from torch import Tensor

from featgs.errors import FeatgsError

DEFAULT_NEGATIVES = ("object", "things", "stuff", "texture")
RULES = ("auto", "labels", "relative", "absolute")
_DEFAULT_THRESHOLD = {"labels": 0.5, "relative": 0.5}


@dataclass(frozen=True)
class QueryConfig:
    """How a text query selects Gaussians.

    Attributes:
        rule: "auto" ("labels" when the run has label names, else "relative"), "labels",
            "relative" or "absolute" (see the module docstring).
        threshold: the rule's parameter (labels: win probability against each competing
            label, 0..1; relative: fraction of the way from the median to the top relevancy;
            absolute: the relevancy itself); None = the rule's default (0.5; absolute needs one).
        temperature: T of the pairwise softmax (LERF: 0.1).
        label_slack: label names within this cosine of the query's closest one count as
            named by the query and do not compete.
        clean: smooth the selection over 3D neighbours (drops stray Gaussians, fills in the
            object's own ones whose features are mixed), see :mod:`featgs.query.neighbours`.
    """

    rule: str = "auto"
    threshold: Optional[float] = None
    temperature: float = 0.1
    label_slack: float = 0.05
    clean: bool = True

    def __post_init__(self) -> None:
        if self.rule not in RULES:
            raise FeatgsError(f"query rule must be one of {', '.join(RULES)}, got {self.rule!r}")
        if self.threshold is not None and not math.isfinite(self.threshold):
            raise FeatgsError(f"query threshold must be a finite number, got {self.threshold}")
        if self.rule == "labels" and self.threshold is not None and not 0.0 < self.threshold < 1.0:
            raise FeatgsError(f"the labels rule's threshold is a probability in (0, 1), got {self.threshold}")
        if self.rule == "absolute" and self.threshold is None:
            raise FeatgsError("the absolute rule needs a threshold")
        if not self.temperature > 0 or not self.label_slack >= 0:
            raise FeatgsError("query temperature must be > 0 and label_slack >= 0")

    def resolved_rule(self, has_labels: bool) -> str:
        if self.rule == "auto":
            return "labels" if has_labels else "relative"
        if self.rule == "labels" and not has_labels:
            raise FeatgsError("the labels rule needs a run with label names; use rule 'relative' or 'absolute'")
        return self.rule


def negatives_or_default(negatives: Optional[Sequence[str]]) -> tuple[str, ...]:
    """``None`` -> the canonical phrases; an empty sequence -> none (plain cosine relevancy)."""
    if negatives is None:
        return DEFAULT_NEGATIVES
    if isinstance(negatives, str):
        raise FeatgsError("negatives must be a list of phrases, not one string")
    return tuple(negatives)


def pairwise_relevancy(cos_query: Tensor, cos_negatives: Tensor, temperature: float) -> Tensor:
    """LERF relevancy [N] from cosines to the query [N] and to J negatives [N, J] (J = 0: the cosine)."""
    if cos_negatives.shape[-1] == 0:
        return cos_query
    return torch.sigmoid((cos_query[:, None] - cos_negatives) / temperature).amin(dim=1)


def competing_labels(query_to_labels: Tensor, slack: float) -> Tensor:
    """[L] bool: label names the query does not name (text cosine more than ``slack`` below the best)."""
    return query_to_labels < query_to_labels.max() - slack


def select_by_labels(relevancy: Tensor, cos_query: Tensor, cos_competitors: Tensor, *, negatives: bool,
                     temperature: float, win: float) -> tuple[Tensor, float]:
    """Gaussians where the query beats each competing label with probability >= ``win``.

    Args:
        relevancy: [N] pairwise relevancy against the negatives (must be >= 0.5 when there are
            negatives: the query has to beat them too).
        cos_query: [N]; cos_competitors: [N, C].
    Returns:
        keep [N] bool and the cosine margin it needed.
    """
    margin = temperature * math.log(win / (1.0 - win))
    keep = torch.ones_like(cos_query, dtype=torch.bool)
    if cos_competitors.shape[1]:
        keep &= cos_query - cos_competitors.amax(dim=1) >= margin
    if negatives:
        keep &= relevancy >= 0.5
    return keep, margin


def relative_threshold(relevancy: Tensor, fraction: float) -> float:
    """``lo + fraction * (hi - lo)``, hi the 99.9th percentile and lo the median of ``relevancy``."""
    r = relevancy.float()
    if len(r) > 1 << 24:  # torch.quantile's input limit; a strided sample estimates it as well
        r = r[:: len(r) // (1 << 23) + 1]
    hi = float(torch.quantile(r, 0.999))
    lo = float(r.median())
    return lo + fraction * (hi - lo)


def select_by_rule(rule: str, relevancy: Tensor, cos_query: Tensor, config: QueryConfig, *, negatives: bool,
                   query_to_labels: Optional[Tensor] = None,
                   cos_labels: Optional[Callable[[Tensor], Tensor]] = None) -> tuple[Tensor, float]:
    """Which Gaussians a query keeps, by ``rule`` (from :meth:`QueryConfig.resolved_rule`).

    Args:
        relevancy: [N] pairwise relevancy; ``cos_query``: [N] cosine to the query text.
        negatives: whether the relevancy competed against negative phrases.
        query_to_labels: "labels" rule: [L] similarity of the query text to each label text.
        cos_labels: "labels" rule: label indices [l] -> [N, l] cosine of every Gaussian to them.
    Returns:
        keep [N] bool and the threshold used.
    """
    if rule == "labels":
        compete = competing_labels(query_to_labels, config.label_slack)
        threshold = 0.5 if config.threshold is None else config.threshold
        if not 0.0 < threshold < 1.0:  # QueryConfig checks it for rule "labels", not for "auto" that became it
            raise FeatgsError(f"the labels rule's threshold (rule {config.rule!r} on a run with label names) is a "
                              f"probability in (0, 1), got {threshold}")
        keep, _ = select_by_labels(relevancy, cos_query, cos_labels(compete), negatives=negatives,
                                   temperature=config.temperature, win=threshold)
        return keep, float(threshold)
    if rule == "relative":
        threshold = relative_threshold(relevancy, 0.5 if config.threshold is None else config.threshold)
    else:
        threshold = float(config.threshold)
    return relevancy >= threshold, float(threshold)
