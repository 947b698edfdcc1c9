"""Measurements: attention mass per segment (`attention`) and attention maps over image patches (`patches`)."""

from .attention import (
    BACKENDS,
    AttentionMass,
    capture_attention,
    row_attention,
    rows_attention,
    score_and_capture,
    segment_matrix,
)
from .patches import PatchMap, fold, patch_maps, top_heads

__all__ = ["BACKENDS", "AttentionMass", "PatchMap", "capture_attention", "fold", "patch_maps", "row_attention",
           "rows_attention", "score_and_capture", "segment_matrix", "top_heads"]
