"""Accuracy vs visual attention: does looking at the images go with getting the answer right?

    stats = accuracy_vs_attention(records)            # records from micl_probe.evaluation.harness
    stats["spearman"], stats["logistic"], stats["bins"]
    heads = head_predictiveness(records)              # [layer, head] Spearman rho of visual share vs correctness
    tests = head_tests(records)                       # one task and condition: rho, p and BH q per head
    where_it_looks(records)                           # {model: {condition: {demo_image, query_image, …}}}
    right_demo(records)                               # novel binding: the query's class's demos vs the others
"""

from __future__ import annotations

import numpy as np

from .compare import intervention_effects
from .harness import accuracy_table
from .statistics import wilson
from .verdicts import verdicts


def separated(x: np.ndarray, y: np.ndarray) -> bool:
    """Whether a threshold on x splits the outcomes (complete or quasi-complete separation, or one outcome only):
    then the maximum-likelihood slope does not exist (Newton's method walks off to infinity)."""
    y = y.astype(bool)
    if y.all() or not y.any():
        return True
    return bool(x[y].min() >= x[~y].max() or x[y].max() <= x[~y].min())


def _logistic(x: np.ndarray, y: np.ndarray, iters: int = 100) -> dict:
    """Maximum-likelihood logistic regression y ~ sigmoid(a + b x) by Newton's method, with the slope's standard
    error from the inverse Fisher information. Under separation there is no estimate: intercept, slope and its
    standard error are NaN and "separated" is True."""
    if separated(x, y):
        return {"intercept": float("nan"), "slope": float("nan"), "slope_se": float("nan"), "separated": True}
    X = np.stack([np.ones_like(x), x], 1)
    w = np.zeros(2)
    for _ in range(iters):
        p = 1 / (1 + np.exp(-X @ w))
        g = X.T @ (y - p)
        h = X.T @ (X * (p * (1 - p))[:, None]) + 1e-6 * np.eye(2)
        step = np.linalg.solve(h, g)
        w += step
        if np.abs(step).max() < 1e-8:
            break
    p = 1 / (1 + np.exp(-X @ w))
    cov = np.linalg.inv(X.T @ (X * (p * (1 - p))[:, None]))
    return {"intercept": float(w[0]), "slope": float(w[1]), "slope_se": float(np.sqrt(cov[1, 1])),
            "separated": False}


def accuracy_vs_attention(records: list[dict], key: str = "visual_share", n_bins: int = 5) -> dict:
    """Binned accuracy (quantile bins of `key`, 95% Wilson CI), logistic fit and Spearman correlation."""
    from scipy import stats as sps  # scipy only when a test runs

    x = np.array([r[key] for r in records], dtype=float)
    y = np.array([r["correct"] for r in records], dtype=float)
    edges = np.unique(np.quantile(x, np.linspace(0, 1, n_bins + 1)))
    bins = []
    for lo, hi in zip(edges[:-1], edges[1:]):
        sel = (x >= lo) & ((x < hi) | (hi == edges[-1]))
        k, n = int(y[sel].sum()), int(sel.sum())
        if n:
            bins.append({"lo": float(lo), "hi": float(hi), "x": float(x[sel].mean()), "acc": k / n, "n": n,
                         "ci": wilson(k, n)})
    rho, p = sps.spearmanr(x, y) if len(set(y)) > 1 and len(set(x)) > 1 else (float("nan"), float("nan"))
    return {"n": len(x), "bins": bins, "spearman": {"rho": float(rho), "p": float(p)},
            "logistic": _logistic((x - x.mean()) / (x.std() + 1e-12), y) | {"x_mean": float(x.mean()),
                                                                              "x_std": float(x.std())}}


def head_predictiveness(records: list[dict]) -> np.ndarray:
    """[layer, head] Spearman rho between each head's visual share and correctness, across episodes (`head_tests`
    on all image tokens)."""
    return np.array(head_tests(records, "visual_share_by_head")["rho"])


def where_it_looks(records: list[dict]) -> dict:
    """{model: {condition: {part: mean share, "n": episodes}}}: where the answer row's attention goes (demo images,
    query image, demo text, query text, special tokens, other), mean over the records' tasks and episodes."""
    out: dict = {}
    for r in records:
        if "looks_at" not in r:
            continue
        cell = out.setdefault(r["model"], {}).setdefault(r["condition"], {"n": 0})
        cell["n"] += 1
        for part, v in r["looks_at"].items():
            cell[part] = cell.get(part, 0.0) + v
    for conditions in out.values():
        for cell in conditions.values():
            for part in cell:
                if part != "n":
                    cell[part] /= cell["n"]
    return out


def right_demo(records: list[dict]) -> list[dict]:
    """Does the answer row look at the right demo? Per model, task and condition with a matching demo (novel
    binding): the mean image share of a demo of the query's class against a demo of the other class, and the
    Wilcoxon signed-rank p of the paired episodes (two-sided)."""
    from scipy import stats as sps  # scipy only when a test runs

    cells: dict = {}
    for r in records:
        if "matching_demo_image" in r:
            cells.setdefault((r["model"], r["task"], r["condition"]), []).append(
                (r["matching_demo_image"], r["other_demo_image"]))
    rows = []
    for (model, task, condition), pairs in cells.items():
        match, other = np.array(pairs).T
        p = float(sps.wilcoxon(match, other).pvalue) if len(pairs) > 1 and np.any(match != other) else 1.0
        rows.append({"model": model, "task": task, "condition": condition, "n": len(pairs),
                     "matching": float(match.mean()), "other": float(other.mean()), "p": p})
    return rows


def summarise(records: list[dict]) -> dict:
    """Everything the report shows, computed from harness records: {"verdicts", "accuracy", "where_it_looks",
    "right_demo", "heads", "partly_measured", "interventions"} (the attention parts empty when the records carry no
    attention; "interventions": `compare.intervention_effects`; "partly_measured": {model: [layer, ...]} for hybrid
    decoders, whose other layers have no softmax attention)."""
    out = {"verdicts": verdicts(records), "accuracy": accuracy_table(records), "where_it_looks": {},
           "right_demo": [], "heads": [], "partly_measured": {}, "interventions": intervention_effects(records)}
    if records and "visual_share" in records[0]:
        for r in records:
            by_layer = r.get("visual_share_by_layer") or []
            if any(v != v for v in by_layer) and r["model"] not in out["partly_measured"]:
                out["partly_measured"][r["model"]] = [i for i, v in enumerate(by_layer) if v == v]
        out["where_it_looks"] = where_it_looks(records)
        out["right_demo"] = right_demo(records)
        out["heads"] = heads_that_predict(records)
    return out


def head_tests(records: list[dict], key: str = "demo_image_by_head") -> dict:
    """Per head, Spearman rho between its attention `key` [layer][head] and correctness across `records` (one
    task and condition: never pool them), its p-value and the Benjamini-Hochberg q over all heads:
    {"rho", "p", "q": [layer][head] lists (NaN where a head's attention or the outcome does not vary), "n"}."""
    from scipy import stats as sps  # scipy only when a test runs

    v = np.array([r[key] for r in records], dtype=float)  # [episode, layer, head]
    y = np.array([r["correct"] for r in records], dtype=float)
    rho, p = np.full(v.shape[1:], np.nan), np.full(v.shape[1:], np.nan)
    if len(set(y)) > 1:
        for layer in range(v.shape[1]):
            for head in range(v.shape[2]):
                if v[:, layer, head].std() > 0:
                    rho[layer, head], p[layer, head] = sps.spearmanr(v[:, layer, head], y)
    q = np.full(p.shape, np.nan)
    tested = ~np.isnan(p)
    if tested.any():
        q[tested] = sps.false_discovery_control(p[tested], method="bh")
    return {"rho": rho.tolist(), "p": p.tolist(), "q": q.tolist(), "n": len(records)}


def heads_that_predict(records: list[dict], fdr: float = 0.05) -> list[dict]:
    """Per model, task and condition with demo images: does demo-image attention go with a correct answer?
    The mean demo-image share against correctness (Spearman; logistic slope per s.d. with its standard error, or
    "separated"), and the heads whose demo-image attention predicts it at a false discovery rate of `fdr`
    (Benjamini-Hochberg over all heads)."""
    from scipy import stats as sps  # scipy only when a test runs

    cells: dict = {}
    for r in records:
        if "demo_image_by_head" in r and r.get("shots", 0) > 0:
            cells.setdefault((r["model"], r["task"], r["condition"]), []).append(r)
    rows = []
    for (model, task, condition), mine in cells.items():
        if condition.partition("+")[0] in ("no-image", "zero-shot"):
            continue
        x = np.array([r["looks_at"]["demo_image"] for r in mine])
        y = np.array([r["correct"] for r in mine], dtype=float)
        rho, p = sps.spearmanr(x, y) if len(set(y)) > 1 and x.std() > 0 else (float("nan"), float("nan"))
        tests = head_tests(mine)
        q = np.array(tests["q"])
        found = sorted(zip(*np.nonzero(q < fdr)), key=lambda lh: q[lh])
        rows.append({"model": model, "task": task, "condition": condition, "n": len(mine), "correct": int(y.sum()),
                     "spearman": {"rho": float(rho), "p": float(p)},
                     "logistic": _logistic((x - x.mean()) / (x.std() + 1e-12), y),
                     "heads": [{"layer": int(la), "head": int(h), "rho": tests["rho"][la][h], "q": float(q[la, h])}
                               for la, h in found], "tests": tests})
    return rows
