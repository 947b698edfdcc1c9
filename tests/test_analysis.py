import numpy as np

from micl_probe.evaluation import accuracy_vs_attention, head_predictiveness


def _records(n=400, seed=0):
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(n):
        heads = rng.uniform(0, 1, (2, 3))
        v = heads.mean()
        out.append({"visual_share": v, "visual_share_by_head": heads.tolist(),
                    "correct": bool(rng.uniform() < 1 / (1 + np.exp(-12 * (heads[1, 2] - 0.5))))})
    return out


def test_recovers_a_planted_relation():
    recs = _records()
    stats = accuracy_vs_attention(recs)
    assert stats["spearman"]["rho"] > 0.1 and stats["logistic"]["slope"] > 0
    assert sum(b["n"] for b in stats["bins"]) == len(recs)
    rho = head_predictiveness(recs)
    assert np.nanargmax(rho) == 1 * 3 + 2 and rho[1, 2] > 0.5  # the planted head predicts success
    flat = accuracy_vs_attention([dict(r, correct=i % 2 == 0) for i, r in enumerate(recs)])
    assert abs(flat["spearman"]["rho"]) < 0.15  # no relation, none found


def test_logistic_standard_error_against_a_direct_fit_and_separation():
    """Slope and its standard error equal a direct maximum-likelihood fit (scipy.optimize on the log-likelihood,
    standard error from a finite-difference Hessian); a threshold that splits the outcomes is reported as
    separation, not as a huge slope."""
    from scipy.optimize import minimize

    from micl_probe.evaluation.analysis import _logistic, separated

    rng = np.random.default_rng(3)
    x = rng.normal(size=300)
    y = (rng.uniform(size=300) < 1 / (1 + np.exp(-(0.3 + 1.2 * x)))).astype(float)

    def nll(w):
        z = w[0] + w[1] * x
        return float(np.sum(np.logaddexp(0, z) - y * z))

    w = minimize(nll, np.zeros(2), method="BFGS", options={"gtol": 1e-10}).x
    eps, hess = 1e-4, np.zeros((2, 2))
    for i in range(2):
        for j in range(2):
            e_i, e_j = np.eye(2)[i] * eps, np.eye(2)[j] * eps
            hess[i, j] = (nll(w + e_i + e_j) - nll(w + e_i - e_j) - nll(w - e_i + e_j) + nll(w - e_i - e_j)) / (
                4 * eps * eps)
    fit = _logistic(x, y)
    assert not fit["separated"] and abs(fit["slope"] - w[1]) < 1e-4
    assert abs(fit["slope_se"] - np.sqrt(np.linalg.inv(hess)[1, 1])) < 1e-3
    split = (x > 0.2).astype(float)
    assert separated(x, split) and separated(x, np.ones_like(x)) and not separated(x, y)
    assert _logistic(x, split)["separated"] and np.isnan(_logistic(x, split)["slope"])


def test_head_tests_find_a_planted_head_under_fdr_per_task_and_condition():
    from scipy.stats import false_discovery_control

    from micl_probe.evaluation import head_tests, heads_that_predict

    rng = np.random.default_rng(4)
    recs = []
    for task in ("clock_math", "outlier"):
        for cond in ("4-shot", "no-image"):
            for i in range(120):
                heads = rng.uniform(0, 0.2, (2, 3))
                correct = bool(rng.uniform() < 0.5)
                if task == "clock_math":
                    heads[1, 0] += 0.3 * correct  # one head looks at the demo images when the answer is right
                recs.append({"model": "m", "task": task, "condition": cond, "index": i, "correct": correct,
                             "shots": 4, "demo_image_by_head": heads.tolist(),
                             "looks_at": {"demo_image": float(heads.mean())}})
    one = [r for r in recs if r["task"] == "clock_math" and r["condition"] == "4-shot"]
    t = head_tests(one)
    p, q = np.array(t["p"]), np.array(t["q"])
    assert np.allclose(q.ravel(), false_discovery_control(p.ravel(), method="bh")) and (q >= p - 1e-12).all()
    rows = {(r["task"], r["condition"]): r for r in heads_that_predict(recs)}
    assert set(rows) == {("clock_math", "4-shot"), ("outlier", "4-shot")}  # never no-image, never pooled
    assert [(h["layer"], h["head"]) for h in rows[("clock_math", "4-shot")]["heads"]] == [(1, 0)]
    assert rows[("clock_math", "4-shot")]["heads"][0]["rho"] > 0.5 and rows[("outlier", "4-shot")]["heads"] == []
