"""Evaluation harness: a model over a task's queries under named conditions, with attention at the answer row.

    records = run(loaded, tasks=["novel_binding"], conditions=["4-shot", "no-image"], n=100,
                  results="runs/x/results.jsonl")

Each record (one episode): model, task, condition, index, correct, prediction, answer, and the attention summary at
the answer position: visual share (mean over layers and heads), per-layer visual share, the image share of each
demo and of the query. Records are appended to a JSON-lines file as each chunk finishes; a rerun with the same
file skips what is already there, so a crash or Ctrl-C loses no finished episode.

Conditions: "zero-shot", "no-image" (k demos without images; k from the largest k-shot asked, else 4),
"<k>-shot", "shuffled-answers" (k demos, answers permuted). Scoring is greedy exact match
(`evaluate.greedy_exact_match`).
"""

from __future__ import annotations

import json
from pathlib import Path

from tqdm.auto import tqdm

from .attention import capture_attention
from .evaluate import greedy_exact_match
from .prompt import prepare_batch
from .tasks import sample_episodes


def condition_episode(episode, condition: str, k_default: int = 4):
    if condition == "zero-shot":
        return episode.zero_shot()
    if condition == "no-image":
        return episode.with_shots(k_default).without_demo_images()
    if condition == "shuffled-answers":
        return episode.with_shots(k_default).with_shuffled_answers()
    if condition.endswith("-shot"):
        return episode.with_shots(int(condition.split("-")[0]))
    raise ValueError(f"unknown condition {condition!r}; use zero-shot, no-image, shuffled-answers or <k>-shot")


def _done(results: Path | None) -> set[tuple]:
    if results is None or not results.is_file():
        return set()
    keys = set()
    for line in results.read_text().splitlines():
        if line.strip():
            r = json.loads(line)
            keys.add((r["model"], r["task"], r["condition"], r["index"]))
    return keys


def load_records(results: str | Path) -> list[dict]:
    return [json.loads(x) for x in Path(results).read_text().splitlines() if x.strip()]


def run(loaded, tasks: list[str], conditions: list[str], n: int = 100, seed: int = 0, batch_size: int = 25,
        attention: bool = True, results: str | Path | None = None, progress: bool = True) -> list[dict]:
    """Score `loaded` on `n` seeded query episodes per task under each condition (see module docstring)."""
    results = Path(results) if results else None
    if results:
        results.parent.mkdir(parents=True, exist_ok=True)
    done = _done(results)
    shots = [int(c.split("-")[0]) for c in conditions if c.endswith("-shot") and c != "zero-shot"]
    k_default = max(shots) if shots else 4
    k_max = max([k_default] + shots)
    records = []
    jobs = [(t, c, i) for t in tasks for c in conditions for i in range(0, n, batch_size)]
    base_of: dict[str, list] = {}  # each task's query episodes, drawn once
    for task, cond, start in tqdm(jobs, desc=f"evaluate {loaded.name}", disable=not progress, mininterval=1):
        idx = list(range(start, min(n, start + batch_size)))
        if all((loaded.name, task, cond, i) in done for i in idx):
            continue
        if task not in base_of:
            base_of[task] = sample_episodes(task, k_max, n, seed=seed, split="query")
        base = base_of[task]
        eps = [condition_episode(base[i], cond, k_default) for i in idx]
        batch = prepare_batch(eps, loaded.processor, loaded.adapter, model=loaded.model,
                              with_answer=True).to(loaded.device)
        correct, first = greedy_exact_match(loaded.model, batch)
        am = None
        if attention:
            am = capture_attention(loaded, eps, progress=False)
            visual = am.visual_share()  # [episode, layer, head]
            per_demo, owners = am.demo_image_share()
        chunk = []
        for j, (i, ep) in enumerate(zip(idx, eps)):
            r = {"model": loaded.name, "task": task, "condition": cond, "index": i, "correct": bool(correct[j]),
                 "prediction": loaded.processor.tokenizer.decode([int(first[j])]).strip(), "answer": ep.query.answer,
                 "shots": ep.shots}
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
        return [r for r in load_records(results) if r["model"] == loaded.name and r["task"] in tasks
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
