"""micl_probe: does a VLM look at its in-context demonstration images, and what changes when we make it look?"""

from .adapters import Adapter, ChatFormat, adapter_for, get_adapter, supported_families
from .attention import AttentionMass, capture_attention
from .episode import Demo, Episode, Query
from .layout import NONE, QUERY, ROLES, TokenLayout
from .loading import Loaded, load
from .prompt import Prepared, PreparedBatch, prepare, prepare_batch, render

__all__ = [
    "Adapter", "AttentionMass", "ChatFormat", "Demo", "Episode", "Loaded", "NONE", "Prepared", "PreparedBatch",
    "QUERY", "ROLES", "Query", "TokenLayout", "adapter_for", "capture_attention", "get_adapter", "load", "prepare",
    "prepare_batch", "render", "supported_families",
]
__version__ = "0.1.0"
