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
