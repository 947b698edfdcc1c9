"""micl_probe: does a VLM look at its in-context demonstration images, and what changes when we make it look?

    loaded = micl_probe.load("organism:true-micl")                 # or a hub id / local folder
    episodes = micl_probe.sample_episodes("clock_math", shots=4, n=20)
    am = micl_probe.capture_attention(loaded, episodes)             # mass[episode, layer, head, segment]
    records = micl_probe.run(loaded, ["clock_math"], ["zero-shot", "no-image", "4-shot"])

Subpackages, from the bottom layer up (each imports only from the ones before it):
  core           episodes, token layouts, prompts, family adapters, processors, loading
  tasks          procedural TrueMICL-style tasks and released dataset folders
  measure        attention capture
  interventions  DARA, MTV (and function / task vectors), LoRA, MMICT's hub, their training loop
  evaluation     scoring, conditions, the harness, statistics, accuracy-vs-attention analysis
  organisms      the shipped model organisms, their recipes, trainer and cards
  viz            figures and the report page
  testing        tiny random models of the real architectures, test episodes
and two entry points on top: attn_report (the command line) and explore (one episode in Jupyter).
"""

from .core import Demo, Episode, Loaded, PreparedBatch, Query, TokenLayout, adapter_for, load, supported_families
from .evaluation.harness import RunConfig, run
from .explore import explore
from .interventions.dara import DARA
from .interventions.mtv import TaskVector
from .measure.attention import AttentionMass, capture_attention
from .tasks import query_episodes, sample_episodes

__all__ = [
    "DARA", "AttentionMass", "Demo", "Episode", "Loaded", "PreparedBatch", "Query", "RunConfig", "TaskVector",
    "TokenLayout", "adapter_for", "capture_attention", "explore", "load", "query_episodes", "run", "sample_episodes",
    "supported_families",
]
__version__ = "0.1.0"
