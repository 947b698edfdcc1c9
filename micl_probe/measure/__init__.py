"""Measurements: attention mass per segment (`attention`), attention maps over image patches (`patches`), and head
scores and attention sinks (`heads`), and attention on where each image's answer is (`evidence`)."""

from .attention import (
    BACKENDS,
    AttentionMass,
    capture_attention,
    row_attention,
    rows_attention,
    score_and_capture,
    segment_matrix,
)
from .evidence import EvidenceAttention, evidence_attention
from .heads import HeadScores, Sinks, find_sinks, head_scores
from .patches import PatchMap, fold, patch_maps, top_heads

__all__ = ["BACKENDS", "AttentionMass", "EvidenceAttention", "HeadScores", "PatchMap", "Sinks", "capture_attention",
           "evidence_attention", "find_sinks", "fold", "head_scores", "patch_maps", "row_attention", "rows_attention",
           "score_and_capture", "segment_matrix", "top_heads"]
