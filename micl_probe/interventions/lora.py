"""LoRA (peft) on the attention projections: DARA's parameter-heavier baseline, and any-shot ICL tuning.

    peft_model, history = train_lora(loaded, "outlier", shots=4, layers=(0,), fit_config=FitConfig(steps=150))
    peft_model, history = train_lora(loaded, ["clock_math", "vlicl:/data/VL-ICL/clevr"], shots=4,
                                     layers=None, objective="any-shot")      # icl-tune: every later demo answer
    peft_model.save_pretrained("runs/lora")                                  # an adapter folder
    loaded.model = peft_model.unload()          # the base model back (LoRA weights dropped)
    interventions = {"lora": lora_intervention(loaded, "runs/lora")}        # "<condition>+lora" in the harness

Objectives: "query" (the query's answer, as DARA: the same data and steps), "any-shot" (Doveh et al.: every demo
answer after the first and the query's, shots drawn from 1..k per batch; `fitting.icl_labels`) and "plain" (plain
fine-tuning, MMICT's first baseline: any-shot's episodes with their demos dropped, the query's answer).
"""

from __future__ import annotations

import contextlib
import itertools
import json
from pathlib import Path

import torch

from ..core import Loaded
from ..core.provenance import check_made_for, folder_digest, tagged
from .fitting import FitConfig, any_shot_batches, episode_batches, fit, icl_labels, query_labels

OBJECTIVES = ("query", "any-shot", "plain")
LR = 1e-3  # train_lora's default learning rate


def train_lora(loaded: Loaded, task: str | list[str], shots: int = 4, layers="first", rank: int = 4,
               fit_config: FitConfig | None = None, objective: str = "query"):
    """LoRA of `rank` on the q/k/v/o projections of the given decoder layers ("first": the first with softmax
    attention, as DARA's default; None: every attention layer; a hybrid decoder's linear layers have no q/k/v/o to
    adapt), on k-shot prompts
    of `task` (or of several tasks, any-shot). Settings: `FitConfig` (default learning rate 1e-3). Returns (peft
    model, history); `peft_model.disable_adapter()` gives the base model back."""
    from peft import LoraConfig, get_peft_model

    if objective not in OBJECTIVES:
        raise ValueError(f"unknown objective {objective!r}; objectives: {', '.join(OBJECTIVES)}")
    tasks = [task] if isinstance(task, str) else list(task)
    if objective == "query" and len(tasks) != 1:
        raise ValueError("objective 'query' trains on one task; use objective='any-shot' or 'plain' for several")
    cfg = (fit_config or FitConfig()).with_lr(LR)
    torch.manual_seed(cfg.seed)
    prefix = loaded.adapter.decoder_path
    attention = loaded.adapter.attention_layers(loaded.model)
    layers = attention[:1] if layers == "first" else attention if layers is None else list(layers)
    if any(x not in attention for x in layers):
        raise ValueError(f"LoRA layers {[x for x in layers if x not in attention]} are not attention layers of this "
                         f"{loaded.adapter.family} model; choose among {attention}")
    targets = [f"{prefix}.layers.{layer}.self_attn.{proj}" for layer in layers
               for proj in ("q_proj", "k_proj", "v_proj", "o_proj")]
    peft_model = get_peft_model(loaded.model, LoraConfig(r=rank, lora_alpha=2 * rank, target_modules=targets,
                                                         lora_dropout=0.0))
    params = [p for n, p in peft_model.named_parameters() if "lora_" in n]
    print(f"LoRA: {sum(p.numel() for p in params)} parameters (rank {rank} on q/k/v/o of {len(list(layers))} "
          f"layer(s)), objective {objective}")

    def batches(split):
        if objective in ("any-shot", "plain"):
            return any_shot_batches(loaded, tasks, shots, cfg.batch, cfg.seed, split, cfg, demos=objective != "plain")
        return episode_batches(loaded, tasks[0], shots, cfg.batch, cfg.seed, split, cfg)

    labels = icl_labels if objective == "any-shot" else query_labels
    val = list(itertools.islice(batches("val"), max(1, cfg.n_val // cfg.batch)))

    def loss_of(b):
        return peft_model(**b.inputs, labels=labels(b)).loss

    history = fit(params, loss_of, batches("support"), val, cfg, desc=f"LoRA {'+'.join(tasks)}")
    return peft_model, history


def lora_intervention(loaded: Loaded, path: str):
    """`layouts -> context manager`: the LoRA adapter saved at `path` (peft `save_pretrained`), active only inside.
    The adapter's layers are added to `loaded.model` once, switched off; the context switches them on."""
    from peft import PeftModel

    made = Path(path) / "micl_probe_training.json"
    if made.is_file():
        check_made_for(json.loads(made.read_text()), loaded, f"LoRA adapter {path}")
    peft_model = loaded.cached(f"lora:{path}", lambda: PeftModel.from_pretrained(loaded.model, path))
    peft_model.base_model.disable_adapter_layers()

    @contextlib.contextmanager
    def active(layouts):
        peft_model.base_model.enable_adapter_layers()
        try:
            yield {}
        finally:
            peft_model.base_model.disable_adapter_layers()

    return tagged(active, folder_digest(path, full=(".json", ".safetensors", ".bin")))
