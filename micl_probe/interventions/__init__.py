"""Interventions on a loaded model, each a `layouts -> context manager` factory the harness can run under:

  dara     DARA attention reallocation (learned factor per layer, head and image), fixed-factor sweeps, training
  mtv      multimodal task vectors (extract, REINFORCE head search, injection), function and task vectors
  lora     the LoRA baseline, any-shot ICL tuning and plain fine-tuning (peft), a saved adapter as an intervention
  mmict    MMICT's M-Hub (a small Q-Former whose outputs are prompt tokens of their own role), trained, saved, run
  knockout heads' outputs replaced (zero or mean ablation) at the answer row or everywhere
  reweight the answer row's attention made uniform, or Mapping-Guided Inference
  named    the training-free ones as a condition names them ("+knockout=top-3:induction", "+mgi=1.5,2")
  fitting  the training loop, its settings (`FitConfig`) and data
"""

from .dara import DARA, alpha_sweep, fixed_alpha, train_dara
from .fitting import FitConfig, fit
from .knockout import knockout, random_heads
from .lora import lora_intervention, train_lora
from .mmict import MHub, train_mmict
from .mtv import TaskVector, extract, inject, injection, locate
from .reweight import least_entropy_layer, mgi, uniform

__all__ = ["DARA", "FitConfig", "MHub", "TaskVector", "alpha_sweep", "extract", "fit", "fixed_alpha", "inject",
           "injection", "knockout", "least_entropy_layer", "locate", "lora_intervention", "mgi", "random_heads",
           "train_dara", "train_lora", "train_mmict", "uniform"]
