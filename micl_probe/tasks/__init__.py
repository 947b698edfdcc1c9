"""Tasks: TrueMICL-style procedural tasks (`synthetic`), released benchmark folders (`folders`: truemicl:PATH/TASK,
vlicl:PATH/TASK), and one way to draw query episodes of either (`sources.query_episodes`).

    from micl_probe.tasks import sample_episodes, TASKS
    episodes = sample_episodes("clock_math", shots=4, n=200, seed=0, split="query")
"""

from .folders import FolderError, FolderTask, folder_episodes, load_folder, parse_task, retrieved_episodes
from .sources import check_task, demos_per_shot, query_episodes, retrieval_episodes, task_labels, task_stream
from .synthetic import (
    COLOUR_NAMES,
    NOVEL_NAMES,
    SHAPE_NAMES,
    SHORTCUT_SUFFIX,
    SPLIT_SEEDS,
    TASKS,
    TRUE_MICL_TASKS,
    Task,
    chance,
    evidence_boxes,
    make_episode,
    matching_demos,
    rule_episodes,
    rule_stream,
    sample_episodes,
    task_names,
)

__all__ = [
    "COLOUR_NAMES", "NOVEL_NAMES", "SHAPE_NAMES", "SHORTCUT_SUFFIX", "SPLIT_SEEDS", "TASKS",
    "TRUE_MICL_TASKS", "FolderError", "FolderTask", "Task", "chance", "check_task", "demos_per_shot", "evidence_boxes",
    "folder_episodes", "load_folder", "make_episode", "matching_demos", "parse_task",
    "query_episodes", "retrieval_episodes", "retrieved_episodes", "rule_episodes", "rule_stream",
    "sample_episodes", "task_labels", "task_names", "task_stream",
]
