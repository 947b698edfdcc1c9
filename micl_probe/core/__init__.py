"""The foundation: episodes, token layouts, prompts, family adapters, processors and loading.

Nothing here imports from the rest of micl_probe; every other subpackage builds on it.
"""

from .adapters import ADAPTERS, ORGANISM_CHAT, Adapter, ChatFormat, adapter_for, get_adapter, supported_families
from .episode import Demo, Episode, Query
from .hooks import prepared, within
from .layout import NONE, QUERY, ROLE, ROLES, TokenLayout
from .loading import Loaded, load, placement
from .processors import bpe_tokenizer, image_only, load_processor
from .prompt import Prepared, PreparedBatch, prepare, prepare_batch, render

__all__ = [
    "ADAPTERS", "ORGANISM_CHAT", "Adapter", "ChatFormat", "Demo", "Episode", "Loaded", "NONE", "Prepared",
    "PreparedBatch", "QUERY", "Query", "ROLE", "ROLES", "TokenLayout", "adapter_for", "bpe_tokenizer",
    "get_adapter", "image_only", "load", "load_processor", "placement", "prepare", "prepare_batch", "prepared",
    "render", "supported_families", "within",
]
