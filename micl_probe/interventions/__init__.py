"""Interventions on a loaded model, each a `layouts -> context manager` factory the harness can run under:

  dara     DARA attention reallocation (learned factor per layer, head and image), fixed-factor sweeps, training
  mtv      multimodal task vectors (extract, REINFORCE head search, injection), function and task vectors
  lora     the LoRA baseline and any-shot ICL tuning (peft), a saved adapter as an intervention
  fitting  the training loop, its settings (`FitConfig`) and data
"""

from .dara import DARA, alpha_sweep, fixed_alpha, train_dara
from .fitting import FitConfig, fit
from .lora import lora_intervention, train_lora
from .mtv import TaskVector, extract, inject, injection, locate

__all__ = ["DARA", "FitConfig", "TaskVector", "alpha_sweep", "extract", "fit", "fixed_alpha", "inject", "injection",
           "locate", "lora_intervention", "train_dara", "train_lora"]
