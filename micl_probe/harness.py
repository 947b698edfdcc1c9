"""Evaluation harness: a model over a task's queries under named conditions, with attention at the answer row.

    records = run(loaded, tasks=["novel_binding"], conditions=["4-shot", "no-image"], n=100,
                  results="runs/x/results.jsonl")

Each record (one episode): model, task, condition, index, correct, prediction, answer, and the attention summary at
the answer position: visual share (mean over layers and heads), per-layer visual share, the image share of each
demo and of the query. Records are appended to a JSON-lines file as each chunk finishes; a rerun with the same
file skips what is already there, so a crash or Ctrl-C loses no finished episode. Records carry a fingerprint of
the weights ("weights"): a model retrained under the same name gets new records, never the old model's.

Conditions: "zero-shot", "no-image" (k demos without images; k from the largest k-shot asked, else 4),
"<k>-shot" (the episode's first k demos), "retrieved-<k>-shot" (the k of the episode's demos whose images are most
similar to the query's; episodes then carry at least 2k demos to choose from), "shuffled-answers" (k demos, answers
permuted). Any condition can take an intervention: "<condition>+<name>" runs it inside `interventions[name]`, a
`layouts -> context manager` factory, e.g.

    interventions = {"dara": dara.on(model, kernel="eager"), "mtv": mtv.injection(loaded, tv.mean, heads)}
    interventions |= dara_train.alpha_sweep(loaded, alphas=(0.5, 2, 4))   # "alpha=0.5", …
    run(loaded, ["outlier"], ["4-shot", "4-shot+dara", "zero-shot+mtv", "4-shot+alpha=2"], interventions=…)

(attention under an intervention is measured on HF's eager weights, so a DARA must use kernel="eager" there).
Scoring is greedy exact match (`evaluate.greedy_exact_match`), identical to generate + exact match.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import warnings
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
from tqdm.auto import tqdm

from .attention import capture_attention
from .evaluate import greedy_exact_match
from .prompt import prepare_batch
from .tasks import sample_episodes


def condition_episode(episode, condition: str, k_default: int = 4):
    if condition.startswith("retrieved-") and condition.endswith("-shot"):
        return episode.with_retrieved_shots(int(condition.split("-")[1]))
    if condition == "zero-shot":
        return episode.zero_shot()
    if condition == "no-image":
        return episode.with_shots(k_default).without_demo_images()
    if condition == "shuffled-answers":
        return episode.with_shots(k_default).with_shuffled_answers()
    if condition.endswith("-shot"):
        return episode.with_shots(int(condition.split("-")[0]))
    raise ValueError(f"unknown condition {condition!r}; use zero-shot, no-image, shuffled-answers, <k>-shot or "
                     "retrieved-<k>-shot, each optionally +<intervention>")


def _pool_size(conditions: list[str]) -> tuple[int, int]:
    """(k for no-image / shuffled-answers, demos each base episode carries)."""
    bases = [c.partition("+")[0] for c in conditions]
    shots = [int(c.split("-")[0]) for c in bases if c.endswith("-shot") and c[0].isdigit()]
    retrieved = [2 * int(c.split("-")[1]) for c in bases if c.startswith("retrieved-")]
    k_default = max(shots) if shots else 4
    return k_default, max([k_default] + shots + retrieved)


def load_records(results: str | Path) -> list[dict]:
    """The records of a results file, one per (model, task, condition, index): a line cut short by a crash is
    skipped (with a warning) and a repeated key keeps its first record."""
    records, seen, broken = [], set(), 0
    for line in Path(results).read_text().splitlines():
        if not line.strip():
            continue
        try:
            r = json.loads(line)
        except json.JSONDecodeError:
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


def run(loaded, tasks: list[str], conditions: list[str], n: int = 100, seed: int = 0, batch_size: int = 25,
        attention: bool = True, results: str | Path | None = None, progress: bool = True,
        interventions: dict[str, Callable] | None = None) -> list[dict]:
    """Score `loaded` on `n` seeded query episodes per task under each condition (see module docstring)."""
    interventions = interventions or {}
    for c in conditions:
        name = c.partition("+")[2]
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
    k_default, k_max = _pool_size(conditions)
    weights = weights_fingerprint(loaded.model)
    records = []
    jobs = [(t, c, i) for t in tasks for c in conditions for i in range(0, n, batch_size)]
    base_of: dict[str, list] = {}  # each task's query episodes, drawn once
    for task, cond, start in tqdm(jobs, desc=f"evaluate {loaded.name}", disable=not progress, mininterval=1):
        idx = [i for i in range(start, min(n, start + batch_size)) if (loaded.name, weights, task, cond, i) not in done]
        if not idx:
            continue
        if task not in base_of:
            base_of[task] = sample_episodes(task, k_max, n, seed=seed, split="query")
        base = base_of[task]
        base_cond, _, name = cond.partition("+")
        intervention = interventions.get(name) if name else None
        eps = [condition_episode(base[i], base_cond, k_default) for i in idx]
        batch = prepare_batch(eps, loaded.processor, loaded.adapter, model=loaded.model,
                              with_answer=True).to(loaded.device)
        with intervention(batch.layouts) if intervention else contextlib.nullcontext():
            correct, first = greedy_exact_match(loaded.model, batch)
        am = None
        if attention:
            am = capture_attention(loaded, eps, progress=False, intervention=intervention)
            visual = am.visual_share()  # [episode, layer, head]
            per_demo, owners = am.demo_image_share()
        chunk = []
        for j, (i, ep) in enumerate(zip(idx, eps)):
            r = {"model": loaded.name, "weights": weights, "task": task, "condition": cond, "index": i,
                 "correct": bool(correct[j]), "prediction": loaded.processor.tokenizer.decode([int(first[j])]).strip(),
                 "answer": ep.query.answer, "shots": ep.shots}
            if am is not None:
                r["visual_share"] = float(visual[j].mean())
                r["visual_share_by_layer"] = visual[j].mean(-1).tolist()
                r["visual_share_by_head"] = visual[j].tolist()  # [layer][head]
                r["image_share"] = {o: float(per_demo[j, ..., k].mean()) for k, o in enumerate(owners)
                                    if o == "query" or int(o[4:]) < ep.shots}
                r["special_share"] = float(am.special_share()[j].mean())
            chunk.append(r)
        if results:
            with results.open("a") as f:
                f.writelines(json.dumps(r) + "\n" for r in chunk)
        records.extend(chunk)
    if results:
        return [r for r in load_records(results) if r["model"] == loaded.name and r.get("weights") == weights
                and r["task"] in tasks
                and r["condition"] in conditions and r["index"] < n]
    return records


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
