"""Benchmark: the harness with its attention summary against scoring only, in one run.

    python bench/harness_cost.py [--repeats 2]

1. The shipped organism true-micl on the default report's tasks and conditions (40 queries each).
2. A random 2-layer model at published widths: the decoder of LLaVA-OneVision-0.5B (Qwen2-0.5B: 896-d, 14 heads,
   2 KV heads, 4,864-d MLP) behind LLaVA-1.5's vision width (CLIP ViT-L/14 at 336 px: 1,024-d, 16 heads, 576
   tokens an image; 2 of its 24 layers), 6-shot episodes = 7 images, about 4.1k tokens, one episode a batch.

Each line: best of --repeats (after a warm-up) of `run(..., RunConfig(attention=True))` over the same with
`attention=False`. The harness scores and measures in one forward pass (`measure.score_and_capture`); target
<= 1.15. The last line is the summary. Time it on an idle machine.
"""

from __future__ import annotations

import argparse

import torch
from timing import best

from micl_probe import RunConfig, load, run
from micl_probe.attn_report import DEFAULT_CONDITIONS as CONDITIONS
from micl_probe.attn_report import DEFAULT_TASKS as TASKS
from micl_probe.core import Loaded, get_adapter
from micl_probe.testing import tiny_tokenizer


def real_width() -> Loaded:
    from transformers import CLIPImageProcessorPil, LlavaConfig, LlavaForConditionalGeneration, LlavaProcessor

    tok = tiny_tokenizer(["<s>", "</s>", "<image>"], bos="<s>", eos="</s>")
    cfg = LlavaConfig(
        vision_config=dict(model_type="clip_vision_model", hidden_size=1024, intermediate_size=4096,
                           num_hidden_layers=2, num_attention_heads=16, image_size=336, patch_size=14,
                           projection_dim=768),
        text_config=dict(model_type="qwen2", vocab_size=len(tok), hidden_size=896, intermediate_size=4864,
                         num_hidden_layers=2, num_attention_heads=14, num_key_value_heads=2,
                         max_position_embeddings=8192, bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id),
        image_token_index=tok.convert_tokens_to_ids("<image>"), vision_feature_select_strategy="default")
    torch.manual_seed(0)
    model = LlavaForConditionalGeneration(cfg).eval()
    ip = CLIPImageProcessorPil(size={"shortest_edge": 336}, crop_size={"height": 336, "width": 336})
    processor = LlavaProcessor(image_processor=ip, tokenizer=tok, patch_size=14,
                               vision_feature_select_strategy="default", num_additional_image_tokens=1)
    return Loaded(model, processor, get_adapter("llava"), name="real-width 2-layer")


def ratio(loaded, tasks, conditions, n, batch_size, repeats) -> tuple[float, float]:
    def harness(attention):
        return lambda: run(loaded, tasks, conditions, RunConfig(n=n, batch_size=batch_size, attention=attention,
                                                               progress=False))
    return best(harness(True), repeats), best(harness(False), repeats)


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--repeats", type=int, default=2)
    args = ap.parse_args()
    torch.set_num_threads(2)
    rows = {}
    organism = load("organism:true-micl")
    rows["organism, default report (480 episodes)"] = ratio(organism, TASKS, CONDITIONS, 40, 20, args.repeats)
    big = real_width()
    seq = big.prepare(__import__("micl_probe").sample_episodes("outlier", 6, 1)[0]).input_ids.shape[1]
    rows[f"real widths, 2 layers, {seq} tokens"] = ratio(big, ["outlier"], ["6-shot"], 2, 1, args.repeats)
    print(f"{'model':<44}{'with attention s':>18}{'scoring only s':>16}{'ratio':>8}")
    for name, (with_att, without) in rows.items():
        print(f"{name:<44}{with_att:>18.2f}{without:>16.2f}{with_att / without:>8.2f}")
    print("summary: harness with attention / scoring only: "
          + ", ".join(f"{name.split(',')[0]} {w / s:.2f}" for name, (w, s) in rows.items()) + " (target <= 1.15)")


if __name__ == "__main__":
    main()
