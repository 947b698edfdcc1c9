"""LoRA (peft) on the attention projections: DARA's parameter-heavier baseline, trained on the same data and steps.

    peft_model, history = train_lora(loaded, "outlier", shots=4, layers=(0,), fit_config=FitConfig(steps=150))
    loaded.model = peft_model.unload()          # the base model back (LoRA weights dropped)
"""

from __future__ import annotations

import itertools

import torch

from ..core import Loaded
from .fitting import FitConfig, episode_batches, fit, query_labels


def train_lora(loaded: Loaded, task: str, shots: int = 4, layers=(0,), rank: int = 4,
               fit_config: FitConfig | None = None):
    """LoRA of `rank` on the q/k/v/o projections of the given decoder layers, on k-shot prompts of `task`.
    Settings: `FitConfig` (default learning rate 1e-3). Returns (peft model, history);
    `peft_model.disable_adapter()` gives the base model back."""
    from peft import LoraConfig, get_peft_model

    cfg = (fit_config or FitConfig()).with_lr(1e-3)
    torch.manual_seed(cfg.seed)
    prefix = loaded.adapter.decoder_path
    targets = [f"{prefix}.layers.{layer}.self_attn.{proj}" for layer in layers
               for proj in ("q_proj", "k_proj", "v_proj", "o_proj")]
    peft_model = get_peft_model(loaded.model, LoraConfig(r=rank, lora_alpha=2 * rank, target_modules=targets,
                                                         lora_dropout=0.0))
    params = [p for n, p in peft_model.named_parameters() if "lora_" in n]
    print(f"LoRA: {sum(p.numel() for p in params)} parameters (rank {rank} on q/k/v/o of layers {list(layers)})")
    val = list(itertools.islice(episode_batches(loaded, task, shots, cfg.batch, cfg.seed, "val"),
                                max(1, cfg.n_val // cfg.batch)))

    def loss_of(b):
        return peft_model(**b.inputs, labels=query_labels(b)).loss

    history = fit(params, loss_of, episode_batches(loaded, task, shots, cfg.batch, cfg.seed, "support"), val, cfg,
                  desc=f"LoRA {task}")
    return peft_model, history
