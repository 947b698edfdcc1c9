"""MMICT's M-Hub (`interventions.mmict`): where the hub tokens go, what a zero-initialised hub leaves unchanged, what
the query's hub may read, shapes on three families (1-D RoPE, M-RoPE, tiled images), capture and the harness under
+mmict, the save/load round trip, and plain fine-tuning's data."""

import dataclasses

import pytest
import torch

from micl_probe import RunConfig, capture_attention, run
from micl_probe.core import QUERY, ROLE, TokenLayout, prepared
from micl_probe.interventions import FitConfig, MHub, train_mmict
from micl_probe.interventions.fitting import any_shot_batches
from micl_probe.interventions.mmict import add_hub_tokens, hub_plan, hub_text, hub_token_id
from micl_probe.testing import noise_episode, tiny_loaded

FAMILIES = ("llava", "qwen2_vl", "llava_next")  # 1-D RoPE, M-RoPE, tiled images (anyres)


def _hub(loaded, seed=0, zero=False, placement="tokens"):
    torch.manual_seed(seed)
    hub = MHub.for_model(loaded, width=16, n_queries=5, layers=1, placement=placement)
    if not zero:  # a hub that writes something: its output layer drawn instead of zero
        torch.nn.init.normal_(hub.out.weight, std=0.5)
    return hub


def _decoder_inputs(loaded, batch, intervention=None):
    """The input embeddings the decoder receives (recorded by a pre-hook that runs after the intervention's)."""
    seen = {}
    decoder = loaded.adapter.decoder(loaded.model)
    with torch.no_grad():
        if intervention is None:
            h = decoder.register_forward_pre_hook(lambda m, a, k: seen.update(x=k["inputs_embeds"]),
                                                  with_kwargs=True)
            logits = loaded.model(**batch.inputs).logits
        else:
            with intervention(batch.layouts):
                h = decoder.register_forward_pre_hook(lambda m, a, k: seen.update(x=k["inputs_embeds"]),
                                                      with_kwargs=True)
                logits = loaded.model(**batch.inputs).logits
    h.remove()
    return seen["x"], logits


@pytest.mark.parametrize("family", FAMILIES)
def test_hub_tokens_stand_before_each_question_and_the_prompt_keeps_every_token(family):
    loaded = tiny_loaded(family)
    eps = [noise_episode(2, seed=1), noise_episode(3, seed=2)]  # different lengths: the batch is padded
    for side in ("right", "left"):
        batch = loaded.prepare_batch(eps, with_answer=side == "right", padding_side=side)
        hub = _hub(loaded)
        pad = hub_token_id(loaded.processor.tokenizer)
        new = add_hub_tokens(batch, hub.n_queries, pad)
        assert add_hub_tokens(new, hub.n_queries, pad) is new  # idempotent
        for b, (old, lay) in enumerate(zip(batch.layouts, new.layouts)):
            real_old = old.role != ROLE["pad"]
            real_new = lay.role != ROLE["pad"]
            assert bool(real_new[0] if side == "right" else real_new[-1])  # padded again on the same side
            keep = real_new & (lay.role != ROLE["hub"])
            # every token of the processor's prompt, in order, with its owner, role and image
            assert torch.equal(new.inputs["input_ids"][b][keep], batch.inputs["input_ids"][b][real_old])
            for field in ("owner", "role", "image_index"):
                assert torch.equal(getattr(lay, field)[keep], getattr(old, field)[real_old])
            assert torch.equal(new.inputs["attention_mask"][b].bool(), real_new)
            # the answer row is the same token
            assert new.inputs["input_ids"][b, lay.answer_position] == batch.inputs["input_ids"][b, old.answer_position]
            plan = hub_plan(lay)
            assert [o for o, *_ in plan] == [*range(eps[b].shots), QUERY]
            for owner, text, image, hubs in plan:
                assert hubs.numel() == (hub.n_queries if owner == QUERY else text.numel())
                question = lay.positions(owner=owner, role="question")
                assert int(hubs[-1]) + 1 == int(question[0])  # right before the question
                assert image.numel() == old.positions(owner=owner, role="image").numel()
        assert new.inputs["pixel_values"] is batch.inputs["pixel_values"]


@pytest.mark.parametrize("family", FAMILIES)
def test_a_zero_hub_writes_zeros_at_its_tokens_and_nothing_elsewhere(family):
    """Identity where it applies: the hub's output layer starts at zero, so its tokens carry zero vectors and every
    other input embedding is the model's own; the tokens before the first hub token give the logits of the prompt
    without hub tokens (causal); a drawn hub changes only its own tokens' embeddings."""
    loaded = tiny_loaded(family)
    batch = loaded.prepare_batch([noise_episode(2, seed=3)], with_answer=True)
    zero = _hub(loaded, zero=True).on(loaded)
    spliced = zero.prepare_batch(batch)
    lay = spliced.layouts[0]
    is_hub = lay.role == ROLE["hub"]
    plain, _ = _decoder_inputs(loaded, spliced)
    written, logits = _decoder_inputs(loaded, spliced, zero)
    assert torch.equal(written[0, ~is_hub], plain[0, ~is_hub])
    assert torch.count_nonzero(written[0, is_hub]) == 0
    first = int(is_hub.nonzero()[0])
    _, unspliced = _decoder_inputs(loaded, batch)
    torch.testing.assert_close(logits[0, :first], unspliced[0, :first], atol=1e-5, rtol=0)
    drawn, _ = _decoder_inputs(loaded, spliced, _hub(loaded).on(loaded))
    assert torch.equal(drawn[0, ~is_hub], plain[0, ~is_hub])
    assert (drawn[0, is_hub] - written[0, is_hub]).abs().amin(-1).gt(0).all()  # every hub token written


@pytest.mark.parametrize("family", FAMILIES)
def test_a_zero_residual_hub_is_the_model_and_a_drawn_one_adds_at_demo_text_and_query_image(family):
    """The residual placement: the prompt unchanged; a zero-initialised hub gives the model's own logits exactly; a
    drawn hub changes the input embeddings of each demo's question and answer and of the query's image tokens, and
    nothing else (the query's text and answer, the demos' images, the template)."""
    loaded = tiny_loaded(family)
    batch = loaded.prepare_batch([noise_episode(2, seed=8), noise_episode(1, seed=9)], with_answer=True)
    zero = _hub(loaded, zero=True, placement="residual").on(loaded)
    assert prepared(zero, batch) is batch
    base_x, base = _decoder_inputs(loaded, batch)
    x, logits = _decoder_inputs(loaded, batch, zero)
    assert torch.equal(x, base_x) and torch.equal(logits, base)
    x, _ = _decoder_inputs(loaded, batch, _hub(loaded, placement="residual").on(loaded))
    for b, lay in enumerate(batch.layouts):
        target = lay.mask(owner=QUERY, role="image")
        for demo in range(lay.n_demos):
            target |= lay.mask(owner=demo, role="question") | lay.mask(owner=demo, role="answer")
        moved = (x[b] - base_x[b]).abs().amax(-1) > 0
        assert torch.equal(moved, target)


def test_the_query_hub_never_reads_the_query_answer():
    loaded = tiny_loaded("llava")
    iv = _hub(loaded).on(loaded)
    ep = noise_episode(2, seed=4)
    other = dataclasses.replace(ep, query=dataclasses.replace(ep.query, answer="dax"))
    batches = [iv.prepare_batch(loaded.prepare_batch([e], with_answer=True)) for e in (ep, other)]
    lay = batches[0].layouts[0]
    answer = set(lay.positions(owner=QUERY, role="answer").tolist())
    assert answer and not answer & set(hub_text(lay, QUERY).tolist())
    assert set(lay.positions(owner=0, role="answer").tolist()) <= set(hub_text(lay, 0).tolist())  # a demo's: yes
    hubs = lay.positions(owner=QUERY, role="hub")
    (x, _), (y, _) = (_decoder_inputs(loaded, b, iv) for b in batches)
    torch.testing.assert_close(x[0, hubs], y[0, hubs], atol=0, rtol=0)


@pytest.mark.parametrize("family", FAMILIES)
def test_capture_and_the_harness_see_the_hub_tokens(family):
    loaded = tiny_loaded(family)
    iv = _hub(loaded).on(loaded)
    eps = [noise_episode(2, seed=5), noise_episode(2, seed=6)]
    am = capture_attention(loaded, eps, intervention=iv, progress=False, batch_size=2)
    parts, names = am.where_it_looks()
    assert {"demo_hub", "query_hub"} <= set(names)
    torch.testing.assert_close(parts.sum(-1), torch.ones(parts.shape[:3]), atol=1e-4, rtol=0)
    assert parts[..., names.index("query_hub")].sum() > 0
    plain, names_plain = capture_attention(loaded, eps, progress=False).where_it_looks()
    assert "demo_hub" not in names_plain  # without hub tokens: the parts as before


def test_the_harness_runs_mmict_teacher_forced_and_generating():
    loaded = tiny_loaded("qwen2_vl")
    iv = _hub(loaded).on(loaded)
    for metric in ("teacher-forced", "exact"):
        records = run(loaded, ["clock_math"], ["2-shot", "2-shot+mmict"],
                      RunConfig(n=3, batch_size=3, progress=False, metric=metric, max_new_tokens=2),
                      interventions={"mmict": iv})
        under = [r for r in records if r["condition"] == "2-shot+mmict"]
        assert len(under) == 3 and all(r["looks_at"]["query_hub"] > 0 for r in under)
        assert all("query_hub" not in r["looks_at"] for r in records if r["condition"] == "2-shot")


@pytest.mark.parametrize("placement", ["tokens", "residual"])
def test_save_load_round_trip_and_mistakes(tmp_path, placement):
    loaded = tiny_loaded("llava")
    hub = _hub(loaded, placement=placement)
    hub.save(tmp_path / "hub", note="made here")
    back = MHub.load(tmp_path / "hub", loaded)
    assert back.config == hub.config and back.meta["note"] == "made here"
    for (k, v), (k2, v2) in zip(hub.state_dict().items(), back.state_dict().items()):
        assert k == k2 and torch.equal(v, v2)
    batch = loaded.prepare_batch([noise_episode(2, seed=7)])
    spliced = prepared(hub.on(loaded), batch)
    a, _ = _decoder_inputs(loaded, spliced, hub.on(loaded))
    b, _ = _decoder_inputs(loaded, spliced, back.on(loaded))
    assert torch.equal(a, b)
    assert hub.on(loaded).fingerprint == back.on(loaded).fingerprint
    assert _hub(loaded, seed=1, placement=placement).on(loaded).fingerprint != hub.on(loaded).fingerprint
    with pytest.raises(FileNotFoundError, match="python -m micl_probe.train mmict --out"):
        MHub.load(tmp_path / "nothing")
    (tmp_path / "other.json").write_text('{"layers": [0], "mode": "logit"}')
    (tmp_path / "other.safetensors").write_bytes((tmp_path / "hub.safetensors").read_bytes())
    with pytest.raises(ValueError, match="is not an MMICT hub"):
        MHub.load(tmp_path / "other")
    wider = tiny_loaded("qwen2_vl")
    if wider.adapter.decoder(wider.model).get_input_embeddings().weight.shape[1] != hub.config["d_model"]:
        with pytest.raises(ValueError, match="made for a decoder of width"):
            MHub.load(tmp_path / "hub", wider)


@pytest.mark.parametrize("placement", ["tokens", "residual"])
def test_train_mmict_moves_only_the_hub(placement):
    loaded = tiny_loaded("llava")
    before = {k: v.clone() for k, v in loaded.model.state_dict().items()}
    flags = [p.requires_grad for p in loaded.model.parameters()]
    hub, history = train_mmict(loaded, ["clock_math"], 2, FitConfig(steps=3, batch=2, eval_every=3, n_val=2),
                               width=16, n_queries=4, layers=1, placement=placement)
    assert history and torch.count_nonzero(hub.out.weight) > 0  # it learned from zero
    assert all(torch.equal(v, loaded.model.state_dict()[k]) for k, v in before.items())
    assert [p.requires_grad for p in loaded.model.parameters()] == flags  # the model's flags restored


def test_plain_fine_tuning_sees_the_same_queries_without_demos():
    loaded = tiny_loaded("llava")
    cfg = FitConfig(batch=2)
    with_demos = next(any_shot_batches(loaded, ["clock_math"], 3, 2, 0, "support", cfg))
    without = next(any_shot_batches(loaded, ["clock_math"], 3, 2, 0, "support", cfg, demos=False))
    assert [e.query for e in with_demos.episodes] == [e.query for e in without.episodes]
    assert all(e.shots >= 1 for e in with_demos.episodes) and all(e.shots == 0 for e in without.episodes)


def test_a_layout_saved_before_the_hub_role_reads_back_right():
    lay = tiny_loaded("llava").prepare_batch([noise_episode(1), noise_episode(3)]).layouts[0]
    assert (lay.role == ROLE["pad"]).any()
    old = lay.to_dict()
    old.pop("roles")
    before = ("image", "image_markup", "question", "answer", "template", "special", "pad")
    old["role"] = [before.index(("image", "image_markup", "question", "answer", "template", "special", "hub",
                                 "pad")[r]) for r in lay.role.tolist()]
    assert torch.equal(TokenLayout.from_dict(old).role, lay.role)
    assert torch.equal(TokenLayout.from_dict(lay.to_dict()).role, lay.role)
