"""The heads that do MICL, on the true-micl organism: which heads' attention to the demo images predicts a correct
answer, and does the model need them?

    python -m experiments.micl_heads --out figures   # figures/micl_heads_*.png|pdf, micl_heads_results.json, .md

An experiment driver (run from the repository root), not part of the library: it only calls micl_probe's API.

1. Predict. For each task, query episodes at 1, 2, 4 and 8 shots (`n` each, the "query" split). Per head, the answer
   row's attention on the demo images that carry the answer — the demos of the query's class (novel binding; episodes
   without one are left out), every demo image (clock math, palindrome) — against a correct answer: Spearman rho
   within each shot count where both outcomes occur at least `min_each` times, averaged over those shot counts. The
   `k` heads with the largest average are the task's "MICL heads" (the tasks need not share them). For comparison,
   two other selections of `k` heads: the ones that put the most attention on those images at 4 shots
   ("most-attending"), and the ones whose ablation alone costs the most 4-shot accuracy on the "support" split
   ("causal", chosen on other episodes than the ones they are tested on; the single-head map is a figure).
2. Ablate. Each selected head's output at the answer position (the o_proj input at the last prompt token, where
   the answer is read out) is replaced by its mean over the task's 4-shot query set (`mtv.extract` over those
   episodes, `mtv.injection`). 4-shot accuracy with the MICL heads ablated, against `draws` random sets of as many
   heads, next to plain 4-shot and the no-image control; the shortcut twin (answer fixed by the query image alone),
   with the same heads ablated, is the perception control.
3. Patch. A misleading run (novel binding: the two names swapped between the classes in the demos; clock math and
   palindrome: the same images with the demos answered under the other rule) gets the right run's head outputs at
   the answer position for the selected heads (`mtv.inject` with per-row values): how often it then gives the right
   run's answer, against the same random head sets.
"""

from __future__ import annotations

import argparse
import contextlib
from dataclasses import replace
from pathlib import Path

import numpy as np
import scipy.stats as sps
import torch
from tqdm.auto import tqdm

from micl_probe.evaluation import Accuracy, which_correct
from micl_probe.evaluation.scoring import verdicts_from_logits
from micl_probe.interventions.mtv import extract, head_outputs, inject, injection
from micl_probe.measure import score_and_capture
from micl_probe.tasks import TASKS, make_episode, matching_demos, sample_episodes
from micl_probe.viz import plots

from .common import acc, load_model, write_outputs

HEAD_TASKS = ("novel_binding", "clock_math", "palindrome")
PREDICT_SHOTS = (1, 2, 4, 8)


def target_share_and_verdicts(loaded, episodes, batch: int = 25) -> tuple[np.ndarray, np.ndarray]:
    """([episode, layer, head] attention of the answer row on the demo images that carry the answer, bool[episode]
    correct), for the episodes that have such demos: the query class's demos for novel binding (episodes without one
    left out), every demo otherwise. One forward pass a batch scores and measures (`score_and_capture`)."""
    rows, right = [], []
    for i in range(0, len(episodes), batch):
        b = loaded.prepare_batch(episodes[i:i + batch], with_answer=True)
        am, logits = score_and_capture(loaded, b)
        per_owner, owners = am.demo_image_share()
        correct = verdicts_from_logits(logits, b)[0]
        for j, e in enumerate(b.episodes):
            match = matching_demos(e)
            demos = range(e.shots) if match is None else match
            if demos:
                rows.append(per_owner[j][..., [owners.index(f"demo{d}") for d in demos]].sum(-1).numpy())
                right.append(bool(correct[j]))
    return np.array(rows), np.array(right)


def head_rho(share: np.ndarray, correct: np.ndarray, min_each: int) -> np.ndarray | None:
    """[layer, head] Spearman rho of each head's share against correctness; None when either outcome occurs fewer
    than `min_each` times (nothing to predict)."""
    if min(correct.sum(), (~correct).sum()) < min_each:
        return None
    rho = np.zeros(share.shape[1:])
    for lh in np.ndindex(*rho.shape):
        x = share[(slice(None), *lh)]
        rho[lh] = sps.spearmanr(x, correct).statistic if x.std() > 0 else 0.0
    return rho


def predictive_heads(loaded, tasks, n: int, seed: int, min_each: int = 5) -> dict:
    out = {}
    for task in tqdm(tasks, desc="predict", mininterval=2):
        base = sample_episodes(task, max(PREDICT_SHOTS), n, seed=seed, split="query")
        per_k = {}
        for k in PREDICT_SHOTS:
            episodes = [e.with_shots(k) for e in base]
            share, correct = target_share_and_verdicts(loaded, episodes)
            rho = head_rho(share, correct, min_each)
            per_k[k] = {"n": len(correct), "correct": int(correct.sum()), "share": share.mean(0).tolist(),
                        "rho": None if rho is None else rho.tolist()}
        used = [np.array(v["rho"]) for v in per_k.values() if v["rho"] is not None]
        out[task] = {"by_shots": per_k, "rho": np.mean(used, 0).tolist() if used else None}
    return out


def single_head_ablation(loaded, task: str, n: int, seed: int) -> np.ndarray:
    """[layer, head] 4-shot accuracy on `n` "support" episodes with that one head mean-ablated (means over the same
    episodes)."""
    L, H = loaded.adapter.n_layers(loaded.model), loaded.adapter.n_heads(loaded.model)
    four = [e.with_shots(4) for e in sample_episodes(task, 4, n, seed=seed, split="support")]
    means = extract(loaded, iter(four), n_prompts=len(four)).mean
    out = np.zeros((L, H))
    for layer, head in np.ndindex(L, H):
        out[layer, head] = which_correct(loaded, four, injection(loaded, means, _mask([(layer, head)], (L, H)))
                                         ).float().mean().item()
    return out


def _mask(heads, shape) -> torch.Tensor:
    m = torch.zeros(shape, dtype=torch.bool)
    for layer, head in heads:
        m[layer, head] = True
    return m


def misleading(episode, rng_state, task: str):
    """The same query under misleading demos: binding's two names swapped in the demos (the query's answer becomes
    the other name); a rule task redrawn from the same random state under its other rule (same images)."""
    if task == "novel_binding":
        a, b = sorted({d.answer for d in episode.demos})
        swap = {a: b, b: a}
        demos = tuple(replace(d, answer=swap[d.answer]) for d in episode.demos)
        return replace(episode, demos=demos, query=replace(episode.query, answer=swap[episode.query.answer]))
    rng = np.random.default_rng()
    rng.bit_generator.state = rng_state
    other = next(r for r in TASKS[task].rules if r != episode.meta["rule"])
    return make_episode(task, episode.shots, rng, rule=other)


def patching_pairs(task: str, n: int, shots: int, seed: int):
    """[(right, misleading)] of `n` episodes whose right and misleading answers differ."""
    rng = np.random.default_rng([seed, 4242])
    pairs = []
    while len(pairs) < n:
        state = rng.bit_generator.state
        rule = str(rng.choice(TASKS[task].rules)) if task != "novel_binding" else None
        right = make_episode(task, shots, rng, rule=rule)
        wrong = misleading(right, state, task)
        if wrong.query.answer != right.query.answer:
            pairs.append((right, wrong))
    return pairs


def patching_batches(loaded, pairs, batch: int = 25) -> list:
    """[(misleading batch asked for the right run's answer, the right run's head outputs at its answer position)] per
    chunk of `pairs`: what every patching mask reuses (the right run is the same whatever the mask)."""
    out = []
    for i in range(0, len(pairs), batch):
        chunk = pairs[i:i + batch]
        asked = loaded.prepare_batch([replace(w, query=replace(w.query, answer=r.query.answer)) for r, w in chunk],
                                     with_answer=True)
        right = loaded.prepare_batch([r for r, _ in chunk])
        out.append((asked, head_outputs(loaded, right, [lay.answer_position for lay in right.layouts])))
    return out


@torch.no_grad()
def patched_verdicts(loaded, batches, mask: torch.Tensor | None) -> torch.Tensor:
    """bool[pair]: does the misleading run give the right run's answer, with the `mask` heads' outputs at the answer
    position taken from the right run (no patch when `mask` is None)? `batches` from `patching_batches`."""
    out = []
    for asked, values in batches:
        with inject(loaded, values, mask, asked.layouts) if mask is not None else contextlib.nullcontext():
            out.append(verdicts_from_logits(loaded.model(**asked.inputs).logits, asked)[0])
    return torch.cat(out)


def micl_heads_experiment(organism: str = "true-micl", tasks=HEAD_TASKS, n: int = 200, k: int = 3, draws: int = 50,
                          seed: int = 0, out: str | Path = "figures", min_each: int = 5) -> dict:
    out = Path(out)
    loaded = load_model(organism)
    L, H = loaded.adapter.n_layers(loaded.model), loaded.adapter.n_heads(loaded.model)
    res = {"organism": organism, "n": n, "k": k, "draws": draws, "seed": seed,
           "predict": predictive_heads(loaded, tasks, n, seed, min_each)}
    silent = [t for t, v in res["predict"].items() if v["rho"] is None]
    if silent:
        raise SystemExit(f"{', '.join(silent)}: fewer than {min_each} right or wrong answers at every one of "
                         f"{PREDICT_SHOTS} shots among {n} queries: raise --n or lower --min-each")
    top = lambda rho: [tuple(int(i) for i in np.unravel_index(j, (L, H))) for j in np.argsort(-np.array(rho),
                                                                                          axis=None)[:k]]
    res["single_ablation"] = {t: single_head_ablation(loaded, t, n, seed).tolist() for t in tasks}
    selections = {"micl": {t: top(v["rho"]) for t, v in res["predict"].items()},
                  "attending": {t: top(v["by_shots"][4]["share"]) for t, v in res["predict"].items()},
                  "causal": {t: top(-np.array(res["single_ablation"][t])) for t in tasks}}
    for name, key in (("micl", "heads"), ("attending", "attending_heads"), ("causal", "causal_heads")):
        res[key] = {t: [list(h) for h in hs] for t, hs in selections[name].items()}
    rng = np.random.default_rng([seed, 77])
    random_sets = [[tuple(int(i) for i in np.unravel_index(j, (L, H))) for j in rng.choice(L * H, k, replace=False)]
                   for _ in range(draws)]
    res["random_heads"] = [[list(h) for h in s] for s in random_sets]
    res["tasks"] = {}
    for task in tqdm(tasks, desc="ablate and patch", mininterval=2):
        r = res["tasks"][task] = {}
        four = [e.with_shots(4) for e in sample_episodes(task, 4, n, seed=seed, split="query")]
        means = extract(loaded, iter(four), n_prompts=len(four))
        r["4-shot"] = acc(which_correct(loaded, four))
        r["no-image"] = acc(which_correct(loaded, [e.without_demo_images() for e in four]))
        for name, chosen in selections.items():
            r[f"ablate_{name}"] = acc(which_correct(loaded, four, injection(loaded, means.mean,
                                                                            _mask(chosen[task], (L, H)))))
        r["ablate_random"] = [acc(which_correct(loaded, four, injection(loaded, means.mean, _mask(s, (L, H)))))
                              for s in random_sets]
        twin = sample_episodes(task + "_shortcut", 4, n, seed=seed, split="query")
        twin_means = extract(loaded, iter(twin), n_prompts=len(twin))
        r["twin_4-shot"] = acc(which_correct(loaded, twin))
        for name, chosen in selections.items():
            r[f"twin_ablate_{name}"] = acc(which_correct(loaded, twin, injection(loaded, twin_means.mean,
                                                                                  _mask(chosen[task], (L, H)))))
        batches = patching_batches(loaded, patching_pairs(task, n, 4, seed))
        r["misleading"] = acc(patched_verdicts(loaded, batches, None))
        for name, chosen in selections.items():
            r[f"patch_{name}"] = acc(patched_verdicts(loaded, batches, _mask(chosen[task], (L, H))))
        r["patch_random"] = [acc(patched_verdicts(loaded, batches, _mask(s, (L, H)))) for s in random_sets]
        rand = [a["acc"] for a in r["ablate_random"]]
        print(f"{task}: 4-shot {r['4-shot']['acc']:.2f} no-image {r['no-image']['acc']:.2f} MICL heads ablated "
              f"{r['ablate_micl']['acc']:.2f} random {np.median(rand):.2f} [{min(rand):.2f}, {max(rand):.2f}]; "
              f"patched {r['patch_micl']['acc']:.2f} vs misleading {r['misleading']['acc']:.2f}", flush=True)
    write_outputs(out, "micl_heads", res, {"micl_heads_predict": plots.micl_head_scores(res),
                                           "micl_heads_single": plots.micl_single_head_ablation(res),
                                           "micl_heads_ablation": plots.micl_head_effects(res)},
                  micl_heads_markdown(res))
    return res


def micl_heads_markdown(res: dict) -> str:
    name = lambda hs: ", ".join(f"L{la}H{h}" for la, h in hs)
    span = lambda v: f"{100 * np.median(v):.1f} [{100 * v.min():.1f}, {100 * v.max():.1f}]"
    a = lambda c: str(Accuracy(c["correct"], c["n"]))
    sel = {"micl": ("MICL heads (predictive)", res["heads"]), "attending": ("most-attending", res["attending_heads"]),
           "causal": ("causal (chosen on support)", res["causal_heads"])}
    lines = [f"### The MICL heads of {res['organism']} (n = {res['n']} per cell; random: {res['draws']} draws of "
             f"{res['k']} heads)", "",
             "Ablation: 4-shot accuracy with the heads' outputs at the answer position replaced by their mean over the "
             "query set. Patching: a misleading run given the right run's head outputs at the answer position; the "
             "share of queries that then give the right run's answer. \"Random ≤\": the fraction of random head sets "
             "whose ablation leaves accuracy at or below this set's (small: it matters more than random heads).", "",
             "| task | 4-shot | no-image | misleading demos: right answer | random heads ablated: median [min, max] "
             "| random heads patched: median [min, max] |", "|---|---|---|---|---|---|"]
    for task, r in res["tasks"].items():
        rand = np.array([c["acc"] for c in r["ablate_random"]])
        prand = np.array([c["acc"] for c in r["patch_random"]])
        lines.append(f"| {task} | {a(r['4-shot'])} | {a(r['no-image'])} | {a(r['misleading'])} | {span(rand)} "
                     f"| {span(prand)} |")
    lines += ["", "| task | selection | heads | ablated | random ≤ | patched | shortcut twin 4-shot → ablated |",
              "|---|---|---|---|---|---|---|"]
    for task, r in res["tasks"].items():
        rand = np.array([c["acc"] for c in r["ablate_random"]])
        for key, (label, heads) in sel.items():
            lines.append(f"| {task} | {label} | {name(heads[task])} | {a(r['ablate_' + key])} "
                         f"| {np.mean(rand <= r['ablate_' + key]['acc']):.2f} | {a(r['patch_' + key])} "
                         f"| {100 * r['twin_4-shot']['acc']:.1f} → {100 * r['twin_ablate_' + key]['acc']:.1f} |")
    lines += ["", "The shortcut twin (its answer fixed by the query image alone) is the perception control: ablating "
              "heads that carry the demos' information should leave it where it was."]
    return "\n".join(lines) + "\n"


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", default="figures")
    ap.add_argument("--organism", default="true-micl")
    ap.add_argument("--n", type=int, default=200)
    ap.add_argument("--k", type=int, default=3, help="MICL heads to select")
    ap.add_argument("--draws", type=int, default=50, help="random head sets")
    ap.add_argument("--min-each", type=int, default=5, help="right and wrong answers a shot count needs to count")
    args = ap.parse_args(argv)
    micl_heads_experiment(args.organism, n=args.n, k=args.k, draws=args.draws, out=args.out, min_each=args.min_each)


if __name__ == "__main__":
    main()
