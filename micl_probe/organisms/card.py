"""The organisms' model cards: accuracy per task x condition with 95% CIs, written into README.md.

Conditions share the same queries: each query is drawn once with 8 demos; "k-shot" keeps the first k,
"no-image" keeps the first 4 without their images (TrueMICL's control), "zero-shot" keeps none.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from tqdm.auto import tqdm

from ..core import Loaded
from ..evaluation import Accuracy, condition_episode, count_correct, which_correct
from ..measure import capture_attention
from ..measure.attention import PARTS
from ..tasks import TRUE_MICL_TASKS, sample_episodes, task_names

CONDITIONS = ("zero-shot", "no-image", "1-shot", "2-shot", "4-shot", "8-shot")
SHARE_TASKS = ("novel_binding", "clock_math", "palindrome")  # the tasks whose demo images true-micl reads


def _card_queries(loaded: Loaded, task: str, n: int, seed: int):
    """The card's `n` query episodes of `task`, drawn once with 8 demos; every condition is cut from them."""
    return sample_episodes(task, 8, n, seed=seed, split="query")


@torch.no_grad()
def evaluate_organism(loaded: Loaded, n: int = 200, tasks=None, conditions=CONDITIONS, seed: int = 0,
                      batch_size: int = 50) -> dict:
    """{task: {condition: {"correct": k, "n": n}}} on `n` seeded query episodes per task."""
    tasks = tasks or task_names() + task_names(shortcut=True)
    table = {}
    for task in tqdm(tasks, desc="evaluate", mininterval=2):
        episodes = _card_queries(loaded, task, n, seed)
        table[task] = {}
        for cond in conditions:
            eps = [condition_episode(e, cond, k_default=4) for e in episodes]
            table[task][cond] = {"correct": count_correct(loaded, eps, batch_size=batch_size), "n": n}
    return table


@torch.no_grad()
def evaluate_rules(loaded: Loaded, n: int = 200, tasks=None, shots: int = 4, seed: int = 0,
                   batch_size: int = 50) -> dict:
    """{task: {rule: {"correct": k, "n": m}}}: the card's `shots`-shot queries (the same episodes as its column)
    split by each episode's hidden rule. A model that reads the rule from the demos is right under every rule; one
    that ignores them answers by one default rule, right under it and near chance under the others. The average
    over rules (the card's column) cannot tell the two apart."""
    table = {}
    # novel_binding has one true-MICL rule (names bound per episode), so nothing to split
    for task in tasks or [t for t in TRUE_MICL_TASKS if t != "novel_binding"]:
        episodes = [condition_episode(e, f"{shots}-shot") for e in _card_queries(loaded, task, n, seed)]
        right = which_correct(loaded, episodes, batch_size=batch_size)
        rules = [e.meta["rule"] for e in episodes]
        table[task] = {r: {"correct": int(sum(v for v, q in zip(right.tolist(), rules) if q == r)),
                           "n": rules.count(r)} for r in sorted(set(rules))}
    return table


@torch.no_grad()
def evaluate_demo_share(loaded: Loaded, n: int = 50, tasks=SHARE_TASKS, shots: int = 4, seed: int = 0) -> dict:
    """{task: share}: the answer position's attention on the demos' images, averaged over the first `n` of the
    card's `shots`-shot queries and every measured layer and head (`AttentionMass.where_it_looks`)."""
    out = {}
    for task in tasks:
        episodes = [condition_episode(e, f"{shots}-shot") for e in _card_queries(loaded, task, n, seed)]
        parts, _ = capture_attention(loaded, episodes, progress=False).where_it_looks()
        out[task] = float(parts[..., PARTS.index("demo_image")].nanmean())
    return out


def table_markdown(evaluation: dict) -> str:
    head = "| task | " + " | ".join(CONDITIONS) + " |\n|---|" + "---|" * len(CONDITIONS) + "\n"
    rows = []
    for task, res in evaluation.items():
        cells = [str(Accuracy(res[c]["correct"], res[c]["n"])) if c in res else "" for c in CONDITIONS]
        rows.append(f"| {task} | " + " | ".join(cells) + " |")
    return head + "\n".join(rows) + "\n"


def write_card(folder: str | Path) -> Path:
    folder = Path(folder)
    meta = json.loads((folder / "micl_probe.json").read_text())
    r = meta["recipe"]
    stages = meta.get("stages", [])
    resumed = any("resumed_from" in st for st in stages)
    mix = lambda m: ", ".join(f"{k} {v:.3f}" for k, v in m.items())
    decoder = json.loads((folder / "config.json").read_text())["text_config"]
    text = [f"# Model organism `{folder.name}`", ""]
    if meta.get("status"):
        text += [f"**Status:** {meta['status']}", ""]
    text += [r.get("description", ""), "",
             "Tiny LLaVA (CLIP vision tower 2x64-d on 8x8 patches of 32x32 images, Llama decoder "
             f"{decoder['num_hidden_layers']}x{decoder['hidden_size']}-d, {decoder['num_attention_heads']} heads / "
             f"{decoder['num_key_value_heads']} KV heads), "
             + (f"the shipped `{meta['base']}` organism continued" if meta.get("base") else "trained from scratch")
             + f" by `python -m micl_probe.organisms.train --recipe {r['name']}`"
             + (" and continued with `--resume`" if resumed else "") + ".", "",
             f"- steps: {r['steps']}, batch {r['batch']}, AdamW lr {r['lr']} (warm-up {r['warmup']}, cosine), "
             f"grad-clip 1.0, demos per episode {r['shots'][0]}..{r['shots'][1]}, seed {r['seed']}",
             f"- training time: {meta['train_minutes']} min on {meta['threads']} CPU thread(s)"
             + (f" ({meta['note']})" if meta.get("note") else "")
             + ("" if not stages else " (" + " + ".join(f"{s['steps']} steps / {s['minutes']} min"
                                                        for s in stages) + (", resumed)" if resumed else ")")),
             f"- task mix: {mix(r['mix'])}"
             + (f"; first {r['warm_frac']:.0%} of steps: {', '.join(r['warm_mix'])} only, "
                f"{r['warm_shots'][0]}..{r['warm_shots'][1]} demos" if r.get("warm_mix") else "")]
    later, k = r.get("then"), 2
    while later:  # the recipe's further stages: each a fresh warm-up + cosine schedule on its own mix
        text.append(f"- stage {k}: {later['steps']} more steps (fresh schedule, seed {later['seed'] + 1}), "
                    f"task mix: {mix(later['mix'])}")
        later, k = later.get("then"), k + 1
    text.append("")
    if "evaluation" in meta:
        n = next(iter(next(iter(meta["evaluation"].values())).values()))["n"]
        text += ["## Accuracy (%, 95% Wilson CI), greedy exact match", "",
                 f"{n} seeded query episodes per task (query split); every condition uses the same queries. "
                 "no-image = the first 4 demos without their images.", "",
                 table_markdown(meta["evaluation"])]
    if "by_rule" in meta:
        text += ["## 4-shot accuracy by hidden rule (%, 95% Wilson CI)", "",
                 "The 4-shot column's queries split by the episode's rule: reading the rule from the demos means "
                 "being right under every rule, not just under a default one.", "",
                 "| task | by rule |", "|---|---|"]
        for task, rules in meta["by_rule"].items():
            text.append(f"| {task} | " + ", ".join(f"{r} {Accuracy(c['correct'], c['n'])} (n={c['n']})"
                                                   for r, c in rules.items()) + " |")
        text.append("")
    if "demo_image_share" in meta:
        share = meta["demo_image_share"]
        text += ["## Where the answer looks (4-shot)", "",
                 f"Share of the answer position's attention on the demos' images, averaged over the first "
                 f"{share['n']} of the 4-shot queries, every layer and head (`card.evaluate_demo_share`).", "",
                 "| " + " | ".join(share["tasks"]) + " |", "|" + "---|" * len(share["tasks"]),
                 "| " + " | ".join(f"{100 * v:.1f}%" for v in share["tasks"].values()) + " |", ""]
    if meta.get("log"):
        text += ["## Training log (4-shot / no-image accuracy on 64 probe episodes)", "",
                 "| step | loss | minutes | probes |", "|---|---|---|---|"]
        for e in meta["log"]:
            probes = ", ".join(f"{k} {a:.2f}/{b:.2f}" for k, (a, b) in e["probe_4shot_vs_noimage"].items())
            text.append(f"| {e['step']} | {e['loss']:.3f} | {e['minutes']:.1f} | {probes} |")
    path = folder / "README.md"
    path.write_text("\n".join(text) + "\n")
    return path
