"""Head scores and attention sinks: the scores on hand-built attention where the answer is known, the traced scores
against HF eager attention reduced independently, and sinks found where a massive activation is planted."""

import pytest
import torch

from micl_probe.core import QUERY, ROLE, TokenLayout
from micl_probe.measure import capture_attention, find_sinks, head_scores
from micl_probe.measure.heads import HeadScores, induction_from_rows, previous_from_probs, previous_token_rows
from micl_probe.testing import noise_episode, tiny_loaded

EPISODES = [noise_episode(2, seed=1), noise_episode(3, seed=2)]


def _layout():
    """special, demo0 question q q, answer a, demo1 question q, answer a a, query question q q (10 tokens)."""
    owner = torch.tensor([-2, 0, 0, 0, 1, 1, 1, QUERY, QUERY, QUERY])
    r = ROLE
    role = torch.tensor([r["special"], r["question"], r["question"], r["answer"], r["question"], r["answer"],
                         r["answer"], r["question"], r["question"], r["template"]])
    return TokenLayout(owner, role, torch.full((10,), -1), 2, 0, answer_position=9)


def test_scores_on_planted_attention():
    layout = _layout()
    answers = (layout.role == ROLE["answer"]) & (layout.owner >= 0)
    assert answers.nonzero().flatten().tolist() == [3, 5, 6]
    row = torch.zeros(3, 10)
    row[0, [3, 5, 6]] = torch.tensor([0.5, 0.25, 0.25])  # an induction head: all on the demo answers
    row[1, 8] = 1.0  # a previous-token head at the answer row
    row[2] = 0.1  # uniform
    ind = induction_from_rows(row, answers)
    torch.testing.assert_close(ind, torch.tensor([1.0, -1.0, 0.3 - 0.7]))
    rows = torch.tensor([previous_token_rows(layout)])  # every row after a real token: 1 .. 9
    assert rows.tolist() == [[1, 2, 3, 4, 5, 6, 7, 8, 9]]
    probs = torch.zeros(1, 2, rows.shape[1], 10)
    for j, p in enumerate(rows[0].tolist()):
        probs[0, 0, j, p - 1] = 1.0  # head 0: always one back
        probs[0, 1, j, 0] = 1.0  # head 1: always the first token (a sink)
    weights = torch.full((1, rows.shape[1]), 1 / rows.shape[1])
    torch.testing.assert_close(previous_from_probs(probs, rows, weights), torch.tensor([[1.0, 1 / 9]]))
    hs = HeadScores(torch.tensor([[[0.1, 0.9], [0.5, float("nan")]]]), torch.zeros(1, 2, 2))
    assert hs.top("induction", 2) == [(0, 1), (1, 0)] and hs.mean("induction").shape == (2, 2)
    with pytest.raises(ValueError, match="from 1 to 4"):
        hs.top("induction", 5)
    with pytest.raises(ValueError, match="unknown head score"):
        hs.mean("copying")


def _eager(loaded, episode):
    """HF eager attentions [layer][H, seq, seq] and the layout of one episode (batch of one, no padding)."""
    batch = loaded.prepare_batch([episode])
    model = loaded.model
    prev = model.config._attn_implementation
    model.set_attn_implementation("eager")
    try:
        with torch.no_grad():
            out = model(**batch.inputs, output_attentions=True, output_hidden_states=True)
    finally:
        model.set_attn_implementation(prev)
    return [a[0] for a in out.attentions], out.hidden_states, batch.layouts[0]


@pytest.mark.parametrize("name", ["llava", "qwen2_vl", "gemma3"])
def test_head_scores_equal_eager_attention(name):
    """Batched and padded, the traced scores equal the definitions applied to HF's eager weights, index by index."""
    loaded = tiny_loaded(name)
    hs = head_scores(loaded, EPISODES, batch_size=2, progress=False)
    for e, episode in enumerate(EPISODES):
        att, _, layout = _eager(loaded, episode)
        answers = [p for p in range(len(layout)) if layout.role[p] == ROLE["answer"] and layout.owner[p] >= 0]
        text = list(range(1, len(layout)))  # every position after the first (a batch of one: no padding)
        for layer, a in enumerate(att):  # a [H, seq, seq]
            on = a[:, layout.answer_position, answers].sum(-1)
            torch.testing.assert_close(hs.induction[e, layer], on - (1 - on), atol=2e-5, rtol=0)
            prev = torch.stack([a[:, p, p - 1] for p in text], -1).mean(-1)
            torch.testing.assert_close(hs.previous_token[e, layer], prev, atol=2e-5, rtol=0)


def test_sinks_found_where_planted_and_moved_out_of_their_segment():
    loaded = tiny_loaded("llava")
    model, tok = loaded.model, loaded.processor.tokenizer
    batch = loaded.prepare_batch(EPISODES[:1])
    layout, ids = batch.layouts[0], batch.inputs["input_ids"][0]
    planted = int(ids[layout.positions(owner=0, role="question")[0]])  # demo 0's first question token
    where = (ids == planted).nonzero().flatten().tolist()
    emb = model.get_input_embeddings().weight
    saved = emb[planted].detach().clone()
    with torch.no_grad():
        emb[planted, 3] = 1e3 * emb[planted].abs().max()  # one massive dimension in that token's embedding
    d = emb.shape[1]  # one dimension alone gives max|h|/RMS(h) = sqrt(d): a tiny model needs a lower tau than 20
    tau = 0.8 * d ** 0.5
    try:
        sinks = find_sinks(loaded, EPISODES[:1], tau=tau)
        assert sinks.positions(0, 0) == where, (tok.decode([planted]), where)
        assert "demo0.question" in sinks.by_segment() and sinks.by_segment()["demo0.question"][0] >= 1
        eager, hidden, _ = _eager(loaded, EPISODES[:1][0])
        am = capture_attention(loaded, EPISODES[:1], sinks=tau, progress=False)
        ref = capture_attention(loaded, EPISODES[:1], sinks=tau, backend="eager", progress=False)
        torch.testing.assert_close(am.mass, ref.mass, atol=1e-5, rtol=0)
        for layer, a in enumerate(eager):  # a [H, seq, seq]; every segment recomputed from the eager weights
            h = hidden[layer][0]
            sink = set((h.abs().amax(-1) / h.pow(2).mean(-1).sqrt() >= tau).nonzero().flatten().tolist())
            assert sink == set(where) or layer > 0  # the planted token, wherever it stands, from layer 0
            row = a[:, layout.answer_position]
            torch.testing.assert_close(am.sink_share()[0, layer], row[:, sorted(sink)].sum(-1), atol=1e-5, rtol=0)
            for name, idx in layout.segments().items():
                keep = [p for p in idx.tolist() if p not in sink]
                torch.testing.assert_close(am.mass[0, layer, :, am.segments.index(name)], row[:, keep].sum(-1),
                                           atol=1e-5, rtol=0)
        torch.testing.assert_close(am.mass.sum(-1), torch.ones(am.mass.shape[:3]), atol=1e-5, rtol=0)
        assert am.where_it_looks()[1][-1] == "sink" and am.meta["sinks"] == tau
    finally:
        with torch.no_grad():
            emb[planted] = saved
    with pytest.raises(ValueError, match="tau > 0"):
        capture_attention(loaded, EPISODES[:1], sinks=-1)
    with pytest.raises(ValueError, match="needs the hidden states"):
        capture_attention(loaded, EPISODES[:1], sinks=20, backend="transformer_lens")


@pytest.mark.parametrize("name", ["llava", "qwen2_vl", "qwen3_5"])
def test_scores_with_sinks_are_the_two_measured_apart(name, monkeypatch):
    """head_scores(…, sinks=τ) finds the sinks in the scores' own passes (qwen3_5, hybrid: a pass of its own for
    the layers the scores' trace does not enter); padded batches; the same as head_scores and find_sinks apart."""
    loaded = tiny_loaded(name)
    ratio = find_sinks(loaded, EPISODES, tau=1.0).ratio
    tau = float(ratio[~ratio.isnan()].quantile(0.9))  # a tenth of the tokens are sinks: a tiny model has no real ones
    alone = head_scores(loaded, EPISODES, batch_size=2, progress=False)
    apart = find_sinks(loaded, EPISODES, tau=tau, batch_size=2)
    if name != "qwen3_5":  # the sinks come from the scores' passes, not a pass of their own
        import micl_probe.measure.heads as heads

        monkeypatch.setattr(heads, "find_sinks", lambda *a, **k: pytest.fail("a pass of its own"))
    scores, sinks = head_scores(loaded, EPISODES, batch_size=2, progress=False, sinks=tau)
    torch.testing.assert_close(scores.induction, alone.induction, equal_nan=True)
    torch.testing.assert_close(scores.previous_token, alone.previous_token, equal_nan=True)
    torch.testing.assert_close(sinks.ratio, apart.ratio, atol=1e-4, rtol=1e-5, equal_nan=True)
    assert sinks.segments == apart.segments and sinks.by_segment() == apart.by_segment()
    assert sinks.mask().any()  # the threshold finds some: the comparison is not of empty sets
    with pytest.raises(ValueError, match="tau"):
        head_scores(loaded, EPISODES, sinks=0)
