"""Measurements: attention mass per segment (`attention`), attention maps over image patches (`patches`), and head
scores and attention sinks (`heads`)."""

from .attention import (
    BACKENDS,
    AttentionMass,
    capture_attention,
    row_attention,
    rows_attention,
    score_and_capture,
    segment_matrix,
)
from .heads import HeadScores, Sinks, find_sinks, head_scores
from .patches import PatchMap, fold, patch_maps, top_heads

__all__ = ["BACKENDS", "AttentionMass", "HeadScores", "PatchMap", "Sinks", "capture_attention", "find_sinks", "fold",
           "head_scores", "patch_maps", "row_attention", "rows_attention", "score_and_capture", "segment_matrix",
           "top_heads"]
