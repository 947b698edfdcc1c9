"""Copy rate: does the answer repeat one of the demos' answers?

Huang et al. (ICML 2026, "Dissecting Multimodal ICL") separate copying from reasoning by the *copied label
accuracy* (CLA): is the predicted first token one of the demo labels? A model that answers with the demos' labels
but not the right one copies their text without the mapping; the TrueMICL verdict "it does not read the demo images"
says nothing about what it does instead until this is measured.

Each harness record gets three fields (None where the prompt has no demos):

    "cla"            the predicted first answer token is the first token of one of the demos' answers, token id for
                     token id, as each is written in this prompt (tokens that are only whitespace skipped: a separator
                     the template writes before every answer is not a label)
    "copied"         the scored answer equals one of the demos' answers: the whole generated answer (its first line,
                     normalised as the `exact` metric does, after a thinking model's reasoning); under teacher-forced
                     scoring, where the first greedy token is the prediction, the same as "cla"
    "gold_in_demos"  the gold answer is itself one of the demos' answers (so copying can be right: novel binding's
                     class names, the operator tasks' repeated results)
    "copy_chance"    how often a uniform guess among the task's answers would copy: distinct demo answers x chance
                     (`tasks.chance`), at most 1; None for a task whose answer set is unknown (a benchmark folder)

Copying is evidence only against its chance: with 6 possible answers and 4 demos, a guess repeats a demo's answer about
half the time. The verdicts (`evaluation.verdicts`) count a model as copying when its copy rate is at least one half
and the lower end of its 95% interval is above the mean copy chance.

`copy_rate(records)` is the share of records whose answer copies a demo's (Accuracy: count, n, Wilson interval).
"""

from __future__ import annotations

import torch

from ..tasks import chance
from .metrics import final_answer, first_line, normalise
from .statistics import Accuracy


def first_label_token(ids, tokenizer) -> int | None:
    """The first of `ids` (token ids, in order) that is not only whitespace, or None."""
    for t in ids:
        t = int(t)
        if tokenizer.decode([t]).strip():
            return t
    return None


def demo_labels(batch, row: int, tokenizer) -> set[int]:
    """The first label token (`first_label_token`) of every demo answer in row `row` of a prepared batch."""
    layout, ids = batch.layouts[row], batch.inputs["input_ids"][row]
    out = set()
    for demo in range(layout.n_demos):
        first = first_label_token(ids[layout.positions(owner=demo, role="answer")].tolist(), tokenizer)
        if first is not None:
            out.add(first)
    return out


def copy_fields(episode, prediction: str, first_token: int | None, labels: set[int], metric: str) -> dict:
    """{"cla", "copied", "gold_in_demos", "copy_chance"} of one scored episode (see the module docstring); None
    each without demos. `first_token`: the first label token of the prediction (`first_label_token`), `labels`:
    `demo_labels`."""
    if not episode.demos:
        return dict.fromkeys(("cla", "copied", "gold_in_demos", "copy_chance"))
    answers = {normalise(str(d.answer)) for d in episode.demos}
    cla = first_token is not None and first_token in labels
    copied = cla if metric == "teacher-forced" else normalise(first_line(final_answer(prediction))) in answers
    gold, guess = episode.query.answer, chance(episode.task)
    return {"cla": bool(cla), "copied": bool(copied),
            "gold_in_demos": None if gold is None else normalise(str(gold)) in answers,
            "copy_chance": None if guess is None else min(1.0, len(answers) * guess)}


def first_tokens(generated: torch.Tensor, tokenizer) -> list[int | None]:
    """The first label token of each generated row [B, new tokens]."""
    return [first_label_token(row.tolist(), tokenizer) for row in generated]


def copy_rate(records: list[dict], field: str = "copied") -> Accuracy | None:
    """How many `records` (those with demos) copy a demo's answer (`field`: "copied" or "cla"); None if none has
    the field (records made without demos, or before it was recorded)."""
    seen = [r[field] for r in records if r.get(field) is not None]
    return Accuracy(sum(map(bool, seen)), len(seen)) if seen else None


def copy_chance(records: list[dict]) -> float:
    """The mean copy chance of `records` (those with demos; 0 where the task's answer set is unknown)."""
    seen = [r.get("copy_chance") or 0.0 for r in records if r.get("copied") is not None]
    return sum(seen) / len(seen) if seen else 0.0


__all__ = ["copy_chance", "copy_fields", "copy_rate", "demo_labels", "first_label_token", "first_tokens"]
