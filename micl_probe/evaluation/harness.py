"""Evaluation harness: a model over a task's queries under named conditions, with attention at the answer row.

    records = run(loaded, ["novel_binding"], ["4-shot", "no-image"], RunConfig(n=100),
                  results="runs/x/results.jsonl")

Each record (one episode): model, task, condition, index, correct, prediction, answer, and the attention summary at
the answer position (means over layers and heads unless named): visual share, per layer and per head, the image
share of each demo and of the query, the demo images' share per head, where the answer looks (`looks_at`: demo
images, query image, demo text, query text, special tokens, other) and, for novel binding, the image share of a demo
of the query's class against that of a demo of the other class (`matching_demo_image`, `other_demo_image`, per
demo). Records are appended to a JSON-lines file as each chunk finishes; a rerun with the same file skips what is
already there, so a crash or Ctrl-C loses no finished episode. Records carry a fingerprint of the weights
("weights"): a model retrained under the same name gets new records, never the old model's.

Conditions (`evaluation.conditions`): "zero-shot", "no-image", "<k>-shot", "retrieved-<k>-shot",
"shuffled-answers". Any condition can take an intervention: "<condition>+<name>" runs it inside
`interventions[name]`, a `layouts -> context manager` factory, e.g.

    interventions = {"dara": dara.on(model, kernel="eager"), "mtv": mtv.injection(loaded, tv.mean, heads)}
    interventions |= alpha_sweep(loaded, alphas=(0.5, 2, 4))   # "alpha=0.5", … (micl_probe.interventions)
    run(loaded, ["outlier"], ["4-shot", "4-shot+dara", "zero-shot+mtv", "4-shot+alpha=2"], interventions=…)

(attention under an intervention is measured on HF's eager weights, so a DARA must use kernel="eager" there).
Scoring is greedy exact match (`scoring.greedy_exact_match`), identical to generate + exact match. Each batch is
prepared once and run once: the forward pass that scores it also measures its attention (`score_and_capture`).
Query episodes are drawn as the model was trained (`tasks.options_for`).
"""

from __future__ import annotations

import hashlib
import json
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from tqdm.auto import tqdm

from ..core import Loaded, within
from ..measure import score_and_capture
from ..tasks import matching_demos, options_for, sample_episodes
from .conditions import condition_episode, parse_condition, pool_size
from .scoring import greedy_exact_match, verdicts_from_logits


@dataclass(frozen=True)
class RunConfig:
    """Settings of a harness run."""

    n: int = 100  # query episodes per task and condition
    seed: int = 0  # seed of the query episodes
    batch_size: int = 25  # episodes per forward pass
    attention: bool = True  # record the attention summary at the answer row
    progress: bool = True  # tqdm progress bar


RECORD_KEY = ("model", "task", "condition", "index")  # with "weights": what makes a record unique


def load_records(results: str | Path) -> list[dict]:
    """The records of a results file, one per (model, task, condition, index), read line by line: a line cut short
    by a crash, or one that is not a record (missing a key field), is skipped with a warning and recomputed; a
    repeated key keeps its first record."""
    records, seen, broken = [], set(), 0
    with Path(results).open() as lines:
        for line in lines:
            if not line.strip():
                continue
            try:
                r = json.loads(line)
            except json.JSONDecodeError:
                broken += 1
                continue
            if not isinstance(r, dict) or any(k not in r for k in RECORD_KEY):
                broken += 1
                continue
            key = (r["model"], r.get("weights"), r["task"], r["condition"], r["index"])
            if key not in seen:
                seen.add(key)
                records.append(r)
    if broken:
        warnings.warn(f"{results}: skipped {broken} unreadable line(s) (a run cut short?); they are recomputed",
                      stacklevel=2)
    return records


def _done(results: Path | None) -> set[tuple]:
    if results is None or not results.is_file():
        return set()
    return {(r["model"], r.get("weights"), r["task"], r["condition"], r["index"]) for r in load_records(results)}


@torch.no_grad()
def weights_fingerprint(model) -> str:
    """A short hash of the model's parameters: records of a retrained model under the same name are not reused."""
    h = hashlib.sha1()
    for name, p in model.named_parameters():
        flat = p.detach().flatten().float()
        h.update(name.encode())
        h.update(np.array([flat.sum().item(), flat.abs().sum().item(), flat[:: max(1, flat.numel() // 64)]
                           .sum().item()]).tobytes())
    return h.hexdigest()[:12]


def run(loaded: Loaded, tasks: list[str], conditions: list[str], config: RunConfig | None = None,
        results: str | Path | None = None, interventions: dict[str, Callable] | None = None) -> list[dict]:
    """Score `loaded` on `config.n` seeded query episodes per task under each condition (see module docstring);
    records are appended to `results` (JSON lines) as each batch finishes, and a rerun skips what is there."""
    cfg = config or RunConfig()
    interventions = interventions or {}
    for c in conditions:
        name = parse_condition(c)[1]
        if name and name not in interventions:
            raise ValueError(f"condition {c!r} names intervention {name!r}; given: {sorted(interventions) or 'none'}")
    results = Path(results) if results else None
    if results:
        results.parent.mkdir(parents=True, exist_ok=True)
    done = _done(results)
    if results and results.is_file() and results.stat().st_size:
        with results.open("rb+") as f:  # a line cut short by a crash: new records start on a line of their own
            f.seek(-1, 2)
            if f.read(1) != b"\n":
                f.write(b"\n")
    k_default, k_max = pool_size(conditions)
    weights = weights_fingerprint(loaded.model)
    n, records = cfg.n, []
    jobs = [(t, c, i) for t in tasks for c in conditions for i in range(0, n, cfg.batch_size)]
    base_of: dict[str, list] = {}  # each task's query episodes, drawn once
    for task, cond, start in tqdm(jobs, desc=f"evaluate {loaded.name}", disable=not cfg.progress, mininterval=1):
        idx = [i for i in range(start, min(n, start + cfg.batch_size))
               if (loaded.name, weights, task, cond, i) not in done]
        if not idx:
            continue
        if task not in base_of:
            base_of[task] = sample_episodes(task, k_max, n, seed=cfg.seed, split="query", **options_for(loaded))
        base = base_of[task]
        base_cond, _, name = cond.partition("+")
        intervention = interventions.get(name) if name else None
        eps = [condition_episode(base[i], base_cond, k_default) for i in idx]
        batch = loaded.prepare_batch(eps, with_answer=True)
        if cfg.attention:  # one forward pass scores the batch and measures its attention
            am, logits = score_and_capture(loaded, batch, intervention=intervention)
            correct, first = verdicts_from_logits(logits, batch)
        else:
            with within(intervention, batch.layouts) as kwargs:
                correct, first = greedy_exact_match(loaded.model, batch, **kwargs)
        chunk = [{"model": loaded.name, "weights": weights, "task": task, "condition": cond, "index": i,
                  "correct": bool(correct[j]),
                  "prediction": loaded.processor.tokenizer.decode([int(first[j])]).strip(),
                  "answer": ep.query.answer, "shots": ep.shots} for j, (i, ep) in enumerate(zip(idx, eps))]
        if cfg.attention:
            _add_attention(chunk, am, eps)
        if results:
            with results.open("a") as f:
                f.writelines(json.dumps(r) + "\n" for r in chunk)
        records.extend(chunk)
    if results:
        return [r for r in load_records(results) if r["model"] == loaded.name and r.get("weights") == weights
                and r["task"] in tasks and r["condition"] in conditions and r["index"] < n]
    return records


def _add_attention(chunk: list[dict], am, episodes) -> None:
    """The attention summary at the answer row, into each record of `chunk`."""
    visual = am.visual_share()  # [episode, layer, head]
    per_demo, owners = am.demo_image_share()
    special = am.special_share()
    parts, names = am.where_it_looks()  # [episode, layer, head, part]
    for j, (r, ep) in enumerate(zip(chunk, episodes)):
        r["visual_share"] = float(visual[j].mean())
        r["visual_share_by_layer"] = visual[j].mean(-1).tolist()
        r["visual_share_by_head"] = visual[j].tolist()  # [layer][head]
        r["image_share"] = {o: float(per_demo[j, ..., k].mean()) for k, o in enumerate(owners)
                            if o == "query" or int(o[4:]) < ep.shots}
        demos = [k for k, o in enumerate(owners) if o != "query" and int(o[4:]) < ep.shots]
        r["demo_image_by_head"] = per_demo[j][..., demos].sum(-1).tolist()  # [layer][head]
        r["special_share"] = float(special[j].mean())
        r["looks_at"] = {name: float(parts[j, ..., k].mean()) for k, name in enumerate(names)}
        match = matching_demos(ep) if any(d.images for d in ep.demos) else None
        if match is not None and 0 < len(match) < ep.shots:  # novel binding: the demos of the query's class
            r["matching_demo_image"] = sum(r["image_share"][f"demo{i}"] for i in match) / len(match)
            r["other_demo_image"] = sum(r["image_share"][f"demo{i}"] for i in range(ep.shots) if i not in match) \
                / (ep.shots - len(match))


def accuracy_table(records: list[dict]) -> dict:
    """{model: {task: {condition: {"correct": k, "n": n, "visual_share": mean}}}}"""
    table: dict = {}
    for r in records:
        cell = table.setdefault(r["model"], {}).setdefault(r["task"], {}).setdefault(
            r["condition"], {"correct": 0, "n": 0, "visual_sum": 0.0})
        cell["correct"] += int(r["correct"])
        cell["n"] += 1
        cell["visual_sum"] += r.get("visual_share", float("nan"))
    for model in table.values():
        for task in model.values():
            for cell in task.values():
                cell["visual_share"] = cell.pop("visual_sum") / cell["n"]
    return table
