"""Answer metrics: is a generated answer right?

    correct("exact", " The Dax.", "dax")                     # True: normalised exact match
    correct("vlicl", "12 apples", "12", task="vlicl:/d/operator_induction")   # VL-ICL's own rule

| metric          | verdict                                                                                     |
|-----------------|---------------------------------------------------------------------------------------------|
| teacher-forced  | the organisms' scorer (`scoring.greedy_exact_match`): greedy decoding emits exactly the gold  |
|                 | tokens, then the end of turn; one forward pass, no generation                                |
| exact           | first line of the answer == gold, both normalised: lower case, number words -> digits,        |
|                 | punctuation, articles (a, an, the) and extra whitespace removed (SQuAD/VQA-style)            |
| number          | the first number in the answer (digits or number words) equals the gold's                    |
| contains        | the normalised gold appears as whole words in the normalised first line                      |
| option          | the first option letter in the answer (A, (B), C. …) equals the gold's                       |
| vlicl           | VL-ICL Bench's own (evals/eval.py): strip, cut at the first newline (else the first period),  |
|                 | lower-case exact match; the first integer for the operator tasks (so "-3" is read as "3", as  |
|                 | VL-ICL does); for matching_mi "yes" right iff "yes" is in the answer, "no" iff it is not      |

Thinking models (GLM-4.1V-Thinking, the Qwen3-VL Thinking checkpoints): every generated metric reads the answer after
the reasoning (`final_answer`: after `</think>`, inside `<answer>…</answer>`); give them room to finish thinking
(a `max_new_tokens` in the hundreds or more). Teacher-forced scoring does not fit them: their first answer token is
`<think>`.

`default_metric(task)`: teacher-forced for the procedural tasks (the organisms answer in their trained format),
vlicl for `vlicl:` tasks, exact for `truemicl:` tasks. Everything but teacher-forced scores a greedy generation.
"""

from __future__ import annotations

import re
import string
from pathlib import PurePath

METRICS = ("teacher-forced", "exact", "number", "contains", "option", "vlicl")
GENERATED = METRICS[1:]  # metrics that score a generated answer

_WORDS = ["zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine", "ten", "eleven", "twelve",
          "thirteen", "fourteen", "fifteen", "sixteen", "seventeen", "eighteen", "nineteen", "twenty"]
_TENS = {"thirty": 30, "forty": 40, "fifty": 50, "sixty": 60, "seventy": 70, "eighty": 80, "ninety": 90}
NUMBER_WORDS = {w: str(i) for i, w in enumerate(_WORDS)} | {w: str(v) for w, v in _TENS.items()}
_NUMBER = re.compile(r"-?\d+(?:\.\d+)?")
_OPTION = re.compile(r"(?<![A-Za-z])\(?([A-Z])[).:]?(?![A-Za-z])")


def default_metric(task: str) -> str:
    source = task.partition(":")[0] if ":" in task else ""
    return {"vlicl": "vlicl", "truemicl": "exact"}.get(source, "teacher-forced")


def folder_name(task: str) -> str:
    """The task folder's name of a folder task ("vlicl:/d/VL-ICL/matching_mi", "vlicl:matching_mi",
    "vlicl:./matching_mi/" -> "matching_mi"); a procedural task's own name."""
    path = task.partition(":")[2] if ":" in task else task
    return PurePath(path.rstrip("/\\") or path).name


def first_line(text: str) -> str:
    """The answer's first non-empty line, stripped."""
    return next((line.strip() for line in text.strip().splitlines() if line.strip()), "")


def normalise(text: str) -> str:
    """Lower case, number words -> digits, punctuation (but a number's sign and decimal point) and articles removed,
    whitespace collapsed."""
    text = text.lower()
    text = re.sub(r"(?<!\d)\.|\.(?!\d)", " ", text)  # a period that is not a decimal point
    text = "".join(" " if ch in string.punctuation and ch not in "-." else ch for ch in text)
    text = re.sub(r"-(?!\d)", " ", text)
    words = [NUMBER_WORDS.get(w, w) for w in text.split() if w not in ("a", "an", "the")]
    return " ".join(words)


def first_number(text: str) -> float | None:
    m = _NUMBER.search(normalise(text))
    return float(m.group()) if m else None


def option_letter(text: str) -> str | None:
    m = _OPTION.search(text.strip())
    return m.group(1) if m else None


def _vlicl_cut(prediction: str) -> str:
    prediction = prediction.strip().strip("\n")
    cut = prediction.find("\n")
    if cut <= 0:
        cut = prediction.find(".")
    return prediction[:cut] if cut > 0 else prediction


def vlicl_correct(prediction: str, gold: str, task_name: str) -> bool:
    """VL-ICL Bench's verdict for `task_name` (the folder name: operator_induction, matching_mi, …)."""
    prediction = _vlicl_cut(prediction)
    if task_name == "matching_mi":
        want = normalise(str(gold))
        if want not in ("yes", "no"):
            raise ValueError(f"matching_mi's gold answers are yes or no, got {gold!r}: fix that item of the task's "
                             "query.json")
        return ("yes" in prediction.lower()) == (want == "yes")
    if "operator_induction" in task_name:
        m = re.search(r"\d+", prediction)
        prediction = m.group() if m else ""
    return prediction.lower() == str(gold).lower()


_ANSWER = re.compile(r"<answer>(.*?)(?:</answer>|$)", re.S)
_BOX = re.compile(r"<\|(?:begin|end)_of_box\|>")


def final_answer(text: str) -> str:
    """The answer a thinking model gives after its reasoning: the text after the last `</think>` (none while the
    thinking block is still open: the generation stopped inside it), inside `<answer>…</answer>` when the model
    writes those tags (GLM-4.1V-Thinking), without GLM's `<|begin_of_box|>` markers. Other text is returned as is."""
    if "</think>" in text:
        text = text.rsplit("</think>", 1)[1]
    elif text.lstrip().startswith("<think>"):
        return ""
    found = _ANSWER.search(text)
    if found:
        text = found.group(1)
    return _BOX.sub("", text)


def correct(metric: str, prediction: str, gold: str, task: str = "") -> bool:
    """Is `prediction` (generated text) right for `gold` under `metric` (see the table above)? A thinking model's
    reasoning is skipped first (`final_answer`)."""
    if metric in GENERATED:
        prediction = final_answer(prediction)
    if metric == "exact":
        return normalise(first_line(prediction)) == normalise(str(gold))
    if metric == "number":
        got, want = first_number(first_line(prediction)), first_number(str(gold))
        return got is not None and want is not None and abs(got - want) < 1e-9
    if metric == "contains":
        want = normalise(str(gold))
        return bool(want) and f" {want} " in f" {normalise(first_line(prediction))} "
    if metric == "option":
        got, want = option_letter(prediction), option_letter(str(gold))
        return got is not None and got == want
    if metric == "vlicl":
        return vlicl_correct(prediction, gold, folder_name(task))
    raise ValueError(f"unknown metric {metric!r}; metrics: {', '.join(METRICS)}"
                     + (" (teacher-forced scores logits, not text)" if metric == "teacher-forced" else ""))
