"""The organisms' model cards: accuracy per task x condition with 95% CIs, written into README.md.

Every number on a card is computed by the harness (`evaluation.run`) on the queries the default report uses:
conditions of up to 4 shots share one draw of 4 demos per query ("k-shot" keeps the first k, "no-image" all 4
without their images, "zero-shot" none), as `python -m micl_probe.attn_report` draws them, so the card and the
report agree query for query; a longer k-shot column is its own draw of k demos (other queries). Recompute a saved
organism's card from its weights: `python -m micl_probe.organisms.card FOLDER`.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch

from ..core import Loaded
from ..core.provenance import write_atomic
from ..evaluation import Accuracy, RunConfig, run
from ..evaluation.conditions import pool_size
from ..tasks import TRUE_MICL_TASKS, query_episodes, task_names
from . import SHIPPED

CONDITIONS = ("zero-shot", "no-image", "1-shot", "2-shot", "4-shot", "8-shot")
SHARE_TASKS = ("novel_binding", "clock_math", "palindrome")  # the tasks whose demo images true-micl reads
RULE_TASKS = [t for t in TRUE_MICL_TASKS if t != "novel_binding"]  # binding: names bound per episode, one rule
REPORT_POOL = ["4-shot"]  # in every short run: its pool is the default report's (4 demos), whatever else is asked


def card_records(loaded: Loaded, tasks, conditions, n: int = 200, seed: int = 0, batch_size: int = 50,
                 attention: bool = False) -> list[dict]:
    """The harness's records behind a card: the conditions of up to 4 shots in one run whose pool is the default
    report's (so its 4-shot and no-image are the report's episodes), each longer k-shot in a run of its own."""
    cfg = RunConfig(n=n, seed=seed, batch_size=batch_size, attention=attention, progress=False)
    short = [c for c in conditions if pool_size([c])[1] <= 4]
    records = []
    if short:
        both = list(dict.fromkeys(short + REPORT_POOL))
        records += [r for r in run(loaded, list(tasks), both, cfg) if r["condition"] in short]
    for cond in conditions:
        if cond not in short:
            records += list(run(loaded, list(tasks), [cond], cfg))
    return records


def _cells(records) -> dict:
    """{task: {condition: {"correct": k, "n": n, "right": "0110…"}}} ("right": each query's verdict, by index)."""
    table: dict = {}
    for r in sorted(records, key=lambda r: r["index"]):
        cell = table.setdefault(r["task"], {}).setdefault(r["condition"], {"correct": 0, "n": 0, "right": ""})
        cell["correct"] += int(r["correct"])
        cell["n"] += 1
        cell["right"] += "1" if r["correct"] else "0"
    return table


@torch.no_grad()
def evaluate_organism(loaded: Loaded, n: int = 200, tasks=None, conditions=CONDITIONS, seed: int = 0,
                      batch_size: int = 50) -> dict:
    """{task: {condition: {"correct": k, "n": n, "right": per-query 0/1}}} on the harness's `n` query episodes per
    task (`card_records`)."""
    tasks = tasks or task_names() + task_names(shortcut=True)
    cells = _cells(card_records(loaded, tasks, conditions, n, seed, batch_size))
    return {t: {c: cells[t][c] for c in conditions} for t in tasks}


@torch.no_grad()
def evaluate_rules(loaded: Loaded, n: int = 200, tasks=None, shots: int = 4, seed: int = 0,
                   batch_size: int = 50) -> dict:
    """{task: {rule: {"correct": k, "n": m}}}: the card's `shots`-shot queries (the same episodes as its column)
    split by each episode's hidden rule. A model that reads the rule from the demos is right under every rule; one
    that ignores them answers by one default rule, right under it and near chance under the others. The average
    over rules (the card's column) cannot tell the two apart."""
    tasks = tasks or RULE_TASKS
    return _by_rule(card_records(loaded, tasks, [f"{shots}-shot"], n, seed, batch_size), tasks, f"{shots}-shot")


def _by_rule(records, tasks, condition: str) -> dict:
    """`evaluate_rules`' table from harness records of `condition` (each record's rule from the harness's own draw
    of its queries)."""
    table = {}
    for task in tasks:
        mine = [r for r in records if r["task"] == task and r["condition"] == condition]
        episodes = query_episodes(task, mine[0]["pool"], len(mine), mine[0]["seed"])
        rules = [episodes[r["index"]].meta["rule"] for r in mine]
        table[task] = {q: {"correct": sum(int(r["correct"]) for r, p in zip(mine, rules) if p == q),
                           "n": rules.count(q)} for q in sorted(set(rules))}
    return table


@torch.no_grad()
def evaluate_demo_share(loaded: Loaded, n: int = 50, tasks=SHARE_TASKS, shots: int = 4, seed: int = 0) -> dict:
    """{task: share}: the answer row's attention on the demos' images (`AttentionMass.where_it_looks`, averaged
    over every measured layer and head), averaged over the first `n` of the card's `shots`-shot queries."""
    records = card_records(loaded, tasks, [f"{shots}-shot"], n, seed, attention=True)
    return {t: float(np.mean([r["looks_at"]["demo_image"] for r in records if r["task"] == t])) for t in tasks}


SETUP_KEYS = ("task_content", "seed", "metric", "prompt_format", "style", "instruction", "system", "record_format")


@torch.no_grad()
def evaluate_card(loaded: Loaded, n: int = 200, seed: int = 0, share_n: int = 50) -> dict:
    """Every number of a card, from the harness: "evaluation" (every task x CONDITIONS), "by_rule", "demo_image_share"
    and "evaluation_setup" (the records' settings that decide the queries and scoring: two cards are compared only
    when theirs match)."""
    tasks = task_names() + task_names(shortcut=True)
    records = card_records(loaded, tasks, CONDITIONS, n, seed)
    cells = _cells(records)
    setup = {k: records[0][k] for k in SETUP_KEYS} | {"n": n, "protocol": "evaluation.run"}
    share_n = min(share_n, n)
    return {"evaluation": {t: {c: cells[t][c] for c in CONDITIONS} for t in tasks},
            "by_rule": _by_rule(records, RULE_TASKS, "4-shot"),  # the 4-shot column's records, split by rule
            "demo_image_share": {"n": share_n, "tasks": evaluate_demo_share(loaded, n=share_n, seed=seed)},
            "evaluation_setup": setup}


def gap_closed(base: dict, organism: dict, task: str, resamples: int = 2000, seed: int = 0):
    """(ratio, low, high): how far `organism`'s 4-shot accuracy fell from `base`'s toward its own no-image control,
    (base 4-shot − 4-shot) / (base 4-shot − no-image), with a 95% percentile interval from a paired bootstrap over
    the queries both cards share (their "right" strings, query by query). None when the cards carry no per-query
    verdicts."""
    try:
        cols = [np.array([c == "1" for c in card[task][cond]["right"]], float)
                for card, cond in ((base, "4-shot"), (organism, "4-shot"), (organism, "no-image"))]
    except KeyError:
        return None
    if len({len(c) for c in cols}) != 1:
        return None
    ratio = lambda b, o, blind: (b.mean(-1) - o.mean(-1)) / (b.mean(-1) - blind.mean(-1))
    idx = np.random.default_rng(seed).integers(0, len(cols[0]), (resamples, len(cols[0])))
    with np.errstate(divide="ignore", invalid="ignore"):
        boot = ratio(*(c[idx] for c in cols))
    boot = boot[np.isfinite(boot)]
    return float(ratio(*cols)), float(np.quantile(boot, 0.025)), float(np.quantile(boot, 0.975))


def table_markdown(evaluation: dict) -> str:
    head = "| task | " + " | ".join(CONDITIONS) + " |\n|---|" + "---|" * len(CONDITIONS) + "\n"
    rows = []
    for task, res in evaluation.items():
        cells = [str(Accuracy(res[c]["correct"], res[c]["n"])) if c in res else "" for c in CONDITIONS]
        rows.append(f"| {task} | " + " | ".join(cells) + " |")
    return head + "\n".join(rows) + "\n"


def write_card(folder: str | Path) -> Path:
    folder = Path(folder)
    meta = json.loads((folder / "micl_probe.json").read_text())
    r = meta["recipe"]
    stages = meta.get("stages", [])
    resumed = any("resumed_from" in st for st in stages)
    mix = lambda m: ", ".join(f"{k} {v:.3f}" for k, v in m.items())
    decoder = json.loads((folder / "config.json").read_text())["text_config"]
    text = [f"# Model organism `{folder.name}`", ""]
    if meta.get("status"):
        text += [f"**Status:** {meta['status']}", ""]
    text += [r.get("description", ""), "",
             "Tiny LLaVA (CLIP vision tower 2x64-d on 8x8 patches of 32x32 images, Llama decoder "
             f"{decoder['num_hidden_layers']}x{decoder['hidden_size']}-d, {decoder['num_attention_heads']} heads / "
             f"{decoder['num_key_value_heads']} KV heads), "
             + (f"the shipped `{meta['base']}` organism continued" if meta.get("base") else "trained from scratch")
             + f" by `python -m micl_probe.organisms.train --recipe {r['name']}`"
             + (" and continued with `--resume`" if resumed else "") + ".", "",
             f"- steps: {r['steps']}, batch {r['batch']}, AdamW lr {r['lr']} (warm-up {r['warmup']}, cosine), "
             f"grad-clip 1.0, demos per episode {r['shots'][0]}..{r['shots'][1]}, seed {r['seed']}",
             f"- training time: {meta['train_minutes']} min on {meta['threads']} CPU thread(s)"
             + (f" ({meta['note']})" if meta.get("note") else "")
             + ("" if not stages else " (" + " + ".join(f"{s['steps']} steps / {s['minutes']} min"
                                                        for s in stages) + (", resumed)" if resumed else ")")),
             f"- task mix: {mix(r['mix'])}"
             + (f"; first {r['warm_frac']:.0%} of steps: {', '.join(r['warm_mix'])} only, "
                f"{r['warm_shots'][0]}..{r['warm_shots'][1]} demos" if r.get("warm_mix") else "")]
    later, k = r.get("then"), 2
    while later:  # the recipe's further stages: each a fresh warm-up + cosine schedule on its own mix
        text.append(f"- stage {k}: {later['steps']} more steps (fresh schedule, seed {later['seed'] + 1}), "
                    f"task mix: {mix(later['mix'])}")
        later, k = later.get("then"), k + 1
    text.append("")
    if "evaluation" in meta:
        n = next(iter(next(iter(meta["evaluation"].values())).values()))["n"]
        setup = meta.get("evaluation_setup", {})
        text += ["## Accuracy (%, 95% Wilson CI), greedy exact match", "",
                 f"{n} query episodes per task, seed {setup.get('seed', 0)}, scored by the harness "
                 "(`evaluation.run`): the default report's queries, query for query. Every condition up to 4 shots "
                 "uses the same queries (k-shot: the first k of 4 demos; no-image: the 4 demos without their "
                 "images); 8-shot is its own draw of 8 demos. Novel binding's demos show both classes in every "
                 "prefix of two or more.", "",
                 table_markdown(meta["evaluation"])]
        gaps = _gap_lines(folder, meta)
        if gaps:
            text += gaps
    if "by_rule" in meta:
        text += ["## 4-shot accuracy by hidden rule (%, 95% Wilson CI)", "",
                 "The 4-shot column's queries split by the episode's rule: reading the rule from the demos means "
                 "being right under every rule, not just under a default one.", "",
                 "| task | by rule |", "|---|---|"]
        for task, rules in meta["by_rule"].items():
            text.append(f"| {task} | " + ", ".join(f"{r} {Accuracy(c['correct'], c['n'])} (n={c['n']})"
                                                   for r, c in rules.items()) + " |")
        text.append("")
    if "demo_image_share" in meta:
        share = meta["demo_image_share"]
        text += ["## Where the answer looks (4-shot)", "",
                 f"Share of the answer position's attention on the demos' images, averaged over the first "
                 f"{share['n']} of the 4-shot queries, every layer and head (`card.evaluate_demo_share`).", "",
                 "| " + " | ".join(share["tasks"]) + " |", "|" + "---|" * len(share["tasks"]),
                 "| " + " | ".join(f"{100 * v:.1f}%" for v in share["tasks"].values()) + " |", ""]
    if meta.get("log"):
        text += ["## Training log (4-shot / no-image accuracy on 64 probe episodes)", "",
                 "| step | loss | minutes | probes |", "|---|---|---|---|"]
        for e in meta["log"]:
            probes = ", ".join(f"{k} {a:.2f}/{b:.2f}" for k, (a, b) in e["probe_4shot_vs_noimage"].items())
            text.append(f"| {e['step']} | {e['loss']:.3f} | {e['minutes']:.1f} | {probes} |")
    path = folder / "README.md"
    path.write_text("\n".join(text) + "\n")
    return path


def _gap_lines(folder: Path, meta: dict) -> list[str]:
    """A continued organism's "gap closed" table against its base's card (when both were scored on the same
    queries: equal `evaluation_setup`), with paired bootstrap intervals (`gap_closed`)."""
    base_name = meta.get("base")
    path = SHIPPED / base_name / "micl_probe.json" if base_name else None
    if not path or not path.is_file():
        return []
    base = json.loads(path.read_text())
    if base.get("evaluation_setup") != meta.get("evaluation_setup"):
        return ["## Against its base", "", f"Not compared with `{base_name}`: the two cards were scored on different "
                "queries or settings (`evaluation_setup`); recompute both with `python -m micl_probe.organisms.card`.",
                ""]
    lines = ["## Against its base", "",
             f"Gap closed = (`{base_name}` 4-shot − this 4-shot) / (`{base_name}` 4-shot − this no-image): 0 = as "
             f"`{base_name}`, 1 = down to its own no-image control; 95% paired bootstrap interval over the shared "
             "queries.", "", f"| task | `{base_name}` 4-shot | 4-shot | no-image | gap closed |",
             "|---|---|---|---|---|"]
    cell = lambda card, task, c: str(Accuracy(card[task][c]["correct"], card[task][c]["n"]))
    for task in SHARE_TASKS:
        found = gap_closed(base["evaluation"], meta["evaluation"], task)
        if found is None:
            continue
        lines.append(f"| {task} | {cell(base['evaluation'], task, '4-shot')} | "
                     f"{cell(meta['evaluation'], task, '4-shot')} | {cell(meta['evaluation'], task, 'no-image')} | "
                     f"{found[0]:.2f} [{found[1]:.2f}, {found[2]:.2f}] |")
    return lines + [""]


def main(argv=None):
    from ..core.errors import Parser, UsageError, one_line_errors
    from ..core.loading import load

    ap = Parser(prog="python -m micl_probe.organisms.card", description="Recompute saved organisms' cards from "
                "their weights with the harness (micl_probe.json's evaluation, by_rule, demo_image_share; README.md).")
    ap.add_argument("folders", nargs="+", help="organism folders (micl_probe/organisms/shipped/NAME for a shipped one)")
    ap.add_argument("--n", type=int, default=200, help="queries per task and condition (default: %(default)s)")
    args = ap.parse_args(argv)
    with one_line_errors():
        for folder in map(Path, args.folders):
            if not (folder / "micl_probe.json").is_file():
                raise UsageError(f"{folder}: no organism here (no micl_probe.json); give a folder written by "
                                 "python -m micl_probe.organisms.train")
        if args.n < 1:
            raise UsageError(f"--n {args.n}: give a whole number >= 1")
    for folder in map(Path, args.folders):  # a base before the organisms continued from it
        meta = json.loads((folder / "micl_probe.json").read_text())
        meta |= evaluate_card(load(str(folder)), n=args.n)
        write_atomic(folder / "micl_probe.json", json.dumps(meta, indent=1))
        write_card(folder)
        print(f"recomputed {folder / 'README.md'}")


if __name__ == "__main__":
    main()
