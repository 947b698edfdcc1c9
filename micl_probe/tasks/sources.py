"""Every task by one name: a procedural task ("clock_math", "outlier_shortcut") or a benchmark folder
("vlicl:/data/VL-ICL/clevr", "truemicl:/data/truemicl/operator_induction").

    episodes = query_episodes("vlicl:/data/VL-ICL/clevr", shots=8, n=100, style="single", instruction="concise")
    episodes = query_episodes("clock_math", shots=4, n=100)

`instruction`: "nothing" | "concise" | "detailed" (VL-ICL's own instructions for vlicl: tasks; no text otherwise)
or any other string, written as it is before the first demo. `style`: "turns" | "single" (see `Episode`).
"""

from __future__ import annotations

from pathlib import PurePath

import numpy as np

from ..core.episode import Episode
from .folders import LEVELS, FolderError, folder_episodes, folder_stream, parse_task, retrieved_episodes
from .synthetic import (
    SPLIT_SEEDS,
    fixed_demo_episodes,
    make_episode,
    rule_episodes,
    rule_stream,
    sample_episodes,
    split_rule,
    task_names,
)


def check_task(task: str) -> None:
    """ValueError (one line, naming the fix) unless `task` is a procedural task or a readable folder task."""
    if ":" in task:
        if parse_task(task) is None:
            raise FolderError(f"task {task!r}: a folder task is truemicl:PATH/TASK or vlicl:PATH/TASK")
        return
    if "@" in task:
        split_rule(task)
        return
    if task not in task_names() + task_names(shortcut=True):
        raise ValueError(f"unknown task {task!r}; tasks: {', '.join(task_names())} (each also as <task>_shortcut, or "
                         "<task>@<rule> under one fixed rule), or a benchmark folder as truemicl:PATH/TASK or "
                         "vlicl:PATH/TASK")


def task_labels(tasks: list[str]) -> dict[str, str]:
    """{task: a short name for tables and figures}: a folder task as source:TASK (the full spec where two would
    share a name), a procedural task as itself."""
    short = {t: f"{t.partition(':')[0]}:{PurePath(t.partition(':')[2].rstrip('/') or '.').name}" if ":" in t else t
             for t in tasks}
    clash = {v for v in short.values() if list(short.values()).count(v) > 1}
    return {t: t if v in clash else v for t, v in short.items()}


def demos_per_shot(task: str) -> int:
    """Images a shot of `task` holds (a folder task may pair images in one demo; procedural tasks: 1)."""
    folder = parse_task(task) if ":" in task else None
    return folder.demos_per_shot if folder else 1


def _styled(episodes: list[Episode], style: str, instruction: str | None, system: str = "") -> list[Episode]:
    return [e.with_style(style, instruction, system) for e in episodes]


def query_episodes(task: str, shots: int, n: int, seed: int = 0, instruction: str = "nothing",
                   style: str = "turns", system: str = "", fixed_demos: bool = False) -> list[Episode]:
    """`n` query episodes of `task` with `shots` shots each (a folder task may hold fewer queries: all of them).
    `fixed_demos`: one demo set per task and seed, shared by every query (`synthetic.fixed_demo_episodes`,
    `folders.folder_episodes`): prompts that differ only after the demos, whose prefix the harness runs once."""
    folder = parse_task(task) if ":" in task else None
    if folder is not None:
        return _styled(folder_episodes(folder, shots, n, seed, instruction, fixed_demos), style, None, system)
    text = "" if instruction in LEVELS else instruction
    base, rule = split_rule(task)
    if fixed_demos:
        drawn = fixed_demo_episodes(task, shots, n, seed, "query")
    elif rule:
        drawn = rule_episodes(base, rule, shots, n, "query", seed)
    else:
        drawn = sample_episodes(task, shots, n, seed=seed, split="query")
    return _styled(drawn, style, text, system)


def retrieval_episodes(task: str, k: int, n: int, instruction: str = "nothing", style: str = "turns",
                       system: str = "") -> list[Episode] | None:
    """For a folder task, each query with the k most similar items of the whole support set; None for a procedural
    task (its retrieved-k condition picks among each episode's own demos: `Episode.with_retrieved_shots`)."""
    folder = parse_task(task) if ":" in task else None
    if folder is None:
        return None
    return _styled(retrieved_episodes(folder, k, n, instruction), style, None, system)


def task_stream(task: str, shots: int, split: str = "support", seed: int = 0, instruction: str = "nothing",
                style: str = "turns"):
    """Endless seeded k-shot episodes to train an intervention on: a procedural task's `split` stream ("support" to
    learn, "val" to stop early), or a folder task's support set split in two (`folders.folder_stream`)."""
    folder = parse_task(task) if ":" in task else None
    if folder is not None:
        for episode in folder_stream(folder, shots, split, seed, instruction):
            yield episode.with_style(style)
        return
    if split not in SPLIT_SEEDS:
        raise ValueError(f"unknown split {split!r}; splits: {', '.join(SPLIT_SEEDS)}")
    text = "" if instruction in LEVELS else instruction
    base, rule = split_rule(task)
    if rule:  # one fixed rule: what a task vector is extracted for
        for episode in rule_stream(base, rule, shots, split, seed):
            yield episode.with_style(style, text)
        return
    rng = np.random.default_rng([seed, SPLIT_SEEDS[split]])
    while True:
        yield make_episode(task, shots, rng).with_style(style, text)
