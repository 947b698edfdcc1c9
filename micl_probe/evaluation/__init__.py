"""Evaluation: scoring (greedy exact match), conditions, the harness over tasks x conditions, statistics, the
verdict per model and task (does it read the demo images?), and the accuracy-vs-attention analysis."""

from .analysis import (
    accuracy_vs_attention,
    head_predictiveness,
    head_tests,
    heads_that_predict,
    right_demo,
    summarise,
    where_it_looks,
)
from .compare import compare_runs, intervention_effects
from .conditions import condition_episode
from .frames import heads_frame, records_frame
from .harness import RunConfig, accuracy_table, load_records, run
from .scoring import count_correct, greedy_exact_match, score, task_verdicts, which_correct
from .statistics import Accuracy, mcnemar_p, paired_difference, wilson
from .store import Records
from .verdicts import verdicts

__all__ = [
    "Accuracy", "Records", "RunConfig", "accuracy_table", "accuracy_vs_attention", "compare_runs",
    "condition_episode", "count_correct", "greedy_exact_match", "head_predictiveness", "head_tests", "heads_frame",
    "heads_that_predict", "intervention_effects", "load_records", "mcnemar_p", "paired_difference", "records_frame",
    "right_demo", "run", "score", "summarise", "task_verdicts", "verdicts", "where_it_looks", "which_correct",
    "wilson",
]
