"""Family quirks the adapters state and the code honours (the shared matrix runs every family through test_layout,
test_attention, test_dara, test_mtv, test_patches, test_devices and test_scoring_and_batching)."""

import pytest
import torch

from micl_probe import capture_attention
from micl_probe.core import QUERY, render
from micl_probe.core.patches import patch_grids
from micl_probe.evaluation.scoring import generate_answers, which_correct
from micl_probe.measure import row_attention
from micl_probe.testing import noise_episode, tiny_loaded


def _eager_attentions(loaded, prepared):
    model = loaded.model
    model.set_attn_implementation("eager")
    try:
        with torch.no_grad():
            return model(**prepared.inputs, output_attentions=True).attentions  # L x [1, H, seq, seq]
    finally:
        model.set_attn_implementation("sdpa")


def test_gemma3_masks_bidirectional_images_and_sliding_windows():
    """Gemma 3: image tokens see each other both ways, layer 0 is a 24-token sliding window and layer 1 global; the
    nnsight recompute uses each layer's own mask, for rows inside an image and for the answer row."""
    loaded = tiny_loaded("gemma3")
    config = loaded.model.config.get_text_config()
    assert config.layer_types == ["sliding_attention", "full_attention"] and config.sliding_window == 24
    episode = noise_episode(3)
    prepared = loaded.prepare(episode)
    lay = prepared.layout
    attentions = _eager_attentions(loaded, prepared)
    image = lay.positions(role="image", image=1)
    first, last = int(image[0]), int(image[-1])
    for layer in (0, 1):
        assert attentions[layer][0, :, first, last].min() > 0  # an earlier image token attends to a later one
    answer = lay.answer_position
    assert attentions[0][0, :, answer, : answer - 24].abs().max() == 0  # the window: nothing further back
    assert attentions[1][0, :, answer, : answer - 24].sum(-1).min() > 0  # the global layer sees it all
    for rows in ([answer], [first, last]):
        got = row_attention(loaded, episode, rows=rows)  # [layer, head, seq], the rows' mean
        want = torch.stack([a[0][:, rows].mean(1) for a in attentions])
        torch.testing.assert_close(got, want, atol=1e-5, rtol=0)


def test_gemma3_placeholder_is_not_its_image_token():
    """The prompt writes <start_of_image>; the layout's image tokens are the <image_soft_token>s it expands to."""
    loaded = tiny_loaded("gemma3")
    prepared = loaded.prepare(noise_episode(1))
    assert prepared.text.count("<start_of_image>") == 2 and "<image_soft_token>" not in prepared.text
    ids = prepared.input_ids[0]
    soft = loaded.processor.tokenizer.convert_tokens_to_ids("<image_soft_token>")
    assert torch.equal(prepared.layout.mask(role="image"), ids == soft)
    assert "<start_of_turn>model\n" in prepared.text  # the assistant role is "model"


def test_qwen3_vl_has_no_default_system_prompt_and_deepstack():
    loaded = tiny_loaded("qwen3_vl")
    text = render(noise_episode(1), loaded.adapter).text
    assert text.startswith("<|im_start|>user\n") and "system" not in text
    assert render(noise_episode(1), tiny_loaded("qwen2_vl").adapter).text.startswith("<|im_start|>system\n")
    assert "DeepStack" in loaded.adapter.notes and loaded.model.config.vision_config.deepstack_visual_indexes == [0]


def test_glm4v_has_no_end_of_turn_and_scores_answers_only():
    """GLM-4.1V writes no end-of-turn token: the teacher-forced scorer then checks the answer tokens alone, which is
    what a generated answer's first tokens are when it is right."""
    loaded = tiny_loaded("glm4v")
    episodes = [noise_episode(2, seed=s) for s in range(4)]
    text = render(episodes[0], loaded.adapter, with_answer=True).text
    assert "dax<|user|>" in text and text.endswith("<|assistant|>\n7")
    forced = which_correct(loaded, episodes).tolist()
    batch = loaded.prepare_batch(episodes, with_answer=True)
    with torch.no_grad():
        logits = loaded.model(**batch.inputs).logits
    for b, lay in enumerate(batch.layouts):
        pos = lay.query_answer_positions()
        assert forced[b] == bool((logits[b, pos - 1].argmax(-1) == batch.inputs["input_ids"][b, pos]).all())
    texts = generate_answers(loaded, loaded.prepare_batch(episodes, padding_side="left"), 3)
    assert len(texts) == 4 and all(isinstance(t, str) for t in texts)  # generation runs without an end-of-turn


@pytest.mark.parametrize("family", ["idefics2", "internvl"])
def test_families_without_patch_maps_say_so(family):
    loaded = tiny_loaded(family)
    with pytest.raises(ValueError, match="hold no patch position"):
        patch_grids(loaded, loaded.prepare(noise_episode(1)))
    am = capture_attention(loaded, [noise_episode(2)], progress=False)  # segment attention still applies
    assert am.visual_share().shape[1:] == (2, 4)


def test_mistral3_rows_end_in_break_tokens():
    loaded = tiny_loaded("mistral3")
    prepared = loaded.prepare(noise_episode(1))
    (grid,) = [g for g in patch_grids(loaded, prepared) if g.owner == QUERY]
    rows, cols = grid.tiles[0].positions.shape
    markup = prepared.layout.positions(role="image_markup", image=grid.image)
    assert markup.numel() == rows and torch.equal(markup, grid.tiles[0].positions[:, -1] + 1)


def test_qwen3_5_hybrid_measures_its_attention_layers_and_says_which():
    """Qwen3.5's linear-attention layers keep no attention weights: capture measures the softmax layers (equal to HF
    eager in the shared matrix), leaves the others NaN and names the measured ones; means skip them; DARA, LoRA and
    MTV refuse a linear layer in one line and default to the attention layers."""
    from transformers import Qwen3_5TextConfig

    from micl_probe.evaluation import summarise
    from micl_probe.evaluation.harness import _add_attention
    from micl_probe.interventions import DARA, inject
    from micl_probe.interventions.lora import train_lora

    published = Qwen3_5TextConfig(num_hidden_layers=8).layer_types  # the checkpoints' pattern: 3 linear, 1 full
    assert [i for i, t in enumerate(published) if t == "full_attention"] == [3, 7]
    loaded = tiny_loaded("qwen3_5")
    model, adapter = loaded.model, loaded.adapter
    assert model.config.text_config.layer_types == ["linear_attention", "full_attention"]
    assert adapter.attention_layers(model) == [1]
    with pytest.raises(ValueError, match=r"layer 0 .* linear-attention layer\); its attention layers are \[1\]"):
        adapter.attention(model, 0)
    eps = [noise_episode(2, seed=s) for s in range(3)]
    am = capture_attention(loaded, eps, progress=False)
    assert am.meta["layers_measured"] == [1] and am.mass[:, 0].isnan().all() and not am.mass[:, 1].isnan().any()
    assert torch.isfinite(am.visual_share()[:, 1]).all()
    records = [{"model": "q", "task": "t", "condition": "2-shot", "correct": bool(s % 2), "shots": 2, "index": s}
               for s in range(3)]
    _add_attention(records, am, eps)
    by_layer = torch.tensor([r["visual_share_by_layer"] for r in records])
    assert by_layer[:, 0].isnan().all()
    torch.testing.assert_close(torch.tensor([r["visual_share"] for r in records]), by_layer[:, 1])  # mean = layer 1
    assert summarise(records)["partly_measured"] == {"q": [1]}
    from micl_probe.viz.report import report_markdown
    md = report_markdown(summarise(records), {"conditions": ["2-shot"], "models": ["q"], "tasks": ["t"], "n": 3,
                                              "seed": 0}, 1.0, ["fig_demo_heads_q"])
    assert "softmax-attention layers 1 only" in md and "Blank layers: a hybrid decoder's" in md
    heat = row_attention(loaded, eps[0])
    assert heat[0].isnan().all() and torch.isfinite(heat[1]).all()

    assert DARA.for_model(loaded, n_images=3).layers == (1,)  # the first attention layer
    with pytest.raises(ValueError, match=r"layers \[0\] .* linear-attention layers.*attention layers \[1\]"):
        DARA.for_model(loaded, n_images=3, layers=(0,))
    with pytest.raises(ValueError, match=r"LoRA layers \[0\] are not attention layers .* choose among \[1\]"):
        train_lora(loaded, "outlier", layers=(0,))
    batch = loaded.prepare_batch(eps[:1])
    mask = torch.zeros(2, 4, dtype=torch.bool)
    mask[0, 1] = True
    with pytest.raises(ValueError, match=r"linear-attention layers \[0\] .* attention layers \[1\]"):
        with inject(loaded, torch.zeros(2, 4, 16), mask, batch.layouts):
            pass
