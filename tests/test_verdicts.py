"""The verdict per model and task: the paired interval, the rule on planted records, chance levels, CLI errors."""

import json

import numpy as np
import pytest

from micl_probe.evaluation import paired_difference, verdicts
from micl_probe.evaluation.verdicts import COPIES, IMITATES, INCONCLUSIVE, READS, UNUSED, WORSE
from micl_probe.tasks import TASKS, chance, sample_episodes, task_names


def test_paired_difference_contains_the_difference_and_is_antisymmetric():
    rng = np.random.default_rng(0)
    for _ in range(200):
        n = int(rng.integers(1, 60))
        a, b = rng.random(n) < rng.random(), rng.random(n) < rng.random()
        d, (lo, hi) = paired_difference(a, b)
        assert d == pytest.approx(a.mean() - b.mean()) and -1 <= lo <= d <= hi <= 1
        d2, (lo2, hi2) = paired_difference(b, a)
        assert d2 == pytest.approx(-d) and lo2 == pytest.approx(-hi) and hi2 == pytest.approx(-lo)
    with pytest.raises(ValueError, match="same, non-empty shape"):
        paired_difference([True], [True, False])


def test_paired_difference_covers_the_true_difference_95_percent_of_the_time():
    """Simulated pairs with a known difference and correlation: the interval holds the truth in ~95% of samples
    (Newcombe's method keeps its coverage at small n, where a Wald interval falls short)."""
    rng = np.random.default_rng(1)
    for n, p_both, p_a_only, p_b_only in [(40, 0.3, 0.25, 0.05), (200, 0.5, 0.1, 0.1), (25, 0.6, 0.2, 0.0)]:
        truth = p_a_only - p_b_only
        hits = 0
        for _ in range(1000):
            u = rng.random(n)
            a = u < p_both + p_a_only
            b = (u < p_both) | ((u >= p_both + p_a_only) & (u < p_both + p_a_only + p_b_only))
            lo, hi = paired_difference(a, b)[1]
            hits += lo <= truth <= hi
        assert 0.93 <= hits / 1000 <= 0.995, (n, hits)


def _records(model, task, sighted, blind, k=4, copied=None, chance_of_copy=0.25):
    """Harness-like records: query i under k-shot and under no-image (the same demos without images); `copied`:
    which k-shot answers repeat a demo's answer (None: the field is not recorded)."""
    out = []
    for cond, verdict in ((f"{k}-shot", sighted), ("no-image", blind)):
        out += [{"model": model, "task": task, "condition": cond, "index": i, "correct": bool(v), "shots": k}
                for i, v in enumerate(verdict)]
    for r, c in zip(out, copied or []):
        r["copied"], r["copy_chance"] = bool(c), chance_of_copy
    return out + [{"model": model, "task": task, "condition": "zero-shot", "index": i, "correct": False, "shots": 0}
                  for i in range(len(sighted))]


def test_the_verdict_rule_on_planted_records():
    n = 100
    reads = _records("m", "clock_math", [1] * 90 + [0] * 10, [1] * 45 + [0] * 55)
    # outlier (chance 1/6): images change nothing, 60% of the answers repeat a demo's, 50% right: above chance
    imitates = _records("m", "outlier", [1] * 50 + [0] * 50, [1] * 50 + [0] * 50, copied=[1] * 60 + [0] * 40)
    misled = _records("m", "shape_count", [0] * 80 + [1] * 20, [1] * 40 + [0] * 60)  # images hurt
    few = _records("m", "palindrome", [1, 1, 1, 0, 0, 1], [1, 0, 0, 0, 1, 1], copied=[1] * 6)
    no_control = [r for r in _records("m", "number_grid", [1] * 5, [0] * 5) if r["condition"] != "no-image"]
    # novel binding (chance 1/2): every answer a demo's name, right at chance: copies them without the mapping
    copies = _records("m", "novel_binding", [1, 0] * 50, [1, 0] * 50, copied=[1] * n, chance_of_copy=0.5)
    # 60% copies where a guess copies 67% of the time (outlier: 4 distinct demo colours of 6) is no copying
    guessing = _records("m2", "outlier", [1] * 50 + [0] * 50, [1] * 50 + [0] * 50, copied=[1] * 60 + [0] * 40,
                        chance_of_copy=4 / 6)
    # text-shortcut on novel binding: 0 vs 0 and its answers are no demo's ("cyan", "1"): it does not use them
    unused = _records("m", "novel_binding_shortcut", [0] * n, [0] * n, copied=[0] * n)
    unrecorded = _records("m", "operator_induction", [0] * n, [0] * n)  # older records: no copy rate, no claim
    rows = {r["task"]: r for r in verdicts(reads + imitates + misled + few + no_control + copies + unused
                                           + unrecorded) if r["model"] == "m"}
    assert verdicts(guessing)[0]["verdict"] == UNUSED and verdicts(guessing)[0]["copy_chance"] == pytest.approx(4 / 6)
    assert set(rows) == {"clock_math", "outlier", "shape_count", "palindrome", "novel_binding",
                         "novel_binding_shortcut", "operator_induction"}  # no verdict without the control
    assert rows["clock_math"]["verdict"] == READS and rows["clock_math"]["p"] < 1e-6
    assert rows["clock_math"]["difference"] == pytest.approx(0.45) and rows["clock_math"]["ci"][0] > 0.3
    assert rows["outlier"]["verdict"] == IMITATES and rows["outlier"]["ci"][1] < 0.10
    assert rows["outlier"]["copy_rate"]["correct"] == 60 and rows["outlier"]["copy_rate"]["n"] == n
    assert rows["shape_count"]["verdict"] == WORSE and rows["shape_count"]["p"] < 0.05
    assert rows["palindrome"]["verdict"] == INCONCLUSIVE
    assert rows["novel_binding"]["verdict"] == COPIES and rows["novel_binding"]["k_shot"]["acc"] == 0.5
    assert rows["novel_binding_shortcut"]["verdict"] == UNUSED
    assert rows["operator_induction"]["verdict"] == INCONCLUSIVE and rows["operator_induction"]["copy_rate"] is None
    assert rows["clock_math"]["n"] == n and rows["clock_math"]["k"] == 4
    assert rows["clock_math"]["chance"] == pytest.approx(1 / 6) and rows["clock_math"]["k_shot"]["correct"] == 90


def test_the_verdict_uses_the_largest_k_and_only_paired_queries():
    recs = _records("m", "clock_math", [1] * 30, [0] * 30, k=8)
    recs += [{"model": "m", "task": "clock_math", "condition": "2-shot", "index": i, "correct": False, "shots": 2}
             for i in range(30)]
    recs = [r for r in recs if not (r["condition"] == "no-image" and r["index"] >= 20)]  # 10 unpaired queries
    (row,) = verdicts(recs)
    assert row["k"] == 8 and row["n"] == 20 and row["verdict"] == READS


def test_where_it_looks_and_the_right_demo_on_planted_records():
    from micl_probe.evaluation import right_demo, where_it_looks

    looks = {"demo_image": 0.2, "query_image": 0.3, "demo_text": 0.3, "query_text": 0.1, "special": 0.1, "other": 0.0}
    recs = [{"model": "m", "task": "novel_binding", "condition": "4-shot", "index": i, "correct": True,
             "looks_at": {k: v * (1 + (i % 2)) for k, v in looks.items()},
             "matching_demo_image": 0.10 + 0.001 * i, "other_demo_image": 0.05} for i in range(20)]
    cell = where_it_looks(recs)["m"]["4-shot"]
    assert cell["n"] == 20 and cell["demo_image"] == pytest.approx(0.2 * 1.5)
    (row,) = right_demo(recs)
    assert row["matching"] > row["other"] == pytest.approx(0.05) and row["p"] < 1e-4 and row["n"] == 20
    same = [r | {"other_demo_image": r["matching_demo_image"]} for r in recs]
    assert right_demo(same)[0]["p"] == 1.0


@pytest.mark.parametrize("name", task_names() + task_names(shortcut=True))
def test_chance_is_one_over_the_answers_the_generator_gives(name):
    n = round(1 / chance(name))
    if name == "novel_binding":  # names are drawn per episode: two names within each episode
        assert all(len({d.answer for d in e.demos} | {e.query.answer}) == n for e in sample_episodes(name, 4, 50))
        return
    answers = {e.query.answer for e in sample_episodes(name, 0, 1500, seed=2)}
    assert len(answers) <= n and len(answers) >= n - (1 if name.startswith("shape_count") else 0), sorted(answers)
    assert chance("not_a_task") is None and TASKS["clock_math"].n_answers == 6


# --- the command line -------------------------------------------------------------------------------------
@pytest.mark.parametrize("flags, says", [
    (["--n", "0"], "--n 0: give at least 1"),
    (["--batch-size", "0"], "--batch-size 0: give at least 1"),
    (["--conditions", "zero-shot+dara"], "--conditions zero-shot+dara needs --dara PATH"),
    (["--conditions", "4-shot+mtv"], "--conditions 4-shot+mtv needs --mtv MEANS HEADS"),
    (["--conditions", "4-shot+alpha=3", "--alphas", "2"], "needs --alphas 3"),
    (["--conditions", "4-shot+boost"], "unknown intervention 'boost'"),
    (["--conditions", "five-shot"], "unknown condition 'five-shot'"),
    (["--alphas", "nan"], "--alphas nan: factors must be finite numbers > 0"),
    (["--conditions", "4-shot+dara", "--dara", "nowhere/dara"], "--dara nowhere/dara: no nowhere/dara.json"),
    (["--dara", "nowhere/dara"], "--dara is given but no condition runs it: add a condition such as 4-shot+dara"),
    (["--conditions", "4-shot+alpha=2", "--alphas", "2", "3"], "--alphas 3: no condition runs it"),
    (["--model", "organism:nope"], "--model organism:nope: no shipped organism 'nope'; shipped: organism:"),
    (["--model", "/no/such/folder"], "cannot load '/no/such/folder'"),
    (["--tasks", "sudoku"], "--tasks: unknown task 'sudoku'; tasks: operator_induction, clock_math"),
    (["--tasks", "vlicl:/no/where/clevr"], "--tasks: task 'vlicl:/no/where/clevr': no folder '/no/where/clevr'"),
    (["--max-new-tokens", "0"], "--max-new-tokens 0: generate at least 1 token"),
    (["--device", "cuda"], "--device cuda: this machine has no CUDA device"),
])
def test_cli_mistakes_end_in_one_line_naming_the_flag(flags, says, tmp_path, capsys):
    from micl_probe.attn_report import main

    out = tmp_path / "report"
    with pytest.raises(SystemExit) as exit_:
        main(["--tasks", "outlier", "--n", "2", "--out", str(out)] + flags)
    err = capsys.readouterr().err.strip()
    assert exit_.value.code == 2 and says in err and len(err.splitlines()) == 1, err
    assert "Traceback" not in err and not out.exists()  # nothing half-written


def test_cli_out_that_is_a_file_and_debug(tmp_path, capsys):
    from micl_probe.attn_report import UsageError, main

    taken = tmp_path / "taken"
    taken.write_text("x")
    with pytest.raises(SystemExit):
        main(["--out", str(taken)])
    assert "is a file: name a folder" in capsys.readouterr().err
    with pytest.raises(UsageError, match="--n 0"):  # --debug: the exception itself, with its traceback
        main(["--n", "0", "--debug", "--out", str(tmp_path / "r")])


def test_report_opens_with_the_verdicts(tmp_path):
    """The default conditions give a verdict per model and task, first in report.md and in results.json."""
    from micl_probe.attn_report import main

    out = tmp_path / "r"
    main(["--model", "organism:true-micl", "--tasks", "clock_math", "--n", "12", "--no-attention",
          "--out", str(out)])
    results = json.loads((out / "results.json").read_text())
    (row,) = results["verdicts"]
    assert row["task"] == "clock_math" and row["k"] == 4 and row["n"] == 12 and "McNemar" in results["verdict_rule"]
    md = (out / "report.md").read_text()
    assert md.index("## Verdict") < md.index("## Accuracy and attention") and f"**{row['verdict']}**" in md
    assert "## Where the answer looks" not in md  # --no-attention: no attention tables
    assert "nan" not in md and "attention not captured: --no-attention" in md  # no "vis nan" cells


def test_heads_table_splits_right_from_wrong_and_says_no_test():
    """A head whose demo-image attention goes with a wrong answer (rho < 0) is not listed as predicting a right one;
    a cell where every answer is right (or wrong) says "no test", as its figure does, not "separated"."""
    from micl_probe.viz.report import heads_markdown

    base = {"model": "m", "task": "t", "condition": "4-shot", "n": 40, "spearman": {"rho": 0.1, "p": 0.5},
            "logistic": {"slope": 0.2, "slope_se": 0.1, "separated": False}}
    heads = [{"layer": 3, "head": 2, "rho": -0.45, "q": 0.01}, {"layer": 1, "head": 0, "rho": 0.5, "q": 0.01}]
    md = heads_markdown([base | {"correct": 20, "heads": heads},
                         base | {"task": "u", "correct": 40, "heads": [],
                                 "logistic": {"slope": float("nan"), "slope_se": float("nan"), "separated": True}}])
    (mixed,) = [line for line in md if line.startswith("| m | t |")]
    cells = [c.strip() for c in mixed.split("|")]
    assert cells[7] == "L1H0 (+0.50)" and cells[8] == "L3H2 (-0.45)"
    (all_right,) = [line for line in md if line.startswith("| m | u |")]
    assert "no test: all right" in all_right and "separated" not in all_right
