"""Tasks: TrueMICL-style procedural tasks (`synthetic`) and loaders for released benchmark folders (`folders`).

    from micl_probe.tasks import sample_episodes, TASKS
    episodes = sample_episodes("clock_math", shots=4, n=200, seed=0, split="query")
"""

from .folders import load_folder
from .synthetic import (
    BINDING_SCALE,
    COLOUR_NAMES,
    NOVEL_NAMES,
    SHAPE_NAMES,
    SHORTCUT_SUFFIX,
    SPLIT_SEEDS,
    TASKS,
    TRUE_MICL_TASKS,
    Task,
    chance,
    make_episode,
    matching_demos,
    options_for,
    rule_episodes,
    rule_stream,
    sample_episodes,
    task_names,
)

__all__ = [
    "BINDING_SCALE", "COLOUR_NAMES", "NOVEL_NAMES", "SHAPE_NAMES", "SHORTCUT_SUFFIX", "SPLIT_SEEDS", "TASKS",
    "TRUE_MICL_TASKS", "Task", "chance", "load_folder", "make_episode", "matching_demos", "options_for",
    "rule_episodes", "rule_stream", "sample_episodes", "task_names",
]
