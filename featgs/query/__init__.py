"""Queries on a trained feature field: segmentation by text (more to come: relevancy, prompts, edits)."""

from featgs.query.segment import confusion_matrix, miou_and_accuracy, segment_features

__all__ = ["confusion_matrix", "miou_and_accuracy", "segment_features"]
