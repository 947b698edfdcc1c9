from .attention import BACKENDS, AttentionMass, capture_attention, rows_attention, segment_matrix

__all__ = ["BACKENDS", "AttentionMass", "capture_attention", "rows_attention", "segment_matrix"]
