"""Training-free interventions: knockout, uniform attention and Mapping-Guided Inference against independent
computations (zeroed output-projection columns, hand-edited attention rows), their locality and identities, the
named forms a condition takes, and per-task interventions in the harness."""

import pytest
import torch

from micl_probe import RunConfig, load, run
from micl_probe.core import within
from micl_probe.evaluation.scoring import generate_answers
from micl_probe.interventions import knockout, least_entropy_layer, mgi, random_heads, uniform
from micl_probe.interventions.named import build, needs_calibration, parse, ranks_by_head_score
from micl_probe.interventions.reweight import edit_rows
from micl_probe.measure import capture_attention, find_sinks, head_scores
from micl_probe.testing import noise_episode, tiny_loaded

EPISODES = [noise_episode(2, seed=1), noise_episode(3, seed=2)]
FAMILIES = ["llava", "qwen2_vl", "gemma3"]  # 1-D RoPE, M-RoPE, sliding-window layers


def _logits(loaded, batch, intervention=None):
    with torch.no_grad(), within(intervention, batch.layouts) as kw:
        return loaded.model(**batch.inputs, **kw).logits


@pytest.mark.parametrize("name", FAMILIES)
def test_knockout_everywhere_equals_zeroed_output_columns_and_at_the_answer_is_local(name):
    loaded = tiny_loaded(name)
    batch = loaded.prepare_batch(EPISODES, padding_side="left")
    heads = random_heads(loaded, 3, seed=1)
    d = loaded.adapter.head_dim(loaded.model)
    everywhere = _logits(loaded, batch, knockout(loaded, heads, at="all"))
    saved = {}
    with torch.no_grad():  # the independent computation: those heads' columns of o_proj set to zero
        for layer, head in heads:
            w = loaded.adapter.o_proj(loaded.model, layer).weight
            saved.setdefault(layer, w.detach().clone())
            w[:, head * d:(head + 1) * d] = 0
    try:
        zeroed = _logits(loaded, batch)
    finally:
        with torch.no_grad():
            for layer, w in saved.items():
                loaded.adapter.o_proj(loaded.model, layer).weight.copy_(w)
    torch.testing.assert_close(everywhere, zeroed, atol=1e-5, rtol=0)
    plain, at_answer = _logits(loaded, batch), _logits(loaded, batch, knockout(loaded, heads))
    for b, lay in enumerate(batch.layouts):  # only the answer row (the last prompt token) changes
        a = lay.answer_position
        torch.testing.assert_close(at_answer[b, :a], plain[b, :a], atol=1e-5, rtol=0)
        assert (at_answer[b, a] - plain[b, a]).abs().max() > 1e-4
    torch.testing.assert_close(_logits(loaded, batch, knockout(loaded, heads, means=torch.zeros(
        loaded.adapter.n_layers(loaded.model), loaded.adapter.n_heads(loaded.model), d))), at_answer)


def test_edit_rows_on_hand_written_rows():
    w = torch.tensor([[[0.1, 0.6, 0.2, 0.1, 0.0]]])  # [B, H, kv]
    allowed = torch.tensor([[[True, True, True, True, False]]])
    image = torch.tensor([[False, True, True, True, False]])
    torch.testing.assert_close(edit_rows(w, allowed, image, "uniform", 1.5, 1.0), torch.tensor([[[0.25] * 4 + [0]]]))
    # image mean (0.6 + 0.2 + 0.1) / 3 = 0.3: evidence > 1.5 x 0.3 = 0.45 is token 1 alone; x 2, renormalised
    torch.testing.assert_close(edit_rows(w, allowed, image, "mgi", 1.5, 2.0),
                               torch.tensor([[[0.1, 1.2, 0.2, 0.1, 0.0]]]) / 1.6)
    torch.testing.assert_close(edit_rows(w, allowed, image, "mgi", 1.5, 1.0), w)


@pytest.mark.parametrize("name", FAMILIES)
def test_uniform_and_mgi_against_hand_edited_rows(name):
    loaded = tiny_loaded(name)
    layers = loaded.adapter.attention_layers(loaded.model)
    layer = layers[1]
    batch = loaded.prepare_batch(EPISODES, padding_side="left")
    plain = _logits(loaded, batch)
    real = batch.inputs["attention_mask"].bool()  # padding rows attend to nothing: no logits to compare
    torch.testing.assert_close(_logits(loaded, batch, mgi(loaded, 1.5, 1.0, layer))[real], plain[real], atol=1e-5,
                               rtol=0)
    base = capture_attention(loaded, EPISODES, backend="eager", progress=False)
    flat = capture_attention(loaded, EPISODES, intervention=uniform(loaded, [layer]), progress=False)
    scaled = capture_attention(loaded, EPISODES, intervention=mgi(loaded, 1.0, 3.0, layer), progress=False)
    for e, ep in enumerate(EPISODES):
        one = loaded.prepare_batch([ep])
        lay = one.layouts[0]
        model = loaded.model
        prev = model.config._attn_implementation
        model.set_attn_implementation("eager")
        try:
            with torch.no_grad():
                att = model(**one.inputs, output_attentions=True).attentions[layers.index(layer)][0]  # [H, seq, seq]
        finally:
            model.set_attn_implementation(prev)
        row = att[:, lay.answer_position]  # the model's own row at that layer (earlier layers are untouched)
        visible = torch.arange(len(lay)) <= lay.answer_position
        window = getattr(model.config.get_text_config(), "sliding_window", None)
        kinds = getattr(model.config.get_text_config(), "layer_types", None)
        if window and kinds and kinds[layer] == "sliding_attention":
            visible &= torch.arange(len(lay)) > lay.answer_position - window
        image = lay.role == 0
        a = row.mean(0)
        evidence = image & (a > 1.0 * a[image].mean())  # k = 1: a random model attends evenly
        by_hand = row * torch.where(evidence, 3.0, 1.0)
        by_hand = by_hand / by_hand.sum(-1, keepdim=True)
        for seg, idx in lay.segments().items():
            j = base.segments.index(seg)
            torch.testing.assert_close(flat.mass[e, layer, :, j], (visible[idx].sum() / visible.sum()).expand(
                row.shape[0]).float(), atol=1e-5, rtol=0)
            torch.testing.assert_close(scaled.mass[e, layer, :, j], by_hand[:, idx].sum(-1), atol=1e-5, rtol=0)
            for earlier in [x for x in layers if x < layer]:  # before the edited layer nothing moves
                torch.testing.assert_close(flat.mass[e, earlier, :, j], base.mass[e, earlier, :, j], atol=1e-5,
                                           rtol=0)
        assert evidence.any()


def test_edits_under_generation_and_the_entropy_layer():
    loaded = tiny_loaded("qwen2_vl")
    batch = loaded.prepare_batch(EPISODES, padding_side="left")
    layer = loaded.adapter.attention_layers(loaded.model)[0]
    plain = generate_answers(loaded, batch, 4)
    with mgi(loaded, 1.5, 1.0, layer)(batch.layouts) as kw:
        assert generate_answers(loaded, batch, 4, **kw) == plain  # every decoding step through the edit, unchanged
    with uniform(loaded)(batch.layouts) as kw:
        assert len(generate_answers(loaded, batch, 4, **kw)) == 2
    best, entropy = least_entropy_layer(loaded, EPISODES)
    assert best in loaded.adapter.attention_layers(loaded.model) and entropy[best] == min(
        e for e in entropy if e == e)
    with pytest.raises(ValueError, match="finite number > 0"):
        mgi(loaded, 1.5, 0.0)
    with pytest.raises(ValueError, match="layers with softmax attention"):
        uniform(loaded, [99])


def test_named_forms():
    assert parse("knockout=top-3:induction") == ("knockout", {"select": "top", "k": 3, "score": "induction"})
    assert parse("knockout=random-2:7") == ("knockout", {"select": "random", "k": 2, "seed": 7})
    assert parse("knockout=L3H2,L0H1") == ("knockout", {"select": "heads", "heads": [(3, 2), (0, 1)]})
    assert parse("uniform=all") == ("uniform", {"layers": None}) and parse("uniform=0,2")[1] == {"layers": [0, 2]}
    assert parse("mgi=1.5,2") == ("mgi", {"k": 1.5, "lam": 2.0, "layer": None})
    assert parse("mgi=1.5,6,3")[1]["layer"] == 3 and parse("dara") is None and parse("alpha=2") is None
    assert needs_calibration("knockout=top-1:previous_token") and not needs_calibration("mgi=1,2,0")
    assert ranks_by_head_score("knockout=top-3:induction") and not ranks_by_head_score("knockout=top-3:demo_image")
    assert not ranks_by_head_score("mgi=1.5,2") and not ranks_by_head_score("dara")
    for bad in ("knockout=top-3:attention", "knockout=", "knockout=L3", "uniform=x", "mgi=1.5", "mgi=0,2"):
        with pytest.raises(ValueError, match="intervention|rank heads"):
            parse(bad)


def test_per_task_interventions_in_the_harness(tmp_path):
    """A {task: intervention} entry runs each task's own (here: top induction heads chosen per task), and the
    records of each task carry that task's intervention digest."""
    loaded = load("organism:true-micl")
    from micl_probe.tasks import sample_episodes

    tasks = ["novel_binding", "palindrome"]
    per_task, chosen = {}, {}
    for t in tasks:
        per_task[t], chosen[t] = build(loaded, "knockout=top-2:induction", t,
                                       sample_episodes(t, 4, 4, seed=0, split="support"))
    recs = run(loaded, tasks, ["4-shot+ko"], RunConfig(n=4, progress=False), results=tmp_path / "r.jsonl",
               interventions={"ko": per_task})
    digests = {t: {r["intervention"] for r in recs if r["task"] == t} for t in tasks}
    assert all(len(d) == 1 for d in digests.values()) and digests[tasks[0]] != digests[tasks[1]]
    assert chosen[tasks[0]].startswith("L") and "top 2 by induction" in chosen[tasks[0]]
    with pytest.raises(ValueError, match="no entry for task 'outlier'"):
        run(loaded, ["outlier"], ["4-shot+ko"], RunConfig(n=1, progress=False), interventions={"ko": per_task})


def test_every_family_runs_the_papers_conditions(family):
    """On every family's tiny model: head scores and sinks, and the harness under knockout of the top induction
    heads, MGI and uniform attention, the answers generated (every decoding step through the edit)."""
    loaded = tiny_loaded(family)
    calibration = [noise_episode(2, seed=4), noise_episode(2, seed=5)]
    scores = head_scores(loaded, calibration, progress=False)
    measured = loaded.adapter.attention_layers(loaded.model)
    assert scores.induction[:, measured].isfinite().all() and scores.previous_token[:, measured].isfinite().all()
    assert find_sinks(loaded, calibration).ratio.shape[:2] == (2, loaded.adapter.n_layers(loaded.model))
    names = ["knockout=top-2:induction", "mgi=1.5,2", "uniform=all"]
    interventions = {n: build(loaded, n, "clock_math", calibration)[0] for n in names}
    recs = run(loaded, ["clock_math"], ["2-shot", "no-image"] + [f"2-shot+{n}" for n in names],
               RunConfig(n=1, progress=False, metric="exact", max_new_tokens=2), interventions=interventions)
    assert len(recs) == 5 and all(isinstance(r["prediction"], str) and r["copied"] is not None for r in recs)


def test_mean_ablation_means_are_computed_once_a_task(monkeypatch):
    """Under --knockout-ablation mean, every knockout condition of a task ablates to the same calibration means,
    extracted once per task (not once per condition), and they are the means `named.mean_outputs` gives."""
    from micl_probe import attn_report
    from micl_probe.interventions import named

    calls = []
    real = named.mean_outputs
    monkeypatch.setattr(named, "mean_outputs", lambda loaded, eps: calls.append(len(eps)) or real(loaded, eps))
    loaded = load("organism:true-micl")
    args = attn_report.parse(["--tasks", "clock_math", "palindrome", "--calibration", "4", "--knockout-ablation",
                              "mean", "--conditions", "4-shot+knockout=random-2:0", "4-shot+knockout=random-2:1",
                              "4-shot+knockout=L0H0"])
    found, _ = attn_report.interventions_for(loaded, args, {})
    assert calls == [4, 4] and set(found) == {"knockout=random-2:0", "knockout=random-2:1", "knockout=L0H0"}
    episodes = attn_report.Calibration(loaded, args).episodes("palindrome")  # the same seeded calibration draw
    fresh, _ = build(loaded, "knockout=L0H0", "palindrome", episodes, ablation="mean")
    batch = loaded.prepare_batch(EPISODES, with_answer=True)
    torch.testing.assert_close(_logits(loaded, batch, found["knockout=L0H0"]["palindrome"]),
                               _logits(loaded, batch, fresh))
