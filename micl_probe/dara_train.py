"""DARA training and its baselines on a task: the experiment of Chen et al. (2025), on our adapters.

    dara, history = train_dara(loaded, "outlier", shots=4)
    lora, history = train_lora(loaded, "outlier", shots=4)           # same data, same steps
    rows = alpha_sweep(loaded, "outlier", shots=4, alphas=[0.5, 1, 2, 4])

Data: k-shot episodes from the task's "support" stream for training, "val" for early stopping, "query" for every
reported number. Loss: cross-entropy on the query's answer tokens (and end of turn); the base model is frozen.
"""

from __future__ import annotations

import itertools

import numpy as np
import torch

from .dara import DARA
from .evaluate import which_correct
from .prompt import prepare_batch
from .tasks import make_episode, sample_episodes
from .training import fit, query_labels


def episode_batches(loaded, task: str, shots: int, batch: int, seed: int, split: str):
    """Endless seeded stream of prepared k-shot batches (with answers) from one split of a task."""
    from .tasks import SPLIT_SEEDS

    rng = np.random.default_rng([seed, SPLIT_SEEDS[split]])
    while True:
        eps = [make_episode(task, shots, rng) for _ in range(batch)]
        yield prepare_batch(eps, loaded.processor, loaded.adapter, model=loaded.model,
                            with_answer=True).to(loaded.device)


def _frozen(model):
    flags = [p.requires_grad for p in model.parameters()]
    for p in model.parameters():
        p.requires_grad_(False)
    return flags


def _restore(model, flags):
    for p, f in zip(model.parameters(), flags):
        p.requires_grad_(f)


def train_dara(loaded, task: str, shots: int = 4, steps: int = 200, lr: float = 0.05, batch: int = 16,
               seed: int = 0, layers=(0,), mode: str = "logit", n_val: int = 64, eval_every: int = 25,
               patience: int = 4) -> tuple[DARA, list[dict]]:
    """Learn one factor per (layer, head, image) on k-shot prompts of `task`; the model stays frozen."""
    torch.manual_seed(seed)
    dara = DARA.for_model(loaded, n_images=shots + 1, layers=layers, mode=mode)
    print(f"DARA: {dara.n_params} parameters ({len(layers)} layer(s) x {dara.alpha.shape[1]} heads x "
          f"{shots + 1} images)")
    val = list(itertools.islice(episode_batches(loaded, task, shots, batch, seed, "val"), max(1, n_val // batch)))

    def loss_of(b):
        with dara.applied(loaded.model, b.layouts):
            return loaded.model(**b.inputs, labels=query_labels(b)).loss

    flags = _frozen(loaded.model)
    try:
        history = fit([dara.log_alpha], loss_of, episode_batches(loaded, task, shots, batch, seed, "support"), val,
                      steps=steps, lr=lr, eval_every=eval_every, patience=patience, desc=f"DARA {task}")
    finally:
        _restore(loaded.model, flags)
    dara.meta.update({"task": task, "shots": shots, "steps_run": history[-1]["step"] if history else 0})
    return dara, history


def train_lora(loaded, task: str, shots: int = 4, steps: int = 200, lr: float = 1e-3, batch: int = 16,
               seed: int = 0, rank: int = 4, layers=(0,), n_val: int = 64, eval_every: int = 25,
               patience: int = 4):
    """LoRA (peft) on the q/k/v/o projections of the given decoder layers: the parameter-heavier baseline.
    Returns (peft model, history); `peft_model.disable_adapter()` gives the base model back."""
    from peft import LoraConfig, get_peft_model

    torch.manual_seed(seed)
    prefix = loaded.adapter.decoder_path
    targets = [f"{prefix}.layers.{layer}.self_attn.{proj}" for layer in layers
               for proj in ("q_proj", "k_proj", "v_proj", "o_proj")]
    peft_model = get_peft_model(loaded.model, LoraConfig(r=rank, lora_alpha=2 * rank, target_modules=targets,
                                                         lora_dropout=0.0))
    params = [p for n, p in peft_model.named_parameters() if "lora_" in n]
    print(f"LoRA: {sum(p.numel() for p in params)} parameters (rank {rank} on q/k/v/o of layers {list(layers)})")
    val = list(itertools.islice(episode_batches(loaded, task, shots, batch, seed, "val"), max(1, n_val // batch)))

    def loss_of(b):
        return peft_model(**b.inputs, labels=query_labels(b)).loss

    history = fit(params, loss_of, episode_batches(loaded, task, shots, batch, seed, "support"), val,
                  steps=steps, lr=lr, eval_every=eval_every, patience=patience, desc=f"LoRA {task}")
    return peft_model, history


@torch.no_grad()
def verdicts(loaded, task: str, shots: int, n: int = 200, seed: int = 0, intervention=None, condition=None,
             batch: int = 25, model=None) -> torch.Tensor:
    """correct[n] (bool) on the query split, episode by episode (the same episodes for every condition, so two
    conditions can be compared pairwise: `evaluate.mcnemar_p`); `intervention(layouts)` is a context manager
    factory (e.g. a DARA's `applied`), `condition(episode)` maps episodes (e.g. `Episode.without_demo_images`)."""
    episodes = sample_episodes(task, shots, n, seed=seed, split="query")
    if condition is not None:
        episodes = [condition(e) for e in episodes]
    return which_correct(model or loaded.model, loaded.processor, loaded.adapter, episodes, intervention, batch,
                         loaded.device)


def accuracy(loaded, task: str, shots: int, n: int = 200, seed: int = 0, intervention=None, condition=None,
             batch: int = 25, model=None) -> tuple[int, int]:
    """(correct, n) on the query split: `verdicts` counted."""
    return int(verdicts(loaded, task, shots, n, seed, intervention, condition, batch, model).sum()), n


def fixed_alpha(loaded, shots: int, alpha: float, layers=(0,)) -> DARA:
    """An untrained DARA with factor `alpha` on every demo image (query image 1), all heads of `layers`."""
    dara = DARA.for_model(loaded, n_images=shots + 1, layers=layers)
    return dara.set_alpha(alpha, (..., slice(0, shots)))


def alpha_sweep(loaded, alphas=(0.5, 2.0, 4.0), layers=(0,), kernel: str = "eager") -> dict:
    """{"alpha=<a>": intervention}: factor `a` on every demo image of whatever prompt it is given (a `fixed_alpha`
    built per batch), for harness conditions such as "4-shot+alpha=2"."""
    def factory(a):
        return lambda layouts: fixed_alpha(loaded, layouts[0].n_images - 1, a, layers).applied(
            loaded.model, layouts, kernel=kernel)
    return {f"alpha={a:g}": factory(a) for a in alphas}
