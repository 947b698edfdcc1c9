"""Evaluation harness: a model over a task's queries under named conditions, with attention at the answer row.

    records = run(loaded, ["novel_binding"], ["4-shot", "no-image"], RunConfig(n=100),
                  results="runs/x/results.jsonl")

Each record (one episode): model, task, condition, index, correct, prediction, answer, and the attention summary at
the answer position (means over layers and heads unless named): visual share, per layer and per head, the image
share of each demo and of the query, the demo images' share per head, where the answer looks (`looks_at`: demo
images, query image, demo text, query text, special tokens, other) and, for novel binding, the image share of a demo
of the query's class against that of a demo of the other class (`matching_demo_image`, `other_demo_image`, per
demo). Records are appended to a JSON-lines file as each chunk finishes, their per-head arrays to columnar files
beside it (`evaluation.store`); a rerun with the same file skips what is already there, so a crash or Ctrl-C loses
no finished episode. A record is reused only when everything that made it matches (`provenance`): it carries the
weights' fingerprint, the prompt writer's digest, the task's content digest, the episode pool, seed, style,
instruction, metric, generation length, capture, shots and the intervention's artifact digest, and a digest of
all of them ("setup") that is part of its key. A run with other settings into the same file computes its own
records beside the old ones; `attn_report` refuses such a folder (its `manifest.json` names the settings).

Tasks are procedural names or benchmark folders (`truemicl:PATH/TASK`, `vlicl:PATH/TASK`: `tasks.query_episodes`).
Each task is scored by a metric (`evaluation.metrics`; `RunConfig.metric`, default per task: teacher-forced for the
procedural tasks, VL-ICL's rules for vlicl:, normalised exact match for truemicl:): teacher-forced scores the gold
answer in one forward pass; every other metric scores a greedy generation (`scoring.generate_answers`) and the
attention is read at the last prompt token, the row that produces the first answer token. The metric, prompt style
and instruction are recorded in every record and are part of what a rerun matches. "prediction" is the text the
metric scored (the whole generation; teacher-forced: the first greedy token).

Conditions (`evaluation.conditions`): "zero-shot", "no-image", "<k>-shot", "retrieved-<k>-shot",
"shuffled-answers". Any condition can take an intervention: "<condition>+<name>" runs it inside
`interventions[name]`, a `layouts -> context manager` factory, e.g.

    interventions = {"dara": dara.on(model, kernel="eager"), "mtv": mtv.injection(loaded, tv.mean, heads)}
    interventions |= alpha_sweep(loaded, alphas=(0.5, 2, 4))   # "alpha=0.5", … (micl_probe.interventions)
    interventions["ko"] = {"clock_math": knockout(loaded, heads_a), "outlier": knockout(loaded, heads_b)}  # per task
    run(loaded, ["outlier"], ["4-shot", "4-shot+dara", "zero-shot+mtv", "4-shot+alpha=2"], interventions=…)

(attention under an intervention is measured on HF's eager weights, so a DARA must use kernel="eager" there).
Teacher-forced scoring (`scoring.greedy_exact_match`) is identical to generate + exact match of the trained answer
format: each batch is prepared once and run once, the forward pass that scores it also measures its attention
(`score_and_capture`).
"""

from __future__ import annotations

import contextlib
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from tqdm.auto import tqdm

from ..core import Loaded, prepared, within
from ..core.episode import STYLES
from ..core.prefix import one_demo_set, split_prefix
from ..core.provenance import digest, file_digest, folder_digest, intervention_fingerprint, weights_fingerprint
from ..measure import score_and_capture
from ..tasks import check_task, matching_demos, parse_task, query_episodes, retrieval_episodes
from .conditions import condition_episode, parse_condition, pool_size
from .copying import copy_fields, demo_labels, first_label_token, first_tokens
from .metrics import METRICS, correct, default_metric
from .scoring import generate_tokens, generation_kwargs, greedy_exact_match, verdicts_from_logits
from .store import (
    RECORD_KEY,
    Records,
    append_records,
    attach_heads,
    compact_heads,
    done_keys,
    end_line,
    load_records,
    merge_shards,
    record_key,
    shard_file,
    shard_files,
    writing,
)

_GENERATOR = file_digest(Path(__file__).parent.parent / "tasks" / "synthetic.py")  # the procedural tasks' source
RECORD_FORMAT = 2  # the fields a record holds: raised when the harness writes a field older records lack (2: copying)


@dataclass(frozen=True)
class RunConfig:
    """Settings of a harness run."""

    n: int = 100  # query episodes per task and condition
    seed: int = 0  # seed of the query episodes
    batch_size: int = 25  # episodes per forward pass
    attention: bool = True  # record the attention summary at the answer row
    progress: bool = True  # tqdm progress bar
    metric: str | None = None  # evaluation.metrics name; None: each task's default (metrics.default_metric)
    max_new_tokens: int = 16  # generation length for the generated-answer metrics
    style: str = "turns"  # prompt style: "turns" (a chat turn per demo) | "single" (VL-ICL's one user turn)
    instruction: str = "nothing"  # nothing | concise | detailed (VL-ICL's, for vlicl: tasks) | any text
    system: str = ""  # a system message (the chat template's system turn; "" for none)
    shard: tuple[int, int] = (0, 1)  # (rank, world): this process runs every world-th batch job, from the rank-th
    fixed_demos: bool = False  # one demo set per task and seed for every query (its prefix runs once a batch)

    def __post_init__(self):
        for name, least in (("n", 1), ("batch_size", 1), ("seed", 0)):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < least:
                raise ValueError(f"RunConfig({name}={value!r}): give a whole number >= {least}")
        rank, world = self.shard
        if not 0 <= rank < world:
            raise ValueError(f"shard {rank}/{world}: the rank must be in 0..{world - 1}")
        if self.metric is not None and self.metric not in METRICS:
            raise ValueError(f"unknown metric {self.metric!r}; metrics: {', '.join(METRICS)}")
        if self.style not in STYLES:
            raise ValueError(f"unknown prompt style {self.style!r}; styles: {', '.join(STYLES)}")
        if self.max_new_tokens < 1:
            raise ValueError("max_new_tokens must be at least 1")
        if not isinstance(self.fixed_demos, bool):
            raise ValueError(f"RunConfig(fixed_demos={self.fixed_demos!r}): give True or False")


def run(loaded: Loaded, tasks: list[str], conditions: list[str], config: RunConfig | None = None,
        results: str | Path | None = None, interventions: dict[str, Callable] | None = None) -> Records:
    """Score `loaded` on `config.n` seeded query episodes per task under each condition (see module docstring);
    records are appended to `results` (JSON lines) as each batch finishes, and a rerun skips what is there, but only
    the records whose provenance (`provenance`: every setting, the weights, the task's content, the shots, the
    intervention's artifact) matches this run's. One process writes a results file at a time.

    Sharded (`config.shard = (rank, world)`, world > 1): this process runs batch jobs rank, rank + world, … and
    appends them to its own shard file beside `results` (`shard_file`), skipping what `results` or an earlier
    shard holds; it returns its own records. An unsharded run first merges any shard files into `results`
    (`merge_shards`), so running the same command unsharded after the shards collects them."""
    cfg = config or RunConfig()
    interventions = interventions or {}
    if not tasks:
        raise ValueError("no tasks given: name at least one (micl_probe.tasks.task_names() lists them)")
    if not conditions:
        raise ValueError("no conditions given: name at least one, e.g. ['zero-shot', 'no-image', '4-shot']")
    for task in tasks:
        check_task(task)
    for c in conditions:
        name = parse_condition(c)[1]
        if name and name not in interventions:
            raise ValueError(f"condition {c!r} names intervention {name!r}; given: {sorted(interventions) or 'none'}")
        if cfg.fixed_demos and c.startswith("retrieved-"):
            raise ValueError(f"condition {c!r} picks each query's own demos by similarity, which fixed demos rule out: "
                             "drop fixed_demos (--fixed-demos) or the retrieved condition")
    results = Path(results) if results else None
    rank, world = cfg.shard
    if world > 1 and results is None:
        raise ValueError("a sharded run writes a shard file beside its results file: pass results=")
    target = shard_file(results, rank, world) if results and world > 1 else results
    with writing(target) if target else contextlib.nullcontext():
        return _run(loaded, tasks, conditions, cfg, results, target, interventions)


def provenance(loaded: Loaded, task: str, conditions: list[str], cfg: RunConfig, weights: str | None = None) -> dict:
    """What determines a task's records besides the condition, its intervention, the index and the shots: the
    weights, the prompt's writer (chat template or declared format, digested), the task's content (a folder's files,
    or the procedural generator's source), the episode pool (the most demos any condition draws: it changes every
    drawn episode), the seed, style, instruction, system message, metric, generation length (generated metrics
    only), whether the attention is captured, and the harness's record format (a record older code wrote lacks
    fields, so it is recomputed, not reused)."""
    metric = cfg.metric or default_metric(task)
    folder = parse_task(task) if ":" in task else None
    return {"weights": weights or weights_fingerprint(loaded.model), "prompt_format": loaded.prompt_format,
            "task_content": folder_digest(folder.folder) if folder else f"procedural:{_GENERATOR}",
            "pool": pool_size(conditions)[1], "seed": cfg.seed, "style": cfg.style, "instruction": cfg.instruction,
            "system": cfg.system, "metric": metric,
            "max_new_tokens": None if metric == "teacher-forced" else cfg.max_new_tokens,
            "capture": "nnsight" if cfg.attention else None, "record_format": RECORD_FORMAT,
            **({"demos": "fixed"} if cfg.fixed_demos else {})}  # other queries: part of the key only when set


def _run(loaded, tasks, conditions, cfg, results, target, interventions) -> list[dict]:
    rank, world = cfg.shard
    if results:
        results.parent.mkdir(parents=True, exist_ok=True)
    if results and world == 1:
        merge_shards(results)
    done = done_keys(results)
    if world > 1:  # this shard's own file, and those of earlier runs split another way (not being written now)
        for other in [target] + [f for f in shard_files(results) if
                                 not f.name.endswith(f"of{world}{results.suffix}")]:
            done |= done_keys(other)
    if target:
        end_line(target)
    k_default, k_max = pool_size(conditions)
    weights = weights_fingerprint(loaded.model)
    prov = {t: provenance(loaded, t, conditions, cfg, weights) for t in tasks}
    factory = {(t, c): _for_task(interventions, parse_condition(c)[1], t) for t in tasks for c in conditions}
    artifact = {k: intervention_fingerprint(f) if f else None
                for k, f in factory.items()}  # each intervention's artifact (`core.provenance.tagged`)
    draw = {"instruction": cfg.instruction, "style": cfg.style, "system": cfg.system}
    base_of = {t: query_episodes(t, k_max, cfg.n, cfg.seed, **draw, fixed_demos=cfg.fixed_demos) for t in tasks}
    retrieved: dict[tuple, list | None] = {}  # (task, k) -> a folder task's episodes retrieved from its support set
    records, wanted = [], set()
    jobs = [(t, c, i) for t in tasks for c in conditions for i in range(0, len(base_of[t]), cfg.batch_size)]
    jobs = jobs[rank::world]  # the same batches as one process would run: the same numbers
    for task, cond, start in tqdm(jobs, desc=f"evaluate {loaded.name}", disable=not cfg.progress, mininterval=1):
        base_cond, _, name = cond.partition("+")
        pool = None
        if base_cond.startswith("retrieved-"):
            k = int(base_cond.split("-")[1])
            if (task, k) not in retrieved:
                retrieved[task, k] = retrieval_episodes(task, k, cfg.n, **draw)
            pool = retrieved[task, k]
        fields = {**prov[task], "intervention": artifact[task, cond]}
        todo = []
        for i in range(start, min(len(base_of[task]), start + cfg.batch_size)):
            ep = pool[i] if pool is not None else condition_episode(base_of[task][i], base_cond, k_default)
            r = {"model": loaded.name, "task": task, "condition": cond, "index": i, "shots": ep.shots, **fields}
            r["setup"] = digest({k: v for k, v in r.items() if k not in RECORD_KEY})
            wanted.add(record_key(r))
            if record_key(r) not in done:
                todo.append((r, ep))
        if not todo:
            continue
        eps = [ep for _, ep in todo]
        chunk = _score_chunk(loaded, eps, factory[task, cond], fields["metric"], cfg, task)
        for r, (key, ep) in zip(chunk, todo):
            r.update({**key, "answer": ep.query.answer})
        if target:
            append_records(target, chunk)  # per-head arrays into the columnar files, the rest as JSON lines
        records.extend(chunk)
    if target:
        compact_heads(target)
        records = [r for r in load_records(target) if record_key(r) in wanted] if target.is_file() else []
        attach_heads(target, records)  # the per-head arrays of these records only
    order = {(t, c): n for n, (t, c) in enumerate((t, c) for t in tasks for c in conditions)}
    return Records(sorted(records, key=lambda r: (order[r["task"], r["condition"]], r["index"])), source=target)


def _for_task(interventions: dict, name: str, task: str):
    """The intervention `name` runs on `task`: `interventions[name]`, or its entry for the task when it is a
    {task: intervention} dict (one chosen per task: heads, layers, means); None without a name."""
    if not name:
        return None
    found = interventions[name]
    if isinstance(found, dict):
        if task not in found:
            raise ValueError(f"intervention {name!r} has no entry for task {task!r} (it has {sorted(found)})")
        return found[task]
    return found


def _score_chunk(loaded: Loaded, eps: list, intervention, metric: str, cfg: RunConfig, task: str) -> list[dict]:
    """Score a chunk of episodes under `metric`: a partial record per episode (correct, prediction, attention
    summary). Teacher-forced: one forward scores and measures. Generated: one `generate`, whose prefill (the answer
    row: the last prompt token) is measured in the same pass; under an intervention, a forward for the attention
    (the eager path) and a generation."""
    am, tok = None, loaded.processor.tokenizer
    if metric == "teacher-forced":
        # episodes with one demo set may share a prefix (not under an intervention, which runs whole prompts);
        # right-padded, the shared prefix's layouts are the batch's own
        same = intervention is None and one_demo_set(eps)
        batch = prepared(intervention, loaded.prepare_batch(eps, with_answer=True,
                                                            padding_side="right" if same else None))
        prefix = _shared_prefix(loaded, batch, cfg, with_answer=True) if same else None
        offset = prefix.length if prefix else 0
        if cfg.attention:  # one forward pass scores the batch and measures its attention
            am, logits = score_and_capture(loaded, batch, intervention=intervention, prefix=prefix)
            verdicts, first = verdicts_from_logits(logits, batch, offset)
        elif prefix is not None:
            verdicts, first = verdicts_from_logits(prefix.suffix_logits(loaded.model), batch, offset)
        else:
            with within(intervention, batch.layouts) as kwargs:
                verdicts, first = greedy_exact_match(loaded.model, batch, **kwargs)
        chunk = [{"correct": bool(v), "prediction": tok.decode([int(t)]).strip()} for v, t in zip(verdicts, first)]
        firsts = [first_label_token([int(t)], tok) for t in first]
    else:
        batch = prepared(intervention, loaded.prepare_batch(eps, padding_side="left"))
        prompt = batch.inputs["input_ids"].shape[1]
        same = intervention is None and one_demo_set(eps)
        prefix = _shared_prefix(loaded, batch, cfg, with_answer=False) if same else None
        if cfg.attention and intervention is None:  # ONE pass over the prompt: generate's prefill is measured
            gen = generation_kwargs(loaded, cfg.max_new_tokens)
            am, sequences = score_and_capture(loaded, batch, generate=gen, prefix=prefix)
            generated = sequences[:, prompt:]
        else:
            if cfg.attention:  # under an intervention: a forward for the attention (eager), then the generation
                am, _ = score_and_capture(loaded, batch, intervention=intervention)
            with within(intervention, batch.layouts) as kwargs:  # from the shared prefix's cache, where one is
                generated = generate_tokens(loaded, batch, cfg.max_new_tokens, prefix=prefix, **kwargs)
        texts = tok.batch_decode(generated, skip_special_tokens=True)
        chunk = [{"correct": correct(metric, t, ep.query.answer, task), "prediction": t}  # the text scored
                 for t, ep in zip(texts, eps)]
        firsts = first_tokens(generated, tok)
    for b, (r, ep) in enumerate(zip(chunk, eps)):  # copying: is the answer one of the demos'? (`copying`)
        r.update(copy_fields(ep, r["prediction"], firsts[b], demo_labels(batch, b, tok), metric))
    if am is not None:
        _add_attention(chunk, am, eps)
    return chunk


def _shared_prefix(loaded: Loaded, batch, cfg: RunConfig, with_answer: bool):
    """`core.prefix.split_prefix` of the batch, or None; with fixed demos, a one-line warning saying why not."""
    prefix, why = split_prefix(loaded, batch, with_answer=with_answer)
    if prefix is None and cfg.fixed_demos and why != "a single episode":
        warnings.warn(f"fixed demos: each prompt runs whole here ({why})", stacklevel=3)
    return prefix


def _add_attention(chunk: list[dict], am, episodes) -> None:
    """The attention summary at the answer row, into each record of `chunk`. Means over layers skip the layers a
    hybrid decoder does not measure (NaN in the per-layer and per-head lists)."""
    visual = am.visual_share()  # [episode, layer, head]
    per_demo, owners = am.demo_image_share()
    special = am.special_share()
    parts, names = am.where_it_looks()  # [episode, layer, head, part]
    for j, (r, ep) in enumerate(zip(chunk, episodes)):
        r["visual_share"] = float(visual[j].nanmean())
        r["visual_share_by_layer"] = visual[j].mean(-1).tolist()  # NaN: not measured
        r["visual_share_by_head"] = visual[j].tolist()  # [layer][head]
        r["image_share"] = {o: float(per_demo[j, ..., k].nanmean()) for k, o in enumerate(owners)
                            if o == "query" or int(o[4:]) < ep.shots}
        demos = [k for k, o in enumerate(owners) if o != "query" and int(o[4:]) < ep.shots]
        r["demo_image_by_head"] = per_demo[j][..., demos].sum(-1).tolist()  # [layer][head]
        r["special_share"] = float(special[j].nanmean())
        r["looks_at"] = {name: float(parts[j, ..., k].nanmean()) for k, name in enumerate(names)}
        match = matching_demos(ep) if any(d.images for d in ep.demos) else None
        if match is not None and 0 < len(match) < ep.shots:  # novel binding: the demos of the query's class
            r["matching_demo_image"] = sum(r["image_share"][f"demo{i}"] for i in match) / len(match)
            r["other_demo_image"] = sum(r["image_share"][f"demo{i}"] for i in range(ep.shots) if i not in match) \
                / (ep.shots - len(match))


def accuracy_table(records: list[dict]) -> dict:
    """{model: {task: {condition: {"correct": k, "n": n, "visual_share": mean, "demo_image": mean, "copied": c,
    "copy_n": m, "copy_rate": c / m}}}}: the shares are the answer row's on all image tokens and on the demo images
    (NaN where attention was not captured); copied: how many of the m records with demos repeat a demo's answer
    (`copying`; copy_rate NaN without demos)."""
    table: dict = {}
    for r in records:
        cell = table.setdefault(r["model"], {}).setdefault(r["task"], {}).setdefault(
            r["condition"], {"correct": 0, "n": 0, "visual_sum": 0.0, "demo_sum": 0.0, "copied": 0, "copy_n": 0})
        cell["correct"] += int(r["correct"])
        cell["n"] += 1
        if r.get("copied") is not None:
            cell["copied"] += int(r["copied"])
            cell["copy_n"] += 1
        cell["visual_sum"] += r.get("visual_share", float("nan"))
        cell["demo_sum"] += (r.get("looks_at") or {}).get("demo_image", float("nan"))
    for model in table.values():
        for task in model.values():
            for cell in task.values():
                cell["visual_share"] = cell.pop("visual_sum") / cell["n"]
                cell["demo_image"] = cell.pop("demo_sum") / cell["n"]
                cell["copy_rate"] = cell["copied"] / cell["copy_n"] if cell["copy_n"] else float("nan")
    return table
