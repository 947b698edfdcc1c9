"""The DARA and MTV experiments on the shipped organisms: tables (JSON + Markdown) and figures.

    python -m experiments.interventions dara --out figures   # figures/dara_*.png|pdf, figures/dara_results.json
    python -m experiments.interventions mtv --out figures    # figures/mtv_*.png|pdf, figures/mtv_results.json

An experiment driver (run from the repository root), not part of the library: it only calls micl_probe's API.

Every number is on the "query" split (n per cell, 95% Wilson CI); interventions learn on "support" and early-stop
on "val". Fixed seeds throughout.
"""

from __future__ import annotations

import argparse
from dataclasses import dataclass, replace
from pathlib import Path

from micl_probe import capture_attention
from micl_probe.evaluation import Accuracy, mcnemar_p, score, task_verdicts
from micl_probe.interventions import FitConfig, fixed_alpha, train_dara, train_lora
from micl_probe.interventions.mtv import (
    extract,
    function_vector,
    indirect_effects,
    injection,
    locate,
    residual_on,
    task_vector,
)
from micl_probe.tasks import rule_episodes, rule_stream, sample_episodes
from micl_probe.viz import plots

from .common import acc, load_model, write_outputs


def _image_shares(loaded, episodes, intervention=None) -> tuple[float, float]:
    """Mean attention of the answer position on image tokens, (all images, the query's own), from one capture."""
    am = capture_attention(loaded, episodes, progress=False, intervention=intervention)
    per_owner, owners = am.demo_image_share()  # [episode, layer, head, owner]
    return float(am.visual_share().mean()), float(per_owner[..., owners.index("query")].mean())


# --- DARA ------------------------------------------------------------------------------------------------
DARA_TASKS = ("novel_binding", "clock_math", "palindrome")  # the tasks whose demo images true-micl reads


def dara_experiment(organisms=("partial",), tasks=DARA_TASKS, shots: int = 4, n: int = 200, steps: int = 150,
                    alphas=(0.5, 1, 2, 4, 8), out: str | Path = "figures", seed: int = 0, layers=(0,)) -> dict:
    out = Path(out)
    layers = tuple(layers)
    results = {"shots": shots, "n": n, "steps": steps, "layers": list(layers), "organisms": {}}
    for name in organisms:
        loaded = load_model(name)
        name = Path(name).name
        res = results["organisms"][name] = {}
        for task in tasks:
            r = res[task] = {}
            r["zero-shot"] = acc(task_verdicts(loaded, task, shots, n, seed, condition=lambda e: e.zero_shot()))
            r["no-image"] = acc(task_verdicts(loaded, task, shots, n, seed,
                                               condition=lambda e: e.without_demo_images()))
            k_shot = task_verdicts(loaded, task, shots, n, seed)
            r["k-shot"] = acc(k_shot)
            fit = FitConfig(steps=steps, seed=seed)
            dara, hist = train_dara(loaded, task, shots, layers=layers, fit_config=fit)
            with_dara = task_verdicts(loaded, task, shots, n, seed, intervention=dara.on(loaded.model))
            r["dara"] = acc(with_dara)
            r["dara_vs_k_shot_p"] = mcnemar_p(k_shot, with_dara)  # paired: the same query episodes
            r["dara_params"] = dara.n_params
            r["dara_alpha"] = dara.alpha.detach().tolist()  # [DARA layer, head, image]
            r["dara_history"] = hist
            dara.save(out / "artifacts" / f"dara_{name}_{task}", organism=name)
            peft_model, hist_lora = train_lora(loaded, task, shots, layers=layers, fit_config=fit)
            r["lora"] = acc(task_verdicts(replace(loaded, model=peft_model), task, shots, n, seed))
            r["lora_params"] = sum(p.numel() for nm, p in peft_model.named_parameters() if "lora_" in nm)
            loaded.model = peft_model.unload()
            probe = sample_episodes(task, shots, 40, seed=seed, split="query")
            r["image_share_before"], r["query_image_share_before"] = _image_shares(loaded, probe)
            r["image_share_after"], r["query_image_share_after"] = _image_shares(
                loaded, probe, dara.on(loaded.model, kernel="eager"))
            r["sweep"] = []
            for a in alphas:
                fixed = fixed_alpha(loaded, shots, a, layers)
                r["sweep"].append({"alpha": a, **acc(task_verdicts(loaded, task, shots, n, seed,
                                                                     intervention=fixed.on(loaded.model))),
                                   "image_share": _image_shares(loaded, probe[:20],
                                                                fixed.on(loaded.model, kernel="eager"))[0]})
            print(f"{name} {task}: {shots}-shot {r['k-shot']['acc']:.2f} no-image {r['no-image']['acc']:.2f} "
                  f"DARA {r['dara']['acc']:.2f} LoRA {r['lora']['acc']:.2f} image share "
                  f"{r['image_share_before']:.3f} -> {r['image_share_after']:.3f}", flush=True)
    write_outputs(out, "dara", results, {"dara_accuracy": plots.dara_table_figure(results),
                                         "dara_factors": plots.dara_factor_heatmaps(results),
                                         "dara_alpha_sweep": plots.dara_sweep(results)}, dara_markdown(results))
    return results


def dara_markdown(results: dict) -> str:
    """The TrueMICL-style table per organism. Image shares are the answer position's attention on image tokens,
    averaged over layers and heads: on all images, on the query's, and on the demos' (all minus the query's)."""
    def before_after(r, key):
        if key == "demo_image_share":  # all images minus the query image
            if "query_image_share_before" not in r:
                return "–"
            b, a = (r[f"image_share_{t}"] - r[f"query_image_share_{t}"] for t in ("before", "after"))
        elif f"{key}_before" not in r:
            return "–"
        else:
            b, a = r[f"{key}_before"], r[f"{key}_after"]
        return f"{100 * b:.1f}% → {100 * a:.1f}%"

    lines = []
    for name, tasks in results["organisms"].items():
        lines += [f"### {name} ({results['shots']}-shot, DARA and LoRA on decoder {plots.layers_label(results)}, "
                  f"n = {results['n']} per cell)", "",
                  f"| task | zero-shot | no-image | random {results['shots']}-shot | LoRA | DARA "
                  "| DARA vs k-shot (McNemar p) | image share (before → after DARA) "
                  "| on the demo images | on the query image |",
                  "|---|---|---|---|---|---|---|---|---|---|"]
        for task, r in tasks.items():
            cells = [str(Accuracy(r[k]["correct"], r[k]["n"])) for k in ("zero-shot", "no-image", "k-shot", "lora",
                                                                          "dara")]
            cells.append(f"{r['dara_vs_k_shot_p']:.2g}" if "dara_vs_k_shot_p" in r else "–")
            cells += [before_after(r, k) for k in ("image_share", "demo_image_share", "query_image_share")]
            lines.append(f"| {task} | " + " | ".join(cells) + " |")
        r0 = next(iter(tasks.values()))
        lines += ["", f"Parameters: DARA {r0['dara_params']}, LoRA {r0['lora_params']} "
                  f"(1/{r0['lora_params'] / r0['dara_params']:.0f}).", ""]
    return "\n".join(lines)


# --- MTV -------------------------------------------------------------------------------------------------
# a fixed rule per task: what the vector carries. true-micl reads these three tasks from the demos' images; without
# demos it answers clock math by the red hand and palindrome by the shift rule (100% and 98% zero-shot under those
# rules, 0% under the others), so the vector must carry the other rule. Novel binding's names are bound anew in
# every episode: there is no fixed rule for a vector to carry, which is the point of including it.
MTV_TASKS = {"true-micl": {"novel_binding": "bound", "clock_math": "blue", "palindrome": "mirror"}}


@dataclass(frozen=True)
class MTVSettings:
    """Sizes of one MTV experiment (per organism and task)."""

    n: int = 200  # query episodes per cell
    n_shots: int = 4  # shots of the prompts the MTV is extracted from
    n_prompts: int = 100  # prompts the MTV is averaged over
    reinforce_steps: int = 600
    seed: int = 0
    scaling_prompts: tuple = (1, 4, 16, 64)  # MTV from this many prompts, for the scaling figure
    icl_shots: tuple = (1, 2, 4, 8, 16, 32)  # k-shot ICL, for the scaling figure


def score_dict(loaded, episodes, intervention=None, batch: int = 25) -> dict:
    return score(loaded, episodes, intervention, batch).as_dict()


def mtv_experiment(organisms=tuple(MTV_TASKS), settings: MTVSettings | None = None, out: str | Path = "figures",
                   tasks: dict | None = None) -> dict:
    """MTV, FV and TV next to 0/4/8-shot ICL for each organism's tasks (`tasks`: {organism: {task: rule}}, default
    MTV_TASKS), and the many-shot comparison: MTV from T prompts (N x T shots compressed) vs k-shot ICL up to 32
    shots (~820 of the organisms' 1,024 tokens)."""
    out = Path(out)
    tasks = tasks or MTV_TASKS
    st = settings or MTVSettings()
    results = {"n": st.n, "n_shots": st.n_shots, "n_prompts": st.n_prompts, "organisms": {}}
    for organism in organisms:
        name = Path(organism).name
        if name not in tasks:
            raise ValueError(f"no MTV tasks for {organism!r}: pass tasks={{{name!r}: {{task: rule}}}} (tasks are "
                             f"given for {sorted(tasks)})")
        loaded = load_model(organism)
        results["organisms"][name] = {"tasks": {task: _mtv_task(loaded, name, task, rule, st, out)
                                                for task, rule in tasks[name].items()}}
    write_outputs(out, "mtv", results, {"mtv_accuracy": plots.mtv_table_figure(results),
                                        "mtv_scaling": plots.mtv_scaling(results)}, mtv_markdown(results))
    return results


def _mtv_task(loaded, organism: str, task: str, rule: str, st: MTVSettings, out: Path) -> dict:
    L = loaded.adapter.n_layers(loaded.model)
    n, n_shots, n_prompts, seed = st.n, st.n_shots, st.n_prompts, st.seed
    def stream(shots, split, s):
        return rule_stream(task, rule, shots, split, s)

    r = {"rule": rule}
    queries = rule_episodes(task, rule, max(tuple(st.icl_shots) + (8,)), n, seed=seed)
    zero = [e.zero_shot() for e in queries]
    val = [e.zero_shot() for e in rule_episodes(task, rule, 0, 50, "val", seed)]
    for k in (0, 4, 8):
        r[f"{k}-shot"] = score_dict(loaded, [e.with_shots(k) for e in queries])
    mtv = extract(loaded, stream(n_shots, "support", seed), n_prompts=n_prompts, meta={"rule": rule})
    mask = locate(loaded, mtv, (e.zero_shot() for e in stream(0, "support", seed + 1)), val,
                  steps=st.reinforce_steps, seed=seed)
    mtv.save(out / "artifacts" / f"mtv_{organism}_{task}")
    mask.save(out / "artifacts" / f"mtv_mask_{organism}_{task}")
    r["mtv"] = score_dict(loaded, zero, injection(loaded, mtv.mean, mask.values))
    r["mtv_heads"] = mask.values.nonzero().tolist()
    r["mtv_p"] = mask.meta["p"]
    fv = function_vector(loaded, mtv, indirect_effects(loaded, mtv, val), top_k=4)
    fv_layer = max(0, L // 3)
    r["fv"] = score_dict(loaded, zero, residual_on(loaded, fv_layer, fv.values, "add"))
    r["fv_heads"], r["fv_layer"] = fv.meta["heads"], fv_layer
    tv_scores = {}
    for layer in range(L - 1):  # pick the task-vector layer on the val split
        tv = task_vector(loaded, stream(n_shots, "support", seed), layer, n_prompts=n_prompts)
        tv_scores[layer] = (tv, score_dict(loaded, val, residual_on(loaded, layer, tv.values, "replace")))
    best = max(tv_scores, key=lambda la: tv_scores[la][1]["acc"])
    r["tv"] = score_dict(loaded, zero, residual_on(loaded, best, tv_scores[best][0].values, "replace"))
    r["tv_layer"] = best
    # scaling: MTV from more prompts (shots compressed = n_shots x T) vs k-shot ICL
    r["scaling_mtv"] = []
    for T in st.scaling_prompts:
        m_t = extract(loaded, stream(n_shots, "support", seed + 2), n_prompts=T)
        r["scaling_mtv"].append({"shots_compressed": n_shots * T,
                                 **score_dict(loaded, zero, injection(loaded, m_t.mean, mask.values))})
    r["scaling_icl"] = [{"shots": k, **score_dict(loaded, [e.with_shots(k) for e in queries], batch=10)}
                        for k in st.icl_shots]
    # does the vector change where the model looks? query's attention on its own image, zero-shot
    probe = zero[:40]
    r["query_image_share"] = _image_shares(loaded, probe)[0]  # zero-shot: the query's is the only image
    r["query_image_share_mtv"] = _image_shares(loaded, probe, injection(loaded, mtv.mean, mask.values))[0]
    print(f"{organism} {task}: 0-shot {r['0-shot']['acc']:.2f} 4-shot {r['4-shot']['acc']:.2f} "
          f"MTV {r['mtv']['acc']:.2f} FV {r['fv']['acc']:.2f} TV {r['tv']['acc']:.2f}", flush=True)
    return r


def mtv_markdown(results: dict) -> str:
    cols = ["0-shot", "4-shot", "8-shot", "mtv", "fv", "tv"]
    lines = []
    for organism, res in results["organisms"].items():
        lines += [f"### {organism} (n = {results['n']} per cell; MTV from {results['n_prompts']} prompts of "
                  f"{results['n_shots']} shots)", "", "| task (rule) | 0-shot | 4-shot ICL | 8-shot ICL | MTV (0-shot) "
                  "| FV (0-shot) | TV (0-shot) | query image share 0-shot → +MTV |",
                  "|---|---|---|---|---|---|---|---|"]
        for task, r in res["tasks"].items():
            cells = [str(Accuracy(r[c]["correct"], r[c]["n"])) for c in cols]
            lines.append(f"| {task} ({r['rule']}) | " + " | ".join(cells) +
                         f" | {100 * r['query_image_share']:.1f}% → {100 * r['query_image_share_mtv']:.1f}% |")
        lines.append("")
    return "\n".join(lines)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("experiment", choices=["dara", "mtv"])
    ap.add_argument("--out", default="figures")
    ap.add_argument("--n", type=int, default=200)
    ap.add_argument("--organisms", nargs="+", help="default: partial (dara); true-micl (mtv)")
    ap.add_argument("--layers", nargs="+", type=int, default=[0], help="DARA layers (default: the first)")
    ap.add_argument("--shots", type=int, default=4, help="DARA: demos per prompt")
    ap.add_argument("--steps", type=int, default=150, help="DARA / LoRA training steps")
    ap.add_argument("--tasks", nargs="+", default=list(DARA_TASKS), help="DARA tasks")
    args = ap.parse_args(argv)
    if args.experiment == "dara":
        dara_experiment(organisms=args.organisms or ["partial"], out=args.out, n=args.n, layers=args.layers,
                        shots=args.shots, steps=args.steps, tasks=args.tasks)
    else:
        mtv_experiment(organisms=args.organisms or tuple(MTV_TASKS), settings=MTVSettings(n=args.n), out=args.out)


if __name__ == "__main__":
    main()
